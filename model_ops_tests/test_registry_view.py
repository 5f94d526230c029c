"""The registry in the Dagster UI: the ``registry`` asset's versions table and its moves, observed by a sensor."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from model_ops.defs.registry_view import registry_sensor, sensor_name
from model_ops.defs.resources import ModelOpsResource
from model_ops.ops import registry_view
from model_ops.registry import Registry
from model_ops.specs import load_specs
from model_ops_tests.helpers import tiny_model

M = "flight_delay"


@pytest.fixture()
def reg(tmp_path: Path) -> Registry:
    reg = Registry.open(tmp_path / "root", actor="alice")
    for seed, auc in ((0, 0.71), (1, 0.74)):
        reg.register_model(M, tiny_model(seed), metrics={"roc_auc": auc, "log_loss": 0.5 - seed / 10})
    reg.transition(f"models:/{M}/1", "staging", reason="gates passed")
    reg.transition(f"models:/{M}/1", "production", reason="first release")
    return reg


def spec():  # type: ignore[no-untyped-def]
    return next(s for s in load_specs() if s.name == M)


def tick(reg: Registry, cursor: str | None) -> dg.SensorResult:
    sensor = registry_sensor(spec())
    root = str(reg.location.path.parent)  # the registry lives in <root>/registry
    context = dg.build_sensor_context(
        cursor=cursor, resources={"model_ops": ModelOpsResource(root=root, actor="viewer")}
    )
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def on_registry(result: dg.SensorResult) -> list:  # type: ignore[type-arg]
    """The result's observations of the ``registry`` asset (the rest are of ``versions``)."""
    return [e for e in result.asset_events if e.asset_key == dg.AssetKey([M, "registry"])]


def test_the_view_lists_every_version_newest_first_with_its_state_and_moves(reg: Registry) -> None:
    found = registry_view.view(reg, M, preferred=["roc_auc"])
    assert found is not None and found.production == 1 and found.metrics == ["roc_auc", "log_loss"]
    assert [(r["version"], r["stage"], r["roc_auc"]) for r in found.versions] == [
        (2, "development", 0.74),
        (1, "production", 0.71),
    ]
    assert found.versions[1]["aliases"] == "champion"
    described = [m.describe() for m in found.moved]
    assert "v1 stage_changed development -> staging: gates passed" in described
    assert "v1 stage_changed staging -> production: first release" in described
    assert any(m.event == "alias_set" and m.change == "@champion: - -> v1" for m in found.moved)
    later = registry_view.view(reg, M, after=found.last_seq)
    assert later is not None and later.moved == []
    assert registry_view.view(reg, "churn") is None


def test_the_sensor_shows_each_move_then_the_table_and_skips_when_nothing_changed(reg: Registry) -> None:
    first = tick(reg, None)
    events = on_registry(first)
    assert events and all(e.partition is None for e in events)
    *moves, table = events
    assert table.description == "2 version(s), production v1"
    versions = table.metadata["versions"]
    assert isinstance(versions, dg.TableMetadataValue)
    assert [(r.data["version"], r.data["stage"]) for r in versions.records] == [(2, "development"), (1, "production")]
    assert {c.name for c in versions.schema.columns} >= {"version", "semver", "stage", "aliases", "digest", "roc_auc"}
    assert table.metadata["production_version"].value == 1
    promoted = next(e for e in moves if e.metadata["change"].value == "staging -> production")
    assert promoted.metadata["reason"].value == "first release" and promoted.metadata["version"].value == 1

    again = tick(reg, first.cursor)
    assert not again.asset_events and "has not changed" in str(again.skip_reason)
    assert again.cursor == first.cursor  # kept, whoever stores it

    reg.transition(f"models:/{M}/2", "staging", reason="better holdout AUC")
    third = tick(reg, again.cursor)
    *moves, table = on_registry(third)
    assert [m.description for m in moves] == ["v2 stage_changed development -> staging: better holdout AUC"]
    assert [r.data["stage"] for r in table.metadata["versions"].records] == ["staging", "production"]
    assert json.loads(third.cursor)["seq"] > json.loads(first.cursor)["seq"]


def test_each_version_is_a_partition_observed_with_its_evaluation_metrics(reg: Registry) -> None:
    from model_ops.vocab import RecordKind

    reg.record(M, RecordKind.EVALUATION, version=2, details={"metrics": {"roc_auc": 0.7712345678, "log_loss": 0.41}})
    first = tick(reg, None)
    by_version = {e.partition: e for e in first.asset_events if e.asset_key == dg.AssetKey([M, "versions"])}
    assert set(by_version) == {"v1", "v2"}  # the first tick shows every version
    assert by_version["v2"].metadata["roc_auc"].value == 0.7712  # the evaluation's, over the registered 0.74
    assert by_version["v1"].metadata["roc_auc"].value == 0.71  # never evaluated: its registered metric
    assert by_version["v1"].metadata["stage"].value == "production"
    assert by_version["v1"].metadata["aliases"].value == "champion"
    (added,) = first.dynamic_partitions_requests
    assert isinstance(added, dg.AddDynamicPartitionsRequest)
    assert added.partitions_def_name == f"{M}_versions" and list(added.partition_keys) == ["v1", "v2"]

    reg.set_alias(M, "challenger", 2, reason="next in line")
    later = tick(reg, first.cursor)
    assert [e.partition for e in later.asset_events if e.partition] == ["v2"]  # only the version that moved
    assert not later.dynamic_partitions_requests  # both have their partition already
    assert next(e for e in later.asset_events if e.partition).metadata["aliases"].value == "challenger"
    reg.set_alias(M, "challenger", 1, reason="back to the first")
    moved_back = tick(reg, later.cursor)
    shown = {e.partition: e.metadata["aliases"].value for e in moved_back.asset_events if e.partition}
    assert shown == {"v1": "challenger, champion", "v2": "-"}  # the version it left is brought up to date too


def test_a_long_history_gets_its_partitions_in_version_order_over_several_ticks(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_ops.defs import registry_view as view_defs

    for seed in range(2, 5):
        reg.register_model(M, tiny_model(seed))
    monkeypatch.setattr(view_defs, "MOVES_PER_TICK", 2)
    added: list[str] = []
    recorded: list[str] = []
    cursor = None
    for _ in range(3):
        result = tick(reg, cursor)
        added += [k for r in result.dynamic_partitions_requests or [] for k in r.partition_keys]
        recorded += [e.partition for e in result.asset_events or [] if e.partition]
        cursor = result.cursor
    assert added == ["v1", "v2", "v3", "v4", "v5"]  # the order the UI plots them in
    assert set(recorded) == set(added)
    assert "has not changed" in str(tick(reg, cursor).skip_reason)  # caught up: nothing left to record
    reg.register_model(M, tiny_model(9))
    result = tick(reg, cursor)
    assert [k for r in result.dynamic_partitions_requests for k in r.partition_keys] == ["v6"]


def test_a_hand_written_evaluation_record_of_any_shape_never_stops_the_sensor(reg: Registry) -> None:
    from model_ops.vocab import RecordKind

    reg.record(M, RecordKind.EVALUATION, version=1, details={"metrics": [0.7]})
    reg.record(M, RecordKind.EVALUATION, version=2, details={"metrics": {"roc_auc": None, "note": "x"}})
    found = registry_view.view(reg, M)
    assert found is not None
    assert found.facts[1]["roc_auc"] == 0.71 and found.facts[2]["roc_auc"] == 0.74  # registered values stand


def test_the_table_shows_the_preferred_metrics_first() -> None:
    metrics = {1: {"train_rows": 10.0, "accuracy": 0.7, "roc_auc": 0.6, "log_loss": 0.5, "brier": 0.2}}
    assert registry_view.key_metrics(metrics, ["log_loss", "roc_auc", "missing"]) == [
        "log_loss",
        "roc_auc",
        "accuracy",
        "brier",
    ]


def test_a_model_with_no_version_yet_is_skipped_with_the_reason(tmp_path: Path) -> None:
    Registry.open(tmp_path / "root", actor="alice").register_model("other", tiny_model(0))
    result = tick(Registry.open(tmp_path / "root", actor="alice"), None)
    assert not result.asset_events and result.skip_reason and f"no version of {M}" in str(result.skip_reason)


def test_every_model_has_its_registry_asset_and_sensor() -> None:
    from model_ops.definitions import defs

    for s in load_specs():
        assert defs.resolve_assets_def(dg.AssetKey([s.name, "registry"])) is not None
        assert defs.resolve_sensor_def(sensor_name(s)).default_status == dg.DefaultSensorStatus.RUNNING


def test_a_tick_that_finds_more_moves_than_it_shows_goes_on_from_the_last_one_shown(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_ops.defs import registry_view as view_defs

    first = tick(reg, None)
    for i in range(5):
        reg.set_tag(f"models:/{M}/2", "note", str(i))  # not moves
        reg.set_alias(M, f"a{i}", 2, reason=f"alias {i}")
    monkeypatch.setattr(view_defs, "MOVES_PER_TICK", 2)
    shown: list[str] = []
    cursor = first.cursor
    for _ in range(4):
        result = tick(reg, cursor)
        shown += [e.metadata["change"].value for e in on_registry(result) if "change" in e.metadata]
        cursor = result.cursor
    assert shown == [f"@a{i}: - -> v2" for i in range(5)]  # every move once, in order, none lost
