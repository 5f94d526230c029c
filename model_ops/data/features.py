"""From source rows to model features: conform the raw tables, join flights to the weather, derive the label.

Only what is known before departure becomes a feature; the actual arrival delay is kept beside the features
(as ``arr_delay``) so labels can be joined to predictions after the fact, but it is never a model input.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from model_ops.data.contracts import CheckOutcome, schema_contract
from model_ops.data.delta import PARTITION
from model_ops.specs.schema import ModelSpec

RAW_COLUMNS: dict[str, dict[str, str]] = {
    "flights": {"year": "int", "month": "int", "day": "int", "sched_dep_time": "int", "sched_arr_time": "int",
                "dep_delay": "float", "arr_delay": "float", "carrier": "string", "flight": "int",
                "tailnum": "string", "origin": "string", "dest": "string", "distance": "float",
                "time_hour": "timestamp"},
    "weather": {"origin": "string", "year": "int", "month": "int", "day": "int", "hour": "int", "temp": "float",
                "dewp": "float", "humid": "float", "wind_dir": "float", "wind_speed": "float",
                "wind_gust": "float", "precip": "float", "pressure": "float", "visib": "float",
                "time_hour": "timestamp"},
}
# Columns that identify a row: a null there makes the row unusable, so the contract allows none.
RAW_KEYS = {"flights": ["year", "month", "day", "sched_dep_time", "carrier", "flight", "origin", "dest",
                        "time_hour"],
            "weather": ["origin", "time_hour"]}
_ARROW = {"int": pa.int64(), "float": pa.float64(), "string": pa.string(), "timestamp": pa.timestamp("us", tz="UTC")}
ID_COLUMNS = ["flight_id", "time_hour", "tailnum"]


def with_timestamps(df: pd.DataFrame) -> pd.DataFrame:
    """``time_hour`` arrives as an ISO string; parse it (UTC) so the contract can judge it as a timestamp."""
    if "time_hour" in df.columns and not pd.api.types.is_datetime64_any_dtype(df["time_hour"]):
        parsed = pd.to_datetime(df["time_hour"], errors="coerce", utc=True)
        if parsed.notna().sum() == df["time_hour"].notna().sum():
            df = df.assign(time_hour=parsed)
    return df


def raw_contract(table: str, df: pd.DataFrame, month: str) -> list[CheckOutcome]:
    """The source contract of one month of ``table``: columns and types, no null keys, rows of that month only."""
    what = f"{table} {month}"
    outcomes = [schema_contract(df, RAW_COLUMNS[table], what)]
    if not outcomes[0].passed:
        return outcomes
    if df.empty:
        outcomes.append(CheckOutcome("rows_delivered", False, f"{what}: the source delivered no rows (an empty or "
                                     "missing file?); the month is not stored"))
        return outcomes
    keys = RAW_KEYS[table]
    null_keys = df[keys].isna().any(axis=1)
    if null_keys.any():
        cols = [c for c in keys if df[c].isna().any()]
        outcomes.append(CheckOutcome("keys_present", False, f"{what}: {int(null_keys.sum())} rows have no "
                                     f"{', '.join(cols)}: rows {', '.join(map(str, df.index[null_keys][:5]))}"))
    y, m = int(month[:4]), int(month[5:7])
    other = (df["year"] != y) | (df["month"] != m)
    if other.any():
        outcomes.append(CheckOutcome("rows_in_month", False, f"{what}: {int(other.sum())} rows belong to another "
                                     f"month (e.g. {int(df['year'][other].iloc[0])}-"
                                     f"{int(df['month'][other].iloc[0]):02d}): rows "
                                     f"{', '.join(map(str, df.index[other][:5]))}"))
    return outcomes


def conform(table: str, df: pd.DataFrame, month: str) -> pa.Table:
    """Source rows (already past :func:`raw_contract`) as an Arrow table with the stored schema and batch column."""
    cols = RAW_COLUMNS[table]
    out = {}
    for name, kind in cols.items():
        series = df[name]
        if kind == "timestamp":
            out[name] = pa.array(pd.to_datetime(series, utc=True), type=_ARROW[kind])
        elif kind == "string":
            out[name] = pa.array(series.astype(object).where(series.notna(), None), type=pa.string())
        else:
            out[name] = pa.array(pd.to_numeric(series), type=_ARROW[kind], from_pandas=True)
    out[PARTITION] = pa.array([month] * len(df), type=pa.string())
    return pa.table(out)


def flight_ids(flights: pd.DataFrame) -> pd.Series:
    """A stable id per scheduled flight: date, carrier + flight number, origin and scheduled departure."""
    return (flights["year"].astype(str) + "-" + flights["month"].astype(int).map("{:02d}".format) + "-"
            + flights["day"].astype(int).map("{:02d}".format) + "_" + flights["carrier"].astype(str)
            + flights["flight"].astype(int).astype(str) + "_" + flights["origin"].astype(str) + "_"
            + flights["sched_dep_time"].astype(int).map("{:04d}".format))


def build_features(flights: pd.DataFrame, weather: pd.DataFrame, spec: ModelSpec, month: str) -> pd.DataFrame:
    """One row per flight: ids, the spec's features (typed as declared), the actual outcome and the label."""
    weather = weather.drop_duplicates(["origin", "time_hour"], keep="last")
    wcols = [c for c in RAW_COLUMNS["weather"] if c not in ("year", "month", "day", "hour")]
    df = flights.merge(weather[wcols], on=["origin", "time_hour"], how="left", validate="many_to_one")
    derived = pd.DataFrame({
        PARTITION: month,
        "flight_id": flight_ids(df),
        "time_hour": df["time_hour"],
        "tailnum": df["tailnum"],
        "month_of_year": df["month"].astype("int64"),
        "day_of_week": pd.to_datetime(dict(year=df["year"], month=df["month"], day=df["day"])).dt.dayofweek
                         .astype("int64"),
        "sched_dep_hour": (df["sched_dep_time"] // 100).astype("int64"),
        "sched_arr_hour": (df["sched_arr_time"] // 100).astype("int64"),
        "flight": df["flight"].astype("int64"),
    })
    passthrough = ["carrier", "origin", "dest", "distance", "arr_delay", "dep_delay",
                   *(c for c in wcols if c not in ("origin", "time_hour"))]
    for col in passthrough:
        derived[col] = df[col]
    out = derived[[PARTITION, *ID_COLUMNS]].copy()
    for f in spec.features:
        values = derived[f.name]
        out[f.name] = (values.astype("string").astype(object).where(values.notna(), None) if f.type == "category"
                       else values.astype("float64") if f.type == "float" else values.astype("int64"))
    outcome = derived[spec.target.source_column].astype("float64")
    out["actual_" + spec.target.source_column] = outcome
    out[spec.target.name] = label(outcome, spec).astype("Int8")
    return out.drop_duplicates("flight_id", keep="first").reset_index(drop=True)


def label(values: pd.Series, spec: ModelSpec) -> pd.Series:
    """The binary target; null where the outcome is unknown (cancelled or diverted flights)."""
    t = spec.target.threshold
    ops = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal, "==": np.equal}
    result = pd.Series(ops[spec.target.op](values.to_numpy(), t).astype("int8"), index=values.index).astype("Int8")
    return result.mask(values.isna())


def features_contract_columns(spec: ModelSpec) -> dict[str, str]:
    return {"flight_id": "string", "time_hour": "timestamp", **{f.name: f.type for f in spec.features},
            spec.target.name: "int"}


def to_arrow(features: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(features, preserve_index=False)

