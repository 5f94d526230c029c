"""The data layer on the real 2013 data: source contracts, feature building, contracts, Delta months, routing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_ops.data import contracts
from model_ops.data import features as feat
from model_ops.data import nycflights13 as sources
from model_ops.data.delta import Dataset
from model_ops.data.snapshot import choose_window
from model_ops.errors import UsageError
from model_ops.location import resolve_root
from model_ops.ops import routing
from model_ops.specs import get_spec
from model_ops.vocab import Arm

MONTH = "2013-02-01"


@pytest.fixture(scope="module")
def spec():  # type: ignore[no-untyped-def]
    return get_spec("flight_delay")


@pytest.fixture(scope="module")
def raw() -> dict[str, pd.DataFrame]:
    return {t: sources.with_timestamps(sources.load_month(t, MONTH)) for t in sources.TABLES}


@pytest.fixture(scope="module")
def features(spec, raw) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    stored = {t: sources.conform(t, raw[t], MONTH).to_pandas() for t in sources.TABLES}
    return sources.build_features(stored["flights"], stored["weather"], spec, MONTH)


def test_real_month_passes_every_contract(spec, raw, features) -> None:  # type: ignore[no-untyped-def]
    for table in sources.TABLES:
        assert all(o.passed for o in sources.raw_contract(table, raw[table], MONTH))
    outcomes = feat.checks(features, spec, MONTH)
    assert all(o.passed for o in outcomes), contracts.summary(outcomes)
    assert len(features) == len(raw["flights"]) == 24951
    assert features["flight_id"].is_unique


def test_label_follows_the_target_and_is_null_when_unknown(spec, features) -> None:  # type: ignore[no-untyped-def]
    known = features["actual_arr_delay"].notna()
    assert (features.loc[known, "delayed"].astype(int) == (features.loc[known, "actual_arr_delay"] > 15)).all()
    assert features.loc[~known, "delayed"].isna().all() and (~known).sum() > 0


def test_weather_join_matches_origin_and_hour(raw, features) -> None:  # type: ignore[no-untyped-def]
    w = raw["weather"].set_index(["origin", "time_hour"])
    row = features.dropna(subset=["temp"]).iloc[1234]
    assert w.loc[(row["origin"], row["time_hour"]), "temp"] == row["temp"]


def test_missing_column_is_named(raw) -> None:  # type: ignore[no-untyped-def]
    broken = raw["flights"].drop(columns=["distance", "carrier"])
    outcome = sources.raw_contract("flights", broken, MONTH)[0]
    assert not outcome.passed and "missing column(s): carrier, distance" in outcome.message


def test_wrong_types_are_named_with_rows(raw) -> None:  # type: ignore[no-untyped-def]
    broken = raw["flights"].copy()
    broken["distance"] = broken["distance"].astype(str) + " mi"
    outcome = sources.raw_contract("flights", broken, MONTH)[0]
    assert not outcome.passed
    assert "distance is object, expected float, e.g. rows 0, 1, 2, 3, 4 and 24946 more" in outcome.message


def test_rows_of_another_month_and_null_keys_are_named(raw) -> None:  # type: ignore[no-untyped-def]
    broken = raw["flights"].copy()
    broken.loc[7, "month"] = 3
    broken.loc[9, "carrier"] = None
    messages = contracts.summary(sources.raw_contract("flights", broken, MONTH))
    assert "1 rows belong to another month (e.g. 2013-03): rows 7" in messages
    assert "1 rows have no carrier: rows 9" in messages


def test_empty_month_fails_row_count(spec, raw, features) -> None:  # type: ignore[no-untyped-def]
    empty = contracts.summary(sources.raw_contract("flights", raw["flights"].head(0), MONTH))
    assert (
        empty == "flights 2013-02-01: the source delivered no rows (an empty or missing file?); the month is not stored"
    )
    outcomes = {o.name: o for o in feat.checks(features.head(0), spec, MONTH)}
    assert outcomes["schema_contract"].passed
    assert (
        not outcomes["row_count"].passed and "0 rows, the spec requires at least 1000" in outcomes["row_count"].message
    )


def test_out_of_range_and_null_values_are_named(spec, features) -> None:  # type: ignore[no-untyped-def]
    broken = features.copy()
    broken.loc[[3, 5], "temp"] = 999.0
    broken.loc[:, "distance"] = np.where(broken.index < 10, np.nan, broken["distance"])
    broken.loc[11, "origin"] = "SFO"
    outcomes = {o.name: o for o in feat.checks(broken, spec, MONTH)}
    assert "temp outside [-30.0, 120.0] in 2 rows (e.g. 999.0): rows 3, 5" in outcomes["values_in_range"].message
    assert "origin has values outside ['EWR', 'JFK', 'LGA']: ['SFO'] in rows 11" in outcomes["values_in_range"].message
    assert "distance is null in 10 of 24951 rows" in outcomes["no_unexpected_nulls"].message
    assert "rows 0, 1, 2, 3, 4 and 5 more" in outcomes["no_unexpected_nulls"].message


def test_replacing_a_month_leaves_the_others(tmp_path: Path, spec, features) -> None:  # type: ignore[no-untyped-def]
    ds = Dataset(resolve_root(tmp_path).child("datasets", "m", "features"), "m/features")
    ds.replace_partition(MONTH, feat.to_arrow(features))
    other = features.assign(partition="2013-03-01").head(100)
    ds.replace_partition("2013-03-01", feat.to_arrow(other))
    v = ds.replace_partition(MONTH, feat.to_arrow(features.head(10)))
    assert ds.partition_keys() == [MONTH, "2013-03-01"]
    assert len(ds.read([MONTH])) == 10 and len(ds.read(["2013-03-01"])) == 100
    assert len(ds.read([MONTH], version=v - 1)) == len(features)  # time travel keeps the old month
    with pytest.raises(ValueError, match="cannot be written into partition"):
        ds.replace_partition(MONTH, feat.to_arrow(other))
    ds.delete_partition("2013-03-01")
    assert ds.partition_keys() == [MONTH]


def test_training_window_and_holdout(spec) -> None:  # type: ignore[no-untyped-def]
    months = ["2013-01-01", "2013-02-01", "2013-03-01", "2013-04-01"]
    assert choose_window(months, spec) == (months[:3], months[3])
    assert choose_window(months, spec, holdout="2013-02-01") == (["2013-01-01"], "2013-02-01")
    assert choose_window(months, spec, holdout="2013-03-01", window_start="2013-02-01") == (
        ["2013-02-01"],
        "2013-03-01",
    )
    assert choose_window(months, spec, window_start="2013-02-01") == (months[1:3], months[3])
    assert choose_window(months, spec, holdout="2013-02-01", window_end="2013-04-01") == (
        ["2013-01-01", "2013-03-01", "2013-04-01"],
        "2013-02-01",
    )
    with pytest.raises(UsageError, match="at least two partitions"):
        choose_window(months[:1], spec)
    with pytest.raises(UsageError, match="holdout partition 2013-09-01 has no validated features"):
        choose_window(months, spec, holdout="2013-09-01")
    with pytest.raises(UsageError, match="not a monthly partition key"):
        choose_window(months, spec, holdout="May")


def test_routing_is_sticky_uniform_and_monotonic(features) -> None:  # type: ignore[no-untyped-def]
    keys = features["flight_id"]
    a10 = routing.assign_arms(keys, 0.1, salt="m")
    assert (a10 == routing.assign_arms(keys.sample(frac=1, random_state=3).sort_index(), 0.1, salt="m")).all()
    share = (a10 == Arm.CANARY).mean()
    assert 0.09 < share < 0.11
    a50 = routing.assign_arms(keys, 0.5, salt="m")
    assert ((a10 == Arm.CANARY) <= (a50 == Arm.CANARY)).all()  # raising the weight only adds canary keys
    with pytest.raises(ValueError):
        routing.assign_arms(keys, 1.5)
