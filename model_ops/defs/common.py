"""Shared pieces of the per-model asset factories: asset keys, attribution and metadata helpers."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pandas as pd

from model_ops.data.delta import Dataset
from model_ops.data.partitions import STATIC
from model_ops.data.sources import schema_kinds
from model_ops.defs.resources import run_window
from model_ops.specs.schema import ModelSpec, SchemaMismatch
from model_ops.vocab import RunTag

# Run tags set by the sensors: who asked for a run, why, and the evidence (JSON).
TRIGGER_TAG = RunTag.TRIGGER.value
REASON_TAG = RunTag.REASON.value
EVIDENCE_TAG = RunTag.EVIDENCE.value


def key(spec: ModelSpec, name: str) -> dg.AssetKey:
    """``flight_delay/features`` and so on: every asset of a model is prefixed with the model's name."""
    return dg.AssetKey([spec.name, name])


def delta_version(version: int) -> dg.TextMetadataValue:
    """The Delta table version a write made, as materialization metadata: text, because it names a state of the
    table (like a commit) and the UI plots every number as a measure."""
    return dg.MetadataValue.text(str(version))


def attribution(spec: ModelSpec) -> dict[str, Any]:
    """Group and owner of every asset of a model, as the UI shows them."""
    return {"group_name": spec.name, "owners": [spec.owner]}


def business_window(context: dg.AssetExecutionContext) -> dict[str, str]:
    """The window of the world a run stands for (the window a sensor decided on, or the run's partition) as
    materialization metadata, so the history of an unpartitioned asset (a retrain's snapshot, candidate,
    evaluation) reads by month, as the registry's events do (``Registry.business_window``)."""
    window = run_window(context.run.tags)
    return {"business_window": window} if window else {}


def partition_key(context: dg.AssetExecutionContext) -> str:
    """The run's partition key, or the single partition of a model without partitions."""
    return context.partition_key if context.has_partition_key else STATIC


def column_schema(df: pd.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(str(c), str(t)) for c, t in df.dtypes.items()])


def md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_none_"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(out)


def typed_spec(spec: ModelSpec, dataset: Dataset) -> ModelSpec:
    """The declaration with every feature's type: as declared, else as stored in ``dataset`` (features or a
    training snapshot), whose columns were typed from the source's schema when they were selected."""
    if spec.typed:
        return spec
    try:
        return spec.with_schema(schema_kinds(dataset.arrow_schema()), features_only=True)
    except SchemaMismatch as exc:
        raise dg.Failure(f"{spec.name}: the declaration does not match {dataset.uri}: {exc}") from exc
