"""The ML layer: reproducible fits, every spec estimator loadable under the allow-list, gates, the deployment
state machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from model_ops.artifacts import sklearn_io
from model_ops.data import features as feat, sources
from model_ops.errors import PolicyError
from model_ops.ml import evaluation as ev, training
from model_ops.ops import deployment as dep
from model_ops.registry import Registry
from model_ops.specs import get_spec
from model_ops.specs.schema import ESTIMATORS, ModelSpec


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return get_spec("flight_delay")


def month_features(spec: ModelSpec, month: str) -> pd.DataFrame:
    stored = {t: feat.conform(t, feat.with_timestamps(sources.load_month(t, month)), month).to_pandas()
              for t in sources.TABLES}
    return feat.build_features(stored["flights"], stored["weather"], spec, month)


@pytest.fixture(scope="module")
def frames(spec: ModelSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    return month_features(spec, "2013-01-01"), month_features(spec, "2013-02-01")


def test_fit_is_byte_reproducible_whatever_the_row_order(spec, frames) -> None:  # type: ignore[no-untyped-def]
    train, _ = frames
    a = training.fit(train, spec)
    b = training.fit(train.sample(frac=1, random_state=7), spec)
    assert sklearn_io.dumps(a.pipeline) == sklearn_io.dumps(b.pipeline)
    assert a.rows == train["delayed"].notna().sum()
    assert a.signature["inputs"][0] == {"name": "month_of_year", "type": "int"}


def test_model_learns_something_real(spec, frames) -> None:  # type: ignore[no-untyped-def]
    train, holdout = frames
    model = training.fit(train, spec).pipeline
    rows = training.labelled(holdout, spec)
    auc = roc_auc_score(rows["delayed"].astype(int), training.predict_scores(model, rows, spec))
    assert 0.62 < auc < 0.9


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_spec_estimator_round_trips_under_the_allow_list(spec, frames, estimator: str) -> None:  # type: ignore[no-untyped-def]
    params = {"max_iter": 20} if "HistGradient" in estimator else {"n_estimators": 3} if "Forest" in estimator \
        or "Trees" in estimator else {"loss": "log_loss"} if "SGD" in estimator else {}
    small = spec.model_copy(update={"estimator": spec.estimator.model_copy(update={"class_": estimator,
                                                                                   "params": params})})
    model = training.fit(frames[0].head(3000), small).pipeline
    loaded = sklearn_io.loads(sklearn_io.dumps(model))
    X = training.model_input(frames[1].head(50), small)
    assert np.allclose(model.predict_proba(X), loaded.predict_proba(X))


def test_evaluation_metrics_and_gate_messages(spec, frames) -> None:  # type: ignore[no-untyped-def]
    train, holdout = frames
    model = training.fit(train, spec).pipeline
    result = ev.evaluate(model, holdout, spec)
    rows = training.labelled(holdout, spec)
    assert result.rows == len(rows)
    assert result.metrics["roc_auc"] == pytest.approx(
        roc_auc_score(rows["delayed"].astype(int), training.predict_scores(model, rows, spec)))
    assert set(result.slices) == {"carrier", "origin"} and set(result.slices["origin"]) == {"EWR", "JFK", "LGA"}
    assert sum(r["rows"] for r in result.calibration) == result.rows
    assert result.latency_ms["single_p99"] > 0 and result.latency_ms["batch_p99_per_1k"] > 0
    assert ev.meets_thresholds(result, spec).passed

    strict = spec.model_copy(update={"gates": spec.gates.model_copy(update={
        "thresholds": {"roc_auc": spec.gates.thresholds["roc_auc"].model_copy(update={"min": 0.99})},
        "latency_sla_ms": {"single_p99": 0.0001}})})
    gate = ev.meets_thresholds(result, strict)
    assert not gate.passed and gate.message.startswith("below the spec's thresholds: roc_auc = 0.")
    assert "needs >= 0.99" in gate.message
    slow = ev.latency_within_sla(result, strict)
    assert not slow.passed and "single_p99 =" in slow.message and "> SLA 0.0001 ms" in slow.message

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
    assert [h["action"] for h in history] == ["deploy", "deploy", "advance", "promote", "deploy", "rollback",
                                              "shadow_on", "rollback", "shadow_off"]
    assert history[-1]["manifest"] == {"model": "flight_delay", "production": v2, "canary": None,
                                       "canary_weight": 0.0, "shadow": None}
    assert all(h["actor"] == "tester" for h in history)


def _blob(tmp: Path) -> Path:
    path = tmp / "m1.bin"
    path.write_bytes(b"model 1")
    return path
