"""Live monitoring: what served traffic says about a model, and the decisions the sensors take from it.

Dagster-free so every rule is tested directly. Three rules close the loop, each counting windows (months of
traffic) the way progressive-delivery tools count measurements:

- canary analysis: each window of canary traffic is Successful, Failed or Inconclusive against production in the
  same month (the two arms are disjoint, sticky-hashed shares of the same traffic); failed windows are counted over the whole canary and the canary is rolled back when
  ``failed > failure_limit``; a successful window at the current weight advances it (past the last step:
  promotion); inconclusive holds.
- retraining: dataset drift in the newest ``persistence_windows`` windows in a row, and, where labels exist,
  realized performance worse than at evaluation by more than ``performance_drop``.
- production guard: the production version below the spec's floor for ``guard_windows`` conclusive windows in a
  row (inconclusive windows neither count nor break the run) rolls production back to the previous version.

Too little data is never evidence: a window under the minimum is inconclusive, and inconclusive windows can hold a
canary but never fail it, never start a retrain and never roll production back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from model_ops.ml import drift
from model_ops.ml.evaluation import quality
from model_ops.ops.routing import PRODUCTION
from model_ops.ml.training import labelled, model_input, predict_scores
from model_ops.specs.schema import LOWER_IS_BETTER, Bound, ModelSpec

SCORE_COLUMN = "prediction_score"
PROFILE_LABEL = "reference_profile"
SUCCESSFUL, FAILED, INCONCLUSIVE = "Successful", "Failed", "Inconclusive"
OK, BELOW_FLOOR = "ok", "below_floor"


# ------------------------------------------------------------------------------------------------- drift inputs

def drift_columns(spec: ModelSpec) -> list[str]:
    return [f for f in spec.feature_names if f not in spec.monitoring.drift_exclude]


def drift_table(rows: pd.DataFrame, scores: np.ndarray, spec: ModelSpec) -> pa.Table:
    """The monitored columns of some rows plus the model's score: what a reference profile and a window of
    served traffic are both profiled from, so the two are comparable column by column."""
    x = model_input(rows, spec)[drift_columns(spec)]
    table = pa.Table.from_pandas(x.reset_index(drop=True), preserve_index=False)
    return table.append_column(SCORE_COLUMN, pa.array(np.asarray(scores, dtype="float64")))


def reference_profile(train: pd.DataFrame, model: Any, spec: ModelSpec) -> drift.Profile:
    """The drift reference of a model: its labelled training rows' monitored columns and its scores on them."""
    rows = labelled(train, spec)
    return drift.profile(drift_table(rows, predict_scores(model, rows, spec), spec))


def compare_window(reference: drift.Profile, current: pa.Table, spec: ModelSpec) -> tuple[drift.DriftReport,
                                                                                          drift.FeatureDrift]:
    """Feature drift (dataset verdict over the features only) and prediction drift, kept apart so a shift in
    scores is reported even when few inputs moved."""
    # a spec edit may monitor fewer (or new) columns than the version's profile holds: judge the ones in both
    shared = [c for c in reference.columns if c in current.column_names]
    reference = drift.Profile(reference.rows, {c: reference.columns[c] for c in shared})
    cur = drift.profile_like(reference, current.select(shared))
    report = drift.compare(reference, cur, min_rows=spec.monitoring.drift_window_min_rows)
    prediction = next(f for f in report.features if f.feature == SCORE_COLUMN)
    features = [f for f in report.features if f.feature != SCORE_COLUMN]
    return drift.dataset_verdict(features, min_rows=report.min_rows), prediction


# ------------------------------------------------------------------------------------------- live performance

@dataclass
class ArmPerformance:
    """Realized quality of one arm in one window, from the served predictions that have a label."""

    window: str
    arm: str
    model_version: int
    served: int
    labelled: int
    metrics: dict[str, float]
    status: str  # "ok", "inconclusive" or "below_floor"
    reason: str

    @property
    def coverage(self) -> float:
        return self.labelled / self.served if self.served else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "coverage": self.coverage}


def _finite(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def below_floor(metrics: dict[str, float], floor: dict[str, Bound]) -> list[str]:
    """Human-readable violations of the performance floor (empty when within it)."""
    out = []
    for metric, bound in floor.items():
        value = metrics.get(metric)
        if not _finite(value):
            continue
        if bound.min is not None and value < bound.min:
            out.append(f"{metric} {value:.4f} < floor {bound.min}")
        if bound.max is not None and value > bound.max:
            out.append(f"{metric} {value:.4f} > ceiling {bound.max}")
    return out


def arm_performance(window: str, log: pd.DataFrame, labels: pd.Series, spec: ModelSpec) -> list[ArmPerformance]:
    """Per served arm: labels (indexed by flight id) joined to its predictions, metrics when enough are known.

    Shadow rows are never served, so they are not judged here. Fewer than ``monitoring.min_labels`` labelled
    rows, or a single class among them, is inconclusive: no metric is reported as if it were a verdict.
    """
    out = []
    served = log[log["served"]]
    for (arm, version), rows in served.groupby(["arm", "model_version"], sort=True):
        y = labels.reindex(rows["flight_id"]).to_numpy(dtype="float64", na_value=np.nan)
        known = ~np.isnan(y)
        n = int(known.sum())
        metrics: dict[str, float] = {}
        if n >= spec.monitoring.min_labels and len(np.unique(y[known])) == 2:
            q = quality(y[known].astype(int), rows["score"].to_numpy()[known], spec.deployment.decision_threshold)
            metrics = {k: q[k] for k in ("roc_auc", "log_loss", "brier", "accuracy", "positive_rate")}
            broken = below_floor(metrics, spec.monitoring.performance_floor) if arm == PRODUCTION else []
            status, reason = (BELOW_FLOOR, "; ".join(broken)) if broken else (OK, f"{n} labelled predictions")
        else:
            status = INCONCLUSIVE.lower()
            reason = (f"{n} labelled predictions < min_labels {spec.monitoring.min_labels}" if n < spec.monitoring.min_labels
                      else "only one outcome among the labelled predictions")
        out.append(ArmPerformance(window, str(arm), int(version), len(rows), n, metrics, status, reason))
    return out


# --------------------------------------------------------------------------------------------- canary analysis

@dataclass
class CanaryWindow:
    """One canary measurement: the canary against production in the same window of traffic."""

    window: str
    phase: str  # Successful, Failed or Inconclusive
    canary_version: int
    production_version: int
    checks: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worse_by(metric: str, candidate: float, baseline: float) -> float:
    """How much worse ``candidate`` is than ``baseline`` (positive = worse), whichever way the metric points."""
    return candidate - baseline if metric in LOWER_IS_BETTER else baseline - candidate


def analyse_canary(window: str, production: ArmPerformance | None, canary: ArmPerformance | None,
                   spec: ModelSpec) -> CanaryWindow | None:
    """The verdict on one window, or None when no canary served in it."""
    if canary is None:
        return None
    prod_version = production.model_version if production else -1
    need = spec.deployment.analysis.min_labels
    for arm in (canary, production):
        if arm is None or arm.labelled < need or not arm.metrics:
            who = "production" if arm is production else "canary"
            have = 0 if arm is None else arm.labelled
            return CanaryWindow(window, INCONCLUSIVE, canary.model_version, prod_version, [],
                                f"too little data: the {who} arm has {have} labelled predictions, "
                                f"{need} needed; holding the canary at its weight")
    assert production is not None
    checks = []
    for metric, tolerance in spec.deployment.analysis.max_regression.items():
        c, p = canary.metrics.get(metric), production.metrics.get(metric)
        if not (_finite(c) and _finite(p)):
            continue
        delta = worse_by(metric, c, p)
        checks.append({"metric": metric, "canary": c, "production": p, "tolerance": tolerance,
                       "worse_by": delta, "passed": delta <= tolerance})
    if not checks:
        return CanaryWindow(window, INCONCLUSIVE, canary.model_version, prod_version, [],
                            "no metric could be computed on both arms")
    failed = [c for c in checks if not c["passed"]]
    text = "; ".join(f"{c['metric']} canary {c['canary']:.4f} vs production {c['production']:.4f}" for c in checks)
    if failed:
        return CanaryWindow(window, FAILED, canary.model_version, prod_version, checks,
                            "worse than production beyond tolerance: " + "; ".join(
                                f"{c['metric']} by {c['worse_by']:.4f} > {c['tolerance']}" for c in failed))
    return CanaryWindow(window, SUCCESSFUL, canary.model_version, prod_version, checks,
                        f"no worse than production: {text}")


@dataclass
class Decision:
    """What a sensor should do. ``action`` is a deployment action, ``retrain``, ``hold`` or ``none``."""

    action: str
    reason: str
    version: int | None = None
    window: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def acts(self) -> bool:
        return self.action not in ("none", "hold")


def canary_decision(canary: int, weight: float, measurements: list[dict[str, Any]], spec: ModelSpec) -> Decision:
    """The next step for a running canary.

    ``measurements`` are the canary's windows since it started, oldest first, each a ``CanaryWindow`` dict plus
    ``at_current_weight`` (the window was served after the last change of weight). The newest measurement per
    window counts. Failures are counted over the whole canary, as Argo Rollouts and Flagger do.
    """
    newest: dict[str, dict[str, Any]] = {}
    for m in measurements:
        newest[m["window"]] = m
    ordered = [newest[w] for w in sorted(newest)]
    limit = spec.deployment.analysis.failure_limit
    failed = [m for m in ordered if m["phase"] == FAILED]
    evidence = {"failed": len(failed), "failure_limit": limit, "canary_weight": weight,
                "windows": [{k: m.get(k) for k in ("window", "phase", "message")} for m in ordered]}
    if len(failed) > limit:
        last = failed[-1]
        return Decision("rollback", f"canary analysis: failed ({len(failed)}) > failure_limit ({limit}); "
                        f"last failure in {last['window']}: {last['message']}", canary, last["window"], evidence)
    current = [m for m in ordered if m.get("at_current_weight")]
    if not current:
        return Decision("none", f"canary v{canary} at {weight:.0%}: waiting for a window of traffic at this weight",
                        canary, None, evidence)
    last = current[-1]
    if last["phase"] == SUCCESSFUL:
        steps = spec.deployment.canary_steps
        final = weight >= steps[-1]
        return Decision("promote" if final else "advance",
                        f"canary analysis {last['window']} Successful at {weight:.0%}: {last['message']}",
                        canary, last["window"], evidence)
    if last["phase"] == INCONCLUSIVE:
        return Decision("hold", f"canary v{canary} held at {weight:.0%}: {last['window']} inconclusive "
                        f"({last['message']}); needs a conclusive window or a person", canary, last["window"], evidence)
    return Decision("hold", f"canary v{canary} held at {weight:.0%}: {last['window']} Failed "
                    f"({len(failed)} of failure_limit {limit} used); the next window decides",
                    canary, last["window"], evidence)


# ------------------------------------------------------------------------------------------------- retraining

def _month_index(window: str) -> int:
    year, month = int(window[:4]), int(window[5:7])
    return year * 12 + month


def retrain_decision(drift_rows: list[dict[str, Any]], performance: dict[str, dict[str, Any]],
                     baseline: float | None, spec: ModelSpec) -> Decision:
    """Whether drift of the production version's traffic is persistent (and, with labels, hurts) enough to retrain.

    ``drift_rows`` are the windows served by the production version, oldest first (``window``, ``status``,
    ``drift_share``). ``performance`` maps a window to the production arm's live performance dict. ``baseline`` is
    the version's evaluation value of ``monitoring.performance_metric``.
    """
    need = spec.monitoring.persistence_windows
    if len(drift_rows) < need:
        return Decision("none", f"{len(drift_rows)} monitored window(s) of the production version; "
                        f"{need} consecutive drifted windows are needed")
    recent = drift_rows[-need:]
    windows = [r["window"] for r in recent]
    gaps = [(a, b) for a, b in zip(windows, windows[1:]) if _month_index(b) - _month_index(a) != 1]
    if gaps:
        return Decision("none", f"the last {need} monitored windows are not consecutive months "
                        f"({', '.join(f'{a} then {b}' for a, b in gaps)}); persistence starts again",
                        window=windows[-1], evidence={"windows": windows})
    evidence: dict[str, Any] = {"windows": windows, "drift_share": [r.get("drift_share") for r in recent],
                                "drifted": [r.get("drifted") for r in recent]}
    not_drifted = [r for r in recent if r.get("status") != "drift"]
    if not_drifted:
        r = not_drifted[-1]
        share = r.get("drift_share")
        what = "too little data" if r.get("status") == "insufficient_data" or share is None else \
            f"drift share {share:.2f}, under {drift.DRIFT_SHARE}"
        return Decision("none", f"no persistent drift: {r['window']} had {what}", window=windows[-1],
                        evidence=evidence)
    metric = spec.monitoring.performance_metric
    labelled = [(w, performance[w]) for w in windows
                if w in performance and performance[w].get("status") != "inconclusive"
                and _finite(performance[w].get("metrics", {}).get(metric))]
    shares = ", ".join(f"{r['window']} {r.get('drift_share'):.2f}" for r in recent)
    reason = f"dataset drift in {need} consecutive windows (drift share {shares})"
    if labelled and baseline is not None:
        w, perf = labelled[-1]
        value = perf["metrics"][metric]
        delta = worse_by(metric, value, baseline)
        evidence.update({"metric": metric, "live": value, "baseline": baseline, "worse_by": delta,
                         "performance_window": w})
        if delta <= spec.monitoring.performance_drop:
            return Decision("none", f"drift persists but {metric} held up in {w}: {value:.4f} vs "
                            f"{baseline:.4f} at evaluation (worse by {delta:.4f} ≤ {spec.monitoring.performance_drop})",
                            window=windows[-1], evidence=evidence)
        reason += (f"; {metric} in {w} {value:.4f} vs {baseline:.4f} at evaluation "
                   f"(worse by {delta:.4f} > {spec.monitoring.performance_drop})")
    elif labelled:
        evidence["metric"] = None
        reason += f"; the version has no evaluation {metric} to compare live performance with, so drift alone decides"
    else:
        evidence["metric"] = None
        reason += "; no conclusive labels in these windows, so drift alone decides"
    return Decision("retrain", reason, window=windows[-1], evidence=evidence)


# ------------------------------------------------------------------------------------------- production guard

def guard_decision(production: int, rows: list[dict[str, Any]], previous: int | None, spec: ModelSpec) -> Decision:
    """Roll production back when its live performance stays below the floor.

    ``rows`` are the production arm's windows served by ``production`` since it was promoted, oldest first.
    """
    need = spec.monitoring.guard_windows
    conclusive = [r for r in rows if r.get("status") in (OK, BELOW_FLOOR)]
    run = []
    for r in reversed(conclusive):
        if r["status"] != BELOW_FLOOR:
            break
        run.append(r)
    run.reverse()
    evidence = {"windows": [{k: r.get(k) for k in ("window", "status", "reason")} for r in run],
                "guard_windows": need, "floor": {k: v.model_dump() for k, v in spec.monitoring.performance_floor.items()}}
    if len(run) < need:
        return Decision("none", f"production v{production}: {len(run)} consecutive window(s) below the floor, "
                        f"{need} needed", production, evidence=evidence)
    detail = "; ".join(f"{r['window']}: {r['reason']}" for r in run)
    if previous is None:
        return Decision("hold", f"production v{production} below the floor for {len(run)} windows ({detail}) "
                        "but there is no earlier production version to roll back to", production,
                        run[-1]["window"], evidence)
    return Decision("rollback_production", f"production guard: v{production} below the floor for {len(run)} "
                    f"consecutive windows ({detail}); back to v{previous}", previous, run[-1]["window"], evidence)
