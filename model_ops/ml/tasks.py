"""What a model's outputs are for each task, and how they are scored.

One module answers, per task, the three questions every other part asks: what does the model output for a row
(:func:`predict`), how good are those outputs against the truth (:func:`quality`), and which way is better for a
metric (:func:`worse_by`). Evaluation, live monitoring, canary analysis and the prediction log all go through it,
so a holdout metric and the same metric on served traffic are computed by the same code.

Outputs per task (:class:`Predicted`):

- binary classification: ``score`` = P(positive class); ``prediction`` = the positive class where
  ``score >= spec.threshold``, else the negative class. The *positive* class is the larger of the model's two
  classes in sorted order, which is the second entry of scikit-learn's (sorted) ``classes_``: 1 for 0/1 labels,
  True for booleans, the alphabetically later label for strings (``"yes"`` over ``"no"``). Name string classes
  accordingly, or encode the target as 0/1.
- multiclass classification: ``proba`` = the probability of each of the model's classes; ``prediction`` = the
  most probable class (ties: the first in ``classes``); ``score`` = its probability.
- regression: ``prediction`` = ``score`` = the predicted value.

The prediction log keeps ``prediction`` in the label's own type (int, bool or string: one Arrow type per model,
so a Delta table of it never changes schema), ``score`` as float64, and for multiclass one float64
``proba_<class>`` column per class (:func:`proba_column`).

Undefined metrics are NaN, never an exception: ROC-AUC with one class, precision with no predicted positive,
recall of a class absent from the labels, R² of a constant target, MAPE when a target is 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from model_ops.jsonable import plain
from model_ops.specs.schema import LOWER_IS_BETTER, ModelSpec
from model_ops.vocab import Task

PROBA_PREFIX = "proba_"
RECALL_PREFIX = "recall_"
CLIP = 1e-15  # probabilities are clipped to [CLIP, 1 - CLIP] for log loss, as scikit-learn does
CALIBRATION_BINS = 10
# The few metrics that summarise a task at a glance: slices of a holdout and model cards show these.
KEY_METRICS: dict[Task, tuple[str, ...]] = {
    Task.BINARY: ("roc_auc", "f1", "positive_rate"),
    Task.MULTICLASS: ("accuracy", "f1_macro"),
    Task.REGRESSION: ("rmse", "mae", "r2"),
}
# Higher is better for every metric not in LOWER_IS_BETTER, except these, which have no better direction ...
UNDIRECTED = {"positive_rate", "predicted_positive_rate"}
# ... and these, where closer to zero is better.
TOWARDS_ZERO = {"mean_residual"}


# ------------------------------------------------------------------------------------------------ class names


def class_name(value: Any) -> str:
    """How a class is written in metric and column names: ``1`` for 1 and 1.0, ``True``, ``setosa``."""
    value = plain(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _names(classes: Sequence[Any], prefix: str) -> list[str]:
    """``prefix + class`` per class, restricted to letters, digits and _ (Delta column names), unique."""
    out: list[str] = []
    for i, c in enumerate(classes):
        name = prefix + _safe(class_name(c))
        out.append(name if name not in out else f"{name}_{i}")
    return out


def proba_columns(classes: Sequence[Any]) -> list[str]:
    """The prediction-log column of each class's probability (multiclass): ``proba_setosa``, ``proba_2``."""
    return _names(classes, PROBA_PREFIX)


def recall_metrics(classes: Sequence[Any]) -> list[str]:
    """The per-class recall metric names of a multiclass model: ``recall_setosa``, ..."""
    return _names(classes, RECALL_PREFIX)


def class_index(values: Any, classes: Sequence[Any]) -> np.ndarray:
    """The position of each value in ``classes`` (-1 when it is none of them).

    Values match by equality (1.0 matches 1, True matches 1) or, failing that, by name (``"1"`` matches 1, and a
    sanitised column name matches its class), so labels read back from Parquet, JSON or a prediction log's
    ``proba_`` columns find their class whatever their type.
    """
    values = np.asarray(values, dtype=object)
    keys = [plain(c) for c in classes]
    try:
        out = pd.Index(keys, dtype=object).get_indexer(pd.Index(values, dtype=object)).astype(np.int64)
    except TypeError:  # an unhashable value: match one by one below
        out = np.full(len(values), -1, dtype=np.int64)
    missing = np.flatnonzero(out < 0)
    if len(missing):
        names: dict[str, int] = {}
        for i, c in enumerate(keys):
            names.setdefault(class_name(c), i)
            names.setdefault(_safe(class_name(c)), i)
        for j in missing:
            v = plain(values[j])
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            out[j] = names.get(class_name(v), names.get(_safe(class_name(v)), -1))
    return out


def positive_index(classes: Sequence[Any]) -> int:
    """Which of a binary model's two classes is positive: the larger one (see the module docstring)."""
    if len(classes) != 2:
        raise ValueError(f"a binary classifier has two classes, this one has {len(classes)}: {list(classes)}")
    try:
        return 1 if plain(classes[1]) > plain(classes[0]) else 0
    except TypeError:  # incomparable types: scikit-learn would have refused to fit them; take its order
        return 1


def positive_mask(values: Any, classes: Sequence[Any]) -> np.ndarray:
    """Binary: which of ``values`` (labels or predictions) are the positive class."""
    return class_index(values, classes) == positive_index(classes)


# --------------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Predicted:
    """A model's outputs for some rows.

    ``prediction``: per row, the class label (classification, in the classes' own dtype) or the value
    (regression). ``score``: P(positive) (binary), the probability of the predicted class (multiclass), the value
    (regression). ``proba``: rows x classes probabilities (classification; for binary the columns are
    ``[P(negative), P(positive)]`` in ``classes`` order). ``classes``: the model's classes, None for regression.
    """

    task: Task
    prediction: np.ndarray
    score: np.ndarray
    proba: np.ndarray | None = None
    classes: tuple[Any, ...] | None = None

    def __len__(self) -> int:
        return len(self.score)

    @property
    def positive(self) -> Any:
        """The positive class of a binary model."""
        if self.task is not Task.BINARY or self.classes is None:
            raise ValueError(f"only a binary classifier has a positive class, not a {self.task} model")
        return self.classes[positive_index(self.classes)]

    def take(self, idx: Any) -> Predicted:
        """The outputs of some rows (a boolean mask or positions)."""
        return Predicted(
            self.task,
            self.prediction[idx],
            self.score[idx],
            None if self.proba is None else self.proba[idx],
            self.classes,
        )

    def columns(self) -> dict[str, np.ndarray]:
        """The prediction-log columns: ``prediction``, ``score`` and, for multiclass, ``proba_<class>``."""
        out = {"prediction": self.prediction, "score": self.score}
        if self.task is Task.MULTICLASS and self.proba is not None and self.classes is not None:
            for j, name in enumerate(proba_columns(self.classes)):
                out[name] = self.proba[:, j]
        return out

    def frame(self, index: Any = None) -> pd.DataFrame:
        return pd.DataFrame(self.columns(), index=index)

    @classmethod
    def from_log(cls, rows: pd.DataFrame, spec: ModelSpec, classes: Sequence[Any] | None = None) -> Predicted:
        """The outputs recorded in prediction-log rows, to score them once their labels are known.

        ``classes`` (the version's, from its signature) are optional: a binary log tells its positive class by
        which prediction goes with a score at or above the threshold, a multiclass log by its ``proba_`` columns.
        """
        task = spec.task
        score = rows["score"].to_numpy(dtype="float64")
        prediction = rows["prediction"].to_numpy()
        if task is Task.REGRESSION:
            return cls(task, prediction.astype("float64"), score)
        if task is Task.BINARY:
            if classes is None:
                classes = _binary_classes_from_log(prediction, score, spec.threshold)
            pos = positive_index(classes)
            proba = np.column_stack([1 - score, score] if pos == 1 else [score, 1 - score])
            return cls(task, prediction, score, proba, tuple(plain(c) for c in classes))
        features = set(spec.feature_names)
        cols = [c for c in rows.columns if c.startswith(PROBA_PREFIX) and c not in features]
        if classes is None:
            if not cols:
                raise ValueError("the prediction log of a multiclass model needs its proba_<class> columns")
            classes = [c[len(PROBA_PREFIX) :] for c in cols]
        else:
            want = proba_columns(classes)
            missing = [c for c in want if c not in rows.columns]
            if missing:
                raise ValueError(f"the prediction log lacks probability column(s) {', '.join(missing)}")
            cols = want
        proba = rows[cols].to_numpy(dtype="float64")
        return cls(task, prediction, score, proba, tuple(plain(c) for c in classes))


class _Unknown:
    """A class the log never shows (every score on one side of the threshold): equal to no label."""

    def __repr__(self) -> str:
        return "<unknown class>"


def _binary_classes_from_log(prediction: np.ndarray, score: np.ndarray, threshold: float) -> list[Any]:
    high, low = prediction[score >= threshold], prediction[score < threshold]
    pos = plain(high[0]) if len(high) else None
    neg = plain(low[0]) if len(low) else None
    if pos is None and neg is None:
        return [_Unknown(), _Unknown()]
    if pos is None or neg is None:
        known = pos if pos is not None else neg
        other: Any = _Unknown()  # the class never seen: 0/1 and False/True imply it, other labels do not
        if isinstance(known, bool):
            other = not known
        elif isinstance(known, (int, float)) and known in (0, 1):
            other = type(known)(1 - known)
        pos, neg = (known, other) if pos is not None else (other, known)
    return [neg, pos]  # positive_index -> 1 for [0, 1] / [False, True]; _Unknown compares with nothing


def model_classes(model: Any) -> list[Any]:
    classes = getattr(model, "classes_", None)
    if classes is None:
        raise ValueError(
            f"{type(model).__name__} has no classes_: a classifier must expose its classes "
            "(scikit-learn, XGBoost and LightGBM classifiers do)"
        )
    return list(classes)


PREDICT_ROWS = 250_000


def _chunked(method: Any, X: pd.DataFrame) -> np.ndarray:
    """``method(X)`` a slice of rows at a time: what preprocessing builds for a slice is freed before the next, so
    scoring millions of rows needs memory for the outputs only. Every supported model scores rows independently,
    so the outputs are the same as in one call."""
    if len(X) <= PREDICT_ROWS:
        return np.asarray(method(X), dtype="float64")
    return np.concatenate(
        [np.asarray(method(X.iloc[i : i + PREDICT_ROWS]), dtype="float64") for i in range(0, len(X), PREDICT_ROWS)]
    )


def predict(model: Any, X: pd.DataFrame, spec: ModelSpec) -> Predicted:
    """The model's outputs for the feature frame ``X`` (as :func:`model_ops.ml.training.model_input` builds it)."""
    task = spec.task
    empty = len(X) == 0  # scikit-learn refuses zero rows; no rows have no outputs
    if task is Task.REGRESSION:
        value = np.empty(0) if empty else _chunked(model.predict, X).reshape(-1)
        return Predicted(task, value, value)
    raw = model_classes(model)
    labels = np.asarray(raw)  # keeps the classes' dtype: int64, bool or str
    if labels.dtype.kind == "U":
        labels = labels.astype(object)
    proba = np.empty((0, len(raw))) if empty else _chunked(model.predict_proba, X)
    if proba.ndim != 2 or proba.shape[1] != len(raw):
        raise ValueError(f"predict_proba returned shape {proba.shape} for {len(raw)} classes")
    classes = tuple(plain(c) for c in raw)
    if task is Task.BINARY:
        pos = positive_index(classes)
        score = proba[:, pos]
        prediction = labels[np.where(score >= spec.threshold, pos, 1 - pos)]
        return Predicted(task, prediction, score, proba, classes)
    best = np.argmax(proba, axis=1) if len(proba) else np.empty(0, dtype=np.int64)
    score = proba[np.arange(len(proba)), best] if len(proba) else np.empty(0)
    return Predicted(task, labels[best], score, proba, classes)


# --------------------------------------------------------------------------------------------------- quality


def _nan() -> float:
    return float("nan")


def quality(y: Any, predicted: Predicted, spec: ModelSpec) -> dict[str, float]:
    """The task's metrics of ``predicted`` against the true labels ``y`` (same rows, same order).

    binary: accuracy, precision, recall, f1, roc_auc, log_loss, brier, ece, positive_rate,
    predicted_positive_rate. multiclass: accuracy, f1_macro, f1_weighted, log_loss (over the model's classes; a
    label the model does not know counts as probability 0, clipped), and recall_<class> for each of the model's
    classes. regression: rmse, mae, r2, mape (a fraction, NaN when any target is 0: it is not defined there),
    mean_residual (mean of prediction - actual: positive means the model over-predicts).
    """
    y = np.asarray(y)
    if len(y) != len(predicted):
        raise ValueError(f"{len(y)} labels for {len(predicted)} predictions")
    if spec.task is Task.REGRESSION:
        return _regression(y.astype("float64"), predicted.prediction.astype("float64"))
    if predicted.classes is None:
        raise ValueError("classification outputs need their classes")
    if spec.task is Task.BINARY:
        return _binary(y, predicted)
    return _multiclass(y, predicted)


def _binary(y: np.ndarray, p: Predicted) -> dict[str, float]:
    assert p.classes is not None
    truth = positive_mask(y, p.classes)
    pred = positive_mask(p.prediction, p.classes)
    score = p.score.astype("float64")
    names = (
        "accuracy",
        "precision",
        "recall",
        "f1",
        "roc_auc",
        "log_loss",
        "brier",
        "ece",
        "positive_rate",
        "predicted_positive_rate",
    )
    if not len(y):
        return {k: _nan() for k in names}
    clipped = np.clip(score, CLIP, 1 - CLIP)
    both = bool(truth.any() and (~truth).any())
    return {
        "accuracy": float(np.mean(truth == pred)),
        "precision": float(skm.precision_score(truth, pred, zero_division=np.nan)),
        "recall": float(skm.recall_score(truth, pred, zero_division=np.nan)),
        "f1": float(skm.f1_score(truth, pred, zero_division=np.nan)),
        "roc_auc": float(skm.roc_auc_score(truth, score)) if both else _nan(),
        "log_loss": float(-np.mean(np.where(truth, np.log(clipped), np.log(1 - clipped)))),
        "brier": float(np.mean((score - truth) ** 2)),
        "ece": expected_calibration_error(truth, score),
        "positive_rate": float(truth.mean()),
        "predicted_positive_rate": float(pred.mean()),
    }


def _multiclass(y: np.ndarray, p: Predicted) -> dict[str, float]:
    assert p.classes is not None and p.proba is not None
    truth = class_index(y, p.classes)
    pred = class_index(p.prediction, p.classes)
    recalls = recall_metrics(p.classes)
    if not len(y):
        return {k: _nan() for k in ("accuracy", "f1_macro", "f1_weighted", "log_loss", *recalls)}
    proba = p.proba
    known = truth >= 0
    p_true = np.full(len(y), CLIP)
    p_true[known] = proba[np.flatnonzero(known), truth[known]]
    out = {
        "accuracy": float(np.mean(truth == pred)),  # a label the model does not know (-1) is never right
        # over the classes that occur in the labels or the predictions (scikit-learn's default)
        "f1_macro": float(skm.f1_score(truth, pred, average="macro", zero_division=0)),
        "f1_weighted": float(skm.f1_score(truth, pred, average="weighted", zero_division=0)),
        "log_loss": float(-np.mean(np.log(np.clip(p_true, CLIP, 1.0)))),
    }
    for j, name in enumerate(recalls):
        mine = truth == j
        out[name] = float(np.mean(pred[mine] == j)) if mine.any() else _nan()
    return out


def _regression(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    if not len(y):
        return {k: _nan() for k in ("rmse", "mae", "r2", "mape", "mean_residual")}
    residual = pred - y
    centred = float(np.sum((y - y.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "mae": float(np.mean(np.abs(residual))),
        "r2": float(1 - np.sum(residual**2) / centred) if centred > 0 else _nan(),
        "mape": float(np.mean(np.abs(residual) / np.abs(y))) if np.all(y != 0) else _nan(),
        "mean_residual": float(residual.mean()),
    }


def mape_note(y: Any) -> str | None:
    """Why MAPE is missing for these targets, or None when it is defined."""
    zeros = int(np.count_nonzero(np.asarray(y, dtype="float64") == 0))
    return f"mape is not defined: {zeros} target(s) are 0 (it divides by the target)" if zeros else None


# -------------------------------------------------------------------------------------------- calibration


def calibration_table(truth: Any, scores: Any) -> list[dict[str, Any]]:
    """Binary: mean score vs observed positive rate in ten equal-width score bins (empty bins omitted)."""
    truth = np.asarray(truth, dtype="float64")
    scores = np.asarray(scores, dtype="float64")
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    idx = np.clip(np.digitize(scores, edges[1:-1]), 0, CALIBRATION_BINS - 1)
    rows = []
    for b in range(CALIBRATION_BINS):
        mask = idx == b
        if mask.any():
            rows.append(
                {
                    "bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}",
                    "rows": int(mask.sum()),
                    "mean_score": float(scores[mask].mean()),
                    "observed_rate": float(truth[mask].mean()),
                }
            )
    return rows


def expected_calibration_error(truth: Any, scores: Any) -> float:
    if len(truth) == 0:
        return _nan()
    table = calibration_table(truth, scores)
    return float(sum(r["rows"] * abs(r["mean_score"] - r["observed_rate"]) for r in table) / len(truth))


# ------------------------------------------------------------------------------------------------ direction


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def worse_by(metric: str, candidate: float, baseline: float) -> float:
    """How much worse ``candidate`` is than ``baseline`` (positive = worse, NaN when either is NaN).

    Lower is better for the metrics in ``LOWER_IS_BETTER`` (log_loss, brier, ece, rmse, mae, mape); closer to
    zero for mean_residual; higher for the rest (accuracy, precision, recall, f1*, recall_<class>, roc_auc, r2).
    """
    if metric in TOWARDS_ZERO:
        return abs(candidate) - abs(baseline)
    if metric in UNDIRECTED:
        raise ValueError(f"{metric} has no better direction; it cannot be compared as a regression")
    return candidate - baseline if lower_is_better(metric) else baseline - candidate


def finite(value: Any) -> bool:
    return value is not None and isinstance(value, (int, float)) and not math.isnan(value)
