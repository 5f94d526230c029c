"""Upkeep of a registry: maintenance (compaction, the versions table, the state snapshot), consistency check
(fsck) and garbage collection of blobs.

None of this changes what the registry means: the event log is the truth, and these functions only read it (fsck,
gc's dry run), delete blobs nothing in it refers to (gc), or write a projection of it that can be rebuilt at any
time (``registry/versions``). They take the :class:`Registry` whose storage and policy they work on; the
``Registry`` methods of the same names delegate here, so the public API is unchanged.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from model_ops.errors import IntegrityError, ModelOpsError
from model_ops.location import Location, require_conditional_writes, retry_transient, s3_client
from model_ops.registry import attest, chain, repair, search, snapshot
from model_ops.registry import events as ev
from model_ops.registry.eventlog import DeltaCas, EventLog
from model_ops.registry.policy import PolicyArchive, root_policy
from model_ops.registry.receipts import Receipts
from model_ops.registry.state import RegistryState

if TYPE_CHECKING:
    from model_ops.registry.registry import Registry

log = logging.getLogger(__name__)

VERSIONS_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("semver", pa.string(), nullable=False),
        pa.field("digest", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("created_by", pa.string(), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("registered_seq", pa.int64(), nullable=False),
        pa.field("record", pa.string(), nullable=False),
    ]
)


# Every this many commits, the writer whose commit reached the boundary starts compacting the log in a background
# thread (see compact_in_background): without it, a run of registrations between two maintenance runs would pay for
# a Delta snapshot that grows by one file per commit (in a test, 60 ms per register at 200 files, 680 ms at 2,000).
BACKGROUND_EVERY = 100
EXIT_WAIT_SECONDS = 60.0
_background: dict[str, threading.Thread] = {}
_background_lock = threading.Lock()


LOCK_NAME = ".upkeep.lock"  # local roots: flock'ed by whoever compacts
LEASE_NAME = "upkeep.lease"  # S3 roots: created with put-if-absent by whoever compacts, deleted after
LEASE_STALE = timedelta(hours=1)


@contextlib.contextmanager
def upkeep_lock(location: Location) -> Iterator[str | None]:
    """Hold the registry's upkeep lock, or learn that someone else does (yields why not; None: held). Only one
    compaction of the event log may run at a time: delta-rs lets two compactions that started from the same version
    both commit, each removing the same files and adding a copy of their rows, which duplicates every event.
    Locally an ``flock`` (released by the kernel if the holder dies); on S3 a lease object created with
    put-if-absent, deleted when done; one older than ``LEASE_STALE`` is named, never broken silently."""
    if not location.is_s3:
        import fcntl

        location.path.mkdir(parents=True, exist_ok=True)
        with open(location.path / LOCK_NAME, "a+b") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield "another maintenance run holds the upkeep lock"
                return
            try:
                yield None
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return
    from botocore.exceptions import ClientError

    require_conditional_writes(location)  # the lease is a put-if-absent too
    client, key = s3_client(), location.key(LEASE_NAME)
    body = f'{{"holder": "{socket.gethostname()}:{os.getpid()}", "since": "{datetime.now(timezone.utc).isoformat()}"}}'
    try:
        client.put_object(Bucket=location.bucket, Key=key, Body=body.encode(), IfNoneMatch="*")
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            raise
        since = client.head_object(Bucket=location.bucket, Key=key)["LastModified"]
        if datetime.now(timezone.utc) - since > LEASE_STALE:
            raise IntegrityError(
                f"the upkeep lease s3://{location.bucket}/{key} is older than {LEASE_STALE}: a maintenance run died "
                "holding it",
                hint="delete that object once no maintenance is running, and run `model-ops maintain` again",
            ) from None
        yield "another maintenance run holds the upkeep lease"
        return
    try:
        yield None
    finally:
        retry_transient(lambda: client.delete_object(Bucket=location.bucket, Key=key))


def compact_in_background(location: Location) -> None:
    """Compact and checkpoint the event log at ``location`` in a daemon thread, unless one is already at it in
    this process or another run holds the upkeep lock. The write that called this has been acknowledged and
    returns at once; the compaction's own commit makes the next write of this process lose one compare-and-swap
    and re-read (cheap: nothing new to fold). A process that exits mid-compaction leaves only unreferenced files,
    which vacuum removes."""

    def run() -> None:
        try:
            with upkeep_lock(location) as busy:
                if busy is None:
                    EventLog(location).maintain(vacuum=False)
                    Receipts(location).prune()
        except Exception as e:  # upkeep: the next boundary or `model-ops maintain` tries again
            log.warning("background compaction of %s did not complete: %s", location, e)

    with _background_lock:
        running = _background.get(location.uri)
        if running is not None and running.is_alive():
            return
        if not _background:
            # A daemon thread still inside the Delta engine when the interpreter tears down can crash the process
            # (SIGSEGV): a process that exits normally waits for its compactions first, as the command line does.
            atexit.register(wait_for_background, EXIT_WAIT_SECONDS)
        thread = threading.Thread(target=run, name=f"model_ops compaction of {location.uri}", daemon=True)
        _background[location.uri] = thread
        thread.start()


def wait_for_background(timeout: float) -> None:
    """Let background compactions finish, up to ``timeout`` seconds in all (the command line calls this after
    printing its answer, before it leaves)."""
    deadline = time.monotonic() + timeout
    for thread in list(_background.values()):
        thread.join(max(0.0, deadline - time.monotonic()))


def maintain(registry: Registry) -> dict[str, Any]:
    """Everything a registry needs now and then and a write must never wait for, in this order, under the upkeep
    lock (a run that finds it held does nothing and says so):

    1. the event log: compaction, a checkpoint, vacuum (``DeltaCas.maintain``);
    2. commit receipts but the newest are pruned (``Receipts.prune``);
    3. the log is folded from the start by a registry object of maintenance's own (never the caller's shared
       state, which its other threads may be changing, and never resumed from the snapshot, so a wrong snapshot
       cannot outlive a run), and ``registry/versions`` (one row per version, for SQL readers) gains the versions
       registered since it was last written;
    4. the state snapshot is written from that fold; when the current one was taken at the same commit, holds the
       same state and was written under the same policy, its pointer is only confirmed again, which keeps it
       usable for reads (see ``snapshot.py``).

    No snapshot is written from a log with problems (``fsck`` names them). Returns what was done; a step that failed
    is named under ``problems`` and the others still run."""
    started = time.perf_counter()
    report: dict[str, Any] = {"problems": [], "seconds": {}}

    def step(name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as e:  # reported, never raised: the other steps are worth doing anyway
            report["problems"].append(f"{name}: {repair.first_line(e)}")
            return None
        finally:
            report["seconds"][name] = round(time.perf_counter() - t0, 3)

    with upkeep_lock(registry.location) as busy:
        if busy is not None:
            report.update(skipped=busy, log=None, log_version=None, events=None, snapshot=None)
            report["seconds"]["total"] = round(time.perf_counter() - started, 3)
            return report
        report["log"] = step("log", lambda: EventLog(registry.location).maintain())
        report["receipts_pruned"] = step("receipts", lambda: Receipts(registry.location).prune())
        confirmed_at = datetime.now(timezone.utc)  # before the fold's probe: see snapshot.py on why
        own = type(registry)(registry.root, actor=registry._claimed, policy_path=registry._policy_path)
        own._resume = False
        state = own._sync()
        version, damage = own._state_version, list(own.damage)
        report["log_version"], report["events"] = version, state.last_seq
        report["versions_projected"] = step("versions table", lambda: project_versions(own, state))
        if damage or state.problems:
            report["snapshot"] = None
            report["problems"].append(
                "snapshot: not written, the event log has problems (`model-ops fsck` lists them): "
                + "; ".join(damage or state.problems[:3])
            )
        elif registry.location.is_s3:
            report["snapshot"] = None  # reads on S3 fold the log (snapshots are kept on local roots)
        else:
            report["snapshot"] = step("snapshot", lambda: _snapshot(own, state, version, confirmed_at))
    report["seconds"]["total"] = round(time.perf_counter() - started, 3)
    return report


def _snapshot(registry: Registry, state: RegistryState, version: int, confirmed_at: datetime) -> dict[str, Any]:
    stages = list(registry.policy.stages)
    current = snapshot.read_pointer(registry.location)
    same_place = current is not None and (
        current["delta_version"],
        current["last_seq"],
        current.get("commit_sha256"),
        current["policy"],
        current.get("stages"),
        current["production_stage"],
    ) == (
        version,
        state.last_seq,
        snapshot.commit_digest(registry.location, version),
        snapshot.policy_key(registry.location),
        stages,
        state.production_stage,
    )
    if same_place and current is not None:
        path = registry.location.path / snapshot.DIRECTORY / current["file"]
        try:
            before: list[int] | None = snapshot.stat_key(path)
        except OSError:
            before = None
        snap = snapshot.open_verified(registry.location, full=True)
        if snap is not None:
            try:
                same = snapshot.contents(snap.state()) == snapshot.contents(state)
                same = same and snap.search_contents() == search.contents_of(state)
            except Exception:  # a snapshot that cannot be read is replaced below
                same = False
            finally:
                snap.close()
            if same:
                stat = snapshot.settled_key(snap.path, before)
                snapshot.write_pointer(
                    registry.location, {**current, "stat": stat, "confirmed_at": confirmed_at.isoformat()}
                )
                return {"file": current["file"], "written": False, "pruned": 0}
    pointer = snapshot.write(registry.location, state, version, stages=stages, confirmed_at=confirmed_at)
    pruned = snapshot.prune(registry.location, keep=pointer["file"])
    return {"file": pointer["file"], "written": True, "bytes": pointer["size"], "pruned": pruned}


def project_versions(registry: Registry, state: RegistryState) -> int:
    """Bring ``registry/versions`` (one row per version, for SQL readers) up to ``state``; returns the rows added.
    The log is the truth: a lost race here is simply left to the next maintenance run."""
    table = DeltaCas(registry.location.child("versions"), VERSIONS_SCHEMA, "model_ops_registry_versions")
    done_col = table.read(columns=["registered_seq"]).column("registered_seq")
    done = pc.max(done_col).as_py() if len(done_col) else 0
    rows = [(m.name, vs) for m in state.models.values() for vs in m.versions if vs.seq > (done or 0)]
    if not rows:
        return 0
    data = pa.table(
        {
            "model": [n for n, _ in rows],
            "version": [v.version for _, v in rows],
            "semver": [v.semver for _, v in rows],
            "digest": [v.digest for _, v in rows],
            "created_at": [v.created_at for _, v in rows],
            "created_by": [v.created_by for _, v in rows],
            "run_id": [v.run_id for _, v in rows],
            "registered_seq": [v.seq for _, v in rows],
            "record": [v.payload for _, v in rows],
        },
        schema=VERSIONS_SCHEMA,
    )
    if not table.try_append(data):
        return 0
    table.maintain()
    return len(rows)


def fsck(registry: Registry) -> list[str]:
    """Everything wrong with the registry and its artifacts; empty when consistent. Reads all from storage: a
    fresh handle on the log and a fresh fold, never the registry object's cached state, which is what is being
    checked."""
    policy, artifacts = registry.policy, registry.artifacts
    receipts = Receipts(registry.location)
    problems: list[str] = repair.log_problems(registry.location.child("events"), receipts)
    state = RegistryState(policy.production.stage)
    try:
        log = EventLog(registry.location)
        events = ev.from_arrow(log.read_after(0))
        version = log.version
    except Exception as e:  # an unreadable log is the worst finding; report it instead of crashing
        return [
            *problems,
            f"the event log at {registry.location.child('events')} cannot be read: {repair.first_line(e)}",
        ]
    state.apply_all(events)
    problems.extend(state.problems)

    def fold_to(seq: int) -> RegistryState:
        cut = RegistryState(policy.production.stage)
        cut.apply_all([e for e in events if e.seq <= seq])
        return cut

    problems.extend(snapshot.problems(registry.location, fold_to))
    receipt = receipts.read(version)
    if receipt is not None and (receipt["last_seq"], receipt["last_hash"]) != (state.last_seq, state.last_hash):
        problems.append(
            f"the event log's commit {version} was acknowledged with events {receipt['first_seq']}.."
            f"{receipt['last_seq']}, and the log now ends at event {state.last_seq}: events were lost"
        )
    problems.extend(chain.chain_problems(events))
    # Judged by the root's own policies, never the narrowing one this process may have been opened with.
    problems.extend(chain.policy_problems(events, root_policy(registry.location), PolicyArchive(registry.location)))
    checked: dict[str, list[str]] = {}
    signatures = attest.FsckSignatures(registry)
    for m in state.models.values():
        for vs in m.versions:
            if vs.digest not in checked:
                try:
                    checked[vs.digest] = artifacts.check(vs.digest)
                except ModelOpsError as e:  # a registration written outside model_ops may name no valid digest
                    checked[vs.digest] = [e.message]
            for p in checked[vs.digest]:
                problems.append(f"{m.name} v{vs.version}: {p}")
            try:
                problems.extend(signatures.check(m, vs))  # record, OMS bundle, provenance, attachments: attest.py
            except ModelOpsError as e:
                problems.append(f"{m.name} v{vs.version}: {e.message}")
        for alias, number in m.aliases.items():
            if m.get(number) is None:
                problems.append(f"{m.name}: alias {alias} points at missing version {number}")
        in_prod = [v.version for v in m.versions if v.stage == policy.production.stage]
        if len(in_prod) > 1:
            problems.append(f"{m.name}: {len(in_prod)} versions in production ({in_prod})")
    for digest in sorted(set(registry._attached_digests()) - set(checked)):
        problems.extend(f"attachment {digest[:12]}: {p}" for p in artifacts.check(digest))
    return problems


def gc(registry: Registry, *, apply: bool = False, grace: timedelta = timedelta(hours=24)) -> dict[str, Any]:
    """Blobs that no version references (and leftovers of interrupted writes) older than ``grace``.

    Dry run unless ``apply``. Refuses to delete anything while any version's manifest is unreadable, because
    then it cannot know which blobs that version needs. The grace period covers writes in flight: a blob is
    stored before the event that refers to it is committed.
    """
    blobs_store = registry.artifacts.blobs

    def referenced() -> list[str]:
        with registry._lock:
            state = registry._sync()
            found = [vs.digest for m in state.models.values() for vs in m.versions]
        return found + registry._attached_digests()

    digests = referenced()
    unreadable = [d for d in set(digests) if blobs_store.verify(d)]
    if unreadable and apply:
        raise IntegrityError(
            f"{len(unreadable)} version manifest(s) are missing or damaged, so garbage cannot "
            "be told apart from their files; nothing was deleted",
            hint="run `model-ops fsck` and repair the registry first",
        )
    keep = registry.artifacts.reachable(digests)
    cutoff = time.time() - grace.total_seconds()
    blobs = [b for b in blobs_store.iter_blobs() if b.digest not in keep]
    old = [b for b in blobs if b.modified < cutoff]
    temps = [t for t in blobs_store.iter_temporaries() if t.modified < cutoff]
    # Multipart uploads a killed writer (or a failed one whose abort could not reach S3) left pending: their parts
    # are stored and billed but belong to no object. Past the grace period no writer is still sending them.
    uploads = [u for u in blobs_store.iter_multipart() if u.modified < cutoff]
    restored = 0
    if apply:
        registry._authorize("delete", "*")
        # Two phases, so a registration that reuses a blob this collection chose never loses it: the chosen blobs
        # leave their names first; then the registry is read again and what a commit made since references goes
        # back. A writer that checks for its blobs after committing (as registration does) either finds one
        # missing and stores it again, or committed before it left, and so before the second read.
        moved = [b.digest for b in old if blobs_store.quarantine(b.digest)]
        moved += [q.digest for q in blobs_store.iter_quarantined() if q.digest not in set(moved)]  # an earlier run's
        manifests = set(referenced())
        for digest in [d for d in moved if d in manifests]:  # manifests first: they name the files still needed
            blobs_store.restore(digest)
            restored += 1
        still_needed = registry.artifacts.reachable(manifests)
        for digest in [d for d in moved if d not in manifests]:
            if digest in still_needed:
                blobs_store.restore(digest)
                restored += 1
            else:
                blobs_store.purge(digest)
        for t in temps:
            blobs_store.delete_temporary(t.digest)
        for u in uploads:
            blobs_store.abort_multipart(u)
    return {
        "applied": apply,
        "referenced_blobs": len(keep),
        "unreferenced": [{"digest": b.digest, "size": b.size} for b in old],
        "unreferenced_bytes": sum(b.size for b in old),
        "too_recent": len(blobs) - len(old),
        "temporaries": len(temps),
        "multipart_uploads": len(uploads),
        "restored": restored,
        "grace_hours": grace.total_seconds() / 3600,
    }
