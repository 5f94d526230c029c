"""Dagster entry point: ``dagster dev -w workspace.yaml`` or ``dagster ... -m model_ops.definitions``.

One asset group per model spec (the built-in ``flight_delay`` plus every YAML file in ``MODEL_OPS_SPECS_DIR``),
with keys prefixed by the model's name, and the resources of the environment named by ``MODEL_OPS_ENV``.
"""

from __future__ import annotations

import dagster as dg

from model_ops.defs.automation import automation_defs
from model_ops.defs.datasets import features_asset, raw_asset, training_set_asset
from model_ops.defs.deployment import deployment_asset
from model_ops.defs.evaluation import evaluation_asset
from model_ops.defs.monitoring import drift_report_asset, live_performance_asset
from model_ops.defs.predictions import predictions_asset
from model_ops.defs.resources import resources
from model_ops.defs.training import candidate_model_asset
from model_ops.specs import ModelSpec, load_specs


def model_assets(spec: ModelSpec) -> list[dg.AssetsDefinition]:
    """The lifecycle of one model: ingest → features → training set → candidate → evaluation → deployment →
    predictions → drift report and live performance."""
    return [raw_asset(spec, "flights"), raw_asset(spec, "weather"), features_asset(spec), training_set_asset(spec),
            candidate_model_asset(spec), evaluation_asset(spec), deployment_asset(spec), predictions_asset(spec),
            drift_report_asset(spec), live_performance_asset(spec)]


def build_definitions(specs: list[ModelSpec] | None = None) -> dg.Definitions:
    """Assets, jobs, sensors and schedules of every spec, with the environment's resources."""
    specs = load_specs() if specs is None else specs
    automation = [automation_defs(spec) for spec in specs]
    return dg.Definitions(assets=[a for spec in specs for a in model_assets(spec)],
                          jobs=[j for a in automation for j in a["jobs"]],
                          sensors=[s for a in automation for s in a["sensors"]],
                          schedules=[s for a in automation for s in a["schedules"]],
                          resources=resources())


defs = build_definitions()
