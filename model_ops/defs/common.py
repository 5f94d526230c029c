"""Shared pieces of the per-model asset factories: asset keys, attribution and metadata helpers."""

from __future__ import annotations

import json
import math
from typing import Any

import dagster as dg
import pandas as pd

from model_ops.specs.schema import ModelSpec


# Run tags set by the sensors: who asked for a run, why, and the evidence (JSON).
TRIGGER_TAG = "model_ops/trigger"
REASON_TAG = "model_ops/reason"
EVIDENCE_TAG = "model_ops/evidence"


def key(spec: ModelSpec, name: str) -> dg.AssetKey:
    """``flight_delay/features`` and so on: every asset of a model is prefixed with the model's name."""
    return dg.AssetKey([spec.name, name])


def common(spec: ModelSpec) -> dict[str, Any]:
    return {"group_name": spec.name, "owners": [spec.owner]}


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


def json_safe(value: Any) -> Any:
    """A value the UI's JSON metadata accepts: NaN becomes null, anything unknown its string form."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.loads(json.dumps(clean(value), default=str))
