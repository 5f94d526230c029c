"""Registry events: the append-only log that every registry state is folded from.

One row per event, numbered by ``seq`` (1, 2, 3 … across the whole registry, no gaps). Several events written by
one request (a promotion archives the old production version and moves ``champion``) share a commit, so they
appear together or not at all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa

REGISTERED = "registered"
STAGE_CHANGED = "stage_changed"
ALIAS_SET = "alias_set"
ALIAS_REMOVED = "alias_removed"
TAG_SET = "tag_set"
TAG_REMOVED = "tag_removed"
APPROVED = "approved"
ROLLBACK = "rollback"
DENIED = "denied"
ATTACHMENT = "attachment"  # bytes kept beside a version (key = label, digest = the stored artifact)
# Records written by the operations layer (deployments, evaluations, monitoring) through Registry.record().
RECORD_KINDS = frozenset(
    {"deployment", "evaluation", "monitoring", "canary_analysis", "retrain", "alert", "note", "experiment"}
)
# The records what serves is decided from (the deployment manifest, the running A/B experiment): kept in the fold.
SERVING_RECORD_KINDS = frozenset({"deployment", "experiment"})
# The payload key of the business window an event was written for (see ``Registry.business_window``).
BUSINESS_WINDOW = "business_window"
STATE_KINDS = frozenset({REGISTERED, STAGE_CHANGED, ALIAS_SET, ALIAS_REMOVED, TAG_SET, TAG_REMOVED, APPROVED, ROLLBACK})

SCHEMA = pa.schema(
    [
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("version", pa.int64()),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("actor", pa.string(), nullable=False),
        pa.field("key", pa.string()),  # alias name, tag key, verb of a denial
        pa.field("from_value", pa.string()),  # previous stage / alias target / tag value
        pa.field("to_value", pa.string()),  # new stage / alias target / tag value / semver of a registration
        pa.field("digest", pa.string()),  # manifest digest of a registration
        pa.field("reason", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("payload", pa.string()),  # JSON: the full version record, gate results, deployment details
        # Added after the first release (older tables gain them on their next write, with nulls before):
        pa.field("identity", pa.string()),  # who the backend proved the writer to be (``actor`` is the claim)
        pa.field("policy", pa.string()),  # digest of the policy that decided the request
        pa.field("prev_hash", pa.string()),  # ``hash`` of event seq - 1: the audit log is a hash chain
        pa.field("hash", pa.string()),  # sha256 over this event's canonical form, prev_hash included
    ]
)
COLUMNS = SCHEMA.names
CHAINED_COLUMNS = ("identity", "policy", "prev_hash", "hash")


@dataclass
class Event:
    seq: int
    ts: datetime
    model: str
    kind: str
    actor: str
    version: int | None = None
    key: str | None = None
    from_value: str | None = None
    to_value: str | None = None
    digest: str | None = None
    reason: str | None = None
    run_id: str | None = None
    payload: str | None = None
    identity: str | None = None
    policy: str | None = None
    prev_hash: str | None = None
    hash: str | None = None
    # Events read from the table keep their payload in the Arrow column until asked for: opening a registry with
    # 100k versions must not turn 100k JSON documents into Python strings.
    payload_ref: tuple[pa.Array, int] | None = field(default=None, repr=False, compare=False)
    _parsed: dict | None = field(default=None, repr=False, compare=False)

    def payload_text(self) -> str | None:
        if self.payload is None and self.payload_ref is not None:
            array, index = self.payload_ref
            self.payload = array[index].as_py()
            self.payload_ref = None
        return self.payload

    @property
    def data(self) -> dict[str, Any]:
        """The payload as a mapping; ``{}`` when it is absent or is not a JSON object (an event written outside
        model_ops: ``fsck`` names it, and readers, the audit listing and webhooks go on working)."""
        if self._parsed is None:
            self._parsed = payload_object(self.payload_text()) or {}
        return self._parsed

    @property
    def shown_actor(self) -> str:
        """Who wrote it, for a reader: the claimed name, and the proven identity behind it when that is another."""
        return self.actor if self.identity in (None, self.actor) else f"{self.actor} via {self.identity}"

    @property
    def business_window(self) -> str | None:
        """The window (partition) of the world this event was written for; None when it was written for none."""
        window = self.data.get(BUSINESS_WINDOW)
        return window if isinstance(window, str) and window else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts.isoformat(),
            "model": self.model,
            "version": self.version,
            "kind": self.kind,
            "actor": self.actor,
            "key": self.key,
            "from": self.from_value,
            "to": self.to_value,
            "digest": self.digest,
            "reason": self.reason,
            "window": self.business_window,
            "run_id": self.run_id,
            "identity": self.identity,
            "policy": self.policy,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "details": self.data if self.kind != REGISTERED else None,
        }


def payload_object(text: str | None) -> dict[str, Any] | None:
    """``text`` parsed as a JSON object, or None when it is empty or is not one."""
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def to_arrow(events: list[Event]) -> pa.Table:
    cols: dict[str, list] = {name: [] for name in COLUMNS}
    for e in events:
        for name in COLUMNS:
            cols[name].append(e.payload_text() if name == "payload" else getattr(e, name))
    return pa.table(cols, schema=SCHEMA)


def from_arrow(table: pa.Table) -> list[Event]:
    """Rows to events, sorted by seq. Column-wise conversion: it is the hot path of opening a large registry."""
    if table.num_rows == 0:
        return []
    table = table.sort_by("seq")
    cols = [
        table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows
        for name in COLUMNS
        if name != "payload"
    ]
    payloads = table.column("payload").combine_chunks()
    return [
        Event(
            seq=r[0],
            ts=r[1],
            model=r[2],
            version=r[3],
            kind=r[4],
            actor=r[5],
            key=r[6],
            from_value=r[7],
            to_value=r[8],
            digest=r[9],
            reason=r[10],
            run_id=r[11],
            identity=r[12],
            policy=r[13],
            prev_hash=r[14],
            hash=r[15],
            payload_ref=(payloads, i),
        )
        for i, r in enumerate(zip(*cols))
    ]


def to_second(ts: datetime) -> str:
    """``2026-12-01 14:00:05``: a time as the command line and the UI's tables show it."""
    return ts.isoformat()[:19].replace("T", " ")


def utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


GENESIS = "0" * 64  # the prev_hash of the first chained event


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def micros(ts: datetime) -> int:
    """Microseconds since the epoch: the stored resolution of ``ts``, exact (no float rounding)."""
    delta = utc(ts) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def chain_hash(e: Event) -> str:
    """The hash that makes the audit log a chain: sha256 over every stored field of the event in a fixed order
    (``prev_hash`` included, ``hash`` itself excluded). Editing, inserting, deleting or reordering any stored event
    changes the hash of every event after it, so ``fsck`` can say where the log was altered."""
    fields = [
        e.seq,
        micros(e.ts),
        e.model,
        e.version,
        e.kind,
        e.actor,
        e.key,
        e.from_value,
        e.to_value,
        e.digest,
        e.reason,
        e.run_id,
        e.payload_text(),
        e.identity,
        e.policy,
        e.prev_hash,
    ]
    blob = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(b"model_ops event v1\n" + blob.encode()).hexdigest()


def in_effect(events: list[Event], when: datetime, effective: Any) -> list[int]:
    """The seqs of ``events`` in effect at ``when`` in business time (see ``Registry.as_of``): an event written
    for a window takes effect at ``effective(model, window)`` (None: a window it cannot place); one written for
    none, with the model's event before it (from the start, before any). A model's events never take effect
    before the events written before them: a backfill's record written after a later window's decision takes
    effect with that decision, so the fold never sees a change before the version it changes exists."""
    cut = utc(when)
    last: dict[str, datetime | None] = {}
    keep = []
    for e in sorted(events, key=lambda x: x.seq):
        window = e.business_window
        own = effective(e.model, window) if window else None
        at = last.get(e.model)
        if own is not None:
            at = utc(own) if at is None else max(utc(own), at)
        last[e.model] = at
        if at is None or at <= cut:
            keep.append(e.seq)
    return keep
