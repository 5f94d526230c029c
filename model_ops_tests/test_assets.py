"""The flight_delay asset graph in-process on the real 2013 data: ingest → train → evaluate → deploy → score."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from model_ops.defs.datasets import features_asset
from model_ops.defs.resources import ModelOpsResource
from model_ops.ops import deployment as dep
from model_ops.specs import get_spec
from model_ops_tests.graph_helpers import TRAIN_TO_DEPLOY, Graph, checks, materialized

pytestmark = pytest.mark.slow
M = "flight_delay"
JAN, FEB, MAR = "2013-01-01", "2013-02-01", "2013-03-01"


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("lifecycle") / "root"
    with dg.instance_for_test() as instance:
        g = Graph(instance, str(root))
        g.ingest(M, JAN, FEB, MAR)
        g.first = g.run(M, TRAIN_TO_DEPLOY)
        yield g


def test_train_evaluate_deploy(graph: Graph) -> None:
    result = graph.first
    assert result.success
    assert materialized(result) == set(TRAIN_TO_DEPLOY)
    assert {k: v[0] for k, v in checks(result).items()} == {
        "evaluation.meets_thresholds": True,
        "evaluation.no_regression_vs_champion": True,
        "evaluation.latency_within_sla": True,
    }
    reg = graph.registry()
    mv = reg.resolve(f"models:/{M}@champion")
    assert (mv.version, mv.semver, mv.stage) == (1, "1.0.0", "production")

    snap = graph.metadata(M, "training_set")
    assert snap["window"] == f"{JAN}, {FEB}" and snap["holdout"] == MAR
    lineage, dataset = mv.lineage, mv.dataset
    assert (
        dataset["uri"].endswith("datasets/flight_delay/training_set")
        and str(dataset["version"]) == snap["delta_version"]
    )
    assert dataset["schema_hash"] == snap["schema_hash"] == lineage["schema_hash"]
    assert 0 < lineage["rows"] <= snap["train_rows"]  # labelled rows only: cancelled flights have no label
    assert lineage["dagster_run_id"] == result.run_id == mv.run_id
    assert lineage["seed"] == 13 and lineage["estimator"].endswith("LogisticRegression")
    assert lineage["code_version"].startswith("train-") and "python" in lineage["environment"]
    assert mv.params["C"] == 1.0 and mv.signature["outputs"]["classes"] == [0, 1]

    event = graph.instance.get_latest_materialization_event(dg.AssetKey([M, "candidate_model"]))
    tags = event.asset_materialization.tags
    assert tags["dagster/data_version"] == mv.digest and tags["dagster/code_version"] == lineage["code_version"]
    ts_tags = graph.instance.get_latest_materialization_event(
        dg.AssetKey([M, "training_set"])
    ).asset_materialization.tags
    assert ts_tags["dagster/data_version"] == f"{snap['delta_version']}:{snap['schema_hash']}"

    raw = graph.instance.get_latest_materialization_event(dg.AssetKey([M, "evaluation"])).asset_materialization
    assert isinstance(raw.metadata["candidate_roc_auc"], dg.FloatMetadataValue)  # plotted across runs by the UI
    evaluation = graph.metadata(M, "evaluation")
    assert 0.62 < evaluation["candidate_roc_auc"] < 0.9 and evaluation["promoted_to_staging"]
    assert (
        "# flight_delay v1 (1.0.0)" in evaluation["model_card"]
        and "PASS **meets_thresholds**" in evaluation["model_card"]
    )
    recorded = [e for e in reg.audit(M) if e.kind == "evaluation"]
    assert recorded[-1].data["model_card"].startswith("# flight_delay v1") and recorded[-1].run_id == result.run_id
    assert graph.metadata(M, "deployment")["message"] == "v1 deployed straight to production (nothing was serving)"


def test_model_card_from_the_command_line(graph: Graph, capsys: pytest.CaptureFixture[str]) -> None:
    from model_ops.cli import main
    from model_ops.registry import Registry

    Registry.open(graph.root, actor="reviewer").approve(f"models:/{M}/1", "production", reason="read the card")
    assert main(["--root", graph.root, "card", f"models:/{M}@champion"]) == 0
    card = capsys.readouterr().out
    assert card.startswith("# flight_delay v1 (1.0.0)") and "## Holdout evaluation" in card and "| roc_auc |" in card
    assert "### Holdout by carrier" in card and "## Intended use and limits" in card
    assert "## Approvals, stages and deployments" in card and "→ **staging**" in card
    assert "**approved** for production by reviewer: read the card" in card
    # the state now, read when the card is shown: v1 is the production champion (it was in staging when evaluated)
    now = card[card.index("## Now") : card.index("## As written")]
    assert "- **Stage:** production" in now and "- **Aliases:** champion" in now
    assert "- **Deployment:** serves as production (the model: production v1)" in now
    assert "- **Stage when this card was written:** staging" in card and "- **Stage:**  staging" not in card
    assert main(["--root", graph.root, "card", f"models:/{M}/9"]) == 1


def test_same_inputs_give_the_same_version(graph: Graph) -> None:
    again = graph.run(M, TRAIN_TO_DEPLOY)
    assert again.success
    assert not graph.metadata(M, "training_set")["new_snapshot"]
    assert graph.metadata(M, "candidate_model")["version"] == 1
    assert not graph.metadata(M, "candidate_model")["new_version"]
    assert "no version is waiting in staging" in graph.metadata(M, "deployment")["message"]
    assert [v.version for v in graph.registry().versions(M)] == [1]


def test_predictions_log_one_row_per_flight(graph: Graph) -> None:
    assert graph.run(M, ("predictions",), partition=MAR).success
    log = graph.resource.dataset(M, "predictions").read([MAR])
    features = graph.resource.dataset(M, "features").read([MAR])
    assert len(log) == len(features) and log["request_id"].is_unique
    assert set(log["arm"]) == {"production"} and log["served"].all() and set(log["model_version"]) == {1}
    assert log["score"].between(0, 1).all() and (log["latency_ms"] > 0).all()
    assert {"flight_id", "ts", "model_semver", "prediction", "carrier", "temp"} <= set(log.columns)
    assert graph.run(M, ("predictions",), partition=MAR).success  # re-scoring replaces the month
    assert len(graph.resource.dataset(M, "predictions").read()) == len(features)


def test_canary_shadow_and_rollback_through_the_deployment_asset(graph: Graph) -> None:
    trained = graph.run(M, TRAIN_TO_DEPLOY, config={"training_set": {"window_start": FEB}})
    assert trained.success, checks(trained)
    reg = graph.registry()
    v2 = reg.get(M, 2)
    assert v2.stage == "staging" and v2.semver == "1.1.0" and v2.parent == 1
    manifest = dep.current(reg, M)
    assert (manifest.production, manifest.canary, manifest.canary_weight) == (1, 2, 0.1)
    assert graph.metadata(M, "evaluation")["champion_version"] == 1

    assert graph.run(M, ("deployment",), config={"deployment": {"action": "shadow_on", "version": 2}}).success
    assert graph.run(M, ("predictions",), partition=MAR).success
    log = graph.resource.dataset(M, "predictions").read([MAR])
    served = log[log["served"]]
    assert served["flight_id"].is_unique and set(served["arm"]) == {"production", "canary"}
    assert 0.08 < (served["arm"] == "canary").mean() < 0.12
    assert set(served.loc[served["arm"] == "canary", "model_version"]) == {2}
    shadow = log[~log["served"]]
    assert set(shadow["arm"]) == {"shadow"} and len(shadow) == len(served)

    rolled = graph.run(M, ("deployment",), config={"deployment": {"action": "rollback", "reason": "test"}})
    assert rolled.success
    shown = graph.metadata(M, "deployment")
    assert shown["message"].startswith("canary v2 rolled back")
    # the history names the version acted on and why; a role nobody holds is absent, not a made-up number
    assert (shown["action"], shown["version"], shown["reason"]) == ("rollback", 2, "test")
    assert shown["production_version"] == 1 and "canary_version" not in shown and shown["shadow_version"] == 2
    assert reg.get(M, 2).stage == "archived" and dep.current(reg, M).canary is None
    actions = [h["action"] for h in dep.history(reg, M)]
    assert actions == ["deploy", "deploy", "shadow_on", "rollback"]


def test_features_asset_invoked_directly(graph: Graph) -> None:
    asset = features_asset(get_spec(M))
    resource = ModelOpsResource(root=graph.root)
    with dg.build_asset_context(partition_key=JAN, resources={"model_ops": resource}) as context:
        result = asset(context=context)
    assert result.metadata["status"] == "stored" and all(c.passed for c in result.check_results)
    assert {c.check_name for c in result.check_results} == {
        "schema_contract",
        "no_unexpected_nulls",
        "keys_unique",
        "values_in_range",
        "row_count",
    }


def test_a_failing_gate_stops_deployment_and_leaves_the_registry_unchanged(tmp_path: Path) -> None:
    spec = get_spec(M)
    strict = spec.model_copy(
        update={
            "gates": spec.gates.model_copy(
                update={"thresholds": {"roc_auc": spec.gates.thresholds["roc_auc"].model_copy(update={"min": 0.99})}}
            )
        }
    )
    with dg.instance_for_test() as instance:
        g = Graph(instance, str(tmp_path / "root"), specs=[strict])
        g.ingest(M, JAN, FEB)
        result = g.run(M, TRAIN_TO_DEPLOY)
        assert not result.success
        assert materialized(result) == {"training_set", "candidate_model", "evaluation"}
        passed, message = checks(result)["evaluation.meets_thresholds"]
        assert not passed and "roc_auc = 0." in message and "needs >= 0.99" in message
        reg = g.registry()
        assert [(v.version, v.stage, v.aliases) for v in reg.versions(M)] == [(1, "development", ())]
        kinds = [e.kind for e in reg.audit(M)]
        assert kinds == [
            "registered",
            "tag_set",
            "tag_set",
            "tag_set",
            "attachment",
            "evaluation",
        ]  # no stage, alias or deployment
        assert reg.audit(M)[-1].reason.startswith("failed: below the spec's thresholds")


@pytest.mark.parametrize(
    "corruption, check, words",
    [
        ("missing_column", "flights.source_contract", "missing column(s): distance"),
        ("wrong_types", "flights.source_contract", "sched_dep_time is object, expected int, e.g. rows 0, 1, 2"),
        ("empty", "flights.source_contract", "flights 2013-02-01: the source delivered no rows"),
        ("truncated", "features.row_count", "200 rows, the spec requires at least 1000 per partition"),
    ],
)
def test_a_corrupted_month_is_caught_and_kept_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corruption: str, check: str, words: str
) -> None:
    from model_ops.data import nycflights13 as sources

    real = sources.load_month

    def corrupted(table: str, month: str) -> pd.DataFrame:
        df = real(table, month)
        if table != "flights" or month != FEB:
            return df
        if corruption == "missing_column":
            return df.drop(columns=["distance"])
        if corruption == "wrong_types":
            return df.assign(sched_dep_time=df["sched_dep_time"].map(lambda t: f"{t // 100}h{t % 100:02d}"))
        return df.head(0) if corruption == "empty" else df.head(200)

    monkeypatch.setattr(sources, "load_month", corrupted)
    with dg.instance_for_test() as instance:
        g = Graph(instance, str(tmp_path / "root"))
        g.ingest(M, JAN)
        result = g.run(M, ("flights", "weather", "features"), partition=FEB)
        assert not result.success
        passed, message = checks(result)[check]
        assert not passed and words in message, message
        assert g.resource.dataset(M, "features").partition_keys() == [JAN]
        g.ingest(M, MAR)
        assert g.run(M, ("training_set",)).success
        assert g.metadata(M, "training_set")["window"] == JAN  # February never reaches training
