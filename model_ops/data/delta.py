"""Delta Lake datasets: one table per asset, partitioned by the model's partitions, each write a new table version.

Every dataset a model is trained on is named by ``uri@version``: Delta keeps old versions readable (time travel),
so a training set recorded in the registry can be read back exactly as it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Schema, write_deltalake
from deltalake.exceptions import TableNotFoundError
from pyarrow.parquet import filters_to_expression

from model_ops.data.arrow import pool, to_pandas
from model_ops.errors import NotFoundError
from model_ops.location import Location, require_conditional_writes

PARTITION = "partition"
# Every model_ops table keeps its history (log entries and replaced files) for ten years, because lineage points at
# Delta versions: `model-ops reproduce` reads a training snapshot at the version a model recorded, however many
# snapshots came after. Delta's defaults would expire the log after 30 days and allow vacuuming after 7.
HISTORY = {
    "delta.logRetentionDuration": "interval 3650 days",
    "delta.deletedFileRetentionDuration": "interval 3650 days",
}


class Dataset:
    """A Delta table at ``location`` (local path or ``s3://``), partitioned by ``partition`` when it has one."""

    def __init__(self, location: Location, name: str) -> None:
        self.location = location
        self.name = name
        self.uri = location.uri if location.is_s3 else str(location.path)
        self.options = location.delta_storage_options()

    def __repr__(self) -> str:
        return f"Dataset({self.uri})"

    def exists(self) -> bool:
        # Not DeltaTable.is_deltatable: it keeps the GIL for the whole remote listing, stalling every other
        # thread of the process (Dagster's heartbeats, an in-process S3 endpoint) until it returns.
        try:
            DeltaTable(self.uri, storage_options=self.options)
        except TableNotFoundError:
            return False
        return True

    def table(self, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(self.uri, version=version, storage_options=self.options)
        except TableNotFoundError as exc:
            raise NotFoundError(
                f"dataset {self.name} has not been written yet ({self.uri})", hint="materialize its asset first"
            ) from exc

    def version(self) -> int:
        return self.table().version()

    def replace_partition(
        self,
        key: str,
        data: pa.Table | pa.RecordBatchReader,
        metadata: dict[str, str] | None = None,
        *,
        where: str | None = None,
    ) -> int:
        """Replace one partition's rows (all of them, only them) in one atomic commit; returns the new version.

        ``data`` may be a stream of record batches, written as it is read; a batch with rows of another partition
        (or an error raised by the stream) aborts the write with nothing committed.

        ``where``, a SQL condition on the table's columns (``origin = 'batch'``), narrows the rows replaced to the
        partition's rows it holds for: the others stay, whoever wrote them and whenever (an append committed while
        this write ran included). Every row written must satisfy it too, or nothing is written (delta-rs checks).
        A row whose column is null does not satisfy ``column = 'x'`` (SQL's rule), so it stays unless ``where``
        says ``OR column IS NULL``. delta-rs cannot evaluate a condition on a column the table lacks, so the
        columns of ``data`` the table does not have yet are added to it first (null in the rows already there),
        in a commit of their own."""
        require_conditional_writes(self.location.parent)
        failures: list[BaseException] = []
        if isinstance(data, pa.Table):
            _require_partition(data, key)
        else:
            data = pa.RecordBatchReader.from_batches(data.schema, _checked_batches(data, key, failures))
        props = CommitProperties(custom_metadata=metadata) if metadata else None
        try:
            if not self.exists():
                self.append(data, props)
            else:
                if where is not None:
                    self.add_columns(data.schema)
                # merge: a partition may bring columns the table does not have yet (a feature added to the
                # declaration, a class a new version predicts); older partitions read them as null
                write_deltalake(
                    self.uri,
                    data,
                    mode="overwrite",
                    predicate=f"{PARTITION} = '{key}'" + (f" AND ({where})" if where is not None else ""),
                    partition_by=[PARTITION],
                    storage_options=self.options,
                    commit_properties=props,
                    schema_mode="merge",
                )
        except Exception as exc:
            if failures:  # the stream's own error, not the engine's wrapping of it
                raise failures[0] from exc
            raise
        return self.version()

    def append(self, data: pa.Table | pa.RecordBatchReader, commit_properties: CommitProperties | None = None) -> None:
        """Append rows in one commit, creating the table (partitioned by ``partition``, keeping its history, as
        every model_ops table is) when it does not exist yet."""
        require_conditional_writes(self.location.parent)
        write_deltalake(
            self.uri,
            data,
            mode="append",
            partition_by=[PARTITION],
            storage_options=self.options,
            commit_properties=commit_properties,
            configuration=None if self.exists() else HISTORY,
        )

    def add_columns(self, schema: pa.Schema) -> None:
        """Add the columns of ``schema`` the table lacks (nullable, null in its rows), so a condition can name them."""
        require_conditional_writes(self.location.parent)
        table = self.table()
        have = set(table.schema().to_arrow().names)
        missing = [f.with_nullable(True) for f in schema if f.name not in have]
        if missing:
            table.alter.add_columns(Schema.from_arrow(pa.schema(missing)).fields)

    def delete_partition(self, key: str) -> int | None:
        """Remove one partition's rows; returns the new version (None when the table does not exist yet)."""
        require_conditional_writes(self.location.parent)
        if not self.exists():
            return None
        table = self.table()
        if key not in self.partition_keys(table=table):
            return table.version()
        table.delete(f"{PARTITION} = '{key}'")
        return self.version()

    def overwrite(self, data: pa.Table, metadata: dict[str, str] | None = None) -> int:
        """Replace the whole table (unpartitioned snapshots); old versions stay readable. The rows are stored in
        the order given (the engine reorders a table of several chunks, so it is written as one)."""
        require_conditional_writes(self.location.parent)
        if any(column.num_chunks > 1 for column in data.columns):
            data = data.combine_chunks()
        props = CommitProperties(custom_metadata=metadata) if metadata else None
        exists = self.exists()
        write_deltalake(
            self.uri,
            data,
            mode="overwrite",
            schema_mode="overwrite" if exists else None,
            storage_options=self.options,
            commit_properties=props,
            configuration=None if exists else HISTORY,
        )
        return self.version()

    def partition_keys(self, version: int | None = None, table: DeltaTable | None = None) -> list[str]:
        """The partition keys present at ``version`` (default latest), sorted."""
        table = table or self.table(version)
        return sorted({p[PARTITION] for p in table.partitions() if PARTITION in p})

    def read(
        self,
        partitions: Sequence[str] | None = None,
        version: int | None = None,
        columns: list[str] | None = None,
        where: Sequence[tuple[str, str, Any]] = (),
    ) -> pd.DataFrame:
        """Rows of the given partitions (all when None) at ``version`` (default latest), in a stable order."""
        return to_pandas(self.read_arrow(partitions, version, columns, where))

    def read_arrow(
        self,
        partitions: Sequence[str] | None = None,
        version: int | None = None,
        columns: list[str] | None = None,
        where: Sequence[tuple[str, str, Any]] = (),
    ) -> pa.Table:
        """As :meth:`read`, as an Arrow table; ``where`` adds row filters in delta-rs' ``(column, op, value)``
        form, e.g. ``[("split", "=", "train")]``."""
        table = self.table(version)
        if partitions is not None and not partitions:  # no rows asked for: the schema alone, nothing read
            schema = pa.schema(table.schema().to_arrow())
            return (schema if columns is None else pa.schema([schema.field(c) for c in columns])).empty_table()
        filters = [(PARTITION, "in", list(partitions))] if partitions is not None else []
        filters += list(where)
        return table.to_pyarrow_dataset().to_table(
            columns=columns, filter=filters_to_expression(filters) if filters else None, memory_pool=pool()
        )

    def arrow_schema(self, version: int | None = None) -> pa.Schema:
        return pa.schema(self.table(version).schema().to_arrow())

    def schema_hash(self, version: int | None = None) -> str:
        return schema_hash(self.arrow_schema(version))

    def last_commit_metadata(self) -> dict[str, Any]:
        if not self.exists():
            return {}
        history = self.table().history(1)
        return dict(history[0]) if history else {}

    def commit_metadata(self, version: int) -> dict[str, Any]:
        """The commit info (with model_ops' own keys) written with Delta ``version``; empty when expired."""
        for commit in self.table().history():
            if commit.get("version") == version:
                return dict(commit)
        return {}


def _checked_batches(reader: pa.RecordBatchReader, key: str, failures: list[BaseException]) -> Iterator[pa.RecordBatch]:
    try:
        for batch in reader:
            _require_partition(pa.Table.from_batches([batch]), key)
            yield batch
    except Exception as exc:
        failures.append(exc)
        raise


def _require_partition(data: pa.Table, key: str) -> None:
    if PARTITION not in data.column_names:
        raise ValueError(f"data written to a partitioned dataset needs a {PARTITION!r} column")
    values = set(data.column(PARTITION).unique().to_pylist())
    if values - {key}:
        raise ValueError(f"rows for {sorted(values - {key})} cannot be written into partition {key}")


def schema_hash(schema: pa.Schema) -> str:
    """A short, stable fingerprint of column names and types (not metadata), for data versions and lineage."""
    text = ";".join(f"{f.name}:{f.type}:{f.nullable}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


FINGERPRINT_ROWS = 500_000


def frame_fingerprint(df: pd.DataFrame | pa.Table) -> str:
    """Content hash of a frame (values, order and column names), to tell whether a snapshot really changed.

    An Arrow table is hashed as the frame it reads back as, a slice of rows at a time: the hash of each row
    depends on that row alone, so the digest is the same as the whole frame's without converting it at once."""
    h = hashlib.sha256(",".join(map(str, df.columns if isinstance(df, pd.DataFrame) else df.column_names)).encode())
    if isinstance(df, pd.DataFrame):
        h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    else:
        # a slice converts an integer or bool column without nulls to int or bool, the whole column to float or
        # object when it has nulls anywhere: convert every slice the way the whole column converts
        as_whole = {
            f.name: "float64" if pa.types.is_integer(f.type) else object
            for f in df.schema
            if (pa.types.is_integer(f.type) or pa.types.is_boolean(f.type)) and df.column(f.name).null_count
        }
        for start in range(0, max(df.num_rows, 1), FINGERPRINT_ROWS):
            part = df.slice(start, FINGERPRINT_ROWS).to_pandas()
            for name, dtype in as_whole.items():
                part[name] = part[name].astype(dtype)
            h.update(pd.util.hash_pandas_object(part, index=False).values.tobytes())
    return h.hexdigest()[:16]
