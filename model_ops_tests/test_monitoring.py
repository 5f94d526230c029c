"""The loop's rules on their own: canary analysis, the failure counter, retraining on persistent drift, the
production guard, live performance per arm and task, drift inputs per task and attachments (retention:
test_retention.py). No Dagster here."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression

from model_ops.ml import drift, tasks
from model_ops.ml import monitoring as mon
from model_ops.ml.training import model_input
from model_ops.ops import deployment as dep
from model_ops.specs import load_specs
from model_ops.specs.schema import LIVE_METRICS
from model_ops.vocab import ArmStatus, CanaryPhase, DecisionAction, Task
from model_ops_tests.test_tasks import diabetes, fit, make_spec, wine

SPEC = next(s for s in load_specs() if s.name == "flight_delay")
MONTHS = [f"{y}-{m:02d}-01" for y in (2013, 2014) for m in range(1, 13)]  # monthly partition keys


def arm(arm_name: str, version: int, labelled: int = 3000, **metrics: float) -> mon.ArmPerformance:
    return mon.ArmPerformance(
        "2013-07-01",
        arm_name,
        version,
        labelled,
        labelled,
        metrics or {"roc_auc": 0.70, "log_loss": 0.55},
        ArmStatus.OK,
        "",
    )


# ------------------------------------------------------------------------------------------ canary analysis


def test_a_canary_as_good_as_production_is_successful() -> None:
    w = mon.analyse_canary("2013-07-01", arm("production", 1), arm("canary", 2, roc_auc=0.69, log_loss=0.56), SPEC)
    assert w is not None and w.phase == CanaryPhase.SUCCESSFUL
    assert {c["metric"] for c in w.checks} == {"roc_auc", "log_loss"}


def test_a_canary_worse_beyond_tolerance_fails_and_says_by_how_much() -> None:
    w = mon.analyse_canary("2013-07-01", arm("production", 1), arm("canary", 2, roc_auc=0.60, log_loss=0.56), SPEC)
    assert w is not None and w.phase == CanaryPhase.FAILED
    assert "roc_auc by 0.1000 > 0.02" in w.message


def test_lower_is_better_metrics_count_the_right_way() -> None:
    w = mon.analyse_canary("2013-07-01", arm("production", 1), arm("canary", 2, roc_auc=0.70, log_loss=0.60), SPEC)
    assert w is not None and w.phase == CanaryPhase.FAILED and "log_loss" in w.message
    better = mon.analyse_canary("2013-07-01", arm("production", 1), arm("canary", 2, roc_auc=0.75, log_loss=0.40), SPEC)
    assert better is not None and better.phase == CanaryPhase.SUCCESSFUL


def test_a_regression_canary_is_judged_on_its_tasks_metrics() -> None:
    assert make_spec(Task.REGRESSION, diabetes()).canary_metrics == {"r2": 0.02}  # scale-free by default
    spec = make_spec(
        Task.REGRESSION, diabetes(), deployment={"analysis": {"max_regression": {"rmse": 0.0, "r2": 0.02}}}
    )
    assert spec.canary_metrics == {"rmse": 0.0, "r2": 0.02}
    prod = arm("production", 1, rmse=55.0, r2=0.45)
    worse = mon.analyse_canary("2024-01-01", prod, arm("canary", 2, rmse=56.0, r2=0.44), spec)
    assert worse is not None and worse.phase == CanaryPhase.FAILED and "rmse by 1.0000 > 0.0" in worse.message
    better = mon.analyse_canary("2024-01-01", prod, arm("canary", 2, rmse=50.0, r2=0.50), spec)
    assert better is not None and better.phase == CanaryPhase.SUCCESSFUL
    assert {c["metric"]: c["lower_is_better"] for c in better.checks} == {"rmse": True, "r2": False}


@pytest.mark.parametrize("labelled_canary, labelled_prod", [(10, 3000), (3000, 10), (0, 0)])
def test_too_little_data_is_inconclusive_never_failed(labelled_canary: int, labelled_prod: int) -> None:
    bad = arm("canary", 2, labelled=labelled_canary, roc_auc=0.3, log_loss=2.0)
    w = mon.analyse_canary("2013-07-01", arm("production", 1, labelled=labelled_prod), bad, SPEC)
    assert w is not None and w.phase == CanaryPhase.INCONCLUSIVE and "too little data" in w.message


def test_no_canary_no_measurement() -> None:
    assert mon.analyse_canary("2013-07-01", arm("production", 1), None, SPEC) is None


# ------------------------------------------------------------------------------------------ failure counter


def m(window: str, phase: str, current: bool = True) -> dict:
    return {"window": window, "phase": phase, "message": f"{phase} in {window}", "at_current_weight": current}


def test_rollback_only_when_failures_exceed_the_limit() -> None:
    assert SPEC.deployment.analysis.failure_limit == 1
    one = mon.canary_decision(2, 0.1, [m("2013-07-01", CanaryPhase.FAILED)], SPEC)
    assert one.action == DecisionAction.HOLD and not one.acts
    two = mon.canary_decision(2, 0.1, [m("2013-07-01", CanaryPhase.FAILED), m("2013-08-01", CanaryPhase.FAILED)], SPEC)
    assert two.action == "rollback" and two.version == 2
    assert two.reason.startswith("canary analysis: failed (2) > failure_limit (1)")


def test_failures_are_counted_over_the_whole_canary_not_per_step() -> None:
    history = [
        m("2013-07-01", CanaryPhase.FAILED, current=False),
        m("2013-08-01", CanaryPhase.SUCCESSFUL, current=False),
        m("2013-09-01", CanaryPhase.FAILED),
    ]
    assert mon.canary_decision(2, 0.5, history, SPEC).action == "rollback"


def test_a_remeasured_window_counts_once_with_its_newest_verdict() -> None:
    history = [
        m("2013-07-01", CanaryPhase.FAILED),
        m("2013-07-01", CanaryPhase.FAILED),
        m("2013-07-01", CanaryPhase.SUCCESSFUL),
    ]
    d = mon.canary_decision(2, 0.1, history, SPEC)
    assert d.action == "advance" and d.evidence["failed"] == 0


def test_success_advances_and_the_last_step_promotes() -> None:
    assert mon.canary_decision(2, 0.1, [m("2013-07-01", CanaryPhase.SUCCESSFUL)], SPEC).action == "advance"
    assert (
        mon.canary_decision(
            2, 0.5, [m("2013-07-01", CanaryPhase.SUCCESSFUL, False), m("2013-08-01", CanaryPhase.SUCCESSFUL)], SPEC
        ).action
        == "promote"
    )


def test_windows_are_ordered_by_the_partition_keys_when_given() -> None:
    keys = ["w9", "w10", "w11"]  # keys whose lexical order is not their time order
    history = [
        m("w10", CanaryPhase.FAILED, current=False),
        m("w9", CanaryPhase.SUCCESSFUL, current=False),
        m("w11", CanaryPhase.SUCCESSFUL),
    ]
    d = mon.canary_decision(2, 0.1, history, SPEC, partition_keys=keys)
    assert [w["window"] for w in d.evidence["windows"]] == keys and d.action == "advance" and d.window == "w11"


def test_a_success_at_an_earlier_weight_does_not_advance_again() -> None:
    d = mon.canary_decision(2, 0.5, [m("2013-07-01", CanaryPhase.SUCCESSFUL, current=False)], SPEC)
    assert d.action == DecisionAction.NONE and "waiting" in d.reason


def test_inconclusive_holds_however_many_times() -> None:
    history = [m(f"2013-{k:02d}-01", CanaryPhase.INCONCLUSIVE) for k in range(5, 12)]
    d = mon.canary_decision(2, 0.1, history, SPEC)
    assert d.action == DecisionAction.HOLD and "inconclusive" in d.reason


# ------------------------------------------------------------------------------------------------ retraining


def drift_row(window: str, status: str = "drift", share: float | None = 0.6, version: int = 1) -> dict:
    return {"window": window, "status": status, "drift_share": share, "drifted": "temp,dewp", "model_version": version}


def perf(value: float, status: str = ArmStatus.OK) -> dict:
    return {"status": status, "metrics": {"log_loss": value, "roc_auc": 0.7}}


def retrain(rows: list[dict], performance: dict, baseline: float | None, spec=SPEC, keys=MONTHS):  # type: ignore[no-untyped-def]
    return mon.retrain_decision(rows, performance, baseline, spec, partition_keys=keys)


def test_no_data_never_retrains() -> None:
    assert retrain([], {}, 0.6).action == DecisionAction.NONE


def test_one_drifted_window_is_not_persistent() -> None:
    assert retrain([drift_row("2013-05-01")], {}, 0.6).action == DecisionAction.NONE


def test_a_window_with_too_little_data_breaks_persistence() -> None:
    d = retrain([drift_row("2013-05-01"), drift_row("2013-06-01", "insufficient_data", None)], {}, 0.6)
    assert d.action == DecisionAction.NONE and "too little data" in d.reason


def test_persistent_drift_with_worse_live_performance_retrains() -> None:
    rows = [drift_row("2013-05-01"), drift_row("2013-06-01")]
    d = retrain(rows, {"2013-05-01": perf(0.51), "2013-06-01": perf(0.72)}, 0.61)
    assert d.action == DecisionAction.RETRAIN and d.window == "2013-06-01"
    assert "log_loss in 2013-06-01 0.7200 vs 0.6100" in d.reason
    assert d.evidence["windows"] == ["2013-05-01", "2013-06-01"]


def test_persistent_drift_that_does_not_hurt_does_not_retrain() -> None:
    d = retrain([drift_row("2013-05-01"), drift_row("2013-06-01")], {"2013-06-01": perf(0.60)}, 0.61)
    assert d.action == DecisionAction.NONE and "held up" in d.reason


def test_drift_windows_must_be_consecutive_partitions() -> None:
    d = retrain([drift_row("2013-05-01"), drift_row("2013-07-01")], {}, 0.6)
    assert (
        d.action == DecisionAction.NONE and "not consecutive" in d.reason and "2013-05-01 then 2013-07-01" in d.reason
    )
    assert retrain([drift_row("2013-12-01"), drift_row("2014-01-01")], {}, None).action == DecisionAction.RETRAIN
    assert (
        retrain([drift_row("2013-12-01"), drift_row("2014-01-01")], {}, None, keys=MONTHS[:12]).action
        == DecisionAction.NONE
    )


def test_consecutive_means_neighbouring_partitions_whatever_the_cadence() -> None:
    days = [str(date(2024, 2, 27) + timedelta(days=i)) for i in range(5)]  # across a leap day
    assert (
        retrain([drift_row("2024-02-28"), drift_row("2024-02-29")], {}, None, keys=days).action
        == DecisionAction.RETRAIN
    )
    assert (
        retrain([drift_row("2024-02-29"), drift_row("2024-03-01")], {}, None, keys=days).action
        == DecisionAction.RETRAIN
    )
    assert (
        retrain([drift_row("2024-02-28"), drift_row("2024-03-01")], {}, None, keys=days).action == DecisionAction.NONE
    )


def test_the_performance_metric_follows_the_task() -> None:
    assert make_spec(Task.REGRESSION, diabetes()).monitoring_metric == "r2"  # scale-free by default
    spec = make_spec(Task.REGRESSION, diabetes(), monitoring={"performance_drop": 2.0, "performance_metric": "rmse"})
    assert spec.monitoring_metric == "rmse"
    rows = [drift_row("2013-05-01"), drift_row("2013-06-01")]
    worse = retrain(rows, {"2013-06-01": {"status": ArmStatus.OK, "metrics": {"rmse": 60.0}}}, 55.0, spec)
    assert worse.action == DecisionAction.RETRAIN and "rmse in 2013-06-01 60.0000 vs 55.0000" in worse.reason
    fine = retrain(rows, {"2013-06-01": {"status": ArmStatus.OK, "metrics": {"rmse": 56.0}}}, 55.0, spec)
    assert fine.action == DecisionAction.NONE and "held up" in fine.reason


def test_labels_without_an_evaluation_baseline_say_so() -> None:
    d = retrain([drift_row("2013-05-01"), drift_row("2013-06-01")], {"2013-06-01": perf(0.5)}, None)
    assert d.action == DecisionAction.RETRAIN and "no evaluation log_loss" in d.reason


def test_without_conclusive_labels_drift_alone_decides() -> None:
    rows = [drift_row("2013-05-01"), drift_row("2013-06-01")]
    d = retrain(rows, {"2013-06-01": perf(float("nan"), status="inconclusive")}, 0.61)
    assert d.action == DecisionAction.RETRAIN and "drift alone" in d.reason


# ------------------------------------------------------------------------------------------- production guard


def guard_row(window: str, status: str, reason: str = "roc_auc = 0.5000, needs >= 0.6") -> dict:
    return {"window": window, "status": status, "reason": reason}


def test_the_guard_needs_consecutive_windows_below_the_floor() -> None:
    rows = [
        guard_row("2013-09-01", ArmStatus.BELOW_FLOOR),
        guard_row("2013-10-01", ArmStatus.OK),
        guard_row("2013-11-01", ArmStatus.BELOW_FLOOR),
    ]
    assert mon.guard_decision(3, rows, 2, SPEC).action == DecisionAction.NONE
    rows.append(guard_row("2013-12-01", ArmStatus.BELOW_FLOOR))
    d = mon.guard_decision(3, rows, 2, SPEC)
    assert d.action == "rollback_production" and d.version == 2 and "back to v2" in d.reason
    assert d.evidence["floor"] == {"roc_auc": ">= 0.6", "log_loss": "<= 0.75"}


def test_the_guard_never_acts_on_too_little_data() -> None:
    rows = [guard_row(f"2013-{k:02d}-01", "inconclusive", "12 labelled") for k in range(5, 13)]
    assert mon.guard_decision(3, rows, 2, SPEC).action == DecisionAction.NONE
    assert mon.guard_decision(3, [], 2, SPEC).action == DecisionAction.NONE


def test_the_guard_holds_when_there_is_nothing_to_roll_back_to() -> None:
    rows = [guard_row("2013-11-01", ArmStatus.BELOW_FLOOR), guard_row("2013-12-01", ArmStatus.BELOW_FLOOR)]
    d = mon.guard_decision(1, rows, None, SPEC)
    assert d.action == DecisionAction.HOLD and not d.acts


# ------------------------------------------------------------------------------------------ live performance


def test_arm_performance_joins_labels_reports_coverage_and_ignores_shadow() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    ids = [f"f{i}" for i in range(n)]
    y = rng.integers(0, 2, n)
    scores = np.clip(y * 0.3 + rng.random(n) * 0.7, 0, 1)
    log = pd.DataFrame(
        {
            "flight_id": ids,
            "arm": ["production"] * 1400 + ["canary"] * 600,
            "model_version": [1] * 1400 + [2] * 600,
            "served": True,
            "score": scores,
            "prediction": (scores >= SPEC.threshold).astype("int64"),
        }
    )
    shadow = log.assign(arm="shadow", model_version=3, served=False)
    labels = pd.Series(np.where(np.arange(n) % 10 == 0, np.nan, y), index=ids, dtype="float64")
    arms = {a.arm: a for a in mon.arm_performance("2013-07-01", pd.concat([log, shadow]), labels, SPEC)}
    assert set(arms) == {"production", "canary"}
    assert arms["production"].coverage == pytest.approx(0.9, abs=0.01)
    assert arms["production"].status == ArmStatus.OK and arms["production"].metrics["roc_auc"] > 0.6
    assert set(arms["production"].metrics) == LIVE_METRICS[Task.BINARY]
    assert arms["canary"].labelled == 540 and arms["canary"].status == ArmStatus.OK
    assert arms["canary"].to_dict()["status"] == "ok"


def test_too_few_labels_are_inconclusive_without_metrics() -> None:
    log = pd.DataFrame(
        {
            "flight_id": ["a", "b", "c"],
            "arm": "production",
            "model_version": 1,
            "served": True,
            "score": [0.1, 0.9, 0.5],
            "prediction": [0, 1, 1],
        }
    )
    (a,) = mon.arm_performance("2013-07-01", log, pd.Series([0.0, 1.0, 1.0], index=["a", "b", "c"]), SPEC)
    assert a.status == ArmStatus.INCONCLUSIVE and a.metrics == {} and "min_labels" in a.reason


def test_the_floor_reports_each_violation_in_the_bounds_words() -> None:
    broken = mon.below_floor({"roc_auc": 0.55, "log_loss": 0.8}, SPEC.monitoring.performance_floor)
    assert broken == ["roc_auc = 0.5500, needs >= 0.6", "log_loss = 0.8000, needs <= 0.75"]
    assert mon.below_floor({"roc_auc": float("nan")}, SPEC.monitoring.performance_floor) == []  # no evidence


def served_log(frame: pd.DataFrame, spec, model, canary_every: int = 3) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """A prediction log of ``frame`` as the predictions asset writes it: every ``canary_every``-th row to v2."""
    p = tasks.predict(model, model_input(frame, spec), spec)
    canary = np.arange(len(frame)) % canary_every == 0
    return p.frame().assign(
        id=frame["id"].to_numpy(),
        arm=np.where(canary, "canary", "production"),
        model_version=np.where(canary, 2, 1),
        served=True,
        **{c: frame[c].to_numpy() for c in spec.feature_names},
    )


def test_multiclass_live_performance_scores_served_rows_like_the_holdout() -> None:
    df = wine()
    spec = make_spec(Task.MULTICLASS, df, monitoring={"min_labels": 40})
    model = fit(df, spec)
    log = pa.Table.from_pandas(served_log(df, spec, model)).to_pandas()  # through Arrow, as a Delta log is read
    labels = df.set_index("id")["target"]
    arms = {a.arm: a for a in mon.arm_performance("2024-01-01", log, labels, spec)}
    assert set(arms["production"].metrics) == LIVE_METRICS[Task.MULTICLASS] == {"accuracy", "f1_macro", "log_loss"}
    prod = df[np.arange(len(df)) % 3 != 0]
    expected = tasks.quality(prod["target"].to_numpy(), tasks.predict(model, model_input(prod, spec), spec), spec)
    for k, v in arms["production"].metrics.items():
        assert v == pytest.approx(expected[k]), k
    one_class = {a.arm: a for a in mon.arm_performance("2024-01-01", log, labels.where(labels == 1), spec)}
    assert one_class["production"].labelled >= 40 and one_class["production"].metrics == {}
    assert one_class["production"].status == ArmStatus.INCONCLUSIVE and "one class" in one_class["production"].reason


def test_regression_live_performance_and_the_floor_on_production_only() -> None:
    df = diabetes()
    spec = make_spec(Task.REGRESSION, df, monitoring={"min_labels": 100, "performance_floor": {"rmse": {"max": 40}}})
    model = fit(df, spec)
    log = served_log(df, spec, model)
    labels = pd.Series(df["target"].to_numpy(), index=df["id"].astype(str))  # label keys as strings, log keys ints
    arms = {a.arm: a for a in mon.arm_performance("2024-01-01", log, labels, spec)}
    prod, canary = arms["production"], arms["canary"]
    assert prod.labelled == prod.served == 294 and set(prod.metrics) == {"rmse", "mae", "r2", "mape"}
    assert prod.status == ArmStatus.BELOW_FLOOR and prod.reason.startswith("rmse = 5") and "needs <= 40" in prod.reason
    assert canary.status == ArmStatus.OK  # the floor guards production


# --------------------------------------------------------------------------------------------- drift inputs


def test_a_profile_with_columns_the_spec_no_longer_monitors_is_still_usable() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"temp": rng.normal(50, 10, 5000), "month_of_year": rng.integers(1, 4, 5000).astype(float)})
    table = pa.Table.from_pandas(frame, preserve_index=False).append_column(
        mon.SCORE_COLUMN, pa.array(rng.random(5000))
    )
    reference = drift.profile(table)  # profiled when month_of_year was still monitored
    current = table.drop_columns(["month_of_year"])  # the spec now excludes it
    window = mon.compare_window(reference, current, SPEC)
    assert [f.feature for f in window.report.features] == ["temp"] and not window.report.dataset_drift
    assert window.prediction is not None and window.prediction.feature == mon.SCORE_COLUMN
    assert not window.prediction_drift and [p.feature for p in window.predictions] == [mon.SCORE_COLUMN]


def test_multiclass_drift_watches_predicted_class_shares_and_probabilities() -> None:
    df = wine()
    spec = make_spec(Task.MULTICLASS, df, monitoring={"drift_window_min_rows": 50})
    model = fit(df, spec)
    reference = mon.reference_profile(df, model, spec)
    outputs = [c for c in reference.columns if mon.is_prediction_column(c)]
    assert outputs == ["prediction_class", "prediction_proba_0", "prediction_proba_1", "prediction_proba_2"]
    assert isinstance(reference.columns["prediction_class"], drift.CategoricalProfile)
    same = mon.compare_window(reference, mon.log_drift_table(served_log(df, spec, model), spec), spec)
    assert not same.prediction_drift and same.report.status == "no_drift"
    mostly_class_0 = pd.concat([df[df["target"] == 0]] * 3 + [df.head(10)])
    shifted = mon.compare_window(reference, mon.log_drift_table(served_log(mostly_class_0, spec, model), spec), spec)
    assert shifted.prediction is not None and shifted.prediction.feature == "prediction_class"
    assert shifted.prediction.drift and shifted.prediction_drift
    assert {p.feature for p in shifted.predictions if p.drift} >= {"prediction_class", "prediction_proba_0"}
    assert shifted.to_dict()["prediction_drift"] is True


def test_regression_drift_watches_the_predicted_value() -> None:
    df = diabetes()
    spec = make_spec(Task.REGRESSION, df, monitoring={"drift_window_min_rows": 50})
    model = fit(df, spec)
    table = mon.drift_table(df, tasks.predict(model, model_input(df, spec), spec), spec)
    assert table.column(mon.SCORE_COLUMN).to_pylist() == pytest.approx(model.predict(model_input(df, spec)).tolist())
    reference = mon.reference_profile(df, model, spec)
    high = df[df["bmi"] > df["bmi"].quantile(0.6)]
    window = mon.compare_window(reference, mon.log_drift_table(served_log(high, spec, model), spec), spec)
    assert window.prediction is not None and window.prediction.drift and window.report.status == "drift"


@pytest.mark.slow
def test_a_reference_profile_is_built_once_for_a_version_registered_without_one(reg) -> None:  # type: ignore[no-untyped-def]
    df = wine()
    spec = make_spec(Task.MULTICLASS, df)
    mv = reg.register_model(spec.name, fit(df, spec))
    asked = []

    def rows(version):  # type: ignore[no-untyped-def]
        asked.append(version.version)
        return df

    built, fresh = mon.reference_profile_for(reg, spec, mv.version, rows, source="the test frame")
    assert fresh and built.rows == len(df) and asked == [mv.version]
    again, fresh_again = mon.reference_profile_for(reg, spec, mv.version, rows)
    assert not fresh_again and again.to_json() == built.to_json() and asked == [mv.version]
    assert "the test frame" in reg.audit(spec.name)[-1].reason


# ----------------------------------------------------------------------------- registry: attachments, rollback


def tiny_model(seed: int) -> LogisticRegression:
    rng = np.random.default_rng(seed)
    x = rng.random((50, 3))
    return LogisticRegression().fit(x, (x[:, 0] + rng.random(50) * 0.1 > 0.5).astype(int))


@pytest.mark.slow
def test_attachments_are_verified_kept_by_gc_and_deduplicated(reg) -> None:  # type: ignore[no-untyped-def]
    mv = reg.register_model("m", tiny_model(0))
    first = reg.attach("m", mv.version, "reference_profile", b'{"rows": 1}')
    again = reg.attach("m", mv.version, "reference_profile", b'{"rows": 1}')
    assert again.seq == first.seq
    assert reg.attachment("m", mv.version, "reference_profile") == b'{"rows": 1}'
    assert reg.attachment("m", mv.version, "other") is None
    report = reg.gc(apply=True, grace=timedelta(0))
    assert report["unreferenced"] == []
    assert reg.attachment("m", mv.version, "reference_profile") == b'{"rows": 1}'
    assert reg.fsck() == []


def test_rolling_back_the_canary_by_its_version_never_promotes_it(reg) -> None:  # type: ignore[no-untyped-def]
    for seed in (0, 1):
        mv = reg.register_model("flight_delay", tiny_model(seed))
        reg.transition(mv.ref, "staging", reason="test")
    dep.apply(reg, SPEC, "deploy", version=1)
    dep.apply(reg, SPEC, "deploy", version=2)
    change = dep.apply(reg, SPEC, "rollback", version=2, reason="canary failed")
    assert change.after.production == 1 and change.after.canary is None
    assert reg.get("flight_delay", 2).stage == "archived"
    assert dep.previous_production(reg, "flight_delay") is None


def test_a_deployment_change_names_the_version_it_was_about() -> None:
    m = dep.Manifest

    def about(before: dep.Manifest, after: dep.Manifest) -> int | None:
        return dep.Change("x", before, after, "", before != after).version

    assert about(m("f", None), m("f", 1)) == 1  # first deployment
    assert about(m("f", 1), m("f", 1, 2, 0.1)) == 2  # canary started
    assert about(m("f", 1, 2, 0.1), m("f", 1, 2, 0.5)) == 2  # canary advanced
    assert about(m("f", 1, 2, 0.5), m("f", 2)) == 2  # promoted
    assert about(m("f", 1, 2, 0.1), m("f", 1)) == 2  # canary aborted
    assert about(m("f", 2), m("f", 1)) == 1  # production rolled back to v1
    assert about(m("f", 1), m("f", 1, shadow=3)) == 3 and about(m("f", 1, shadow=3), m("f", 1)) == 3
    assert about(m("f", 1), m("f", 1)) is None
