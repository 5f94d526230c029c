"""From source rows to a model's features: select and type the declared columns, derive the label, check them.

One function for every source kind: the rows of one partition (read from a Delta table, Parquet files, an
upstream asset, or the built-in flights joined to the weather) become one row per key with the partition key, the
key and time columns, the declared features typed as declared, and the label. Columns the spec lists as
``known_after`` never become features; the raw target column is kept beside a derived label (as ``actual_<col>``)
so outcomes can be inspected after the fact, but it is never a model input.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from model_ops.data import contracts
from model_ops.data.contracts import CheckOutcome
from model_ops.data.delta import PARTITION
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import FeatureType, Task

FEATURE_CHECKS = {
    "schema_contract": "Every declared feature is present with its declared type; key, time and label present.",
    "no_unexpected_nulls": "Null fractions stay within each feature's max_null_fraction (0 unless the spec says); "
    "no null keys or times.",
    "values_in_range": "Numeric features inside the spec's [min, max]; categories inside `allowed`.",
    "keys_unique": "Each key appears once in the partition (routing, late labels and request ids rely on it).",
    "row_count": "At least training.min_rows_per_partition rows: catches empty and truncated deliveries.",
}


def typed(values: pd.Series, kind: FeatureType) -> pd.Series:
    """A source column as a feature: categories as Python strings (None for missing), numbers as floats or ints
    (nullable ints stay floats so a missing value survives), bools as 0/1."""
    if kind is FeatureType.CATEGORY:
        if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
            missing = values.isna()
            return values.where(~missing, None) if missing.any() else values  # already strings: no copy
        return values.astype("string").astype(object).where(values.notna(), None)
    if kind is FeatureType.INT and not values.isna().any():
        return pd.to_numeric(values).astype("int64", copy=False)
    return pd.to_numeric(values.astype("float64") if values.dtype == bool else values).astype("float64", copy=False)


def label(values: pd.Series, spec: ModelSpec) -> pd.Series:
    """The label from the target column: derived by the spec's rule (null where the outcome is unknown), or the
    column itself typed for the task."""
    t = spec.target
    if t.derived:
        ops = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal, "==": np.equal}
        numeric = pd.to_numeric(values, errors="coerce").astype("float64")
        result = pd.Series(
            ops[t.op](numeric.to_numpy(), t.threshold).astype("int8"),  # type: ignore[index]
            index=values.index,
        ).astype("Int8")
        return result.mask(numeric.isna())
    if spec.task is Task.REGRESSION:
        return pd.to_numeric(values, errors="coerce").astype("float64")
    if spec.task is Task.MULTICLASS:
        if pd.api.types.is_integer_dtype(values) or pd.api.types.is_bool_dtype(values):
            return values.astype("Int64")  # integer class codes stay integers (XGBoost needs 0..K-1)
        return values.astype("string").astype(object).where(values.notna(), None)
    if pd.api.types.is_bool_dtype(values):
        return values.astype("Int8")
    return values


def select(rows: pd.DataFrame, spec: ModelSpec, partition: str) -> pd.DataFrame:
    """One row per key: partition, key, time, the declared features and the label (pure: tested directly).

    Missing columns are left out rather than raising, so :func:`checks` can say which ones are missing. Columns
    already of their feature's type are taken as they are, not copied."""
    key, time = spec.key_column, spec.time_column
    index = pd.RangeIndex(len(rows))
    partitions = np.empty(len(rows), dtype=object)
    partitions.fill(partition)  # one string object for every row (np.full would make one per row)
    out: dict[str, object] = {PARTITION: partitions}
    if key in rows.columns:
        out[key] = rows[key].to_numpy()
    if time in rows.columns:
        out[time] = pd.to_datetime(rows[time], utc=True).array
    for f in spec.features:
        if f.name in rows.columns:
            out[f.name] = (typed(rows[f.name], f.type) if f.type is not None else rows[f.name]).array
    target = spec.target.column
    if target in rows.columns:
        if spec.target.derived:
            out["actual_" + target] = pd.to_numeric(rows[target], errors="coerce").astype("float64").array
        out[spec.label] = label(rows[target], spec).array
    return pd.DataFrame(out, index=index, copy=False)


def contract_columns(spec: ModelSpec) -> dict[str, str]:
    """Column -> kind that every stored partition of features must have."""
    cols: dict[str, str] = {spec.time_column: "timestamp"}
    cols.update({f.name: str(f.type or "any") for f in spec.features})
    if spec.target.derived:
        cols[spec.label] = "int"
    elif spec.task is Task.REGRESSION:
        cols[spec.label] = "float"
    return cols


def checks(df: pd.DataFrame, spec: ModelSpec, partition: str) -> list[CheckOutcome]:
    """The feature contracts of one partition (pure: tested directly)."""
    what = f"{spec.name} features {partition}"
    required = {spec.key_column: "any", **contract_columns(spec)}
    if spec.label not in df.columns and spec.labels is None:
        required[spec.label] = "any"
    schema = contracts.schema_contract(
        df, {c: k for c, k in required.items() if k != "any"}, what, present=list(required)
    )
    limits = {f.name: f.max_null_fraction for f in spec.features} | {spec.key_column: 0.0, spec.time_column: 0.0}
    return [
        schema,
        contracts.nulls(df, limits, what),
        contracts.value_ranges(df, spec, what),
        contracts.unique(df, spec.key_column, what),
        contracts.row_count(df, spec.training.min_rows_per_partition, what),
    ]


def to_arrow(features: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(features, preserve_index=False)


STREAM_ROWS = 262_144


def to_arrow_stream(features: pd.DataFrame, rows: int = STREAM_ROWS) -> pa.RecordBatchReader:
    """The frame as a stream of record batches of one schema (inferred from the whole frame, as
    :func:`to_arrow` infers it), so writing it never holds a second copy of every row."""
    schema = pa.Schema.from_pandas(features, preserve_index=False)
    batches = (
        pa.RecordBatch.from_pandas(features.iloc[i : i + rows], schema=schema, preserve_index=False)
        for i in range(0, len(features), rows)
    )
    return pa.RecordBatchReader.from_batches(schema, batches)
