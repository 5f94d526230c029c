"""Holdout evaluation: quality metrics, calibration, slices and serving latency of one model.

Candidate and champion are evaluated by the same function on the same rows, so their numbers are comparable;
the gate logic (thresholds, allowed regression, latency SLA) is separate and returns reasons a person can act on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from model_ops.ml.training import labelled, model_input, predict_scores
from model_ops.specs.schema import LOWER_IS_BETTER, ModelSpec

SLICE_COLUMNS = ("carrier", "origin")
CALIBRATION_BINS = 10
LATENCY_SINGLE_CALLS = 200
LATENCY_BATCH_CALLS = 20
BATCH_SIZE = 1000
MIN_SLICE_ROWS = 100


@dataclass
class Evaluation:
    metrics: dict[str, float]
    latency_ms: dict[str, float]
    slices: dict[str, dict[str, dict[str, float]]]
    calibration: list[dict[str, float]]
    rows: int
    positives: int

    def flat(self) -> dict[str, float]:
        return {**self.metrics, **{f"latency_{k}_ms": v for k, v in self.latency_ms.items()}}


@dataclass
class GateResult:
    name: str
    passed: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def quality(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    pred = (scores >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    clipped = np.clip(scores, 1e-15, 1 - 1e-15)
    out = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y, scores)) if both else float("nan"),
        "log_loss": float(skm.log_loss(y, clipped, labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y, scores)),
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
        "predicted_positive_rate": float(pred.mean()) if len(y) else float("nan"),
    }
    out["ece"] = expected_calibration_error(y, scores)
    return out


def calibration_table(y: np.ndarray, scores: np.ndarray) -> list[dict[str, float]]:
    """Mean score vs observed rate in ten equal-width score bins (empty bins omitted)."""
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    idx = np.clip(np.digitize(scores, edges[1:-1]), 0, CALIBRATION_BINS - 1)
    rows = []
    for b in range(CALIBRATION_BINS):
        mask = idx == b
        if mask.any():
            rows.append({"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "rows": int(mask.sum()),
                         "mean_score": float(scores[mask].mean()), "observed_rate": float(y[mask].mean())})
    return rows


def expected_calibration_error(y: np.ndarray, scores: np.ndarray) -> float:
    if len(y) == 0:
        return float("nan")
    table = calibration_table(y, scores)
    return float(sum(r["rows"] * abs(r["mean_score"] - r["observed_rate"]) for r in table) / len(y))


def latency(model: Any, X: pd.DataFrame) -> dict[str, float]:
    """Wall-clock p50/p99 of single-row and 1,000-row predict_proba calls, in milliseconds."""
    if X.empty:
        return {}
    singles = []
    for i in range(min(LATENCY_SINGLE_CALLS, len(X))):
        row = X.iloc[[i]]
        t0 = time.perf_counter()
        model.predict_proba(row)
        singles.append((time.perf_counter() - t0) * 1000)
    batches = []
    batch = X.iloc[:BATCH_SIZE]
    for _ in range(LATENCY_BATCH_CALLS):
        t0 = time.perf_counter()
        model.predict_proba(batch)
        batches.append((time.perf_counter() - t0) * 1000 * BATCH_SIZE / len(batch))
    return {"single_p50": float(np.percentile(singles, 50)), "single_p99": float(np.percentile(singles, 99)),
            "batch_p50_per_1k": float(np.percentile(batches, 50)),
            "batch_p99_per_1k": float(np.percentile(batches, 99))}


def evaluate(model: Any, holdout: pd.DataFrame, spec: ModelSpec, *, measure_latency: bool = True) -> Evaluation:
    rows = labelled(holdout, spec)
    y = rows[spec.target.name].astype("int64").to_numpy()
    scores = predict_scores(model, rows, spec)
    threshold = spec.deployment.decision_threshold
    slices: dict[str, dict[str, dict[str, float]]] = {}
    for col in SLICE_COLUMNS:
        if col not in rows.columns:
            continue
        slices[col] = {}
        for value, idx in rows.groupby(col, sort=True).indices.items():
            if len(idx) >= MIN_SLICE_ROWS:
                m = quality(y[idx], scores[idx], threshold)
                slices[col][str(value)] = {"rows": len(idx), "roc_auc": m["roc_auc"], "f1": m["f1"],
                                           "positive_rate": m["positive_rate"]}
    lat = latency(model, model_input(rows, spec)) if measure_latency else {}
    return Evaluation(quality(y, scores, threshold), lat, slices, calibration_table(y, scores), len(rows),
                      int(y.sum()))


def meets_thresholds(ev: Evaluation, spec: ModelSpec) -> GateResult:
    failures, details = [], {}
    for metric, bound in spec.gates.thresholds.items():
        value = ev.metrics.get(metric, float("nan"))
        details[metric] = value
        if np.isnan(value) or (bound.min is not None and value < bound.min) or (bound.max is not None and value > bound.max):
            need = " and ".join(s for s in (f">= {bound.min}" if bound.min is not None else "",
                                            f"<= {bound.max}" if bound.max is not None else "") if s)
            failures.append(f"{metric} = {value:.4f}, needs {need}")
    if failures:
        return GateResult("meets_thresholds", False, "below the spec's thresholds: " + "; ".join(failures), details)
    if not spec.gates.thresholds:
        return GateResult("meets_thresholds", True, "the spec sets no metric thresholds", details)
    return GateResult("meets_thresholds", True, "meets every threshold: " + ", ".join(
        f"{k} = {v:.4f}" for k, v in details.items()), details)


def no_regression(candidate: Evaluation, champion: Evaluation | None, spec: ModelSpec,
                  champion_label: str | None = None) -> GateResult:
    if champion is None:
        return GateResult("no_regression_vs_champion", True, "no champion yet: nothing to regress against")
    failures, details = [], {}
    for metric, allowed in spec.gates.max_regression.items():
        cand, champ = candidate.metrics.get(metric, float("nan")), champion.metrics.get(metric, float("nan"))
        worse_by = (cand - champ) if metric in LOWER_IS_BETTER else (champ - cand)
        details[metric] = {"candidate": cand, "champion": champ, "worse_by": worse_by, "allowed": allowed}
        if np.isnan(worse_by) or worse_by > allowed:
            failures.append(f"{metric} {cand:.4f} vs champion {champ:.4f} (worse by {worse_by:.4f}, "
                            f"allowed {allowed})")
    who = champion_label or "the champion"
    if failures:
        return GateResult("no_regression_vs_champion", False, f"regresses against {who}: " + "; ".join(failures),
                          details)
    return GateResult("no_regression_vs_champion", True, f"no regression beyond the allowance against {who}", details)


def latency_within_sla(ev: Evaluation, spec: ModelSpec) -> GateResult:
    failures, details = [], {}
    for key, limit in spec.gates.latency_sla_ms.items():
        value = ev.latency_ms.get(key, float("nan"))
        details[key] = {"value_ms": value, "limit_ms": limit}
        if np.isnan(value) or value > limit:
            failures.append(f"{key} = {value:.2f} ms > SLA {limit} ms")
    if failures:
        return GateResult("latency_within_sla", False, "too slow: " + "; ".join(failures), details)
    return GateResult("latency_within_sla", True, "within the latency SLA: " + (", ".join(
        f"{k} {d['value_ms']:.2f} ms <= {d['limit_ms']} ms" for k, d in details.items()) or "none set"), details)
