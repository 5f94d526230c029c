"""Holdout evaluation for every task (metrics, slices, calibration, residuals), the promotion gates, and latency
that measures the model rather than the machine's load."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from model_ops.ml import evaluation as ev
from model_ops.ml import tasks
from model_ops.ml.training import model_input
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import Task
from model_ops_tests.test_tasks import cancer, diabetes, make_spec, wine


def fit_with_categories(frame: pd.DataFrame, spec: ModelSpec) -> Any:
    cats = [f.name for f in spec.features if f.type == "category"]
    prep = make_column_transformer((OneHotEncoder(handle_unknown="ignore"), cats), remainder=StandardScaler())
    est = Ridge() if spec.task is Task.REGRESSION else LogisticRegression(max_iter=2000, C=0.05)
    return make_pipeline(prep, est).fit(model_input(frame, spec), frame[spec.label])


def with_gates(spec: ModelSpec, **gates: Any) -> ModelSpec:
    return spec.model_copy(update={"gates": spec.gates.model_validate({**spec.gates.model_dump(), **gates})})


@pytest.fixture(scope="module")
def binary() -> tuple[pd.DataFrame, ModelSpec, Any]:
    df = cancer()
    df["size"] = pd.qcut(df["mean_radius"], 3, labels=["small", "medium", "large"]).astype(str)
    df["ward"] = [f"w{i % 40}" for i in range(len(df))]  # 40 values: too many to slice
    spec = make_spec(
        Task.BINARY,
        df,
        categories=("size", "ward"),
        gates={
            "thresholds": {"roc_auc": {"min": 0.9}, "log_loss": {"max": 0.3}},
            "max_regression": {"roc_auc": 0.01, "log_loss": 0.02},
        },
    )
    return df, spec, fit_with_categories(df, spec)


# ------------------------------------------------------------------------------------------- evaluation per task


def test_binary_evaluation_metrics_slices_and_calibration(binary) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = binary
    holdout = pd.concat([df, df.head(5).assign(target=np.nan)])  # unlabelled rows are not evaluated
    result = ev.evaluate(model, holdout, spec, measure_latency=False)
    p = tasks.predict(model, model_input(df, spec), spec)
    assert result.rows == len(df) and result.task is Task.BINARY and result.positives == int(df["target"].sum())
    assert result.metrics == pytest.approx(tasks.quality(df["target"].to_numpy(), p, spec))
    assert result.class_counts == {"0": 212, "1": 357}
    assert set(result.slices) == {"size"} and set(result.slices["size"]) == {"small", "medium", "large"}
    small = result.slices["size"]["small"]
    assert set(small) == {"rows", "roc_auc", "f1", "positive_rate"} and small["rows"] == (df["size"] == "small").sum()
    assert "ward is not sliced: 40 distinct values > 30" in result.notes
    assert sum(r["rows"] for r in result.calibration) == result.rows and result.residuals == {}
    assert result.latency_ms == {} and result.latency_measurements == 0


def test_a_slice_value_with_too_few_rows_is_left_out(binary) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = binary
    holdout = df[(df["size"] != "large") | (df.index % 10 == 0)]  # ~19 large rows
    result = ev.evaluate(model, holdout, spec, measure_latency=False)
    assert set(result.slices["size"]) == {"small", "medium"}


def test_multiclass_evaluation() -> None:
    df = wine()
    df["cellar"] = np.where(df.index % 2 == 0, "north", "south")
    spec = make_spec(Task.MULTICLASS, df, categories=("cellar",))
    model = fit_with_categories(df, spec)
    result = ev.evaluate(model, df, spec, measure_latency=False, min_slice_rows=50)
    assert {"accuracy", "f1_macro", "f1_weighted", "log_loss", "recall_0", "recall_1", "recall_2"} == set(
        result.metrics
    )
    assert result.calibration == [] and result.residuals == {} and result.positives is None
    assert result.class_counts == {"0": 59, "1": 71, "2": 48}
    assert set(result.slices["cellar"]["north"]) == {"rows", "accuracy", "f1_macro"}


def test_regression_evaluation_residuals_and_an_undefined_mape() -> None:
    df = diabetes()
    df["sex"] = np.where(df["sex"] > 0, "m", "f")
    spec = make_spec(Task.REGRESSION, df, categories=("sex",))
    model = fit_with_categories(df, spec)
    result = ev.evaluate(model, df, spec, measure_latency=False)
    assert {"rmse", "mae", "r2", "mape", "mean_residual"} == set(result.metrics) and not result.notes
    assert result.calibration == [] and result.class_counts == {} and result.positives is None
    r = result.residuals
    assert r["std"] == pytest.approx(result.metrics["rmse"], rel=0.01) and r["p05"] < r["median"] < r["p95"]
    assert set(result.slices["sex"]) == {"f", "m"} and set(result.slices["sex"]["m"]) == {"rows", "rmse", "mae", "r2"}
    zero = ev.evaluate(model, df.assign(target=df["target"].where(df.index != 3, 0.0)), spec, measure_latency=False)
    assert math.isnan(zero.metrics["mape"])
    assert zero.notes == ["mape is not defined: 1 target(s) are 0 (it divides by the target)"]


def test_one_class_in_the_holdout_is_noted_not_fatal(binary) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = binary
    result = ev.evaluate(model, df[df["target"] == 1], spec, measure_latency=False)
    assert math.isnan(result.metrics["roc_auc"]) and any("only one class" in n for n in result.notes)
    gate = ev.meets_thresholds(result, spec)
    assert not gate.passed and "roc_auc is not available, needs >= 0.9" in gate.message


# ---------------------------------------------------------------------------------------------------- gates


def test_threshold_gate_messages_come_from_the_bound(binary) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = binary
    result = ev.evaluate(model, df, spec, measure_latency=False)
    ok = ev.meets_thresholds(result, spec)
    assert ok.passed and ok.message.startswith("meets every threshold: roc_auc = 0.99") and "(>= 0.9)" in ok.message
    strict = with_gates(spec, thresholds={"roc_auc": {"min": 0.9999}, "log_loss": {"max": 0.001}})
    gate = ev.meets_thresholds(result, strict)
    assert not gate.passed and gate.message.startswith("below the spec's thresholds: roc_auc = 0.99")
    assert "needs >= 0.9999" in gate.message and "log_loss = 0." in gate.message and "needs <= 0.001" in gate.message
    assert ev.meets_thresholds(result, with_gates(spec, thresholds={})).message == "the spec sets no metric thresholds"


def test_no_regression_compares_each_metric_in_its_direction(binary) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = binary
    champion = ev.evaluate(model, df, spec, measure_latency=False)
    worse_loss = ev.Evaluation({**champion.metrics, "log_loss": champion.metrics["log_loss"] + 0.05}, {}, {}, [], 1)
    better_loss = ev.Evaluation({**champion.metrics, "log_loss": champion.metrics["log_loss"] - 0.05}, {}, {}, [], 1)
    failed = ev.no_regression(worse_loss, champion, spec, "champion v1")
    assert not failed.passed and failed.message.startswith("regresses against champion v1: log_loss")
    assert "worse by 0.0500, allowed 0.02" in failed.message and failed.details["log_loss"]["lower_is_better"]
    assert ev.no_regression(better_loss, champion, spec).passed
    worse_auc = ev.Evaluation({**champion.metrics, "roc_auc": champion.metrics["roc_auc"] - 0.05}, {}, {}, [], 1)
    assert "roc_auc" in ev.no_regression(worse_auc, champion, spec).message
    missing = ev.Evaluation({**champion.metrics, "roc_auc": float("nan")}, {}, {}, [], 1)
    assert "roc_auc cannot be compared" in ev.no_regression(missing, champion, spec).message
    assert ev.no_regression(champion, None, spec).message.startswith("no champion yet")


def test_regression_gates_go_the_right_way() -> None:
    df = diabetes()
    spec = make_spec(
        Task.REGRESSION,
        df,
        gates={"thresholds": {"r2": {"min": 0.3}, "rmse": {"max": 70}}, "max_regression": {"rmse": 1.0, "r2": 0.01}},
    )
    base = ev.Evaluation({"rmse": 55.0, "r2": 0.45}, {}, {}, [], 1, task=Task.REGRESSION)
    assert ev.meets_thresholds(base, spec).passed
    assert ev.no_regression(ev.Evaluation({"rmse": 54.0, "r2": 0.46}, {}, {}, [], 1), base, spec).passed
    worse = ev.no_regression(ev.Evaluation({"rmse": 57.0, "r2": 0.40}, {}, {}, [], 1), base, spec)
    assert not worse.passed and "rmse 57.0000 vs champion 55.0000 (worse by 2.0000" in worse.message
    assert "r2 0.4000 vs champion 0.4500 (worse by 0.0500" in worse.message


# -------------------------------------------------------------------------------------------------- latency


class Burner:
    """Wraps a model; each call first does a fixed amount of pure-Python work (``loops`` iterations)."""

    def __init__(self, model: Any, loops: int, calls_slow: int | None = None) -> None:
        self.model, self.loops, self.calls_slow, self.calls = model, loops, calls_slow, 0
        self.classes_ = model.classes_

    def _burn(self) -> None:
        self.calls += 1
        if self.calls_slow is None or self.calls <= self.calls_slow:
            total = 0
            for i in range(self.loops):
                total += i

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        self._burn()
        return self.model.predict_proba(X)


def loops_for(ms: float) -> int:
    """Iterations of Burner's loop that cost at least ``ms`` of CPU on this machine: calibrated on the fastest of
    a few runs, so a busy moment during calibration cannot make the burn lighter than asked."""
    n, best = 50_000, math.inf
    for _ in range(5):
        start = time.thread_time_ns()
        total = 0
        for i in range(n):
            total += i
        best = min(best, (time.thread_time_ns() - start) / n)
    return int(ms * 1e6 / best)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer calls per measurement, so a deliberately slow model fails in well under a second."""
    monkeypatch.setattr(ev, "WARMUP_CALLS", 2)
    monkeypatch.setattr(ev, "WARMUP_BATCHES", 1)
    monkeypatch.setattr(ev, "REPETITIONS", 3)
    monkeypatch.setattr(ev, "SINGLE_CALLS", 5)
    monkeypatch.setattr(ev, "BATCH_CALLS", 1)


@pytest.mark.slow
def test_a_model_that_burns_cpu_fails_the_sla_after_re_measuring(binary, quick) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = binary
    slow = Burner(model, loops_for(8))
    strict = with_gates(spec, latency_sla_ms={"single_p99": 4})
    result = ev.evaluate(slow, df, strict)
    assert result.latency_measurements == 1 + ev.REMEASUREMENTS
    gate = ev.latency_within_sla(result, strict)
    assert not gate.passed and gate.message.startswith("too slow: single_p99 = ")
    assert " ms CPU (wall " in gate.message and gate.message.endswith("> SLA 4 ms after 4 measurements")
    assert (
        result.latency_ms["single_p99"] > 4
        and result.latency_ms["single_p99_wall"] >= result.latency_ms["single_p99"] * 0.9
    )
    assert gate.details["single_p99"]["measurements"] == 4


@pytest.mark.slow
def test_a_model_slow_only_at_first_passes_on_re_measurement(binary, quick) -> None:  # type: ignore[no-untyped-def]
    """The first measurement burns 60 ms of CPU per call, far over the 30 ms SLA; later ones do the model's
    own work (a few ms, up to ~15 ms CPU p99 seen on a 2-core machine at a load of ~11). A re-measurement
    rescues it; how many it takes may depend on the load, that the first did not count may not."""
    df, spec, model = binary
    calls_per_measurement = ev.REPETITIONS * (ev.SINGLE_CALLS + ev.BATCH_CALLS)
    first_only = Burner(model, loops_for(60), calls_slow=ev.WARMUP_CALLS + ev.WARMUP_BATCHES + calls_per_measurement)
    strict = with_gates(spec, latency_sla_ms={"single_p99": 30, "batch_p99_per_1k": 200})
    latency = ev.measure_latency_of(first_only, model_input(df, spec), strict)
    assert latency.history[0]["single_p99"] > 30
    assert 2 <= latency.measurements <= 1 + ev.REMEASUREMENTS
    assert latency.figures["single_p99"] == min(h["single_p99"] for h in latency.history[1:]) <= 30
    result = ev.evaluate(Burner(model, loops_for(60), calls_slow=first_only.calls_slow), df, strict)
    gate = ev.latency_within_sla(result, strict)
    assert gate.passed and gate.message.startswith("within the latency SLA: single_p99 = ")
    assert gate.message.endswith(f"({result.latency_measurements} measurements)")
    assert result.latency_measurements >= 2


def test_a_fast_model_is_measured_once(binary, quick) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = binary
    strict = with_gates(spec, latency_sla_ms={"single_p99": 50, "batch_p99_per_1k": 200})
    result = ev.evaluate(model, df, strict)
    assert result.latency_measurements == 1
    assert {
        "single_p50",
        "single_p99",
        "batch_p50_per_1k",
        "batch_p99_per_1k",
        "single_p99_wall",
        "batch_p99_per_1k_wall",
    } <= set(result.latency_ms)
    assert result.flat()["latency_single_p99_ms"] == result.latency_ms["single_p99"]
    assert ev.latency_within_sla(result, strict).passed
    unmeasured = ev.evaluate(model, df, strict, measure_latency=False)
    assert "single_p99 was not measured" in ev.latency_within_sla(unmeasured, strict).message


class Sleeper:
    """A model that waits (like one descheduled on a busy machine) without working."""

    def __init__(self, model: Any) -> None:
        self.model, self.classes_ = model, model.classes_

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        time.sleep(0.03)
        return self.model.predict_proba(X)


@pytest.mark.slow
def test_waiting_is_not_the_models_work_but_is_reported_beside_it(binary, quick) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = binary
    # An SLA just under the 30 ms each call waits: counting the wait as work could never pass it, while the
    # model's own work (a few ms, up to ~15 ms CPU p99 on a 2-core machine at a load of ~11) does.
    strict = with_gates(spec, latency_sla_ms={"single_p99": 28})
    result = ev.evaluate(Sleeper(model), df, strict)
    assert result.latency_ms["single_p99_wall"] >= 30  # it waited 30 ms per call ...
    assert result.latency_ms["single_p99"] <= result.latency_ms["single_p99_wall"] - 25  # ... none of it as work
    assert ev.latency_within_sla(result, strict).passed


class ThreadCounter:
    def __init__(self, model: Any) -> None:
        self.model, self.classes_, self.seen = model, model.classes_, None

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        if self.seen is None:
            from threadpoolctl import threadpool_info

            self.seen = {p["num_threads"] for p in threadpool_info()}
        return self.model.predict_proba(X)


def test_the_measured_work_stays_on_the_calling_thread(binary, quick) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = binary
    counted = ThreadCounter(model)
    ev.measure_latency(counted, model_input(df, spec), Task.BINARY)
    assert counted.seen == {1}


@pytest.mark.slow
def test_a_fast_model_passes_while_cpu_burning_processes_run_beside_it(binary) -> None:  # type: ignore[no-untyped-def]
    """Four busy-looping processes beside it (on 2 cores: a load of 5 to 11 with the machine's own work): the
    wall-clock p99 of this ~1 ms model reached 7-135 ms here, its CPU-time p99 1.1-5.8 ms, and the gate judges
    the CPU time. Measured with the real repetition counts."""
    df, spec, model = binary
    strict = with_gates(spec, latency_sla_ms={"single_p99": 20, "batch_p99_per_1k": 50})
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    try:
        time.sleep(0.3)
        result = ev.evaluate(model, df, strict)
    finally:
        for p in burners:
            p.kill()
        for p in burners:
            p.wait()
    gate = ev.latency_within_sla(result, strict)
    assert gate.passed, gate.message
    assert result.latency_ms["single_p99_wall"] >= result.latency_ms["single_p99"] * 0.9
