"""Serving statistics: what each server answered, refused and how fast, per short interval, in a Delta table.

Prometheus (``/metrics``) answers "how is this process doing now"; it forgets on restart and knows nothing of
partitions. The monitoring assets and the alerts need the same figures kept and windowed like everything else, so
the server also accumulates, per model and per (partition, model_version, arm): requests answered, rows served,
errors (requests refused with a 4xx after they were routed to a version and arm, and requests that failed with a
500, which no arm owns), and the latency of every answered request. Every ``seconds`` (``model-ops serve``'s
``stats_seconds``, 10 s by default) a thread takes the interval's figures, appends one row per key to
``<root>/datasets/<model>/serving_stats`` and hands the interval to its listeners (the alerts and the canary guard,
:mod:`model_ops.serving.alerts`). Nothing of this runs on the request path beyond a few additions under a lock.
:meth:`ServingStats.close` (the server's shutdown, SIGTERM included) writes the interval in progress, so the last
seconds before a stop are not lost.

Which partition a row belongs to: the window of the rows' own time, the prediction log's rule (a request carrying
the model's time column is counted in that time's window; one that does not, at the moment it was served). A
refused request has its rows' window when it was refused after routing, else the window of the moment it was
refused. The error rate is errors over requests answered plus errors.

Columns: ``partition, window_start, window_end`` (UTC), ``server`` (host:pid: several servers or workers append
side by side), ``model_version, model_semver, arm`` (empty for a 500 or a refusal before routing), ``requests,
rows, errors``, ``latency_p50_ms, latency_p95_ms, latency_p99_ms`` (exact, over the interval's answered requests)
and ``latency_histogram``: counts of answered requests per bucket of :data:`LATENCY_BOUNDS_MS`, so percentiles
over a whole partition, or a day, are computed by adding histograms (:func:`summarize`), never by averaging
percentiles.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from model_ops.data.delta import PARTITION, Dataset
from model_ops.data.partitions import Partitioning
from model_ops.location import Location
from model_ops.specs.schema import ModelSpec

log = logging.getLogger("model_ops.serving")

# Upper bounds (milliseconds) of the latency buckets; one more bucket counts what is slower than the last bound.
# Roughly geometric, finer where answers usually fall, so a p99 read from a merged histogram is close.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000,
)  # fmt: skip
BUCKETS = len(LATENCY_BOUNDS_MS) + 1
STATS_TABLE = "serving_stats"
ATTEMPTS = 4
# A cap on the feature values kept per interval and arm for drift alerts: the PSI of a window is read from at most
# this many rows per interval (a sample of the traffic, not all of it, under heavy load).
SAMPLE_ROWS = 20_000

STATS_SCHEMA = pa.schema(
    [
        (PARTITION, pa.string()),
        ("window_start", pa.timestamp("us", tz="UTC")),
        ("window_end", pa.timestamp("us", tz="UTC")),
        ("server", pa.string()),
        ("model_version", pa.int64()),
        ("model_semver", pa.string()),
        ("arm", pa.string()),
        ("requests", pa.int64()),
        ("rows", pa.int64()),
        ("errors", pa.int64()),
        ("latency_p50_ms", pa.float64()),
        ("latency_p95_ms", pa.float64()),
        ("latency_p99_ms", pa.float64()),
        ("latency_histogram", pa.list_(pa.int64())),
    ]
)


def server_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def stats_dataset(root: Location, model: str) -> Dataset:
    return Dataset(root.child("datasets", model, STATS_TABLE), f"{model}/{STATS_TABLE}")


def histogram(latencies_ms: Iterable[float]) -> np.ndarray:
    """Counts per bucket of :data:`LATENCY_BOUNDS_MS` (a latency equal to a bound falls in that bound's bucket)."""
    values = np.asarray(list(latencies_ms) if not isinstance(latencies_ms, np.ndarray) else latencies_ms, float)
    idx = np.searchsorted(np.asarray(LATENCY_BOUNDS_MS), values, side="left")
    return np.bincount(idx, minlength=BUCKETS).astype(np.int64)


def histogram_quantile(counts: np.ndarray | list[int], q: float) -> float | None:
    """The ``q`` quantile read from a histogram, interpolated linearly inside its bucket (None when empty). A
    quantile in the open top bucket is reported as the last bound: it is at least that."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return None
    rank = q * total
    cumulative = np.cumsum(c)
    i = int(np.searchsorted(cumulative, rank, side="left"))
    if i >= len(LATENCY_BOUNDS_MS):
        return float(LATENCY_BOUNDS_MS[-1])
    lo = 0.0 if i == 0 else float(LATENCY_BOUNDS_MS[i - 1])
    hi = float(LATENCY_BOUNDS_MS[i])
    before = cumulative[i - 1] if i else 0.0
    inside = c[i]
    share = (rank - before) / inside if inside else 1.0
    return lo + (hi - lo) * min(max(share, 0.0), 1.0)


# ---------------------------------------------------------------------------------------------------- accumulation


# (model, partition, model_version, arm); version and arm are None for errors no arm owns
Key = tuple[str, str, int | None, str | None]


@dataclass
class Cell:
    """One key's figures over one interval."""

    requests: int = 0
    rows: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class Interval:
    """What a server did between ``start`` and ``end`` (UTC), per key, with the feature values drift alerts
    watch: ``samples[(model, version, arm)][feature]`` (at most :data:`SAMPLE_ROWS` rows each)."""

    start: datetime
    end: datetime
    cells: dict[Key, Cell]
    samples: dict[tuple[str, int, str], dict[str, list[np.ndarray]]]
    semvers: dict[tuple[str, int], str]
    final: bool = False

    def by_arm(self, model: str) -> dict[tuple[int | None, str | None], Cell]:
        """The model's figures per (version, arm), added up over partitions."""
        out: dict[tuple[int | None, str | None], Cell] = {}
        for (m, _, version, arm), cell in self.cells.items():
            if m != model:
                continue
            total = out.setdefault((version, arm), Cell())
            total.requests += cell.requests
            total.rows += cell.rows
            total.errors += cell.errors
            total.latencies_ms.extend(cell.latencies_ms)
        return out


def partition_now(spec: ModelSpec, when: datetime) -> str:
    """The model's partition of a moment (its one partition for a static model)."""
    return str(Partitioning.of(spec).key_of(pd.Series([pd.Timestamp(when)])).iloc[0])


class ServingStats:
    """The interval accumulator of one server and the thread that writes it and hands it to the listeners.

    ``specs``: the served models' declarations (the partition of a refusal before routing, the features drift
    alerts watch); errors for a model without one are not kept (nothing is served for it)."""

    def __init__(
        self,
        root: Location,
        specs: dict[str, ModelSpec],
        *,
        seconds: float = 10.0,
        listeners: list[Callable[[Interval], None]] | None = None,
        server: str | None = None,
        write: bool = True,
    ) -> None:
        self.root = root
        self.specs = dict(specs)
        self.seconds = seconds
        self.listeners = list(listeners or [])
        self.server = server or server_id()
        self.write = write
        self._watched = {
            name: sorted({a.feature for a in spec.alerts if a.feature is not None}) for name, spec in specs.items()
        }
        self._lock = threading.Lock()
        self._start = datetime.now(timezone.utc)
        self._cells: dict[Key, Cell] = {}
        self._samples: dict[tuple[str, int, str], dict[str, list[np.ndarray]]] = {}
        self._sampled: dict[tuple[str, int, str], int] = {}
        self._semvers: dict[tuple[str, int], str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flush_lock = threading.Lock()
        self.intervals = 0
        self.written_rows = 0
        self.failed_rows = 0
        self.write_errors = 0
        self.listener_errors = 0

    def describe(self) -> dict[str, Any]:
        """What /status shows: the intervals written and what the alert listeners did."""
        doc: dict[str, Any] = {
            "interval_seconds": self.seconds,
            "intervals": self.intervals,
            "written_rows": self.written_rows,
            "failed_rows": self.failed_rows,
            "write_errors": self.write_errors,
            "listener_errors": self.listener_errors,
        }
        for listener in self.listeners:
            describe = getattr(listener, "describe", None)
            if callable(describe):
                doc.update(describe())
        return doc

    # ------------------------------------------------------------------------------------------------ request path

    def served(self, served: Any, elapsed_seconds: float) -> None:
        """Count one answered request (``app._Served``): per arm, its rows by partition and its latency."""
        model = served.slot.model
        latency = elapsed_seconds * 1000.0
        watched = self._watched.get(model)
        with self._lock:
            for arm, version, part, n in served.logged:
                idx = part["idx"]
                number, arm_name = int(version.number), str(getattr(arm, "value", arm))
                self._semvers[(model, number)] = version.semver
                partitions = served.partitions[idx]
                if len(partitions) == 1 or (partitions[0] == partitions[-1] and (partitions == partitions[0]).all()):
                    groups: Iterable[tuple[Any, int]] = [(partitions[0], n)]
                else:
                    keys, counts = np.unique(partitions.astype(str), return_counts=True)
                    groups = zip(keys.tolist(), counts.tolist())
                groups = list(groups)
                # A request spanning partitions is one request (and one latency), counted where most of its rows
                # are, so sums over partitions count it once; its rows are counted in each partition.
                home = max(range(len(groups)), key=lambda i: groups[i][1])
                for i, (partition, count) in enumerate(groups):
                    cell = self._cell((model, str(partition), number, arm_name))
                    cell.rows += int(count)
                    if i == home:
                        cell.requests += 1
                        cell.latencies_ms.append(latency)
                if watched:
                    self._sample(model, number, arm_name, served.frame, idx, watched)

    def refused(self, model: str, version: str, arm: str, partition: str = "") -> None:
        """Count one refused (``version``/``arm`` set when it was refused after routing) or failed request."""
        spec = self.specs.get(model)
        if spec is None:
            return
        where = partition or partition_now(spec, datetime.now(timezone.utc))
        with self._lock:
            self._cell((model, where, int(version) if version else None, arm or None)).errors += 1

    def _cell(self, key: Key) -> Cell:
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = Cell()
        return cell

    def _sample(self, model: str, number: int, arm: str, frame: Any, idx: np.ndarray, features: list[str]) -> None:
        key = (model, number, arm)
        have = self._sampled.get(key, 0)
        if have >= SAMPLE_ROWS:
            return
        take = idx[: SAMPLE_ROWS - have]
        kept = self._samples.setdefault(key, {})
        for feature in features:
            if feature in frame.columns:
                kept.setdefault(feature, []).append(frame[feature].to_numpy()[take])
        self._sampled[key] = have + len(take)

    # ------------------------------------------------------------------------------------------------ intervals

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-ops-serve-stats", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 60.0) -> None:
        """Stop the thread and write (and judge) the interval in progress: what the server's shutdown ends with."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self.flush(final=True)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.flush()
            except Exception:  # a bug in a flush must not end the statistics; the next interval goes on
                log.exception("model_ops serve: writing the serving statistics failed")

    def take(self, final: bool = False) -> Interval:
        """The interval so far, and a fresh one started."""
        end = datetime.now(timezone.utc)
        with self._lock:
            interval = Interval(self._start, end, self._cells, self._samples, dict(self._semvers), final)
            self._start, self._cells, self._samples, self._sampled = end, {}, {}, {}
        return interval

    def flush(self, final: bool = False) -> Interval:
        """End the interval: append its rows, then hand it to every listener (one flush at a time)."""
        with self._flush_lock:
            interval = self.take(final)
            self.intervals += 1
            if self.write:
                for model, table in self.tables(interval).items():
                    self._append(model, table)
            for listener in self.listeners:
                try:
                    listener(interval)
                except Exception:  # one listener's bug must not silence the others or stop the statistics
                    self.listener_errors += 1
                    log.exception("model_ops serve: judging the serving statistics failed")
            return interval

    def tables(self, interval: Interval) -> dict[str, pa.Table]:
        """The interval's rows, one table per model (models that saw no request have none)."""
        rows: dict[str, list[dict[str, Any]]] = {}
        for (model, partition, version, arm), cell in sorted(
            interval.cells.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0, kv[0][3] or "")
        ):
            lat = np.asarray(cell.latencies_ms, dtype=np.float64)
            p50, p95, p99 = np.quantile(lat, [0.5, 0.95, 0.99]).tolist() if len(lat) else [None, None, None]
            rows.setdefault(model, []).append(
                {
                    PARTITION: partition,
                    "window_start": interval.start,
                    "window_end": interval.end,
                    "server": self.server,
                    "model_version": version,
                    "model_semver": None if version is None else interval.semvers.get((model, version)),
                    "arm": arm,
                    "requests": cell.requests,
                    "rows": cell.rows,
                    "errors": cell.errors,
                    "latency_p50_ms": p50,
                    "latency_p95_ms": p95,
                    "latency_p99_ms": p99,
                    "latency_histogram": histogram(lat).tolist(),
                }
            )
        return {m: pa.Table.from_pylist(r, schema=STATS_SCHEMA) for m, r in rows.items()}

    def _append(self, model: str, table: pa.Table) -> None:
        try:
            append(stats_dataset(self.root, model), table, on_retry=self._retried)
            self.written_rows += table.num_rows
        except Exception as exc:  # after the retries: counted and logged; the server goes on
            self.write_errors += 1
            self.failed_rows += table.num_rows
            log.error("model_ops serve: %d serving-statistics row(s) of %s not written: %s", len(table), model, exc)

    def _retried(self) -> None:
        self.write_errors += 1


def append(dataset: Dataset, table: pa.Table, on_retry: Callable[[], None] | None = None) -> None:
    """Append to a model_ops Delta table partitioned by ``partition`` (created keeping its history, as every
    model_ops table is), retried with backoff on a commit conflict with another server or a passing store error."""
    for attempt in range(ATTEMPTS):
        try:
            dataset.append(table)
            return
        except Exception:
            if attempt == ATTEMPTS - 1:
                raise
            if on_retry is not None:
                on_retry()
            time.sleep(0.2 * 2**attempt)


# ---------------------------------------------------------------------------------------------------- reading


def read_stats(root: Location, model: str, partitions: list[str] | None = None) -> pd.DataFrame:
    """The model's serving statistics (of ``partitions``, else all); an empty frame when none were written."""
    dataset = stats_dataset(root, model)
    if not dataset.exists():
        return pd.DataFrame(columns=STATS_SCHEMA.names)
    if partitions is not None:
        present = set(dataset.partition_keys())
        partitions = [p for p in partitions if p in present]
        if not partitions:
            return pd.DataFrame(columns=STATS_SCHEMA.names)
    return dataset.read(partitions)


def covered_seconds(starts: pd.Series, ends: pd.Series) -> float:
    """Seconds covered by the union of [start, end) intervals (servers side by side cover the same time once)."""
    spans = sorted(zip(pd.to_datetime(starts, utc=True), pd.to_datetime(ends, utc=True)))
    total = 0.0
    current_start, current_end = None, None
    for start, end in spans:
        if current_end is None or start > current_end:
            if current_end is not None and current_start is not None:
                total += (current_end - current_start).total_seconds()
            current_start, current_end = start, end
        elif end > current_end:
            current_end = end
    if current_end is not None and current_start is not None:
        total += (current_end - current_start).total_seconds()
    return total


SUMMARY_COLUMNS = [
    "model_version",
    "model_semver",
    "arm",
    "requests",
    "rows",
    "errors",
    "error_rate",
    "throughput_rps",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "seconds",
]


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (model_version, arm) of serving-statistics rows: requests, rows, errors, error rate (errors over
    requests answered plus errors), throughput (requests answered per second over the intervals the rows cover),
    and p50/p95/p99 latency read from the added histograms. Errors no arm owns (500s, refusals before routing)
    form their own row, with version and arm empty."""
    if frame.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    keyed = frame.assign(
        _version=frame["model_version"].astype("Int64").astype(object).where(frame["model_version"].notna(), None),
        _arm=frame["arm"].where(frame["arm"].notna(), None),
    )
    out = []
    for (version, arm), group in keyed.groupby(["_version", "_arm"], dropna=False, sort=True):
        row = _summary(group)
        row["model_version"] = None if pd.isna(version) else int(version)
        row["arm"] = None if arm is None or (isinstance(arm, float) and np.isnan(arm)) else str(arm)
        out.append(row)
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def overall(frame: pd.DataFrame) -> dict[str, Any]:
    """:func:`summarize`'s figures over every row at once (all versions and arms, unowned errors included)."""
    if frame.empty:
        return {}
    row = _summary(frame)
    return {k: v for k, v in row.items() if k not in ("model_version", "model_semver", "arm")}


def _summary(group: pd.DataFrame) -> dict[str, Any]:
    requests = int(group["requests"].sum())
    errors = int(group["errors"].sum())
    counts = np.sum([np.asarray(h, dtype=np.int64) for h in group["latency_histogram"]], axis=0)
    seconds = covered_seconds(group["window_start"], group["window_end"])
    semvers = group["model_semver"].dropna()
    judged = requests + errors
    return {
        "model_version": None,
        "model_semver": None if semvers.empty else str(semvers.iloc[-1]),
        "arm": None,
        "requests": requests,
        "rows": int(group["rows"].sum()),
        "errors": errors,
        "error_rate": errors / judged if judged else None,
        "throughput_rps": requests / seconds if seconds > 0 else None,
        "latency_p50_ms": histogram_quantile(counts, 0.5),
        "latency_p95_ms": histogram_quantile(counts, 0.95),
        "latency_p99_ms": histogram_quantile(counts, 0.99),
        "seconds": seconds,
    }
