"""A team's own models on its own tables: scikit-learn's bundled breast-cancer (binary), wine (multiclass) and
diabetes (regression) data written as Delta tables and Parquet files, declared in YAML only, taken through
features, training, the gates, deployment, scoring and monitoring; XGBoost, LightGBM and a trainer of one's own;
``model_ops.load`` on the result; and declarations that must be refused, with nothing written. The lifecycles run
real Dagster materializations (a few seconds each) and are in the slow tier."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

import model_ops
from model_ops.errors import PolicyError, UsageError
from model_ops.specs import ModelSpec, load_spec
from model_ops_tests.graph_helpers import Graph, checks

WEEKS = ["2024-01-07", "2024-01-14", "2024-01-21", "2024-01-28"]
MONITOR = ("predictions", "drift_report", "live_performance")
TRAIN_TO_DEPLOY = ("training_set", "candidate_model", "evaluation", "deployment")


def bundled(name: str) -> pd.DataFrame:
    """One of scikit-learn's bundled data sets with a key, a time column spread over four weeks, and a site."""
    from sklearn import datasets

    frame = {"cancer": datasets.load_breast_cancer, "wine": datasets.load_wine, "diabetes": datasets.load_diabetes}[
        name
    ](as_frame=True).frame
    frame.columns = [c.replace(" ", "_").replace("/", "_") for c in frame.columns]
    rng = np.random.default_rng(0)
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    frame["record_id"] = [f"{name[0]}{i:04d}" for i in range(len(frame))]
    days = (np.arange(len(frame)) * 28) // len(frame)
    frame["seen_at"] = pd.Timestamp("2024-01-07", tz="UTC") + pd.to_timedelta(days, unit="D") + pd.Timedelta(hours=9)
    frame["site"] = np.where(np.arange(len(frame)) % 3 == 0, "north", "south")
    return frame


def write_table(frame: pd.DataFrame, uri: str, kind: str) -> None:
    from deltalake import write_deltalake

    if kind == "delta":
        write_deltalake(uri, frame, storage_options=_options(uri))
    else:
        Path(uri).mkdir(parents=True, exist_ok=True)
        frame.to_parquet(Path(uri) / "part-0.parquet", index=False)


def _options(uri: str) -> dict[str, str] | None:
    from model_ops.location import resolve_root

    return resolve_root(uri).delta_storage_options() if uri.startswith("s3://") else None


def declaration(
    name: str,
    uri: str,
    task: str,
    features: list[str],
    estimator: dict[str, Any] | None = None,
    kind: str = "delta",
    with_site: bool = True,
    **changes: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "description": f"{name} on scikit-learn's bundled data",
        "owner": "team:data-science",
        "task": task,
        "source": {"kind": kind, "uri": uri, "time_column": "seen_at", "key_column": "record_id"},
        "partitions": {"cadence": "weekly", "start": "2024-01-07", "end": "2024-02-04"},
        "features": [{"name": f} for f in features] + ([{"name": "site", "type": "category"}] if with_site else []),
        "target": {"column": "target"},
        "training": {"min_rows_per_partition": 20},
        "deployment": {"canary_steps": [0.5], "analysis": {"min_labels": 10}},
        "monitoring": {"drift_window_min_rows": 20, "min_labels": 20},
    }
    if estimator is not None:
        data["estimator"] = estimator
    data.update(changes)
    return data


def declare(tmp_path: Path, data: dict[str, Any]) -> ModelSpec:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_spec(path)


@contextmanager
def lifecycle(tmp_path: Path, spec: ModelSpec, root: str | None = None) -> Iterator[tuple[Graph, Any]]:
    """Features for four weeks, train on three (the fourth held out), deploy, then score and monitor the fourth."""
    with dg.instance_for_test() as instance:
        g = Graph(instance, root or str(tmp_path / "root"), specs=[spec])
        for week in WEEKS:
            result = g.run(spec.name, ("features",), partition=week)
            assert result.success, checks(result)
        result = g.run(spec.name, TRAIN_TO_DEPLOY)
        assert result.success, checks(result)
        result = g.run(spec.name, MONITOR, partition=WEEKS[-1])
        assert result.success, checks(result)
        yield g, checks(result)


@pytest.mark.slow
def test_binary_model_on_a_delta_table_from_yaml_alone(tmp_path: Path) -> None:
    uri = str(tmp_path / "tables" / "cancer")
    write_table(bundled("cancer"), uri, "delta")
    spec = declare(
        tmp_path,
        declaration(
            "cancer",
            uri,
            "binary_classification",
            ["mean_radius", "mean_texture", "worst_area", "worst_smoothness"],
            {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}},
            gates={"thresholds": {"roc_auc": {"min": 0.9}}, "latency_sla_ms": {"single_p99": 50}},
        ),
    )
    with lifecycle(tmp_path, spec) as (g, found):
        reg = g.registry()
        mv = reg.resolve("models:/cancer@champion")
        assert mv.stage == "production" and mv.flavor == "sklearn"
        assert [i["name"] for i in mv.signature["inputs"]] == [*spec.feature_names]
        assert mv.signature["inputs"][-1]["type"] == "category"  # from the Delta log, not declared
        evaluation = g.metadata("cancer", "evaluation")
        assert evaluation["candidate_roc_auc"] > 0.9 and "slices" in evaluation  # site slices need >= 100 rows
        log = g.resource.dataset("cancer", "predictions").read()
        assert set(log["record_id"]) <= set(bundled("cancer")["record_id"]) and log["served"].all()
        perf = g.resource.dataset("cancer", "live_performance").read()
        assert perf["roc_auc"].iloc[0] > 0.9 and found["live_performance.production_within_floor"][0]
        loaded = model_ops.load("models:/cancer@champion", root=g.root)
        rows = bundled("cancer").head(5)
        assert loaded.predict_proba(rows).shape == (5, 2)


@pytest.mark.slow
def test_multiclass_xgboost_on_parquet_files(tmp_path: Path) -> None:
    uri = str(tmp_path / "tables" / "wine")
    write_table(bundled("wine"), uri, "parquet")
    spec = declare(
        tmp_path,
        declaration(
            "wine",
            uri,
            "multiclass_classification",
            ["alcohol", "flavanoids", "color_intensity", "proline"],
            {"class": "xgboost.XGBClassifier", "params": {"n_estimators": 30, "max_depth": 3, "n_jobs": 1}},
            kind="parquet",
            gates={"thresholds": {"accuracy": {"min": 0.8}}},
            training={"min_rows_per_partition": 20},
            monitoring={"drift_window_min_rows": 20, "min_labels": 20},
        ),
    )
    with lifecycle(tmp_path, spec) as (g, _):
        mv = g.registry().resolve("models:/wine@champion")
        assert mv.flavor == "xgboost" and mv.signature["outputs"]["classes"] == [0, 1, 2]
        log = g.resource.dataset("wine", "predictions").read()
        assert {"proba_0", "proba_1", "proba_2"} <= set(log.columns)
        assert set(log["prediction"].astype(str)) <= {"0", "1", "2"}
        perf = g.resource.dataset("wine", "live_performance").read()
        assert perf["accuracy"].iloc[0] > 0.7
        drift = g.resource.dataset("wine", "drift").read()
        assert "prediction_class" in drift["report"].iloc[0]


@pytest.mark.slow
def test_regression_with_a_trainer_of_ones_own_records_it_in_lineage(tmp_path: Path) -> None:
    uri = str(tmp_path / "tables" / "diabetes")
    write_table(bundled("diabetes"), uri, "delta")
    spec = declare(
        tmp_path,
        declaration(
            "diabetes",
            uri,
            "regression",
            ["bmi", "bp", "s5"],
            trainer="model_ops_tests.trainers:ridge",
            with_site=False,
            gates={"thresholds": {"r2": {"min": 0.2}}},
        ),
    )
    with lifecycle(tmp_path, spec) as (g, _):
        mv = g.registry().resolve("models:/diabetes@champion")
        assert mv.lineage["trainer"]["name"] == "model_ops_tests.trainers:ridge"
        assert len(mv.lineage["trainer"]["source_sha256"]) == 64
        perf = g.resource.dataset("diabetes", "live_performance").read()
        assert {"rmse", "mae", "r2", "mape"} <= set(perf.columns) and perf["rmse"].iloc[0] > 0


@pytest.mark.slow
def test_lightgbm_regression_round_trips_through_model_ops_load(tmp_path: Path) -> None:
    uri = str(tmp_path / "tables" / "diabetes")
    write_table(bundled("diabetes"), uri, "delta")
    spec = declare(
        tmp_path,
        declaration(
            "diabetes_lgbm",
            uri,
            "regression",
            ["bmi", "bp", "s5", "age"],
            {
                "class": "lightgbm.LGBMRegressor",
                "params": {
                    "n_estimators": 40,
                    "num_leaves": 7,
                    "n_jobs": 1,
                    "deterministic": True,
                    "force_row_wise": True,
                    "verbose": -1,
                },
            },
        ),
    )
    with lifecycle(tmp_path, spec) as (g, _):
        loaded = model_ops.load("models:/diabetes_lgbm@champion", root=g.root)
        assert loaded.flavor == "lightgbm"
        frame = bundled("diabetes").head(20)
        assert loaded.predict(frame).shape == (20,)
        with pytest.raises(UsageError, match="bmi"):
            loaded.predict(frame.drop(columns=["bmi"]))


@pytest.mark.slow
@pytest.mark.s3
def test_a_model_on_a_delta_table_on_s3(tmp_path: Path, s3_root: str) -> None:
    uri = f"{s3_root}/tables/cancer"
    write_table(bundled("cancer"), uri, "delta")
    spec = declare(
        tmp_path,
        declaration(
            "cancer_s3",
            uri,
            "binary_classification",
            ["mean_radius", "worst_area"],
            {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}},
        ),
    )
    with lifecycle(tmp_path, spec, root=f"{s3_root}/model_ops") as (g, _):
        mv = g.registry().resolve("models:/cancer_s3@champion")
        assert mv.stage == "production" and mv.dataset["uri"].startswith("s3://")


@pytest.mark.slow
def test_a_model_holding_an_untrusted_type_is_refused_before_anything_is_registered(tmp_path: Path) -> None:
    uri = str(tmp_path / "tables" / "diabetes")
    write_table(bundled("diabetes"), uri, "delta")
    spec = declare(
        tmp_path,
        declaration(
            "unsafe",
            uri,
            "regression",
            ["bmi", "bp"],
            trainer="model_ops_tests.trainers:with_custom_function",
            with_site=False,
        ),
    )
    with dg.instance_for_test() as instance:
        g = Graph(instance, str(tmp_path / "root"), specs=[spec])
        for week in WEEKS:
            assert g.run("unsafe", ("features",), partition=week).success
        result = g.run("unsafe", ("training_set", "candidate_model"))
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert "model_ops_tests.trainers.double" in str(failure.event_specific_data)
        assert g.registry().models() == []


@pytest.mark.parametrize(
    "change, words",
    [
        ({"features": [{"name": "mean_colour"}]}, "field features[0].name: the source has no column 'mean_colour'"),
        ({"features": [{"name": "site", "type": "float"}]}, "column 'site' is category in the source, not float"),
        ({"known_after": ["mean_radius"], "features": [{"name": "mean_radius"}]}, "known_after"),
        ({"features": [{"name": "target"}]}, "the target column"),
        ({"estimator": {"class": "sklearn.linear_model.LogisticRegresion"}}, "has no 'LogisticRegresion'"),
        ({"partitions": {"cadence": "weekly", "start": "2024-13-01"}}, "is not a date"),
    ],
)
def test_bad_declarations_are_refused_with_the_field_and_write_nothing(
    tmp_path: Path, change: dict, words: str
) -> None:
    from model_ops.definitions import user_defs
    from model_ops.specs import SpecError

    uri = str(tmp_path / "tables" / "cancer")
    write_table(bundled("cancer"), uri, "delta")
    data = declaration(
        "cancer", uri, "binary_classification", ["mean_radius"], {"class": "sklearn.linear_model.LogisticRegression"}
    )
    data.update(change)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "cancer.yaml").write_text(yaml.safe_dump(data))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODEL_OPS_SPECS_DIR", str(specs))
        mp.setenv("MODEL_OPS_ROOT", str(tmp_path / "root"))
        with pytest.raises(SpecError) as err:
            user_defs()
    assert words in str(err.value) and "cancer.yaml" in str(err.value) and err.value.exit_code == 2
    assert not (tmp_path / "root").exists()


@pytest.mark.slow
def test_a_breaking_version_waits_for_a_person_and_an_added_feature_does_not(tmp_path: Path) -> None:
    from model_ops.ops import automation

    uri = str(tmp_path / "tables" / "cancer")
    write_table(bundled("cancer"), uri, "delta")
    estimator = {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}}
    first = declare(
        tmp_path, declaration("cancer", uri, "binary_classification", ["mean_radius", "worst_area"], estimator)
    )
    with lifecycle(tmp_path, first) as (g, _):
        root = g.root
    # a feature added: the features are re-materialized with the new column, the candidate is compared with the
    # champion on the champion's own inputs, and the deployment sensor starts a canary as usual
    wider = declare(
        tmp_path,
        declaration("cancer", uri, "binary_classification", ["mean_radius", "worst_area", "mean_texture"], estimator),
    )
    with dg.instance_for_test() as instance:
        g = Graph(instance, root, specs=[wider])
        for week in WEEKS:
            assert g.run("cancer", ("features",), partition=week).success
        result = g.run("cancer", ("training_set", "candidate_model", "evaluation"))
        assert result.success, checks(result)
        reg = g.registry()
        v2 = reg.versions("cancer")[-1]
        assert v2.version == 2 and v2.semver.startswith("2.") and "mean_texture" in v2.bump["reason"]
        assert checks(result)["evaluation.no_regression_vs_champion"][0]
        assert automation.deployment_step(reg, wider).action == "deploy"
    # a feature removed: the version breaks production's interface, so the sensor holds it for a person
    narrower = declare(tmp_path, declaration("cancer", uri, "binary_classification", ["mean_radius"], estimator))
    with dg.instance_for_test() as instance:
        g = Graph(instance, root, specs=[narrower])
        assert g.run("cancer", ("training_set", "candidate_model")).success
        reg = g.registry()
        v3 = reg.versions("cancer")[-1]
        reg.transition(v3.ref, "staging", reason="reviewed by hand")
        decision = automation.deployment_step(reg, narrower)
        assert decision.action == "hold" and "worst_area" in decision.reason and "--breaking" in decision.reason
        with pytest.raises(PolicyError, match="worst_area"):
            reg.transition(v3.ref, "production", reason="test")
        assert (
            reg.transition(v3.ref, "production", reason="the column is gone upstream", breaking=True).stage
            == "production"
        )


@pytest.mark.slow
def test_a_static_table_without_partitions_holds_out_its_newest_rows(tmp_path: Path) -> None:
    uri = str(tmp_path / "tables" / "cancer")
    write_table(bundled("cancer"), uri, "delta")
    spec = declare(
        tmp_path,
        declaration(
            "cancer_static",
            uri,
            "binary_classification",
            ["mean_radius", "worst_area", "mean_texture"],
            {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}},
            partitions="none",
            training={"holdout_fraction": 0.25, "min_rows_per_partition": 100},
        ),
    )
    with dg.instance_for_test() as instance:
        g = Graph(instance, str(tmp_path / "root"), specs=[spec])
        for names in (("features",), TRAIN_TO_DEPLOY, MONITOR):
            result = g.run("cancer_static", names)
            assert result.success, checks(result)
        snap = g.resource.dataset("cancer_static", "training_set").read()
        hold = snap[snap["split"] == "holdout"]
        assert len(hold) == int(np.ceil(len(snap) * 0.25))
        assert hold["seen_at"].min() >= snap.loc[snap["split"] == "train", "seen_at"].max()
        log = g.resource.dataset("cancer_static", "predictions").read()
        assert set(log["partition"]) == {"all"} and len(log) == len(bundled("cancer"))
        assert g.registry().resolve("models:/cancer_static@champion").stage == "production"
        # each scoring of the table is a monitoring window (its day), so persistence can be counted
        drift = g.resource.dataset("cancer_static", "drift").read()
        today = pd.Timestamp(log["scored_at"].max()).tz_convert("UTC").date().isoformat()
        assert drift["partition"].tolist() == [today]
    from model_ops.ops.automation import window_keys

    assert window_keys(spec, ["2026-12-02", "2026-12-01", "2026-12-02"]) == ["2026-12-01", "2026-12-02"]


@pytest.mark.slow
def test_outcomes_from_a_labels_table_train_the_model_and_judge_live_traffic(tmp_path: Path) -> None:
    frame = bundled("cancer")
    source, outcomes = str(tmp_path / "tables" / "cancer"), str(tmp_path / "tables" / "outcomes")
    write_table(frame.drop(columns=["target"]), source, "delta")
    late = frame[["record_id", "target"]].rename(columns={"record_id": "patient", "target": "malignant"})
    write_table(late.iloc[: int(len(late) * 0.9)], outcomes, "parquet")  # a tenth has no outcome yet
    spec = declare(
        tmp_path,
        declaration(
            "cancer_late",
            source,
            "binary_classification",
            ["mean_radius", "worst_area"],
            {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}},
            labels={"kind": "parquet", "uri": outcomes, "key_column": "patient", "column": "malignant"},
            target={"column": "malignant"},
        ),
    )
    with lifecycle(tmp_path, spec) as (g, _):
        mv = g.registry().resolve("models:/cancer_late@champion")
        assert 0.8 * len(frame) * 0.75 < mv.lineage["rows"] < 0.9 * len(frame)  # three weeks, known outcomes only
        perf = g.resource.dataset("cancer_late", "live_performance").read()
        row = perf.iloc[0]
        assert row["labelled"] < row["served"] and 0.5 < row["coverage"] < 1.0 and row["roc_auc"] > 0.9  # newest last
        labels = next(a for a in g.assets if isinstance(a, dg.SourceAsset) and a.key.path[-1] == "labels")
        features = next(a for a in g.assets if isinstance(a, dg.AssetsDefinition) and a.key.path[-1] == "features")
        assert labels.key in features.asset_deps[features.key]  # a new delivery of outcomes marks features stale

        def observed() -> str:
            from dagster._core.definitions.observe import observe  # Dagster's in-process observation (not exported)

            result = observe([labels], instance=g.instance, resources={"model_ops": g.resource})
            assert result.success
            event = g.instance.get_latest_data_version_record(labels.key)
            assert event is not None
            return str(event.asset_observation.data_version)

        before = observed()
        write_table(late, outcomes, "parquet")  # the rest of the outcomes arrive
        assert before.startswith("parquet:") and observed() != before
