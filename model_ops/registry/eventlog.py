"""The registry's event log: a Delta table written by compare-and-swap.

Every write is read-validate-commit: the writer folds the log up to Delta version V, checks the request against that
state, and commits its events with no automatic retry, so the commit lands at V+1 or not at all. Delta's log
publishes version V+1 with put-if-absent (rename-without-replace on a local disk, ``If-None-Match`` on S3), so two
writers can never both succeed from the same V: the loser re-reads and re-validates. That is what makes version
numbers unique and gap-free and stops lost updates, with no lock server.

Reads are cheap when nothing changed: the probe checks whether Delta commit V+1 exists (one ``stat`` locally, one
``HEAD`` on S3) before touching the table. Writes do no upkeep beyond the checkpoint delta-rs writes every
``delta.checkpointInterval`` commits: maintenance (``model-ops maintain``, the Dagster
schedule) compacts the one-file-per-commit log into large files, checkpoints and vacuums it (:meth:`DeltaCas.maintain`),
so a registry with 100k events still opens from a handful of files and a register's cost does not depend on when
upkeep last ran.

On S3 a commit can land with its reply lost (a reset connection, or the engine re-sending a put-if-absent whose
first copy landed and then being told the version exists). Each commit therefore carries a unique id in its
``commitInfo``, and a write that does not report success reads commit V+1 back to learn the truth; see
:meth:`DeltaCas.try_append`.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from model_ops.location import (
    Deadline,
    Location,
    is_transient,
    object_exists,
    require_conditional_writes,
    retry_transient,
    s3_client,
)
from model_ops.registry import events as ev

log = logging.getLogger(__name__)

TABLE_CONFIG = {
    "delta.checkpointInterval": "100",
    "delta.logRetentionDuration": "interval 7 days",
    "delta.enableExpiredLogCleanup": "true",
    "delta.deletedFileRetentionDuration": "interval 1 days",
}
# Local roots: commit files below the second-newest checkpoint and older than this are deleted by upkeep (see
# DeltaCas.expire_commits). Listing a local _delta_log reads the whole directory (delta-rs lists it on every
# commit), so a log that keeps a week of commits makes each write slower as it goes: 65 ms at the first and 165 ms
# after 2,500 commits in a test, and 3,193 files cost a bare append 124 ms against 36 ms for 94 files.
EXPIRE_MIN_AGE_SECONDS = 30.0
COMMIT_ID_KEY = "model_ops.commit_id"  # in each commit's commitInfo: which writer's commit a version is
COMPACT_TARGET_BYTES = 16 << 20


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


def _checkpoints(names: list[str]) -> list[int]:
    """The versions that have a checkpoint among the ``_delta_log`` file ``names``, ascending."""
    return sorted({int(n[:20]) for n in names if n[:20].isdigit() and ".checkpoint." in n})


class DeltaCas:
    """A Delta table written only by compare-and-swap appends, with a cheap "has anything changed?" probe."""

    def __init__(self, location: Location, schema: pa.Schema, name: str) -> None:
        self.location = location
        self.schema = schema
        self.name = name
        self._dt: DeltaTable | None = None
        self._pinned: int | None = None  # the version to reopen at, set by try_append after an unclear write
        self.landed: int | None = None  # the version try_append's last successful commit landed at

    @property
    def table(self) -> DeltaTable:
        if self._dt is None:
            if self._pinned is not None:
                opts = self.location.delta_storage_options()
                self._dt = DeltaTable(self.location.uri, version=self._pinned, storage_options=opts)
            else:
                self._dt = open_or_create(self.location, self.schema, self.name)
            self._pinned = None
        return self._dt

    @property
    def version(self) -> int:
        if self._dt is None and self._pinned is not None:
            return self._pinned  # known without a round trip: the caller folds its own commit in at this version
        return self.table.version()

    def has_commit(self, version: int) -> bool:
        """Whether Delta commit file ``version`` is there: one ``stat`` (or ``HEAD``), no table read."""
        return object_exists(self.location, f"_delta_log/{version:020d}.json")

    def moved_past(self, version: int) -> bool:
        """Whether the log has commits beyond ``version``: the "did another writer commit?" probe, one ``stat``
        (or ``HEAD``) when something did, two when nothing did.

        Commit ``version + 1`` exists, or commit ``version`` itself was expired: upkeep deletes old commit files
        only as an unbroken run from the oldest (``expire_commits``), so ``version + 1`` cannot have been deleted
        while ``version`` remains. A newest commit that vanished otherwise is damage, not a change: the next write
        finds it and refuses (``Registry._newest_commit_problem``). On S3, where commits are only expired by Delta's
        own log retention (7 days), the second probe is skipped; there ``Registry._sync`` keeps the probe exact by
        refolding a state older than ``STALE_AFTER``."""
        return self.has_commit(version + 1) or (version >= 0 and self.expired(version))

    def expired(self, version: int) -> bool:
        """Whether commit ``version`` is gone because upkeep expired it, not lost: only commits below a checkpoint
        are expired, so one is there beyond it (listed, not read from ``_last_checkpoint``, which two checkpoint
        writers finishing out of order can set back). One ``stat`` while the commit is there."""
        if self.location.is_s3 or self.has_commit(version):
            return False
        try:
            names = os.listdir(self.location.path / "_delta_log")
        except OSError:
            return False
        return any(c > version for c in _checkpoints(names))

    def checkpoint_version(self) -> int | None:
        """The version ``_delta_log/_last_checkpoint`` names (local roots), or None."""
        try:
            with open(os.path.join(self.location.uri, "_delta_log", "_last_checkpoint"), "rb") as f:
                return int(json.loads(f.read())["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def expire_commits(self, min_age_seconds: float | None = None) -> int:
        """Delete the commit and checkpoint files below the second-newest checkpoint that are older than
        ``min_age_seconds`` (local roots; S3 lists from an offset, so its log needs no such care). Returns how many
        files went.

        Every reader loads the table from its newest checkpoint on, and one that read the previous
        ``_last_checkpoint`` still finds every file from that checkpoint on. Files go oldest first and the run
        stops at the first one too young to go, so what is deleted is always an unbroken run from the oldest
        commit: the probe of ``moved_past`` relies on it. A writer whose base commit went while it was writing is
        caught by ``try_append``'s read-back. Run under the upkeep lock (one expiry at a time)."""
        if self.location.is_s3:
            return 0
        log_dir = self.location.path / "_delta_log"
        try:
            names = os.listdir(log_dir)
        except FileNotFoundError:
            return 0
        checkpoints = _checkpoints(names)
        newest = self.checkpoint_version()
        if newest is None or len(checkpoints) < 2:
            return 0
        below = [c for c in checkpoints if c <= newest]
        if len(below) < 2:
            return 0
        keep_from = below[-2]
        cutoff = time.time() - (EXPIRE_MIN_AGE_SECONDS if min_age_seconds is None else min_age_seconds)
        by_version: dict[int, list[str]] = {}
        for n in names:
            if n[:20].isdigit() and int(n[:20]) < keep_from:
                by_version.setdefault(int(n[:20]), []).append(n)
        gone = 0
        for version in sorted(by_version):
            files = by_version[version]
            try:
                if any((log_dir / n).stat().st_mtime > cutoff for n in files):
                    break
                # The checkpoint first, the commit last: a version never loses its commit while newer ones keep it.
                for n in sorted(files, key=lambda n: n.endswith(".json")):
                    (log_dir / n).unlink(missing_ok=True)
                    gone += 1
            except FileNotFoundError:
                continue
        return gone

    def commit_problem(self, version: int) -> str | None:
        """What is wrong with the commit file of ``version`` (empty, not JSON, no actions), or None."""
        from model_ops.registry.repair import commit_file_problem

        name = f"_delta_log/{version:020d}.json"
        try:
            if not self.location.is_s3:
                with open(os.path.join(self.location.uri, name), "rb") as f:
                    raw = f.read()
            else:
                raw = retry_transient(
                    lambda: (
                        s3_client().get_object(Bucket=self.location.bucket, Key=self.location.key(name))["Body"].read()
                    )
                )
        except FileNotFoundError:
            return f"commit {version} of the event log is missing"
        return commit_file_problem(version, raw)

    def changed(self) -> bool:
        """True when another writer has committed since this object last read the table."""
        return self.moved_past(self.version)

    def refresh(self) -> None:
        retry_transient(lambda: self.table.update_incremental())

    def read(self, filter_expr: pc.Expression | None = None, columns: list[str] | None = None) -> pa.Table:
        """The rows (a listing or a body cut mid-stream on S3 is read again, until the S3 deadline)."""
        return retry_transient(lambda: self.table.to_pyarrow_dataset().to_table(filter=filter_expr, columns=columns))

    def try_append(self, data: pa.Table) -> bool:
        """Append iff nobody committed since our snapshot. False means: re-read and try again.

        What counts is what storage holds, not what the reply said: a write can fail with its commit in place (the
        reply was lost; or the engine re-sent a put-if-absent whose first copy had landed, and heard that the
        version exists). So the commit carries a unique id, and whenever the write does not report success, commit
        V+1 is read back: ours → True, as after a plain success; another writer's → False (the caller re-validates
        against it); none yet, after a transient failure → the same commit is tried again from the same snapshot
        until the deadline, then :class:`S3UnavailableError`. Every attempt targets V+1 and only V+1, and put-if-
        absent lets at most one of them land, so a retry can never commit the events twice."""
        require_conditional_writes(self.location.parent)
        base = self.version
        commit_id = uuid.uuid4().hex
        props = CommitProperties(max_commit_retries=0, custom_metadata={COMMIT_ID_KEY: commit_id})
        deadline = Deadline()
        while True:
            failure: BaseException | None = None
            try:
                # schema_mode="merge": a table written before a column was added gains it on its next write.
                write_deltalake(self.table, data, mode="append", schema_mode="merge", commit_properties=props)
                self.landed = base + 1
                if base >= 0 and not self.location.is_s3 and not self.has_commit(base):
                    return self._landed_after_expiry(base, data)
                return True
            except CommitFailedError:
                pass  # V+1 exists: another writer's (a lost race) or ours (a re-sent commit); the read-back tells
            except DeltaError as e:
                # The snapshot's own log files were expired under it (a handle idle past the log retention): the
                # write did not happen; the caller rebuilds its state from the table as it is now.
                if "Invalid table version" in str(e):
                    self._dt, self._pinned = None, None
                    return False
                if not is_transient(e):
                    raise
                failure = e
            except Exception as e:
                if not is_transient(e):
                    raise
                failure = e
            owner = self._commit_owner(base + 1, deadline)
            self._dt = None  # the handle may be half-updated; reopen from storage
            if owner == commit_id:
                self._pinned = self.landed = base + 1
                return True
            if owner is not None or failure is None:
                self._pinned = None
                return False
            deadline.wait(failure)
            self._pinned = base  # the retry starts from the same snapshot, so it can only land at V+1

    def _landed_after_expiry(self, base: int, data: pa.Table) -> bool:
        """Our commit landed as ``base + 1``, and commit ``base`` is gone: upkeep expired it while we wrote. Then
        ``base + 1`` may have been expired too before we put ours, and ours sits below a checkpoint that every
        reader starts from, never to be seen. Whether it counts is whether a fresh read of the table holds our
        rows; if not, the write lost its race (its file is left below the checkpoint for the next expiry). Either
        way the handle reopens at the newest version, so the caller records ``landed`` (base + 1) as where its own
        fold stands, and the next probe folds in the commits of others after ours."""
        self._dt, self._pinned = None, None
        if "seq" not in data.column_names or "hash" not in data.column_names or not data.num_rows:
            return False
        first = data.column("seq")[0].as_py()
        seen = self.read(pc.field("seq") == first, columns=["hash"]).column("hash").to_pylist()
        return seen == [data.column("hash")[0].as_py()]

    def _commit_owner(self, version: int, deadline: Deadline) -> str | None:
        """The commit id recorded in Delta commit ``version`` ('' for a commit without one), None when there is
        no such commit. Read with retries: the answer decides whether a write is reported as done."""
        name = f"_delta_log/{version:020d}.json"
        if self.location.is_s3:
            from botocore.exceptions import ClientError

            def fetch() -> bytes | None:
                try:
                    obj = s3_client().get_object(Bucket=self.location.bucket, Key=self.location.key(name))
                    return bytes(obj["Body"].read())
                except ClientError as e:
                    if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                        return None
                    raise

            text = retry_transient(fetch, deadline)
        else:
            try:
                with open(os.path.join(self.location.uri, name), "rb") as f:
                    text = f.read()
            except FileNotFoundError:
                text = None
        if text is None:
            return None
        for line in text.splitlines():
            try:
                action = json.loads(line)
            except ValueError:
                continue  # a damaged or truncated line: not ours to judge here (fsck reports the log)
            if isinstance(action, dict) and isinstance(action.get("commitInfo"), dict):
                return str(action["commitInfo"].get(COMMIT_ID_KEY) or "")
        return ""

    def maintain(self, *, vacuum: bool = True, expire: bool = False) -> dict[str, Any]:
        """Compact the small files (one per commit) into files of ``COMPACT_TARGET_BYTES``, write a checkpoint,
        and vacuum the files compaction replaced once they are past the table's retention. Run by maintenance,
        never by a write: each step is its own Delta commit, so a writer racing it only loses one compare-and-swap
        and re-reads. Returns what it did."""
        self.refresh()
        # Files at the target size are left alone, so each compaction merges only the recent small files instead
        # of rewriting the whole table (the default target, 256 MiB, would rewrite everything).
        metrics = self.table.optimize.compact(target_size=COMPACT_TARGET_BYTES)
        self.table.create_checkpoint()
        vacuumed = self.table.vacuum(dry_run=False) if vacuum else []
        if vacuum:
            self.table.cleanup_metadata()
        expired = self.expire_commits() if expire else 0
        self._dt = None  # the next read reopens at the newest version
        return {
            "files_added": int(metrics.get("numFilesAdded", 0)),
            "files_removed": int(metrics.get("numFilesRemoved", 0)),
            "files_vacuumed": len(vacuumed),
            "log_files_expired": expired,
        }


class EventLog(DeltaCas):
    def __init__(self, registry_location: Location) -> None:
        super().__init__(registry_location.child("events"), ev.SCHEMA, "model_ops_registry_events")

    def maintain(self, *, vacuum: bool = True, expire: bool = True) -> dict[str, Any]:
        """As for any table, and old commit files are expired (``expire_commits``): events are rows that never
        change, so the log's history is in them, not in Delta's time travel."""
        return super().maintain(vacuum=vacuum, expire=expire)

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
