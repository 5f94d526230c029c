"""The registry's event log: a Delta table written by compare-and-swap.

Every write is read-validate-commit: the writer folds the log up to Delta version V, checks the request against that
state, and commits its events with no automatic retry, so the commit lands at V+1 or not at all. Delta's log
publishes version V+1 with put-if-absent (rename-without-replace on a local disk, ``If-None-Match`` on S3), so two
writers can never both succeed from the same V: the loser re-reads and re-validates. That is what makes version
numbers unique and gap-free and stops lost updates, with no lock server.

Reads are cheap when nothing changed: the probe checks whether Delta commit V+1 exists (one ``stat`` locally, one
``HEAD`` on S3) before touching the table. Every ``COMPACT_EVERY`` commits the writer that made the commit compacts
the small files; delta-rs writes a checkpoint every ``delta.checkpointInterval`` commits and expires old log files,
so a registry with 100k events still opens from a handful of files.
"""

from __future__ import annotations

import logging
import os

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from model_ops.location import Location, s3_client
from model_ops.registry import events as ev

log = logging.getLogger(__name__)

TABLE_CONFIG = {
    "delta.checkpointInterval": "100",
    "delta.logRetentionDuration": "interval 7 days",
    "delta.enableExpiredLogCleanup": "true",
    "delta.deletedFileRetentionDuration": "interval 1 days",
}
COMPACT_EVERY = 100
COMPACT_TARGET_BYTES = 16 << 20
VACUUM_EVERY = 1000


def open_or_create(location: Location, schema: pa.Schema, name: str) -> DeltaTable:
    opts = location.delta_storage_options()
    try:
        return DeltaTable(location.uri, storage_options=opts)
    except TableNotFoundError:
        pass
    if not location.is_s3:
        location.path.mkdir(parents=True, exist_ok=True)
    try:
        DeltaTable.create(
            location.uri, schema, mode="ignore", name=name, configuration=TABLE_CONFIG, storage_options=opts
        )
    except CommitFailedError:
        pass  # another process created it first
    return DeltaTable(location.uri, storage_options=opts)


class DeltaCas:
    """A Delta table written only by compare-and-swap appends, with a cheap "has anything changed?" probe."""

    def __init__(self, location: Location, schema: pa.Schema, name: str) -> None:
        self.location = location
        self.schema = schema
        self.name = name
        self._dt: DeltaTable | None = None

    @property
    def table(self) -> DeltaTable:
        if self._dt is None:
            self._dt = open_or_create(self.location, self.schema, self.name)
        return self._dt

    @property
    def version(self) -> int:
        return self.table.version()

    def has_commit(self, version: int) -> bool:
        """Whether Delta commit ``version`` has been published: one ``stat`` (or ``HEAD``), no table read. Asked
        for this handle's version + 1 it is the "did another writer commit?" probe. Exact only while that commit
        cannot have been expired yet (see ``Registry._sync``): a missing file means "not written" only then."""
        name = f"_delta_log/{version:020d}.json"
        if not self.location.is_s3:
            return os.path.exists(os.path.join(self.location.uri, name))
        from botocore.exceptions import ClientError

        try:
            s3_client().head_object(Bucket=self.location.bucket, Key=self.location.key(name))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def changed(self) -> bool:
        """True when another writer has committed since this object last read the table."""
        return self.has_commit(self.version + 1)

    def refresh(self) -> None:
        self.table.update_incremental()

    def read(self, filter_expr: pc.Expression | None = None, columns: list[str] | None = None) -> pa.Table:
        dataset = self.table.to_pyarrow_dataset()
        return dataset.to_table(filter=filter_expr, columns=columns)

    def try_append(self, data: pa.Table) -> bool:
        """Append iff nobody committed since our snapshot. False means: re-read and try again."""
        try:
            # schema_mode="merge": a table written before a column was added gains it on its next write.
            write_deltalake(
                self.table,
                data,
                mode="append",
                schema_mode="merge",
                commit_properties=CommitProperties(max_commit_retries=0),
            )
        except CommitFailedError:
            self._dt = None  # the handle may be half-updated; reopen from storage
            return False
        except DeltaError as e:
            # The snapshot's own log files were expired under it (a handle idle past the log retention): the
            # write did not happen; the caller rebuilds its state from the table as it is now.
            if "Invalid table version" not in str(e):
                raise
            self._dt = None
            return False
        return True

    def maintain(self) -> None:
        """Compact small files (and now and then vacuum them) after the commit that crossed a boundary."""
        version = self.version
        if version == 0 or version % COMPACT_EVERY:
            return
        try:
            # Files at the target size are left alone, so each compaction merges only the recent small files
            # instead of rewriting the whole table (the default target, 256 MiB, would rewrite everything).
            self.table.optimize.compact(target_size=COMPACT_TARGET_BYTES)
            if version % VACUUM_EVERY == 0:
                self.table.vacuum(dry_run=False)
                self.table.cleanup_metadata()
        except Exception as e:  # maintenance must never fail the write that triggered it
            log.warning("maintenance of %s at version %s did not complete: %s", self.location, version, e)
            self._dt = None


class EventLog(DeltaCas):
    def __init__(self, registry_location: Location) -> None:
        super().__init__(registry_location.child("events"), ev.SCHEMA, "model_ops_registry_events")

    def read_after(self, seq: int) -> pa.Table:
        """Rows with ``seq`` above the given one, at this handle's version."""
        return self.read(pc.field("seq") > seq)

    def read_latest(self, model: str | None = None, until=None) -> pa.Table:  # type: ignore[no-untyped-def]
        """Rows as stored now (refreshes this handle first: do not use the handle a writer's state is tied to)."""
        self.refresh()
        expr = None
        if model is not None:
            expr = pc.field("model") == model
        if until is not None:
            cut = pc.field("ts") <= pa.scalar(until, pa.timestamp("us", tz="UTC"))
            expr = cut if expr is None else expr & cut
        return self.read(expr)
