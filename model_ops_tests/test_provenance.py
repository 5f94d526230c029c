"""Reproducing a version byte for byte from its lineage, and explaining why when it cannot be.

A real snapshot (January 2013 to train, February held out) written the way the training_set asset writes it, a
candidate registered the way candidate_model registers it; then later writes, a tampered table and a parameter
that does not match the recorded spec."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from model_ops.cli import main as cli
from model_ops.data import features as feat
from model_ops.data.delta import Dataset, frame_fingerprint
from model_ops.data.nycflights13 import build_features, load_month
from model_ops.location import resolve_root
from model_ops.ml import candidates
from model_ops.ops.provenance import diff, lineage, reproduce
from model_ops.registry import Registry
from model_ops.specs import load_specs

pytestmark = pytest.mark.slow  # fits the flights model on several real months

SPEC = next(s for s in load_specs() if s.name == "flight_delay")
MONTHS = ("2013-01-01", "2013-02-01")


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return {m: build_features(load_month("flights", m), load_month("weather", m), SPEC, m) for m in MONTHS}


def write_snapshot(root: Path, frames: dict[str, pd.DataFrame], train: str, holdout: str) -> Dataset:
    """As the features and training_set assets do: months into the features table, a snapshot read from it."""
    features = Dataset(resolve_root(str(root / "datasets" / "flight_delay" / "features")), "flight_delay/features")
    for month in (train, holdout):
        features.replace_partition(month, feat.to_arrow(frames[month]))
    df = features.read([train, holdout])
    df["split"] = (df["partition"] == holdout).map({True: "holdout", False: "train"})
    df = df.sort_values(["partition", "flight_id"], kind="stable").reset_index(drop=True)
    snap = Dataset(resolve_root(str(root / "datasets" / "flight_delay" / "training_set")), "flight_delay/training_set")
    snap.overwrite(feat.to_arrow(df), metadata={"model_ops.fingerprint": frame_fingerprint(df)})
    return snap


@pytest.fixture
def world(tmp_path: Path, frames: dict[str, pd.DataFrame]) -> tuple[Registry, Dataset, int]:
    reg = Registry.open(tmp_path / "root", actor="tester")
    snap = write_snapshot(tmp_path / "root", frames, *MONTHS)
    made = candidates.train_and_register(reg, snap, SPEC, run_id="run-1")
    return reg, snap, made.version.version


def test_a_version_is_rebuilt_byte_for_byte_after_later_snapshots(world, frames, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    reg, snap, v1 = world
    write_snapshot(tmp_path / "root", frames, MONTHS[1], MONTHS[0])  # a later snapshot replaces the table
    v2 = candidates.train_and_register(reg, snap, SPEC, run_id="run-2").version.version
    assert v2 != v1
    result = reproduce(reg, f"models:/flight_delay/{v1}")
    assert result.identical and result.differences == [] and result.checked["dataset"].endswith("@0")
    assert cli(["--root", str(tmp_path / "root"), "reproduce", f"models:/flight_delay/{v1}"]) == 0
    assert "rebuilt byte for byte" in capsys.readouterr().out
    assert reproduce(reg, f"models:/flight_delay/{v2}").identical
    kept = DeltaTable(snap.uri).metadata().configuration  # old snapshot versions outlive Delta's 30-day default
    assert kept["delta.logRetentionDuration"] == kept["delta.deletedFileRetentionDuration"] == "interval 3650 days"


def flip_labels(data_file: Path) -> bytes:
    """The file rewritten with every label inverted (nulls kept), as Parquet bytes."""
    table = pq.read_table(data_file)
    column = table.column("delayed")
    flipped = pc.subtract(pa.scalar(1, column.type), column)
    sink = pa.BufferOutputStream()
    pq.write_table(
        table.set_column(table.schema.get_field_index("delayed"), table.schema.field("delayed"), flipped),
        sink,
        compression="zstd",
        compression_level=19,
    )
    return sink.getvalue().to_pybytes()


def test_a_rewritten_snapshot_file_fails_with_a_data_explanation(world, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    reg, snap, v1 = world
    (data_file,) = list(Path(snap.uri).rglob("*.parquet"))
    data_file.write_bytes(flip_labels(data_file))  # another size than the Delta log says: unreadable
    result = reproduce(reg, f"models:/flight_delay/{v1}")
    assert not result.identical
    (difference,) = result.differences
    assert difference["kind"] == "data" and "cannot be read" in difference["message"]
    assert cli(["--root", str(tmp_path / "root"), "reproduce", f"models:/flight_delay/{v1}", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["identical"] is False


def test_rows_changed_in_place_fail_against_the_snapshot_fingerprint(world) -> None:  # type: ignore[no-untyped-def]
    reg, snap, v1 = world
    (data_file,) = list(Path(snap.uri).rglob("*.parquet"))
    original = data_file.stat().st_size
    tampered = flip_labels(data_file)
    # Same size as before, so Delta reads it: the data pages, zero padding, then the footer (Parquet offsets are
    # absolute from the start of the file, so padding before the footer changes nothing a reader sees).
    footer = int.from_bytes(tampered[-8:-4], "little") + 8
    assert len(tampered) <= original, "the rewritten file must not be larger than the original"
    data_file.write_bytes(tampered[:-footer] + bytes(original - len(tampered)) + tampered[-footer:])
    result = reproduce(reg, f"models:/flight_delay/{v1}")
    assert not result.identical
    kinds = {d["kind"] for d in result.differences}
    assert "data" in kinds and "parameters" not in kinds, [d["message"] for d in result.differences]
    assert any("changed outside model_ops" in d["message"] for d in result.differences)


def test_a_parameter_the_recorded_spec_does_not_give_is_named(tmp_path, frames) -> None:  # type: ignore[no-untyped-def]
    reg = Registry.open(tmp_path / "root", actor="tester")
    snap = write_snapshot(tmp_path / "root", frames, *MONTHS)
    fitted_with = SPEC.model_copy(deep=True)
    fitted_with.estimator.params["C"] = 0.05
    made = candidates.train_and_register(
        reg, snap, fitted_with, lineage={"spec": SPEC.model_dump(mode="json", by_alias=True)}
    )  # recorded: the spec's own C = 1.0
    result = reproduce(reg, made.version.ref)
    assert not result.identical
    params = [d for d in result.differences if d["kind"] == "parameters"]
    assert params == [
        {
            "kind": "parameters",
            "what": "C",
            "recorded": 0.05,
            "now": 1.0,
            "message": "the registered model was fitted with other parameters than its recorded spec gives",
        }
    ]
    assert any(d["kind"] == "code" for d in result.differences)


def test_a_version_registered_by_hand_cannot_be_rebuilt_and_says_why(reg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "model.bin"
    src.write_bytes(b"weights")
    mv = reg.register("other", src)
    result = reproduce(reg, mv.ref)
    assert not result.identical and result.differences[0]["kind"] == "lineage"


def test_lineage_and_diff_tell_the_chain_and_the_changes(world, frames, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    reg, snap, v1 = world
    reg.transition(f"models:/flight_delay/{v1}", "staging", reason="gates passed")
    reg.record(
        "flight_delay", "deployment", version=v1, reason="first", details={"action": "deploy", "message": "v1 deployed"}
    )
    tree = lineage(reg, f"models:/flight_delay/{v1}")
    assert tree["dataset"]["delta_version"] == 0 and tree["dataset"]["window"] == [MONTHS[0]]
    assert tree["run"]["dagster_run_id"] == "run-1"
    assert [c["to"] for c in tree["changes"]] == ["staging"]
    assert [d["action"] for d in tree["deployments"]] == ["deploy"]
    assert cli(["--root", str(tmp_path / "root"), "lineage", f"models:/flight_delay/{v1}"]) == 0
    out = capsys.readouterr().out
    assert "Delta version 0" in out and "deployment deploy: v1 deployed" in out
    # in a 60-column terminal every line fits, the long ones continued below, and no word is lost
    os.environ["COLUMNS"] = "60"
    try:
        assert cli(["--root", str(tmp_path / "root"), "lineage", f"models:/flight_delay/{v1}"]) == 0
    finally:
        del os.environ["COLUMNS"]
    narrow = capsys.readouterr().out
    assert max(len(line) for line in narrow.splitlines()) <= 60 < max(len(line) for line in out.splitlines())
    assert "".join(narrow.replace("│", "").split()) == "".join(out.replace("│", "").split())

    write_snapshot(tmp_path / "root", frames, MONTHS[1], MONTHS[0])
    v2 = candidates.train_and_register(reg, snap, SPEC).version.version
    d = diff(reg, f"models:/flight_delay/{v1}", f"models:/flight_delay/{v2}")
    assert d["data"]["version"] == [0, 1] and d["data"]["window"] == [[MONTHS[0]], [MONTHS[1]]]
    assert d["params"] == {} and not d["signature_changed"] and not d["same_artifact"]
    assert d["bump"]["level"] == "minor" and "data" in d["bump"]["reason"]
    assert (
        cli(
            [
                "--root",
                str(tmp_path / "root"),
                "diff",
                f"models:/flight_delay/{v1}",
                f"models:/flight_delay/{v2}",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["data"]["version"] == [0, 1]
