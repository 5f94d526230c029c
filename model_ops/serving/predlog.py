"""Served predictions into the model's Delta prediction log, off the request path.

The log is the batch path's own table (``<root>/datasets/<model>/predictions``, partitioned by ``partition``), with
its columns: ``request_id, ts, scored_at, partition, <key column>, model_version, model_semver, arm, served,
prediction, score[, proba_<class>...], latency_ms, <features>, origin``. Drift reports, live performance, canary
analysis and the sensors read it by partition, so live rows are judged exactly like scored batches.

``origin`` tells who wrote a row: ``live`` (this writer) or ``batch`` (the ``predictions`` asset). The two share
partitions: a request served today for a flight of July 2013 lands in 2013-07, beside that month's batch scoring.
A batch re-score replaces the batch rows of its partition and no others (:func:`replace_batch_rows`), so live rows
survive every re-score, also one that commits while they are being appended. Each row is one prediction made: a
key scored by the batch and served live too is two predictions, and readers count both. Rows with no origin
(written before the log recorded one) are labelled by the first re-score of their partition: batch when their
request id is the one the batch path gives that row, else live.

Which partition a live row belongs to: the window its own time falls in, the same rule that cut the batch
partitions. A request that carries the model's time column (``time_hour`` of a flight) is logged under that time
(``ts``) and its window; one that does not is logged at the moment it was served. ``scored_at`` is always when it was
served. A model without partitions logs into its one partition, ``all``.

A handler hands its rows to :meth:`PredictionLog.offer`, which never waits: the rows go into a bounded queue, or,
when the queue is full, they are counted as overflow (reported at /metrics and in the server's log) and dropped, so
a slow disk or store slows nothing but the log. One writer thread takes what is queued, groups it by model and
appends it in one Delta commit per model every ``flush_seconds`` (or sooner past ``batch_rows``, 50,000 by
default: at serving rates the interval decides, and one commit a second costs the writer about two thirds of the
CPU per row of one every 5,000 rows). :meth:`close` (on SIGTERM, through the server's shutdown) writes everything
still queued before it returns, so no accepted row is lost. A failed append is retried with backoff; rows that
still cannot be written are counted as failed. An append that lost a commit race (a batch re-score of the partition
committed first) is written again at once.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pds
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, SchemaMismatchError

from model_ops.data.arrow import to_pandas
from model_ops.data.delta import HISTORY, PARTITION, Dataset
from model_ops.location import Location, require_conditional_writes

log = logging.getLogger("model_ops.serving")

ATTEMPTS = 5


class RowsRefused(ValueError):
    """Rows the prediction log cannot take as they are (not a store that cannot be reached)."""


# What a table refusing the rows themselves raises (as opposed to a store that cannot be reached).
DATA_ERRORS = (
    RowsRefused,
    pa.ArrowInvalid,
    pa.ArrowTypeError,
    pa.ArrowNotImplementedError,
    OverflowError,
    TypeError,
    ValueError,
    SchemaMismatchError,
)
# A commit that lost the race to another (a batch re-score of the partition, another server's append) is written
# again at once: that is progress elsewhere, not a fault, so it does not use up the ATTEMPTS of a failing store.
CONFLICT_ATTEMPTS = 100

ORIGIN = "origin"


class Origin(StrEnum):
    """Who wrote a prediction-log row: the batch ``predictions`` asset, or the live server."""

    BATCH = "batch"
    LIVE = "live"


# The rows a batch re-score of a partition replaces.
BATCH_ROWS = f"{ORIGIN} = '{Origin.BATCH.value}'"
# A re-score's commit that loses a race is made again from a fresh read, this many times at most.
REPLACE_ATTEMPTS = 20


@dataclass(frozen=True)
class Same:
    """A column holding one value in every row of a request (its version, arm, when it was scored): the writer
    builds it once per flush in Arrow, instead of an array of the value per request and a conversion per row."""

    value: Any


@dataclass
class _Item:
    model: str
    given: dict[str, Any] | Callable[[], dict[str, Any]]  # the columns, or how to build them (in the writer)
    rows: int
    _built: dict[str, Any] | None = None

    @property
    def columns(self) -> dict[str, Any]:
        if self._built is None:
            self._built = self.given() if callable(self.given) else self.given
        return self._built


_STOP = object()


def predictions_dataset(root: Location, model: str) -> Dataset:
    """The Delta prediction log of ``model``: the same table as the batch ``predictions`` asset."""
    return Dataset(root.child("datasets", model, "predictions"), f"{model}/predictions")


def replace_batch_rows(
    dataset: Dataset, key: str, rows: pa.Table, is_batch: Callable[[pd.DataFrame], np.ndarray]
) -> int:
    """Replace the batch rows of partition ``key`` with ``rows`` (a batch scoring of it) in one commit, keeping
    every live row of the partition, those appended while this write runs included; returns the new version.

    ``rows`` get ``origin = 'batch'`` (whatever they held). A live append racing the commit never loses its
    rows: the replacement removes only files of the table version it read that hold batch rows, and an append
    adds files of live rows only (their statistics say so, so delta-rs sees no conflict with them either).

    Rows with no origin were written before the log recorded one (or by a server not yet upgraded). Before the
    replacement they are labelled, once: ``is_batch`` tells, per row, whether the batch path wrote it (it knows
    its own request ids), and those rows are marked batch (so they are replaced, never kept twice), the others
    live (so they are kept). See :func:`label_origins`."""
    rows = with_origin(rows, Origin.BATCH)
    attempt = 0
    while True:
        label_origins(dataset, key, is_batch)
        try:
            return dataset.replace_partition(key, rows, where=BATCH_ROWS)
        except CommitFailedError:  # e.g. a live append gave an old table its origin column meanwhile
            attempt += 1
            if attempt == REPLACE_ATTEMPTS:
                raise
            time.sleep(random.uniform(0.0, 0.1))


def label_origins(dataset: Dataset, key: str, is_batch: Callable[[pd.DataFrame], np.ndarray]) -> int:
    """Give the rows of partition ``key`` that have no origin theirs: batch where ``is_batch`` says so, else
    live; returns how many were labelled (0, and nothing written, when every row has its origin).

    Two commits (the batch rows by request id, then the rest), each rewriting only files that hold unlabelled
    rows; a commit that loses a race (a live append, another re-score) is tried again from a fresh read, which
    is safe because labelling a labelled row changes nothing. A table from before the column gets it first."""
    if not dataset.exists():
        return 0
    attempt = 0
    while True:
        try:
            return _label(dataset, key, is_batch)
        except CommitFailedError:
            attempt += 1
            if attempt == REPLACE_ATTEMPTS:
                raise
            time.sleep(random.uniform(0.0, 0.1))


def _label(dataset: Dataset, key: str, is_batch: Callable[[pd.DataFrame], np.ndarray]) -> int:
    table = dataset.table()
    if ORIGIN not in table.schema().to_arrow().names:
        dataset.add_columns(pa.schema([(ORIGIN, pa.string())]))
        table = dataset.table()
    # The nulls are found in the rows read, not by an ``is_null`` filter of the scan: delta-rs' Arrow dataset
    # skips the files written before the column existed for that filter, and finds none of their rows. They are
    # picked out in pandas: filtering the Arrow table read back crashed the process (a segmentation fault, with
    # deltalake 1.6 and pyarrow 26).
    partition = table.to_pyarrow_dataset()
    in_partition = pds.field(PARTITION) == key
    if not to_pandas(partition.to_table(columns=[ORIGIN], filter=in_partition))[ORIGIN].isna().any():
        return 0
    rows = to_pandas(partition.to_table(filter=in_partition))
    found = rows[rows[ORIGIN].isna()].reset_index(drop=True)
    batch = np.asarray(is_batch(found), dtype=bool)
    if len(batch) != len(found):
        raise ValueError(f"is_batch answered for {len(batch)} of {len(found)} rows")
    where = f"{PARTITION} = '{key}' AND {ORIGIN} IS NULL"
    if batch.any():
        request_ids = sorted(set(found["request_id"].to_numpy(dtype=object)[batch]))
        ids = pa.table({"request_id": pa.array(request_ids, type=pa.string())})
        table.merge(
            ids,
            predicate=f"t.{PARTITION} = '{key}' AND t.{ORIGIN} IS NULL AND t.request_id = s.request_id",
            source_alias="s",
            target_alias="t",
        ).when_matched_update({ORIGIN: f"'{Origin.BATCH.value}'"}).execute()
        table = dataset.table()
    if not batch.all():
        table.update(updates={ORIGIN: f"'{Origin.LIVE.value}'"}, predicate=where)
    return len(found)


def with_origin(rows: pa.Table, origin: Origin) -> pa.Table:
    """``rows`` with every ``origin`` set to ``origin`` (the column added when missing)."""
    column = pa.repeat(pa.scalar(origin.value, type=pa.string()), rows.num_rows)
    if ORIGIN in rows.column_names:
        return rows.set_column(rows.column_names.index(ORIGIN), ORIGIN, column)
    return rows.append_column(ORIGIN, column)


class PredictionLog:
    """A bounded queue of served rows and the thread that appends them to each model's prediction log."""

    def __init__(
        self,
        root: Location,
        *,
        capacity: int = 10_000,
        batch_rows: int = 50_000,
        flush_seconds: float = 0.5,
    ) -> None:
        self.root = root
        self.capacity = capacity
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self.overflow_rows = 0
        self.written_rows = 0
        self.failed_rows = 0
        self.write_errors = 0
        self.write_conflicts = 0  # appends that lost a commit race and were written again
        self.writer_cpu_seconds = 0.0  # what assembling and appending the rows cost the writer thread
        self._schemas: dict[str, pa.Schema | None] = {}
        self._handles: dict[str, DeltaTable] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._count_lock = threading.Lock()

    @property
    def depth(self) -> int:
        """Requests' worth of rows waiting to be written."""
        return self._queue.qsize()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-ops-serve-predlog", daemon=True)
        self._thread.start()

    def offer(self, model: str, columns: dict[str, Any] | Callable[[], dict[str, Any]], rows: int) -> bool:
        """Queue one request's rows of one arm; False (and counted as overflow) when the queue is full. Never
        blocks. ``columns`` may be a function building them from what was served: the writer thread calls it, so
        a request pays nothing for the log's column layout."""
        if self._closed:
            with self._count_lock:
                self.overflow_rows += rows
            return False
        try:
            self._queue.put_nowait(_Item(model, columns, rows))
        except queue.Full:
            with self._count_lock:
                first = self.overflow_rows == 0
                self.overflow_rows += rows
            if first:
                log.warning(
                    "model_ops serve: the prediction log's queue is full (%d requests); rows are dropped and "
                    "counted (model_ops_prediction_log_overflow_rows_total) until it drains",
                    self.capacity,
                )
            return False
        return True

    def close(self, timeout: float = 60.0) -> None:
        """Write every queued row, then stop the writer (what SIGTERM ends with)."""
        self._closed = True
        if self._thread is None:
            self._drain_now()
            return
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            log.error("model_ops serve: the prediction log did not finish writing within %.0f s", timeout)

    # ------------------------------------------------------------------------------------------------ writer

    def _run(self) -> None:
        pending: list[_Item] = []
        rows = 0
        first = 0.0
        stop = False
        while not stop:
            wait = self.flush_seconds if not pending else max(0.0, first + self.flush_seconds - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                stop = True
            elif item is not None:
                if not pending:
                    first = time.monotonic()
                pending.append(item)
                rows += item.rows
                if rows < self.batch_rows and time.monotonic() - first < self.flush_seconds:
                    continue
            if pending:
                self._write(pending)
                pending, rows = [], 0
        self._drain_now()

    def _drain_now(self) -> None:
        rest: list[_Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                rest.append(item)
        if rest:
            self._write(rest)

    def _write(self, items: list[_Item]) -> None:
        started = time.thread_time()
        by_model: dict[str, list[_Item]] = {}
        for item in items:
            by_model.setdefault(item.model, []).append(item)
        for model, group in by_model.items():
            self._write_group(model, group)
        self.writer_cpu_seconds += time.thread_time() - started

    def _write_group(self, model: str, group: list[_Item]) -> None:
        """Append ``group`` in one commit. Rows the table cannot take (a value no column type holds, a key of
        another type than the key column's) fail their own request only: the group is halved and each half
        written, down to the requests at fault, which are counted as failed; everyone else's rows are written.
        A store that cannot be reached is retried with backoff, then the group is counted as failed."""
        n = sum(item.rows for item in group)
        try:
            table = with_origin(_table(group), Origin.LIVE)
        except Exception as exc:  # never the writer's end: the rows are counted and the thread goes on
            self._bad_rows(model, group, n, "could not be assembled", exc)
            return
        attempt = conflicts = 0
        while True:
            try:
                self._append(model, table)
                self.written_rows += n
                return
            except CommitFailedError as exc:  # another commit won the race: written again at once
                self.write_conflicts += 1
                self._schemas.pop(model, None)
                conflicts += 1
                if conflicts >= CONFLICT_ATTEMPTS:
                    self.failed_rows += n
                    log.error("model_ops serve: %d prediction-log row(s) of %s not written: %s", n, model, exc)
                    return
                time.sleep(random.uniform(0.0, 0.05))
            except DATA_ERRORS as exc:  # the rows themselves: retrying cannot help, isolating them does
                self.write_errors += 1
                self._schemas.pop(model, None)
                self._bad_rows(model, group, n, "refused by the table", exc)
                return
            except Exception as exc:  # an unreachable store: retried, then counted
                self.write_errors += 1
                self._schemas.pop(model, None)
                attempt += 1
                if attempt == ATTEMPTS:
                    self.failed_rows += n
                    log.error("model_ops serve: %d prediction-log row(s) of %s not written: %s", n, model, exc)
                    return
                time.sleep(0.2 * 2 ** (attempt - 1))

    def _bad_rows(self, model: str, group: list[_Item], n: int, what: str, exc: BaseException) -> None:
        if len(group) > 1:
            half = len(group) // 2
            self._write_group(model, group[:half])
            self._write_group(model, group[half:])
            return
        self.failed_rows += n
        log.error("model_ops serve: %d prediction-log row(s) of %s %s: %s", n, model, what, exc)

    def _append(self, model: str, table: pa.Table) -> None:
        """One append commit. The table's handle is kept between appends and brought up to date incrementally
        (reading only the commits since), so an append does not pay for opening the table and reading its log
        again: on a busy server that opening was most of the log's cost. Any failure drops the handle."""
        dataset = predictions_dataset(self.root, model)
        try:
            if model not in self._schemas:
                self._schemas[model] = dataset.arrow_schema() if dataset.exists() else None
            schema = self._schemas[model]
            handle = self._handles.get(model)
            if schema is not None and handle is None:
                handle = self._handles[model] = dataset.table()
            elif handle is not None:
                handle.update_incremental()
            if schema is not None:
                table = _conform(table, schema)
            self._write_delta(dataset, handle, table, schema)
        except BaseException:
            self._handles.pop(model, None)
            raise
        if schema is None:
            self._schemas[model] = dataset.arrow_schema()

    @staticmethod
    def _write_delta(dataset: Dataset, handle: DeltaTable | None, table: pa.Table, schema: pa.Schema | None) -> None:
        require_conditional_writes(dataset.location.parent)
        write_deltalake(
            handle if handle is not None else dataset.uri,
            table,
            mode="append",
            partition_by=[PARTITION],
            schema_mode="merge",
            storage_options=dataset.options,
            configuration=HISTORY if schema is None else None,
        )


def _table(items: list[_Item]) -> pa.Table:
    """The queued rows as one Arrow table, column by column (no frame in between: the writer shares the process
    with the requests). ``datetime64`` columns are UTC times; a column some items lack is null for their rows; a
    :class:`Same` column is one value per item, repeated in Arrow."""
    names = list(dict.fromkeys(n for item in items for n in item.columns))
    arrays = [_column(items, name) for name in names]
    return pa.table(arrays, names=names)


def _column(items: list[_Item], name: str) -> pa.Array:
    given = [item.columns.get(name) for item in items]
    if all(isinstance(g, Same) for g in given):
        return _repeated([g.value for g in given if isinstance(g, Same)], [item.rows for item in items])
    parts = [
        np.full(item.rows, None, dtype=object)
        if g is None
        else np.full(item.rows, g.value)
        if isinstance(g, Same)
        else np.asarray(g)
        for item, g in zip(items, given, strict=True)
    ]
    values = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if values.dtype.kind == "M":
        return pa.array(values.astype("datetime64[us]"), type=pa.timestamp("us", tz="UTC"))
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # values of mixed types (keys sent as numbers and as text)
        return pa.array([None if v is None else str(v) for v in values.tolist()], type=pa.string())


def _repeated(values: list[Any], counts: list[int]) -> pa.Array:
    """``values[i]`` repeated ``counts[i]`` times: each distinct value converted once, the rows by index."""
    index: dict[Any, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int32, count=len(values))
    distinct = list(index)
    if len(distinct) == 1:
        one = distinct[0]
        scalar = (
            pa.scalar(one.astype("datetime64[us]").item(), type=pa.timestamp("us", tz="UTC"))
            if isinstance(one, np.datetime64)
            else pa.scalar(one.item() if isinstance(one, np.generic) else one)
        )
        return pa.repeat(scalar, sum(counts))
    codes = np.repeat(codes, counts)
    dictionary = _column([_Item("", {"v": np.asarray(distinct)}, len(distinct))], "v")
    return pa.DictionaryArray.from_arrays(pa.array(codes), dictionary).dictionary_decode()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Columns the log already has take its types (a request's JSON integer in a float feature, a timestamp's
    unit), so live appends never change the table's schema. A column it cannot take (text where the key column
    holds integers) raises :class:`RowsRefused`, so the writer isolates the requests at fault."""
    columns = []
    for name in table.column_names:
        col = table.column(name)
        idx = schema.get_field_index(name)
        if idx >= 0 and col.type != schema.field(idx).type:
            try:
                col = col.cast(schema.field(idx).type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise RowsRefused(f"column {name!r} cannot be stored as {schema.field(idx).type}: {exc}") from None
        columns.append(col)
    return pa.table(columns, names=table.column_names)
