"""The loop's rules on their own: canary analysis, the failure counter, retraining on persistent drift, the
production guard, live performance per arm, retention and attachments. No Dagster here."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression

from model_ops.ops import deployment as dep
from model_ops.ml import monitoring as mon
from model_ops.ops import retention
from model_ops.specs import load_specs

SPEC = next(s for s in load_specs() if s.name == "flight_delay")


def arm(arm_name: str, version: int, labelled: int = 3000, **metrics: float) -> mon.ArmPerformance:
    return mon.ArmPerformance("2013-07-01", arm_name, version, labelled, labelled,
                              metrics or {"roc_auc": 0.70, "log_loss": 0.55}, mon.OK, "")


# ------------------------------------------------------------------------------------------ canary analysis

def test_a_canary_as_good_as_production_is_successful() -> None:
    w = mon.analyse_canary("2013-07-01", arm("production", 1), arm("canary", 2, roc_auc=0.69, log_loss=0.56), SPEC)
    assert w is not None and w.phase == mon.SUCCESSFUL
    assert {c["metric"] for c in w.checks} == {"roc_auc", "log_loss"}


def test_a_canary_worse_beyond_tolerance_fails_and_says_by_how_much() -> None:
    w = mon.analyse_canary("2013-07-01", arm("production", 1), arm("canary", 2, roc_auc=0.60, log_loss=0.56), SPEC)
    assert w is not None and w.phase == mon.FAILED
    assert "roc_auc by 0.1000 > 0.02" in w.message


def test_lower_is_better_metrics_count_the_right_way() -> None:
    w = mon.analyse_canary("2013-07-01", arm("production", 1), arm("canary", 2, roc_auc=0.70, log_loss=0.60), SPEC)
    assert w is not None and w.phase == mon.FAILED and "log_loss" in w.message
    better = mon.analyse_canary("2013-07-01", arm("production", 1), arm("canary", 2, roc_auc=0.75, log_loss=0.40),
                                SPEC)
    assert better is not None and better.phase == mon.SUCCESSFUL


@pytest.mark.parametrize("labelled_canary, labelled_prod", [(10, 3000), (3000, 10), (0, 0)])
def test_too_little_data_is_inconclusive_never_failed(labelled_canary: int, labelled_prod: int) -> None:
    bad = arm("canary", 2, labelled=labelled_canary, roc_auc=0.3, log_loss=2.0)
    w = mon.analyse_canary("2013-07-01", arm("production", 1, labelled=labelled_prod), bad, SPEC)
    assert w is not None and w.phase == mon.INCONCLUSIVE and "too little data" in w.message


def test_no_canary_no_measurement() -> None:
    assert mon.analyse_canary("2013-07-01", arm("production", 1), None, SPEC) is None


# ------------------------------------------------------------------------------------------ failure counter

def m(window: str, phase: str, current: bool = True) -> dict:
    return {"window": window, "phase": phase, "message": f"{phase} in {window}", "at_current_weight": current}


def test_rollback_only_when_failures_exceed_the_limit() -> None:
    assert SPEC.deployment.analysis.failure_limit == 1
    one = mon.canary_decision(2, 0.1, [m("2013-07", mon.FAILED)], SPEC)
    assert one.action == "hold" and not one.acts
    two = mon.canary_decision(2, 0.1, [m("2013-07", mon.FAILED), m("2013-08", mon.FAILED)], SPEC)
    assert two.action == "rollback" and two.version == 2
    assert two.reason.startswith("canary analysis: failed (2) > failure_limit (1)")


def test_failures_are_counted_over_the_whole_canary_not_per_step() -> None:
    history = [m("2013-07", mon.FAILED, current=False), m("2013-08", mon.SUCCESSFUL, current=False),
               m("2013-09", mon.FAILED)]
    assert mon.canary_decision(2, 0.5, history, SPEC).action == "rollback"


def test_a_remeasured_window_counts_once_with_its_newest_verdict() -> None:
    history = [m("2013-07", mon.FAILED), m("2013-07", mon.FAILED), m("2013-07", mon.SUCCESSFUL)]
    d = mon.canary_decision(2, 0.1, history, SPEC)
    assert d.action == "advance" and d.evidence["failed"] == 0


def test_success_advances_and_the_last_step_promotes() -> None:
    assert mon.canary_decision(2, 0.1, [m("2013-07", mon.SUCCESSFUL)], SPEC).action == "advance"
    assert mon.canary_decision(2, 0.5, [m("2013-07", mon.SUCCESSFUL, False), m("2013-08", mon.SUCCESSFUL)],
                               SPEC).action == "promote"


def test_a_success_at_an_earlier_weight_does_not_advance_again() -> None:
    d = mon.canary_decision(2, 0.5, [m("2013-07", mon.SUCCESSFUL, current=False)], SPEC)
    assert d.action == "none" and "waiting" in d.reason


def test_inconclusive_holds_however_many_times() -> None:
    history = [m(f"2013-{k:02d}", mon.INCONCLUSIVE) for k in range(5, 12)]
    d = mon.canary_decision(2, 0.1, history, SPEC)
    assert d.action == "hold" and "inconclusive" in d.reason


# ------------------------------------------------------------------------------------------------ retraining

def drift_row(window: str, status: str = "drift", share: float | None = 0.6, version: int = 1) -> dict:
    return {"window": window, "status": status, "drift_share": share, "drifted": "temp,dewp", "model_version": version}


def perf(value: float, status: str = mon.OK) -> dict:
    return {"status": status, "metrics": {"log_loss": value, "roc_auc": 0.7}}


def test_no_data_never_retrains() -> None:
    assert mon.retrain_decision([], {}, 0.6, SPEC).action == "none"


def test_one_drifted_window_is_not_persistent() -> None:
    d = mon.retrain_decision([drift_row("2013-05")], {}, 0.6, SPEC)
    assert d.action == "none"


def test_a_window_with_too_little_data_breaks_persistence() -> None:
    rows = [drift_row("2013-05"), drift_row("2013-06", "insufficient_data", None)]
    d = mon.retrain_decision(rows, {}, 0.6, SPEC)
    assert d.action == "none" and "too little data" in d.reason


def test_persistent_drift_with_worse_live_performance_retrains() -> None:
    rows = [drift_row("2013-05"), drift_row("2013-06")]
    d = mon.retrain_decision(rows, {"2013-05": perf(0.51), "2013-06": perf(0.72)}, 0.61, SPEC)
    assert d.action == "retrain" and d.window == "2013-06"
    assert "log_loss in 2013-06 0.7200 vs 0.6100" in d.reason
    assert d.evidence["windows"] == ["2013-05", "2013-06"]


def test_persistent_drift_that_does_not_hurt_does_not_retrain() -> None:
    rows = [drift_row("2013-05"), drift_row("2013-06")]
    d = mon.retrain_decision(rows, {"2013-06": perf(0.60)}, 0.61, SPEC)
    assert d.action == "none" and "held up" in d.reason


def test_drift_windows_must_be_consecutive_months() -> None:
    d = mon.retrain_decision([drift_row("2013-05-01"), drift_row("2013-07-01")], {}, 0.6, SPEC)
    assert d.action == "none" and "not consecutive" in d.reason
    across_years = mon.retrain_decision([drift_row("2013-12-01"), drift_row("2014-01-01")], {}, None, SPEC)
    assert across_years.action == "retrain"


def test_labels_without_an_evaluation_baseline_say_so() -> None:
    rows = [drift_row("2013-05"), drift_row("2013-06")]
    d = mon.retrain_decision(rows, {"2013-06": perf(0.5)}, None, SPEC)
    assert d.action == "retrain" and "no evaluation log_loss" in d.reason


def test_without_conclusive_labels_drift_alone_decides() -> None:
    rows = [drift_row("2013-05"), drift_row("2013-06")]
    d = mon.retrain_decision(rows, {"2013-06": perf(float("nan"), status="inconclusive")}, 0.61, SPEC)
    assert d.action == "retrain" and "drift alone" in d.reason


# ------------------------------------------------------------------------------------------- production guard

def guard_row(window: str, status: str, reason: str = "roc_auc 0.5 < floor 0.6") -> dict:
    return {"window": window, "status": status, "reason": reason}


def test_the_guard_needs_consecutive_windows_below_the_floor() -> None:
    rows = [guard_row("2013-09", mon.BELOW_FLOOR), guard_row("2013-10", mon.OK), guard_row("2013-11", mon.BELOW_FLOOR)]
    assert mon.guard_decision(3, rows, 2, SPEC).action == "none"
    rows.append(guard_row("2013-12", mon.BELOW_FLOOR))
    d = mon.guard_decision(3, rows, 2, SPEC)
    assert d.action == "rollback_production" and d.version == 2 and "back to v2" in d.reason


def test_the_guard_never_acts_on_too_little_data() -> None:
    rows = [guard_row(f"2013-{k:02d}", "inconclusive", "12 labelled") for k in range(5, 13)]
    assert mon.guard_decision(3, rows, 2, SPEC).action == "none"
    assert mon.guard_decision(3, [], 2, SPEC).action == "none"


def test_the_guard_holds_when_there_is_nothing_to_roll_back_to() -> None:
    rows = [guard_row("2013-11", mon.BELOW_FLOOR), guard_row("2013-12", mon.BELOW_FLOOR)]
    d = mon.guard_decision(1, rows, None, SPEC)
    assert d.action == "hold" and not d.acts


# ------------------------------------------------------------------------------------------ live performance

def test_arm_performance_joins_labels_reports_coverage_and_ignores_shadow() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    ids = [f"f{i}" for i in range(n)]
    y = rng.integers(0, 2, n)
    scores = np.clip(y * 0.3 + rng.random(n) * 0.7, 0, 1)
    log = pd.DataFrame({"flight_id": ids, "arm": ["production"] * 1400 + ["canary"] * 600, "model_version":
                        [1] * 1400 + [2] * 600, "served": True, "score": scores})
    shadow = log.assign(arm="shadow", model_version=3, served=False)
    labels = pd.Series(np.where(np.arange(n) % 10 == 0, np.nan, y), index=ids, dtype="float64")
    arms = {a.arm: a for a in mon.arm_performance("2013-07-01", pd.concat([log, shadow]), labels, SPEC)}
    assert set(arms) == {"production", "canary"}
    assert arms["production"].coverage == pytest.approx(0.9, abs=0.01)
    assert arms["production"].status == mon.OK and arms["production"].metrics["roc_auc"] > 0.6
    assert arms["canary"].labelled == 540 and arms["canary"].status == mon.OK


def test_too_few_labels_are_inconclusive_without_metrics() -> None:
    log = pd.DataFrame({"flight_id": ["a", "b", "c"], "arm": "production", "model_version": 1, "served": True,
                        "score": [0.1, 0.9, 0.5]})
    (a,) = mon.arm_performance("2013-07-01", log, pd.Series([0.0, 1.0, 1.0], index=["a", "b", "c"]), SPEC)
    assert a.status == "inconclusive" and a.metrics == {} and "min_labels" in a.reason


def test_the_floor_reports_each_violation() -> None:
    broken = mon.below_floor({"roc_auc": 0.55, "log_loss": 0.8}, SPEC.monitoring.performance_floor)
    assert broken == ["roc_auc 0.5500 < floor 0.6", "log_loss 0.8000 > ceiling 0.75"]
    assert mon.below_floor({"roc_auc": float("nan")}, SPEC.monitoring.performance_floor) == []


def test_a_profile_with_columns_the_spec_no_longer_monitors_is_still_usable() -> None:
    from model_ops.ml import drift

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"temp": rng.normal(50, 10, 5000), "month_of_year": rng.integers(1, 4, 5000).astype(float)})
    table = pa.Table.from_pandas(frame, preserve_index=False).append_column(
        mon.SCORE_COLUMN, pa.array(rng.random(5000)))
    reference = drift.profile(table)                      # profiled when month_of_year was still monitored
    current = table.drop_columns(["month_of_year"])       # the spec now excludes it
    report, prediction = mon.compare_window(reference, current, SPEC)
    assert [f.feature for f in report.features] == ["temp"] and not report.dataset_drift
    assert prediction.feature == mon.SCORE_COLUMN and not prediction.drift


def test_retention_on_a_model_never_registered_is_empty(reg) -> None:  # type: ignore[no-untyped-def]
    plan = retention.plan(reg, SPEC)
    assert plan.archive == {} and plan.kept == {}


# ----------------------------------------------------------------------------- registry: attachments, rollback

def tiny_model(seed: int) -> LogisticRegression:
    rng = np.random.default_rng(seed)
    x = rng.random((50, 3))
    return LogisticRegression().fit(x, (x[:, 0] + rng.random(50) * 0.1 > 0.5).astype(int))


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


# ----------------------------------------------------------------------------------------------- retention

def test_retention_archives_only_stale_unreferenced_staging_versions(reg) -> None:  # type: ignore[no-untyped-def]
    numbers = []
    for seed in range(5):
        mv = reg.register_model("flight_delay", tiny_model(seed))
        numbers.append(mv.version)
    for n in numbers:
        reg.transition(f"models:/flight_delay/{n}", "staging", reason="test")
    dep.apply(reg, SPEC, "deploy", version=1)                 # v1 production
    dep.apply(reg, SPEC, "deploy", version=2)                 # v2 canary
    reg.set_alias("flight_delay", "challenger", 3, reason="kept for comparison")   # v3 aliased
    # 40 days from now every staging version is stale; only the unreferenced ones go
    later = datetime.now(timezone.utc) + timedelta(days=40)
    plan = retention.plan(reg, SPEC, now=later)
    assert set(plan.archive) == {4, 5}
    assert plan.kept[2] == "alias canary" and plan.kept[3].startswith("alias challenger")
    # v4 is the parent of v5 in the registry's lineage: if v5 is kept, v4 must be too
    reg.set_alias("flight_delay", "candidate", 5, reason="keep")
    plan = retention.plan(reg, SPEC, now=later)
    assert 5 in plan.kept and 4 in plan.kept and plan.kept[4] == "parent of retained v5"
    assert retention.plan(reg, SPEC).archive == {}            # nothing is stale today
    reg.remove_alias("flight_delay", "candidate", reason="done")
    done = retention.apply(reg, retention.plan(reg, SPEC, now=later))
    assert done == [4, 5] and reg.get("flight_delay", 5).stage == "archived"
    assert reg.get("flight_delay", 3).stage == "staging" and reg.get("flight_delay", 2).stage == "staging"
