"""Commit receipts: what each acknowledged write committed, kept beside the event log so its loss is evident.

The event log's Delta files are the truth, but a damaged or deleted newest commit file does not look damaged to
the Delta engine: an empty or action-less commit reads as "nothing happened", a deleted one as "the table is one
version older". Either way the newest events vanish silently and the next writer is handed their sequence and
version numbers again. So after every commit, before the write is acknowledged, the writer also stores a receipt
``registry/receipts/<delta version>.json`` holding the events it committed (every column, hash included).

Readers compare the fold's tip with the receipt of the Delta version they read (same last sequence number and
hash) and check that no receipt exists beyond it; ``fsck`` reports a mismatch and ``fsck --repair`` restores the
events from the receipts and the table's data files (see ``repair.py``). A receipt that is missing (the writer died
between commit and receipt) only weakens the check for that commit; it is never taken as damage.

Receipts older than the newest ``KEEP`` are pruned by maintenance: older events are covered by the Delta
checkpoint and the data files, which the hash chain checks.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from model_ops.location import Location, object_exists, retry_transient, s3_client
from model_ops.registry import events as ev

KEEP = 1000
MAX_EVENT_BYTES = 4 << 20  # above this a receipt keeps only the tip it vouches for, not the events themselves
_NAME = re.compile(r"(\d{20})\.json")


def event_row(e: ev.Event) -> dict[str, Any]:
    row = {name: getattr(e, name) for name in ev.COLUMNS if name not in ("ts", "payload")}
    row["ts"] = ev.micros(e.ts)
    row["payload"] = e.payload_text()
    return row


def events_of(doc: dict[str, Any]) -> list[ev.Event]:
    """The events a receipt holds, as the log stores them."""
    out = []
    for row in doc.get("events", []):
        fields = {name: row.get(name) for name in ev.COLUMNS}
        fields["ts"] = ev.from_micros(int(row["ts"]))
        out.append(ev.Event(**fields))
    return out


def to_table(events: list[ev.Event]) -> pa.Table:
    return ev.to_arrow(events)


class Receipts:
    def __init__(self, registry_location: Location) -> None:
        self.location = registry_location.child("receipts")

    def _name(self, version: int) -> str:
        return f"{version:020d}.json"

    def write(self, version: int, events: list[ev.Event]) -> None:
        doc = {
            "format": 1,
            "delta_version": version,
            "first_seq": events[0].seq,
            "last_seq": events[-1].seq,
            "last_hash": events[-1].hash,
            "written_at": datetime.now(timezone.utc).isoformat(),
            "events": [event_row(e) for e in events],
        }
        body = json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()
        if len(body) > MAX_EVENT_BYTES:  # a bulk import: the data files hold its events; the tip still checks
            doc["events"] = []
            body = json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()
        name = self._name(version)
        if self.location.is_s3:
            s3_client().put_object(Bucket=self.location.bucket, Key=self.location.key(name), Body=body)
            return
        directory = self.location.path
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".receipt-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, directory / name)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def read(self, version: int) -> dict[str, Any] | None:
        """The receipt of Delta commit ``version``, or None when there is none (or it cannot be parsed: a damaged
        receipt proves nothing either way)."""
        name = self._name(version)
        try:
            if self.location.is_s3:
                from botocore.exceptions import ClientError

                def get() -> bytes:
                    return (
                        s3_client().get_object(Bucket=self.location.bucket, Key=self.location.key(name))["Body"].read()
                    )

                try:
                    raw = retry_transient(get)
                except ClientError as e:
                    if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                        return None
                    raise
            else:
                raw = (self.location.path / name).read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) and doc.get("delta_version") == version else None

    def exists(self, version: int) -> bool:
        return object_exists(self.location, self._name(version))

    def versions(self) -> list[int]:
        """Delta versions that have a receipt, ascending."""
        return sorted(int(m.group(1)) for m in (_NAME.fullmatch(n) for n in self._names()) if m)

    def _names(self) -> Iterator[str]:
        if not self.location.is_s3:
            if self.location.path.is_dir():
                yield from os.listdir(self.location.path)
            return
        prefix = self.location.key() + "/"
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"][len(prefix) :]

    def prune(self, keep: int = KEEP) -> int:
        """Delete all but the newest ``keep`` receipts; returns how many went."""
        old = self.versions()[:-keep] if keep else self.versions()
        for version in old:
            name = self._name(version)
            if self.location.is_s3:
                s3_client().delete_object(Bucket=self.location.bucket, Key=self.location.key(name))
            else:
                (self.location.path / name).unlink(missing_ok=True)
        return len(old)
