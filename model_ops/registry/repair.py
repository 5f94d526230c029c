"""A damaged event log: finding the damage, and ``fsck --repair`` restoring what can be restored.

The Delta engine reads a log whose newest commit file is empty, holds no actions or is gone as if that commit never
happened, and answers a truncated commit or a damaged checkpoint with an engine error. :func:`log_problems` reads
the log files themselves (every commit after the newest checkpoint, and that checkpoint), so ``fsck`` names each
of these states. :func:`repair` then rebuilds the events table from everything that still holds events: the
table's own Parquet data files (the log is append-only, so together they hold every committed event, plus the
leftovers of writes that never committed) and the commit receipts (``receipts.py``). It keeps the longest run of
events from the first that the hash chain links together, drops leftovers that no receipt confirms (their writer
was never told they were stored), writes them into a fresh table and moves the damaged one aside, never deleting.

Repair must run with the registry's writers stopped; reads during it may fail and are safe to retry.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake.exceptions import DeltaError

from model_ops.errors import IntegrityError
from model_ops.location import Location, require_conditional_writes, retry_transient, s3_client
from model_ops.registry import events as ev
from model_ops.registry.receipts import Receipts, events_of

if TYPE_CHECKING:
    from model_ops.registry.registry import Registry

_COMMIT = re.compile(r"(\d{20})\.json")
_CHECKPOINT = re.compile(r"(\d{20})\.checkpoint(\.\d+\.\d+)?\.parquet")
_TRANSIENT = ("generic s3 error", "error sending request", "connection", "timed out", "dispatch failure")


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


@contextlib.contextmanager
def unreadable_log(location: Location) -> Iterator[None]:
    """Turn the Delta engine's errors on a damaged log (with their native backtraces) into one clear
    IntegrityError. Errors that look like a network failure pass through unchanged."""
    try:
        yield
    except (DeltaError, pa.ArrowInvalid) as e:
        text = str(e).lower()
        if any(t in text for t in _TRANSIENT):
            raise
        raise IntegrityError(
            f"the registry's event log at {location} cannot be read: {first_line(e)}",
            hint="`model-ops fsck` lists what is damaged; `model-ops fsck --repair` rebuilds the log from its "
            "data files and commit receipts",
        ) from None


# ---------------------------------------------------------------------------------------------- storage access


def _names(location: Location) -> list[str]:
    """Object names directly below ``location`` (local directory entries, or S3 keys with that prefix)."""
    if not location.is_s3:
        return sorted(os.listdir(location.path)) if location.path.is_dir() else []
    prefix = location.key() + "/"
    out: list[str] = []
    for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix):
        out.extend(obj["Key"][len(prefix) :] for obj in page.get("Contents", []))
    return sorted(out)


def _read(location: Location, name: str) -> bytes:
    if not location.is_s3:
        return (location.path / name).read_bytes()
    return retry_transient(
        lambda: s3_client().get_object(Bucket=location.bucket, Key=location.key(name))["Body"].read()
    )


def commit_file_problem(version: int, raw: bytes) -> str | None:
    """What is wrong with one commit file, or None. A commit model_ops writes always adds, removes or changes
    something: a file with only commit information (or nothing) has lost its actions."""
    if not raw.strip():
        return f"commit {version} of the event log is empty (0 bytes)"
    actions = 0
    for n, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            return f"commit {version} of the event log is not valid JSON (line {n} is cut off or corrupted)"
        if not isinstance(doc, dict):
            return f"commit {version} of the event log holds {type(doc).__name__} where an action belongs (line {n})"
        actions += sum(1 for k in doc if k != "commitInfo")
    if not actions:
        return f"commit {version} of the event log holds no actions: its content was lost"
    return None


def log_problems(events_location: Location, receipts: Receipts | None = None) -> list[str]:
    """Every damaged, missing or unexpected file of the events table's Delta log after (and including) its newest
    checkpoint, and any acknowledged commit (one with a receipt) beyond the log's end."""
    log_dir = events_location.child("_delta_log")
    names = _names(log_dir)
    commits = {int(m.group(1)): n for m, n in ((_COMMIT.fullmatch(n), n) for n in names) if m}
    checkpoints = sorted({int(m.group(1)) for m in (_CHECKPOINT.fullmatch(n) for n in names) if m})
    problems: list[str] = []
    # Without _last_checkpoint a reader starts from the newest checkpoint it lists (commits below it may be gone:
    # upkeep expires them, see DeltaCas.expire_commits).
    start = checkpoints[-1] if checkpoints else 0
    if "_last_checkpoint" in names:
        try:
            start = int(json.loads(_read(log_dir, "_last_checkpoint"))["version"])
        except (ValueError, KeyError, TypeError):
            problems.append("the event log's _last_checkpoint file is damaged")
            start = checkpoints[-1] if checkpoints else 0
    if checkpoints and start:
        for name in [n for n in names if n.startswith(f"{start:020d}.checkpoint")]:
            try:
                pq.read_table(io.BytesIO(_read(log_dir, name))).validate(full=True)
            except Exception as e:  # any failure to parse is damage; the engine could not read it either
                problems.append(f"checkpoint {start} of the event log is damaged ({first_line(e)})")
        if not any(n.startswith(f"{start:020d}.checkpoint") for n in names):
            problems.append(f"checkpoint {start} of the event log, named by _last_checkpoint, is missing")
    newest = max(commits) if commits else -1
    for version in range(start + 1 if start else 0, newest + 1):
        if version not in commits:
            problems.append(f"commit {version} of the event log is missing (commits {version - 1} and later exist)")
            continue
        problem = commit_file_problem(version, _read(log_dir, commits[version]))
        if problem:
            problems.append(problem)
    if receipts is not None:
        beyond = [v for v in receipts.versions() if v > newest]
        problems.extend(
            f"commit {v} of the event log is missing: it was acknowledged (its receipt exists) and its commit "
            "file is gone"
            for v in beyond
        )
    return problems


# ---------------------------------------------------------------------------------------------- repair


def _data_files(events_location: Location) -> list[str]:
    """Every Parquet data file of the events table (also those no commit references)."""
    if not events_location.is_s3:
        root = events_location.path
        return sorted(
            str(p.relative_to(root)) for p in root.rglob("*.parquet") if "_delta_log" not in p.relative_to(root).parts
        )
    prefix = events_location.key() + "/"
    out = []
    for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=events_location.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) :]
            if rel.endswith(".parquet") and not rel.startswith("_delta_log/"):
                out.append(rel)
    return sorted(out)


def _rows_of_files(events_location: Location) -> tuple[list[tuple[str, ev.Event]], list[str]]:
    """Every event in every data file, with the file it was read from."""
    found: list[tuple[str, ev.Event]] = []
    unreadable: list[str] = []
    for rel in _data_files(events_location):
        try:
            table = pq.read_table(io.BytesIO(_read(events_location, rel)))
        except Exception as e:  # a damaged data file is reported; the others still count
            unreadable.append(f"{rel} ({first_line(e)})")
            continue
        found.extend((rel, e) for e in ev.from_arrow(table))
    return found, unreadable


def _committed_files(events_location: Location) -> set[str]:
    """Data files that a readable commit of the log added: those a write that landed produced (a loser's
    leftover never appears in one)."""
    log_dir = events_location.child("_delta_log")
    out: set[str] = set()
    for name in _names(log_dir):
        if not _COMMIT.fullmatch(name):
            continue
        try:
            lines = _read(log_dir, name).decode("utf-8").splitlines()
        except Exception:  # unreadable: it confirms nothing
            continue
        for line in lines:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("add"), dict):
                out.add(str(doc["add"].get("path", "")))
    return out


def recover(registry: Registry) -> dict[str, Any]:
    """The events a repair would keep, and what it found, without writing anything.

    A write is acknowledged after its commit landed and its receipt was stored (a receipt that cannot be stored,
    after retries, is logged and the write still acknowledged: its commit is durable), so the newest acknowledged
    event is the newest one a receipt or the readable table vouches for. The log is its hash chain walked backwards from
    there: every event names its predecessor's hash, and a leftover of a write that lost its race or never
    committed is never on that path, however many events it holds. Events from before the chain existed carry no
    hash; they are taken from the readable table, else from the data files a readable commit added."""
    events_location = registry.location.child("events")
    receipts = Receipts(registry.location)
    from_files, unreadable = _rows_of_files(events_location)
    from_receipts: list[ev.Event] = []
    tips: list[tuple[int, str | None]] = []
    for version in receipts.versions():
        doc = receipts.read(version)
        if doc is not None:
            from_receipts.extend(events_of(doc))
            tips.append((int(doc["last_seq"]), doc["last_hash"]))
    current = _current_rows(registry)
    if current:
        tips.append(current[-1])
    by_hash: dict[str, ev.Event] = {}
    for e in [*(e for _, e in from_files), *from_receipts]:
        if e.hash is not None and ev.chain_hash(e) == e.hash:
            by_hash.setdefault(e.hash, e)
    if not tips:  # no receipt and no readable table: the newest event a readable commit added
        committed = _committed_files(events_location)
        tips = [(e.seq, e.hash) for rel, e in from_files if rel in committed]
    tip = max(tips, key=lambda t: t[0]) if tips else (0, None)
    chain: list[ev.Event] = []
    missing_before: int | None = None
    at = by_hash.get(tip[1]) if tip[1] is not None else None
    while at is not None:
        chain.append(at)
        if at.prev_hash == ev.GENESIS:
            break
        prev = by_hash.get(at.prev_hash or "")
        if prev is None or prev.seq != at.seq - 1:
            missing_before = at.seq
            break
        at = prev
    chain.reverse()
    first = chain[0].seq if chain else tip[0] + 1
    legacy: dict[int, ev.Event] = {}
    if first > 1 and missing_before is None:
        # The events before the chain began: one per number, from the table, else from committed files.
        readable = {s for s, _ in current or []}
        committed = _committed_files(events_location) if not readable else set()
        for rel, e in from_files:
            if e.hash is None and e.seq < first and (e.seq in readable or rel in committed):
                legacy.setdefault(e.seq, e)
        if sorted(legacy) != list(range(1, first)):
            missing_before = first
    kept = [legacy[s] for s in sorted(legacy)] + chain if missing_before is None else []
    on_chain = {e.hash for e in chain}
    file_keys = {(e.seq, e.hash) for _, e in from_files}
    end = kept[-1].seq if kept else 0
    return {
        "events": kept,
        "kept": len(kept),
        "from_receipts_only": [e.seq for e in kept if (e.seq, e.hash) not in file_keys],
        "lost": sorted({e.seq for e in from_receipts if e.hash not in on_chain or not kept}),
        "missing_before": missing_before,
        "unacknowledged_leftovers": sorted(
            {e.seq for _, e in from_files if e.hash is not None and e.hash not in on_chain and e.seq > end}
        ),
        "unreadable_files": unreadable,
    }


def _current_rows(registry: Registry) -> list[tuple[int, str | None]] | None:
    """(seq, hash) of every row the table shows now, or None when it cannot be read."""
    from model_ops.registry.eventlog import EventLog

    try:
        table = EventLog(registry.location).read()
    except Exception:  # an unreadable table confirms nothing
        return None
    hashes = table.column("hash").to_pylist() if "hash" in table.column_names else [None] * table.num_rows
    return sorted(zip(table.column("seq").to_pylist(), hashes, strict=True))


def repair(registry: Registry, *, apply: bool = False) -> dict[str, Any]:
    """Rebuild the events table from its data files and receipts when the log is damaged (dry run unless
    ``apply``). The damaged table and receipts are moved aside to ``events.damaged-<time>`` and
    ``receipts.damaged-<time>``, never deleted."""
    events_location = registry.location.child("events")
    receipts = Receipts(registry.location)
    problems = log_problems(events_location, receipts)
    found = recover(registry)
    kept: list[ev.Event] = found.pop("events")
    current = _current_rows(registry)
    intact = current is not None and current == [(e.seq, e.hash) for e in kept] and not problems
    report: dict[str, Any] = {"applied": False, "needed": not intact, "log_problems": problems, **found}
    if intact or not apply:
        return report
    if not kept:
        lost = report.get("missing_before")
        raise IntegrityError(
            "the event log cannot be rebuilt without a gap"
            + (f": the events before event {lost} are gone from its data files and receipts" if lost else "")
            + "; nothing was changed",
            hint="restore registry/events from a backup",
        )
    require_conditional_writes(registry.location)  # before the log is moved aside, not at the rebuilt commit
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = _move_aside(events_location, f"events.damaged-{stamp}")
    receipts_aside = _move_aside(receipts.location, f"receipts.damaged-{stamp}")
    from model_ops.registry.eventlog import EventLog

    fresh = EventLog(registry.location)
    if not fresh.try_append(ev.to_arrow(kept)):
        raise IntegrityError(
            f"another writer committed to the event log during the repair; the damaged log is kept at {aside}",
            hint="stop every writer of this registry, then run `model-ops fsck --repair` again",
        )
    Receipts(registry.location).write(fresh.version, kept[-1:])
    report.update(applied=True, moved_aside=aside, receipts_moved_aside=receipts_aside)
    return report


def _move_aside(location: Location, new_name: str) -> str | None:
    target = Location(location.uri.rsplit("/", 1)[0] + "/" + new_name)
    if not location.is_s3:
        if not location.path.exists():
            return None
        shutil.move(str(location.path), str(target.path))
        return str(target)
    client = s3_client()
    prefix = location.key() + "/"
    moved = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) :]
            client.copy_object(
                Bucket=location.bucket,
                Key=target.key(rel),
                CopySource={"Bucket": location.bucket, "Key": obj["Key"]},
            )
            client.delete_object(Bucket=location.bucket, Key=obj["Key"])
            moved += 1
    return str(target) if moved else None
