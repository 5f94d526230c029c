"""``model_ops.ModelComponent``: a model declared in YAML becomes its whole lifecycle in Dagster.

A ``defs.yaml`` with ``type: model_ops.ModelComponent`` and the model's attributes (the schema of
:class:`model_ops.specs.ModelSpec`: source, partitions, task, features, target, estimator or trainer, gates,
deployment, monitoring) builds the model's asset group (source → features → training set → candidate → evaluation →
deployment → predictions → drift report and live performance), its checks, jobs, sensors and schedules. Where the
source's schema can be read at load (a Delta table or Parquet files that exist, the built-in data), the declaration
is checked against it then, so a feature the table lacks fails loading with the file and the field.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from model_ops.data import nycflights13
from model_ops.data.sources import schema_kinds, source_table
from model_ops.defs.automation import automation_defs
from model_ops.defs.datasets import features_asset, labels_asset, raw_asset, source_asset, training_set_asset
from model_ops.defs.deployment import deployment_asset
from model_ops.defs.evaluation import evaluation_asset
from model_ops.defs.monitoring import drift_report_asset, live_performance_asset, serving_health_asset
from model_ops.defs.predictions import predictions_asset
from model_ops.defs.registry_view import registry_asset, registry_sensor, versions_asset
from model_ops.defs.scaffold import ModelScaffolder
from model_ops.defs.training import candidate_model_asset
from model_ops.errors import ModelOpsError
from model_ops.specs.loader import schema_error
from model_ops.specs.schema import ModelSpec, SchemaMismatch
from model_ops.vocab import SourceKind


def checked(spec: ModelSpec, where: str) -> ModelSpec:
    """The declaration checked against (and typed from) its source's schema when that can be read now."""
    try:
        if spec.source.kind is SourceKind.NYCFLIGHTS13:
            return spec.with_schema(dict(nycflights13.SCHEMA))
        if spec.source.kind in (SourceKind.DELTA, SourceKind.PARQUET) or spec.source.uri:
            table = source_table(spec)
            return spec.with_schema(schema_kinds(table.schema()))
    except SchemaMismatch as exc:
        raise schema_error(exc, where, spec.source.uri or str(spec.source.kind)) from exc
    except ModelOpsError:
        pass  # not written yet, or unreachable now: checked by the features asset when it reads a partition
    return spec


def model_defs(spec: ModelSpec) -> dg.Definitions:
    """The lifecycle of one model: source → features → training set → candidate → evaluation → deployment →
    predictions → drift report and live performance, with their jobs, sensors and schedules."""
    if spec.source.kind is SourceKind.NYCFLIGHTS13:
        sources: list[object] = [raw_asset(spec, t) for t in nycflights13.TABLES]
    elif spec.source.kind is SourceKind.ASSET:
        sources = []
    else:
        sources = [source_asset(spec)]
    if spec.labels is not None:
        sources.append(labels_asset(spec))
    assets = [
        *sources,
        features_asset(spec),
        training_set_asset(spec),
        candidate_model_asset(spec),
        evaluation_asset(spec),
        deployment_asset(spec),
        predictions_asset(spec),
        drift_report_asset(spec),
        live_performance_asset(spec),
        serving_health_asset(spec),
        registry_asset(spec),
        versions_asset(spec),
    ]
    return dg.Definitions.merge(
        dg.Definitions(assets=assets, sensors=[registry_sensor(spec)]),  # type: ignore[arg-type]
        automation_defs(spec),
    )


@dg.scaffold_with(ModelScaffolder)
class ModelComponent(ModelSpec, dg.Component, dg.Resolvable):
    """One model and everything model_ops does with it, declared in YAML (see the module docstring)."""

    def spec(self) -> ModelSpec:
        return ModelSpec.model_validate(self.model_dump(by_alias=True, exclude_unset=False))

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        where = str(Path(context.path) / "defs.yaml") if getattr(context, "path", None) else self.name
        return model_defs(checked(self.spec(), where))
