"""Time-window partitions of a model, without Dagster: keys, windows, and which window a timestamp falls in.

Keys are the windows' first days (``2024-01-01``), exactly as Dagster's daily / weekly / monthly partitions name
them, so the Dagster layer and the library always agree on what a partition holds (a test compares the two).
Weekly windows start on Sunday, Dagster's default. A model without partitions (``partitions: none``) has one
partition, :data:`STATIC`, holding the whole table. Every "window" the monitoring counts (drift persistence,
canary analysis, the production guard) is one of these partitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd

from model_ops.errors import UsageError
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import Cadence

STATIC = "all"


@dataclass(frozen=True)
class Partitioning:
    """``cadence`` windows from ``start`` (open-ended unless ``end``); ``cadence=None`` is the single static one."""

    cadence: Cadence | None
    start: date | None = None
    end: date | None = None

    @classmethod
    def of(cls, spec: ModelSpec) -> Partitioning:
        p = spec.partitioning
        return cls(None) if p is None else cls(p.cadence, p.start_date, p.end_date)

    @property
    def static(self) -> bool:
        return self.cadence is None

    def _floor(self, d: date) -> date:
        if self.cadence is Cadence.MONTHLY:
            return d.replace(day=1)
        if self.cadence is Cadence.WEEKLY:
            return d - timedelta(days=(d.weekday() + 1) % 7)  # back to Sunday
        return d

    def _next(self, d: date) -> date:
        if self.cadence is Cadence.MONTHLY:
            return date(d.year + d.month // 12, d.month % 12 + 1, 1)
        return d + timedelta(days=7 if self.cadence is Cadence.WEEKLY else 1)

    def _first(self) -> date:
        assert self.start is not None
        first = self._floor(self.start)
        return first if first >= self.start else self._next(first)

    def keys(self, until: date | None = None) -> list[str]:
        """Every complete window's key from the start to ``end`` (or to ``until``, default today)."""
        if self.static:
            return [STATIC]
        stop = self.end or until or datetime.now(timezone.utc).date()
        out, d = [], self._first()
        while self._next(d) <= stop:
            out.append(d.isoformat())
            d = self._next(d)
        return out

    def parse(self, key: str) -> date:
        """A partition key as its first day; anything else is a usage error naming what keys look like."""
        if self.static:
            if key != STATIC:
                raise UsageError(f"{key!r} is not a partition of a static model", hint=f"its one partition is {STATIC}")
            return date.min
        try:
            d = date.fromisoformat(str(key))
        except ValueError:
            d = None
        if d is None or self._floor(d) != d or (self.start and d < self._first()) or (self.end and d >= self.end):
            example = self._first().isoformat() if self.start else "2024-01-01"
            raise UsageError(
                f"{key!r} is not a {self.cadence} partition key of this model",
                hint=f"keys are the first day of each window, e.g. {example}",
            )
        return d

    def window(self, key: str) -> tuple[pd.Timestamp, pd.Timestamp]:
        """[start, end) of a partition in UTC."""
        first = self.parse(key)
        return pd.Timestamp(first, tz="UTC"), pd.Timestamp(self._next(first), tz="UTC")

    def key_of(self, times: pd.Series) -> pd.Series:
        """The partition key each timestamp falls in (STATIC for a static model)."""
        if self.static:
            return pd.Series(STATIC, index=times.index, dtype=object)
        ts = pd.to_datetime(times, utc=True)
        days = ts.dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
        if self.cadence is Cadence.MONTHLY:
            floor = days.dt.to_period("M").dt.start_time
        elif self.cadence is Cadence.WEEKLY:
            floor = days - pd.to_timedelta((days.dt.weekday + 1) % 7, unit="D")
        else:
            floor = days
        return floor.dt.strftime("%Y-%m-%d").where(ts.notna(), None)

    def index(self, key: str) -> int:
        """A window's position: consecutive windows have consecutive indexes."""
        if self.static:
            return 0
        d = self.parse(key)
        if self.cadence is Cadence.MONTHLY:
            return d.year * 12 + d.month
        return (d - date(1970, 1, 4)).days // (7 if self.cadence is Cadence.WEEKLY else 1)

    def consecutive(self, keys: list[str]) -> bool:
        idx = [self.index(k) for k in keys]
        return bool(np.all(np.diff(idx) == 1)) if len(idx) > 1 else True
