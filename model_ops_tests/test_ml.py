"""The ML layer: reproducible fits, every spec estimator loadable under the allow-list, gates, the deployment
state machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from model_ops.data import nycflights13 as sources
from model_ops.errors import PolicyError, UsageError
from model_ops.ml import evaluation as ev
from model_ops.ml import flavors, tasks, training
from model_ops.ops import deployment as dep
from model_ops.registry import Registry
from model_ops.specs import get_spec
from model_ops.specs.schema import ModelSpec

# Estimators a declaration may name: bare ones behind the default preprocessing, a Pipeline built from YAML, and
# the XGBoost / LightGBM scikit-learn estimators (each in its own flavor).
ESTIMATORS = {
    "sklearn.linear_model.LogisticRegression": {},
    "sklearn.ensemble.HistGradientBoostingClassifier": {"max_iter": 20},
    "sklearn.ensemble.RandomForestClassifier": {"n_estimators": 3},
    "sklearn.linear_model.SGDClassifier": {"loss": "log_loss"},
    "xgboost.XGBClassifier": {"n_estimators": 10, "max_depth": 3, "n_jobs": 1},
    "lightgbm.LGBMClassifier": {
        "n_estimators": 10,
        "num_leaves": 7,
        "n_jobs": 1,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    },
    "sklearn.pipeline.Pipeline": {
        "steps": [
            [
                "columns",
                {
                    "class": "sklearn.compose.ColumnTransformer",
                    "params": {
                        "transformers": [
                            [
                                "num",
                                {
                                    "class": "sklearn.pipeline.Pipeline",
                                    "params": {
                                        "steps": [
                                            [
                                                "impute",
                                                {
                                                    "class": "sklearn.impute.SimpleImputer",
                                                    "params": {"strategy": "median"},
                                                },
                                            ],
                                            ["scale", {"class": "sklearn.preprocessing.StandardScaler"}],
                                        ]
                                    },
                                },
                                ["distance", "temp", "humid"],
                            ],
                            [
                                "cat",
                                {
                                    "class": "sklearn.preprocessing.OneHotEncoder",
                                    "params": {"handle_unknown": "ignore"},
                                },
                                ["carrier", "origin"],
                            ],
                        ]
                    },
                },
            ],
            ["model", {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 300}}],
        ]
    },
}


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return get_spec("flight_delay")


def month_features(spec: ModelSpec, month: str) -> pd.DataFrame:
    stored = {
        t: sources.conform(t, sources.with_timestamps(sources.load_month(t, month)), month).to_pandas()
        for t in sources.TABLES
    }
    return sources.build_features(stored["flights"], stored["weather"], spec, month)


@pytest.fixture(scope="module")
def frames(spec: ModelSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    return month_features(spec, "2013-01-01"), month_features(spec, "2013-02-01")


def with_estimator(spec: ModelSpec, cls: str, params: dict) -> ModelSpec:
    data = spec.model_dump(by_alias=True)
    data["estimator"] = {"class": cls, "params": params}
    return ModelSpec.model_validate(data)


@pytest.mark.slow
def test_fit_is_byte_reproducible_whatever_the_row_order(spec, frames) -> None:  # type: ignore[no-untyped-def]
    train, _ = frames
    a = training.fit(train, spec)
    b = training.fit(train.sample(frac=1, random_state=7), spec)
    assert flavors.expected_digest(a.model) == flavors.expected_digest(b.model)
    assert a.rows == train["delayed"].notna().sum()
    assert a.signature["inputs"][0] == {"name": "month_of_year", "type": "int"}
    assert a.signature["outputs"]["classes"] == [0, 1]


def test_model_learns_something_real(spec, frames) -> None:  # type: ignore[no-untyped-def]
    train, holdout = frames
    model = training.fit(train, spec).model
    rows = training.labelled(holdout, spec)
    scores = tasks.predict(model, training.model_input(rows, spec), spec).score
    auc = roc_auc_score(rows["delayed"].astype(int), scores)
    assert 0.62 < auc < 0.9


@pytest.mark.slow
@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_declared_estimator_fits_and_round_trips_in_its_flavor(spec, frames, estimator: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    small = with_estimator(spec, estimator, ESTIMATORS[estimator])
    a = training.fit(frames[0].head(3000), small)
    b = training.fit(frames[0].head(3000), small)
    assert flavors.expected_digest(a.model) == flavors.expected_digest(b.model)  # identical training, identical bytes
    flavors.save(a.model, tmp_path / "m")
    loaded = flavors.load(tmp_path / "m")
    X = training.model_input(frames[1].head(50), small)
    assert np.allclose(a.model.predict_proba(X), loaded.predict_proba(X))


def test_a_declared_parameter_the_class_lacks_is_refused(spec) -> None:  # type: ignore[no-untyped-def]
    bad = with_estimator(spec, "sklearn.linear_model.LogisticRegression", {"alpha": 1.0})
    with pytest.raises(UsageError, match="LogisticRegression has no parameter"):
        training.pipeline(bad)


@pytest.mark.slow  # fits the built-in model on a month of flights and measures its latency
def test_evaluation_metrics_and_gate_messages(spec, frames) -> None:  # type: ignore[no-untyped-def]
    train, holdout = frames
    model = training.fit(train, spec).model
    result = ev.evaluate(model, holdout, spec)
    rows = training.labelled(holdout, spec)
    assert result.rows == len(rows) and result.positives == int(rows["delayed"].sum())
    assert result.metrics["roc_auc"] == pytest.approx(
        roc_auc_score(rows["delayed"].astype(int), tasks.predict(model, training.model_input(rows, spec), spec).score)
    )
    # slices: every categorical feature with at most 30 values (dest has more)
    assert set(result.slices) == {"carrier", "origin"} and set(result.slices["origin"]) == {"EWR", "JFK", "LGA"}
    assert set(result.slices["origin"]["JFK"]) == {"rows", "roc_auc", "f1", "positive_rate"}
    assert any(n.startswith("dest is not sliced") for n in result.notes)
    assert sum(r["rows"] for r in result.calibration) == result.rows
    assert 0 < result.latency_ms["single_p99"] <= result.latency_ms["single_p99_wall"] * 1.1
    assert result.latency_ms["batch_p99_per_1k"] > 0 and result.latency_measurements == 1
    assert ev.meets_thresholds(result, spec).passed and ev.latency_within_sla(result, spec).passed

    strict = spec.model_copy(
        update={
            "gates": spec.gates.model_copy(
                update={
                    "thresholds": {"roc_auc": spec.gates.thresholds["roc_auc"].model_copy(update={"min": 0.99})},
                    "latency_sla_ms": {"single_p99": 0.0001},
                }
            )
        }
    )
    gate = ev.meets_thresholds(result, strict)
    assert not gate.passed and gate.message.startswith("below the spec's thresholds: roc_auc = 0.")
    assert "needs >= 0.99" in gate.message
    slow = ev.latency_within_sla(result, strict)
    assert not slow.passed and "single_p99 =" in slow.message and " ms CPU (wall " in slow.message
    assert "> SLA 0.0001 ms after 1 measurement" in slow.message

    worse = ev.Evaluation({**result.metrics, "roc_auc": result.metrics["roc_auc"] - 0.05}, {}, {}, [], 1, 1)
    reg = ev.no_regression(worse, result, spec, "champion v1")
    assert not reg.passed and "regresses against champion v1: roc_auc" in reg.message
    assert ev.no_regression(result, worse, spec).passed
    assert ev.no_regression(result, None, spec).message.startswith("no champion yet")


def _register(reg: Registry, tmp: Path, n: int) -> int:
    path = tmp / f"m{n}.bin"
    path.write_bytes(f"model {n}".encode())
    mv = reg.register("flight_delay", path)
    reg.transition(mv.ref, "staging", reason="test")
    return mv.version


@pytest.mark.slow
def test_deployment_actions(tmp_path: Path, spec) -> None:  # type: ignore[no-untyped-def]
    reg = Registry.open(tmp_path / "root", actor="tester")
    reg.register("flight_delay", _blob(tmp_path))  # v1 stays in development: not deployable
    with pytest.raises(PolicyError, match="no version in staging"):
        dep.apply(reg, spec, "deploy")
    v2 = _register(reg, tmp_path, 2)
    first = dep.apply(reg, spec, "deploy", reason="first")
    assert first.after == dep.Manifest("flight_delay", v2) and "straight to production" in first.message
    assert reg.resolve("models:/flight_delay@champion").version == v2
    assert not dep.apply(reg, spec, "deploy", version=v2).changed

    v3 = _register(reg, tmp_path, 3)
    canary = dep.apply(reg, spec, "deploy")
    assert canary.after == dep.Manifest("flight_delay", v2, v3, 0.1)
    assert reg.resolve("models:/flight_delay@canary").version == v3
    assert dep.apply(reg, spec, "advance").after.canary_weight == 0.5
    promoted = dep.apply(reg, spec, "advance")  # past the last step
    assert promoted.after == dep.Manifest("flight_delay", v3) and promoted.action == "promote"
    assert reg.get("flight_delay", v2).stage == "archived"

    v4 = _register(reg, tmp_path, 4)
    dep.apply(reg, spec, "deploy")
    aborted = dep.apply(reg, spec, "rollback", reason="canary errors")
    assert aborted.after == dep.Manifest("flight_delay", v3) and reg.get("flight_delay", v4).stage == "archived"

    v5 = _register(reg, tmp_path, 5)
    assert dep.apply(reg, spec, "shadow_on").after.shadow == v5
    back = dep.apply(reg, spec, "rollback", reason="bad production")
    assert back.after.production == v2 and dep.current(reg, "flight_delay").shadow == v5
    assert dep.apply(reg, spec, "shadow_off").after.shadow is None

    history = dep.history(reg, "flight_delay")
    assert [h["action"] for h in history] == [
        "deploy",
        "deploy",
        "advance",
        "promote",
        "deploy",
        "rollback",
        "shadow_on",
        "rollback",
        "shadow_off",
    ]
    assert history[-1]["manifest"] == {
        "model": "flight_delay",
        "production": v2,
        "canary": None,
        "canary_weight": 0.0,
        "shadow": None,
    }
    assert all(h["actor"] == "tester" for h in history)


def _blob(tmp: Path) -> Path:
    path = tmp / "m1.bin"
    path.write_bytes(b"model 1")
    return path
