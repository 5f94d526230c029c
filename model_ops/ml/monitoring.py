"""Live monitoring: what served traffic says about a model, and the decisions the sensors take from it.

Dagster-free so every rule is tested directly, and task-generic: live quality is :func:`model_ops.ml.tasks.quality`
on the served rows whose labels arrived, the metrics are ``LIVE_METRICS[spec.task]``, and every comparison goes
the metric's own better direction. Every window is a partition key of the model (daily, weekly, monthly); which
windows are consecutive is told by the caller (the partition keys in order), never parsed from the key.

Three rules close the loop, each counting windows the way progressive-delivery tools count measurements:

- canary analysis: each window of canary traffic is Successful, Failed or Inconclusive against production in the
  same window (the two arms are disjoint, sticky-hashed shares of the same traffic); failed windows are counted
  over the whole canary and the canary is rolled back when ``failed > failure_limit``; a successful window at
  the current weight advances it (past the last step: promotion); inconclusive holds.
- retraining: dataset drift in the newest ``persistence_windows`` consecutive windows, and, where labels exist,
  realized performance worse than at evaluation by more than ``performance_drop``.
- production guard: the production version below the spec's floor for ``guard_windows`` conclusive windows in a
  row (inconclusive windows neither count nor break the run) rolls production back to the previous version.

Too little data is never evidence: a window under the minimum is inconclusive, and inconclusive windows can hold a
canary but never fail it, never start a retrain and never roll production back.

The prediction log this module reads has, per row: the spec's ``key_column``, ``arm``, ``model_version``,
``served`` (bool), ``score``, ``prediction`` and, for multiclass, ``proba_<class>`` (see
:class:`model_ops.ml.tasks.Predicted`), plus the feature columns for drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from model_ops.bounds import Bound
from model_ops.ml import drift, tasks
from model_ops.ml.tasks import Predicted, finite, worse_by
from model_ops.ml.training import Prepared, model_input, with_outcome
from model_ops.specs.schema import LIVE_METRICS, ModelSpec
from model_ops.vocab import Arm, ArmStatus, CanaryPhase, DecisionAction, DeployAction, DriftStatus, Task

PROFILE_LABEL = "reference_profile"
# Prediction columns of a drift table (beside the monitored features). Binary: P(positive); regression: the
# predicted value; multiclass: the predicted class (categorical: its shares drift) and each class's probability.
SCORE_COLUMN = "prediction_score"
PREDICTED_CLASS_COLUMN = "prediction_class"
PROBA_DRIFT_PREFIX = "prediction_proba_"


# ------------------------------------------------------------------------------------------------- drift inputs


def drift_columns(spec: ModelSpec) -> list[str]:
    """The features whose drift is monitored (all but ``monitoring.drift_exclude``)."""
    return [f for f in spec.feature_names if f not in spec.monitoring.drift_exclude]


def is_prediction_column(name: str) -> bool:
    return name in (SCORE_COLUMN, PREDICTED_CLASS_COLUMN) or name.startswith(PROBA_DRIFT_PREFIX)


def prediction_columns(predicted: Predicted) -> dict[str, pa.Array]:
    """The monitored model outputs: ``prediction_score`` (binary P(positive), regression value), or for
    multiclass ``prediction_class`` (the predicted class's name) and ``prediction_proba_<class>``."""
    if predicted.task is not Task.MULTICLASS:
        return {SCORE_COLUMN: pa.array(np.asarray(predicted.score, dtype="float64"))}
    assert predicted.classes is not None and predicted.proba is not None
    out = {PREDICTED_CLASS_COLUMN: pa.array([tasks.class_name(v) for v in predicted.prediction], pa.string())}
    for j, name in enumerate(tasks.proba_columns(predicted.classes)):
        out[PROBA_DRIFT_PREFIX + name[len(tasks.PROBA_PREFIX) :]] = pa.array(predicted.proba[:, j].astype("float64"))
    return out


def drift_table(
    rows: pd.DataFrame, predicted: Predicted | np.ndarray, spec: ModelSpec, *, typed: bool = False
) -> pa.Table:
    """The monitored feature columns of some rows plus the model's outputs on them: what a reference profile and
    a window of served traffic are both profiled from, so the two are comparable column by column.

    ``predicted`` may be a plain array of scores for binary and regression models; ``typed`` says ``rows`` is
    already the model's input (:func:`model_input`)."""
    if not isinstance(predicted, Predicted):
        if spec.task is Task.MULTICLASS:
            raise ValueError(
                "a multiclass drift table needs the model's Predicted outputs (classes and "
                "probabilities), not an array of scores"
            )
        scores = np.asarray(predicted, dtype="float64")
        predicted = Predicted(spec.task, scores, scores)
    if len(predicted) != len(rows):
        raise ValueError(f"{len(predicted)} predictions for {len(rows)} rows")
    columns = drift_columns(spec)
    clash = [c for c in columns if is_prediction_column(c)]
    if clash:
        raise ValueError(
            f"feature(s) {', '.join(clash)} collide with the monitored prediction columns; "
            "exclude them from drift (monitoring.drift_exclude) or rename them"
        )
    x = rows if typed else model_input(rows, spec)
    table = pa.Table.from_arrays([pa.Array.from_pandas(x[c]) for c in columns], names=columns)
    for name, values in prediction_columns(predicted).items():
        table = table.append_column(name, values)
    return table


def log_drift_table(log: pd.DataFrame, spec: ModelSpec, classes: Sequence[Any] | None = None) -> pa.Table:
    """The drift table of prediction-log rows (features and recorded outputs)."""
    return drift_table(log, Predicted.from_log(log, spec, classes), spec)


def reference_profile(train: pd.DataFrame | Prepared, model: Any, spec: ModelSpec) -> drift.Profile:
    """The drift reference of a model: its labelled training rows' monitored features and its outputs on them
    (given as the rows, or as what the fit was :func:`prepared <model_ops.ml.training.prepare>` from them)."""
    inputs = (
        train.inputs if isinstance(train, Prepared) else model_input(with_outcome(train, spec, required=False), spec)
    )
    predicted = tasks.predict(model, inputs, spec)
    return drift.profile(drift_table(inputs, predicted, spec, typed=True))


def reference_profile_for(
    reg: Any,
    spec: ModelSpec,
    version: int,
    training_rows: Callable[[Any], pd.DataFrame],
    *,
    run_id: str | None = None,
    source: str = "its recorded training snapshot",
) -> tuple[drift.Profile, bool]:
    """The version's attached reference profile, or, for a version registered without one (by hand, or before
    profiles existed), one built once from ``training_rows(model_version)`` and attached so later windows
    reuse it. Returns (profile, built now?). ``training_rows`` raises when it cannot find the rows."""
    raw = reg.attachment(spec.name, version, PROFILE_LABEL)
    if raw is not None:
        return drift.Profile.from_json(raw.decode()), False
    mv = reg.get(spec.name, version)
    reference = reference_profile(training_rows(mv), reg.load_model(mv.ref), spec)
    reg.attach(
        spec.name,
        version,
        PROFILE_LABEL,
        reference.to_json().encode(),
        run_id=run_id,
        reason=f"drift reference built from {source} ({reference.rows} rows): the version was registered without one",
    )
    return reference, True


@dataclass
class WindowDrift:
    """One window against the reference: the features' dataset verdict, and the model outputs' drift apart
    (so a shift in predictions is reported even when few inputs moved).

    ``prediction`` is the headline output column (the score or value; multiclass: the predicted-class shares),
    ``predictions`` every output column (multiclass: also each class's probability)."""

    report: drift.DriftReport
    prediction: drift.FeatureDrift | None
    predictions: list[drift.FeatureDrift]

    @property
    def prediction_drift(self) -> bool:
        return any(p.drift for p in self.predictions)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.report.to_dict(),
            "prediction": None if self.prediction is None else asdict(self.prediction),
            "predictions": [asdict(p) for p in self.predictions],
            "prediction_drift": self.prediction_drift,
        }


def compare_window(reference: drift.Profile, current: pa.Table, spec: ModelSpec) -> WindowDrift:
    """Feature drift (dataset verdict over the features only) and prediction drift of one window."""
    # a spec edit may monitor fewer (or new) columns than the version's profile holds: judge the ones in both
    shared = [c for c in reference.columns if c in current.column_names]
    reference = drift.Profile(reference.rows, {c: reference.columns[c] for c in shared})
    cur = drift.profile_like(reference, current.select(shared))
    report = drift.compare(reference, cur, min_rows=spec.monitoring.drift_window_min_rows)
    outputs = [f for f in report.features if is_prediction_column(f.feature)]
    features = [f for f in report.features if not is_prediction_column(f.feature)]
    headline = next((f for f in outputs if f.feature in (SCORE_COLUMN, PREDICTED_CLASS_COLUMN)), None)
    return WindowDrift(drift.dataset_verdict(features, min_rows=report.min_rows), headline, outputs)


# ------------------------------------------------------------------------------------------- live performance


def live_metric_names(spec: ModelSpec) -> list[str]:
    """The metrics live performance reports for the spec's task (``LIVE_METRICS``), sorted."""
    return sorted(LIVE_METRICS[spec.task])


@dataclass
class ArmPerformance:
    """Realized quality of one arm in one window, from the served predictions that have a label."""

    window: str
    arm: str
    model_version: int
    served: int
    labelled: int
    metrics: dict[str, float]
    status: ArmStatus
    reason: str

    @property
    def coverage(self) -> float:
        return self.labelled / self.served if self.served else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": str(self.status), "coverage": self.coverage}


def below_floor(metrics: Mapping[str, float], floor: Mapping[str, Bound]) -> list[str]:
    """Each violation of the performance floor, as :meth:`Bound.violation` words it (empty when within).

    A metric that could not be computed in the window (NaN, missing) is no evidence either way and is skipped."""
    out = []
    for metric, bound in floor.items():
        value = metrics.get(metric)
        if not finite(value):
            continue
        broken = bound.violation(metric, value)
        if broken:
            out.append(broken)
    return out


def join_labels(keys: pd.Series, labels: pd.Series) -> pd.Series:
    """The label of each key (NaN/None where none arrived yet); ``labels`` is indexed by key. Keys compare as
    strings when the two sides have different types (an int key column against string label keys)."""
    labels = labels[~labels.index.duplicated(keep="last")]
    if len(labels) and len(keys) and _numeric_keys(labels.index) != _numeric_keys(keys):
        labels = labels.set_axis(labels.index.astype(str))
        keys = keys.astype(str)
    return labels.reindex(keys.to_numpy())


def _numeric_keys(values: Any) -> bool:
    return pd.api.types.infer_dtype(values, skipna=True) in ("integer", "floating", "mixed-integer-float", "decimal")


def arm_performance(
    window: str,
    log: pd.DataFrame,
    labels: pd.Series,
    spec: ModelSpec,
    classes: Mapping[int, Sequence[Any]] | None = None,
) -> list[ArmPerformance]:
    """Per served arm and version: labels (indexed by ``spec.key_column`` values) joined to its predictions, and
    ``LIVE_METRICS[spec.task]`` when enough are known.

    Shadow rows are never served, so they are not judged here. Fewer than ``monitoring.min_labels`` labelled
    rows, or (classification) a single class among them, is inconclusive: no metric is reported as if it were a
    verdict. ``classes`` (version -> its classes, from its signature) is optional: see ``Predicted.from_log``.
    The floor (``monitoring.performance_floor``) is judged for the production arm only.
    """
    key = spec.key_column
    if key not in log.columns:
        raise ValueError(f"the prediction log has no key column {key!r}")
    out = []
    served = log[log["served"].astype(bool)]
    names = live_metric_names(spec)
    for (arm, version), rows in served.groupby(["arm", "model_version"], sort=True):
        y = join_labels(rows[key], labels)
        known = y.notna().to_numpy()
        n = int(known.sum())
        y_known = y.to_numpy()[known]
        predicted = Predicted.from_log(rows, spec, (classes or {}).get(int(version))).take(known)
        metrics: dict[str, float] = {}
        distinct = pd.Series(y_known, dtype=object).map(tasks.class_name).nunique() if n else 0
        if n < spec.monitoring.min_labels:
            status, reason = (
                ArmStatus.INCONCLUSIVE,
                (f"{n} labelled predictions < min_labels {spec.monitoring.min_labels}"),
            )
        elif spec.task.is_classification and distinct < 2:
            status, reason = ArmStatus.INCONCLUSIVE, "only one class among the labelled predictions"
        else:
            q = tasks.quality(y_known, predicted, spec)
            metrics = {k: q[k] for k in names}
            broken = below_floor(metrics, spec.monitoring.performance_floor) if arm == Arm.PRODUCTION else []
            status, reason = (
                (ArmStatus.BELOW_FLOOR, "; ".join(broken)) if broken else (ArmStatus.OK, f"{n} labelled predictions")
            )
        out.append(ArmPerformance(window, str(arm), int(version), len(rows), n, metrics, status, reason))
    return out


# --------------------------------------------------------------------------------------------- canary analysis


@dataclass
class CanaryWindow:
    """One canary measurement: the canary against production in the same window of traffic."""

    window: str
    phase: CanaryPhase
    canary_version: int
    production_version: int
    checks: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "phase": str(self.phase)}


def analyse_canary(
    window: str, production: ArmPerformance | None, canary: ArmPerformance | None, spec: ModelSpec
) -> CanaryWindow | None:
    """The verdict on one window, or None when no canary served in it: each of ``spec.canary_metrics`` (metric
    -> allowed regression) compared in its own better direction."""
    if canary is None:
        return None
    prod_version = production.model_version if production else -1
    need = spec.deployment.analysis.min_labels
    for who, arm in ((Arm.CANARY, canary), (Arm.PRODUCTION, production)):
        if arm is None or arm.labelled < need or not arm.metrics:
            have = 0 if arm is None else arm.labelled
            why = (
                f"{have} labelled predictions, {need} needed"
                if arm is None or arm.labelled < need
                else f"no metrics ({arm.reason})"
            )
            return CanaryWindow(
                window,
                CanaryPhase.INCONCLUSIVE,
                canary.model_version,
                prod_version,
                [],
                f"too little data: the {who} arm has {why}; holding the canary at its weight",
            )
    assert production is not None
    checks = []
    for metric, tolerance in spec.canary_metrics.items():
        c, p = canary.metrics.get(metric), production.metrics.get(metric)
        if c is None or p is None or not (finite(c) and finite(p)):
            continue
        delta = worse_by(metric, c, p)
        checks.append(
            {
                "metric": metric,
                "canary": c,
                "production": p,
                "tolerance": tolerance,
                "worse_by": delta,
                "lower_is_better": tasks.lower_is_better(metric),
                "passed": delta <= tolerance,
            }
        )
    if not checks:
        return CanaryWindow(
            window,
            CanaryPhase.INCONCLUSIVE,
            canary.model_version,
            prod_version,
            [],
            "no metric could be computed on both arms",
        )
    failed = [c for c in checks if not c["passed"]]
    text = "; ".join(f"{c['metric']} canary {c['canary']:.4f} vs production {c['production']:.4f}" for c in checks)
    if failed:
        return CanaryWindow(
            window,
            CanaryPhase.FAILED,
            canary.model_version,
            prod_version,
            checks,
            "worse than production beyond tolerance: "
            + "; ".join(f"{c['metric']} by {c['worse_by']:.4f} > {c['tolerance']}" for c in failed),
        )
    return CanaryWindow(
        window, CanaryPhase.SUCCESSFUL, canary.model_version, prod_version, checks, f"no worse than production: {text}"
    )


@dataclass
class Decision:
    """What a sensor should do. ``action`` is a deployment action (``DeployAction``) or a ``DecisionAction``
    (``retrain``, ``hold``, ``none``); both are plain strings too."""

    action: DeployAction | DecisionAction
    reason: str
    version: int | None = None
    window: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def acts(self) -> bool:
        return self.action not in (DecisionAction.NONE, DecisionAction.HOLD)


def _ordered(windows: Sequence[str], partition_keys: Sequence[str] | None) -> list[str]:
    if partition_keys is None:
        return sorted(windows)  # ISO dates: lexical order is time order
    position = {k: i for i, k in enumerate(partition_keys)}
    return sorted(windows, key=lambda w: (position.get(w, len(position)), w))


def canary_decision(
    canary: int,
    weight: float,
    measurements: list[dict[str, Any]],
    spec: ModelSpec,
    partition_keys: Sequence[str] | None = None,
) -> Decision:
    """The next step for a running canary.

    ``measurements`` are the canary's windows since it started, each a ``CanaryWindow`` dict plus
    ``at_current_weight`` (the window was served after the last change of weight). The newest measurement per
    window counts; windows are put in ``partition_keys`` order (lexical order of the keys when not given).
    Failures are counted over the whole canary, as Argo Rollouts and Flagger do.
    """
    newest: dict[str, dict[str, Any]] = {}
    for m in measurements:
        newest[m["window"]] = m
    ordered = [newest[w] for w in _ordered(list(newest), partition_keys)]
    limit = spec.deployment.analysis.failure_limit
    failed = [m for m in ordered if m["phase"] == CanaryPhase.FAILED]
    evidence = {
        "failed": len(failed),
        "failure_limit": limit,
        "canary_weight": weight,
        "windows": [{k: m.get(k) for k in ("window", "phase", "message")} for m in ordered],
    }
    if len(failed) > limit:
        last = failed[-1]
        return Decision(
            DeployAction.ROLLBACK,
            f"canary analysis: failed ({len(failed)}) > failure_limit ({limit}); "
            f"last failure in {last['window']}: {last['message']}",
            canary,
            last["window"],
            evidence,
        )
    current = [m for m in ordered if m.get("at_current_weight")]
    if not current:
        return Decision(
            DecisionAction.NONE,
            f"canary v{canary} at {weight:.0%}: waiting for a window of traffic at this weight",
            canary,
            None,
            evidence,
        )
    last = current[-1]
    if last["phase"] == CanaryPhase.SUCCESSFUL:
        final = weight >= spec.deployment.canary_steps[-1]
        return Decision(
            DeployAction.PROMOTE if final else DeployAction.ADVANCE,
            f"canary analysis {last['window']} Successful at {weight:.0%}: {last['message']}",
            canary,
            last["window"],
            evidence,
        )
    if last["phase"] == CanaryPhase.INCONCLUSIVE:
        return Decision(
            DecisionAction.HOLD,
            f"canary v{canary} held at {weight:.0%}: {last['window']} inconclusive "
            f"({last['message']}); needs a conclusive window or a person",
            canary,
            last["window"],
            evidence,
        )
    return Decision(
        DecisionAction.HOLD,
        f"canary v{canary} held at {weight:.0%}: {last['window']} Failed "
        f"({len(failed)} of failure_limit {limit} used); the next window decides",
        canary,
        last["window"],
        evidence,
    )


# ------------------------------------------------------------------------------------------------- retraining


def _gaps(windows: Sequence[str], partition_keys: Sequence[str]) -> list[tuple[str, str]]:
    """Neighbouring windows that are not neighbouring partitions (a window that is no partition is a gap)."""
    position = {k: i for i, k in enumerate(partition_keys)}
    out = []
    for a, b in pairwise(windows):
        if a not in position or b not in position or position[b] - position[a] != 1:
            out.append((a, b))
    return out


def retrain_decision(
    drift_rows: list[dict[str, Any]],
    performance: dict[str, dict[str, Any]],
    baseline: float | None,
    spec: ModelSpec,
    *,
    partition_keys: Sequence[str],
) -> Decision:
    """Whether drift of the production version's traffic is persistent (and, with labels, hurts) enough to retrain.

    ``drift_rows`` are the windows served by the production version, oldest first (``window``, ``status``,
    ``drift_share``). ``performance`` maps a window to the production arm's live performance dict (``status``,
    ``metrics``). ``baseline`` is the version's evaluation value of ``spec.monitoring_metric``.
    ``partition_keys`` are all the model's partition keys in order: windows are consecutive when they are
    neighbours in it, whatever the cadence.
    """
    need = spec.monitoring.persistence_windows
    if len(drift_rows) < need:
        return Decision(
            DecisionAction.NONE,
            f"{len(drift_rows)} monitored window(s) of the production version; "
            f"{need} consecutive drifted windows are needed",
        )
    recent = drift_rows[-need:]
    windows = [r["window"] for r in recent]
    gaps = _gaps(windows, partition_keys)
    if gaps:
        return Decision(
            DecisionAction.NONE,
            f"the last {need} monitored windows are not consecutive partitions "
            f"({', '.join(f'{a} then {b}' for a, b in gaps)}); persistence starts again",
            window=windows[-1],
            evidence={"windows": windows},
        )
    evidence: dict[str, Any] = {
        "windows": windows,
        "drift_share": [r.get("drift_share") for r in recent],
        "drifted": [r.get("drifted") for r in recent],
    }
    not_drifted = [r for r in recent if r.get("status") != DriftStatus.DRIFT]
    if not_drifted:
        r = not_drifted[-1]
        share = r.get("drift_share")
        what = (
            "too little data"
            if r.get("status") == DriftStatus.INSUFFICIENT_DATA or share is None
            else f"drift share {share:.2f}, under {drift.DRIFT_SHARE}"
        )
        return Decision(
            DecisionAction.NONE, f"no persistent drift: {r['window']} had {what}", window=windows[-1], evidence=evidence
        )
    metric = spec.monitoring_metric
    labelled = [
        (w, performance[w])
        for w in windows
        if w in performance
        and performance[w].get("status") != ArmStatus.INCONCLUSIVE
        and finite((performance[w].get("metrics") or {}).get(metric))
    ]
    shares = ", ".join(f"{r['window']} {r.get('drift_share'):.2f}" for r in recent)
    reason = f"dataset drift in {need} consecutive windows (drift share {shares})"
    if labelled and baseline is not None:
        w, perf = labelled[-1]
        value = perf["metrics"][metric]
        delta = worse_by(metric, value, baseline)
        evidence.update(
            {"metric": metric, "live": value, "baseline": baseline, "worse_by": delta, "performance_window": w}
        )
        if delta <= spec.monitoring.performance_drop:
            return Decision(
                DecisionAction.NONE,
                f"drift persists but {metric} held up in {w}: {value:.4f} vs "
                f"{baseline:.4f} at evaluation (worse by {delta:.4f} ≤ {spec.monitoring.performance_drop})",
                window=windows[-1],
                evidence=evidence,
            )
        reason += (
            f"; {metric} in {w} {value:.4f} vs {baseline:.4f} at evaluation "
            f"(worse by {delta:.4f} > {spec.monitoring.performance_drop})"
        )
    elif labelled:
        evidence["metric"] = None
        reason += f"; the version has no evaluation {metric} to compare live performance with, so drift alone decides"
    else:
        evidence["metric"] = None
        reason += "; no conclusive labels in these windows, so drift alone decides"
    return Decision(DecisionAction.RETRAIN, reason, window=windows[-1], evidence=evidence)


# ------------------------------------------------------------------------------------------- production guard


def guard_decision(production: int, rows: list[dict[str, Any]], previous: int | None, spec: ModelSpec) -> Decision:
    """Roll production back when its live performance stays below the floor.

    ``rows`` are the production arm's windows served by ``production`` since it was promoted, oldest first
    (``window``, ``status``, ``reason``). Inconclusive windows neither count nor break a run of windows below
    the floor.
    """
    need = spec.monitoring.guard_windows
    conclusive = [r for r in rows if r.get("status") in (ArmStatus.OK, ArmStatus.BELOW_FLOOR)]
    run = []
    for r in reversed(conclusive):
        if r["status"] != ArmStatus.BELOW_FLOOR:
            break
        run.append(r)
    run.reverse()
    evidence = {
        "windows": [{k: r.get(k) for k in ("window", "status", "reason")} for r in run],
        "guard_windows": need,
        "floor": {k: v.describe() for k, v in spec.monitoring.performance_floor.items()},
    }
    if len(run) < need:
        return Decision(
            DecisionAction.NONE,
            f"production v{production}: {len(run)} consecutive window(s) below the floor, {need} needed",
            production,
            evidence=evidence,
        )
    detail = "; ".join(f"{r['window']}: {r['reason']}" for r in run)
    if previous is None:
        return Decision(
            DecisionAction.HOLD,
            f"production v{production} below the floor for {len(run)} windows "
            f"({detail}) but there is no earlier production version to roll back to",
            production,
            run[-1]["window"],
            evidence,
        )
    return Decision(
        DeployAction.ROLLBACK_PRODUCTION,
        f"production guard: v{production} below the floor for "
        f"{len(run)} consecutive windows ({detail}); back to v{previous}",
        previous,
        run[-1]["window"],
        evidence,
    )
