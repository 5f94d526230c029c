"""The data of the two new example models, on their own (no Dagster): what ships in the packages, offline, with the
columns, types, keys and time ranges the declarations rely on, written as Delta tables, and the seasonal shifts the
examples' drift stories tell. Run with ``-s`` to see the figures."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from model_ops.data import examples as ex
from model_ops.data.sources import schema_kinds
from model_ops.specs.schema import ModelSpec, check_against_schema


@pytest.fixture(scope="module")
def seattle() -> pd.DataFrame:
    return ex.seattle_weather()


@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    return ex.flight_duration()


def shares(frame: pd.DataFrame, by: pd.Series) -> pd.DataFrame:
    return pd.crosstab(by, frame["weather"], normalize="index").reindex(
        columns=list(ex.SEATTLE_WEATHER_CLASSES), fill_value=0.0
    )


# ------------------------------------------------------------------------------------------- seattle weather


def test_seattle_weather_rows_columns_types_key_and_time(seattle: pd.DataFrame) -> None:
    assert len(seattle) == 1461  # every day of 2012-2015 (2012 is a leap year)
    assert list(seattle.columns) == ["day", "date", "precipitation", "temp_max", "temp_min", "wind", "weather"]
    assert str(seattle["date"].dtype) == "datetime64[us, UTC]"
    assert seattle[["precipitation", "temp_max", "temp_min", "wind"]].dtypes.eq("float64").all()
    assert seattle["day"].is_unique and seattle["day"].map(type).eq(str).all()
    assert (seattle["day"] == seattle["date"].dt.strftime("%Y-%m-%d")).all()
    assert seattle["date"].min() == pd.Timestamp("2012-01-01", tz="UTC")
    assert seattle["date"].max() == pd.Timestamp("2015-12-31", tz="UTC")
    assert seattle["date"].diff().dropna().eq(pd.Timedelta(days=1)).all()  # no gaps, no repeats
    assert set(seattle["weather"]) == set(ex.SEATTLE_WEATHER_CLASSES)
    assert not seattle.isna().any().any()
    counts = seattle["weather"].value_counts().to_dict()
    print(
        f"\nseattle_weather: {len(seattle)} days {seattle['day'].iloc[0]} .. {seattle['day'].iloc[-1]}; "
        f"classes {counts}"
    )


def test_seattle_weather_class_shares_shift_with_the_seasons_and_the_years(seattle: pd.DataFrame) -> None:
    month = seattle["date"].dt.month
    season = month.map(
        lambda m: "winter (Dec-Feb)" if m in (12, 1, 2) else "summer (Jun-Aug)" if m in (6, 7, 8) else "spring/autumn"
    )
    by_season = shares(seattle, season)
    by_year = shares(seattle, seattle["date"].dt.year)
    wet = seattle["precipitation"] > 0
    wet_by_year = shares(seattle[wet], seattle["date"].dt.year[wet])
    print("\nseattle_weather class shares by season:\n" + by_season.round(3).to_string())
    print("seattle_weather class shares by year:\n" + by_year.round(3).to_string())
    print("labels of wet days (precipitation > 0) by year:\n" + wet_by_year.round(3).to_string())
    summer, winter = by_season.loc["summer (Jun-Aug)"], by_season.loc["winter (Dec-Feb)"]
    assert summer["sun"] > 0.65 and winter["sun"] < 0.35  # seasonal shift of the class shares
    assert winter["rain"] > 2 * summer["rain"] and summer["snow"] == 0 < winter["snow"]
    # The labelling itself changes: a wet day is "rain" in 2012 and "fog" from 2014 on (concept drift).
    assert wet_by_year.loc[2012, "rain"] > 0.8 and wet_by_year.loc[2014, "rain"] < 0.05
    assert wet_by_year.loc[2014, "fog"] > 0.75
    # ... while the weather itself barely moves: the share of wet days stays within 0.39-0.49.
    wet_share = wet.groupby(seattle["date"].dt.year).mean()
    print("share of wet days by year: " + ", ".join(f"{y} {s:.3f}" for y, s in wet_share.items()))
    assert wet_share.between(0.35, 0.5).all()


# ------------------------------------------------------------------------------------------- flight duration


@pytest.mark.slow
def test_flight_duration_rows_columns_types_key_and_time(flights: pd.DataFrame) -> None:
    assert len(flights) == 336_776  # every scheduled 2013 departure
    assert list(flights.columns) == [
        "flight_id",
        "time_hour",
        *ex.FLIGHT_FEATURES,
        "dep_delay",
        "arr_delay",
        "air_time",
    ]
    assert str(flights["time_hour"].dtype) == "datetime64[us, UTC]"
    for col in ("carrier", "origin", "dest", "flight_id"):
        assert flights[col].map(type).eq(str).all(), col
    assert flights[["sched_dep_hour", "day_of_week", "month_of_year"]].dtypes.eq("int64").all()
    floats = ["distance", *ex.WEATHER_COLUMNS, *ex.FLIGHT_KNOWN_AFTER]
    assert flights[floats].dtypes.eq("float64").all()
    assert flights["flight_id"].is_unique
    assert flights["flight_id"].iloc[0] == "2013-01-01_AA1141_JFK_0540"  # built like the built-in source's ids
    assert set(flights["origin"]) == {"EWR", "JFK", "LGA"}
    assert flights["sched_dep_hour"].between(0, 23).all() and flights["day_of_week"].between(0, 6).all()
    assert set(flights["month_of_year"]) == set(range(1, 13))
    first, last = flights["time_hour"].min(), flights["time_hour"].max()
    assert first == pd.Timestamp("2013-01-01 10:00", tz="UTC") and last == pd.Timestamp("2014-01-01 04:00", tz="UTC")
    late = int((flights["time_hour"] >= pd.Timestamp("2014-01-01", tz="UTC")).sum())
    assert late == 88  # 2013-12-31 evening departures, local time
    missing = int(flights["air_time"].isna().sum())
    assert missing == 9430  # cancelled or diverted: kept, with a null target
    nulls = flights[list(ex.WEATHER_COLUMNS)].isna().mean()
    in_2013 = flights["time_hour"] < pd.Timestamp("2014-01-01", tz="UTC")
    month = flights["time_hour"].dt.strftime("%Y-%m")
    worst = flights[in_2013].groupby(month[in_2013])[list(ex.WEATHER_COLUMNS)].apply(lambda g: g.isna().mean()).max()
    assert worst.max() < 0.06  # what max_null_fraction must allow
    print(
        f"\nflight_duration: {len(flights)} flights, time_hour {first} .. {last} ({late} rows on 2014-01-01 UTC), "
        f"{missing} without air_time; weather null fractions {nulls.round(4).to_dict()}, worst 2013 month "
        f"{worst.round(4).to_dict()}"
    )


@pytest.mark.slow
def test_flight_duration_air_time_shifts_with_the_seasons(flights: pd.DataFrame) -> None:
    month = flights["time_hour"].dt.tz_convert("America/New_York").dt.month
    jfk_lax = flights[(flights["origin"] == "JFK") & (flights["dest"] == "LAX")]
    by_month = jfk_lax.groupby(month[jfk_lax.index])["air_time"].mean()
    overall = flights.groupby(month)["air_time"].mean()
    print("\nJFK->LAX mean air_time by month (min): " + ", ".join(f"{m} {v:.1f}" for m, v in by_month.items()))
    print("all flights mean air_time by month (min): " + ", ".join(f"{m} {v:.1f}" for m, v in overall.items()))
    jan, jul = by_month[1], by_month[7]
    print(f"JFK->LAX January {jan:.1f} min vs July {jul:.1f} min: {jan - jul:.1f} min longer in winter")
    assert jan - jul > 25  # headwinds: westbound flights are longer in winter
    assert jfk_lax["distance"].nunique() == 1  # the same route: the shift is not in the features


# ------------------------------------------------------------------------------------------------ offline read


@pytest.mark.slow
def test_both_examples_load_without_any_network(tmp_path: Path) -> None:
    """A fresh interpreter whose sockets refuse to connect and whose urlopen raises loads both tables."""
    code = textwrap.dedent("""
        import socket, urllib.request

        def refuse(*args, **kwargs):
            raise OSError("network access attempted")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        urllib.request.urlopen = refuse

        from model_ops.data import examples as ex
        print(len(ex.seattle_weather()), len(ex.flight_duration()))
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1461", "336776"]


# ------------------------------------------------------------------------------------------------ Delta tables


def test_write_delta_is_one_unpartitioned_table_with_source_kinds(tmp_path: Path, seattle: pd.DataFrame) -> None:
    uri = str(tmp_path / "seattle_weather")
    assert ex.write_delta(seattle, uri) == 0
    table = DeltaTable(uri)
    assert table.metadata().partition_columns == []
    schema = pa.schema(table.schema().to_arrow())
    assert schema.field("date").type == pa.timestamp("us", tz="UTC") and schema.field("day").type == pa.string()
    assert schema_kinds(schema) == {
        "day": "category",
        "date": "timestamp",
        "precipitation": "float",
        "temp_max": "float",
        "temp_min": "float",
        "wind": "float",
        "weather": "category",
    }
    back = table.to_pandas()
    pd.testing.assert_frame_equal(back.sort_values("day").reset_index(drop=True), seattle, check_dtype=False)
    # Writing again replaces the rows in a new version; the old one stays readable.
    assert ex.write_delta(seattle.head(10), uri) == 1
    assert len(DeltaTable(uri).to_pandas()) == 10 and len(DeltaTable(uri, version=0).to_pandas()) == 1461


def test_the_example_declarations_match_the_tables(
    tmp_path: Path, seattle: pd.DataFrame, flights: pd.DataFrame
) -> None:
    for name, frame in (("seattle_weather", seattle), ("flight_duration", flights)):
        example = ex.EXAMPLES[name]
        uri = str(tmp_path / name)
        ex.write_delta(frame, uri)
        kinds = schema_kinds(pa.schema(DeltaTable(uri).schema().to_arrow()))
        spec = ModelSpec.model_validate(
            {
                "name": name,
                "description": example.source,
                "owner": "team:examples",
                "task": example.task,
                "source": {
                    "kind": "delta",
                    "uri": uri,
                    "time_column": example.time_column,
                    "key_column": example.key_column,
                },
                "partitions": {"cadence": "monthly", "start": str(frame[example.time_column].min().date())},
                "features": [{"name": f} for f in example.features],
                "known_after": [c for c in example.known_after if c != example.target],
                "target": {"column": example.target},
                "estimator": {
                    "class": "sklearn.ensemble.HistGradientBoostingClassifier"
                    if example.task != "regression"
                    else "sklearn.ensemble.HistGradientBoostingRegressor"
                },
            }
        )
        assert check_against_schema(spec, kinds) == [], name
        typed = spec.with_schema(kinds)
        print(f"\n{name}: " + ", ".join(f"{f.name}:{f.type}" for f in typed.features))


def test_write_example_names_the_examples(tmp_path: Path) -> None:
    assert ex.write_example("seattle_weather", str(tmp_path / "sw")) == 0
    assert DeltaTable(str(tmp_path / "sw")).history(1)[0].get("model_ops.example") == "seattle_weather"
    with pytest.raises(Exception, match="unknown example 'nope'"):
        ex.write_example("nope", str(tmp_path / "x"))
