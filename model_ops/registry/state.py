"""Registry state as a fold over events. The same fold, cut at a timestamp, answers "as of" questions.

The fold trusts nothing: an event that contradicts the state so far (a version number out of order, a stage change
for a version that does not exist) is not applied and is recorded in ``problems``, which ``fsck`` reports.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from model_ops.registry import events as ev
from model_ops.registry.semver import parse as parse_semver


@dataclass
class VersionState:
    version: int
    semver: str
    digest: str
    created_at: datetime
    created_by: str
    stage: str
    run_id: str | None
    payload: str
    seq: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    _record: dict | None = field(default=None, repr=False)

    @property
    def record(self) -> dict[str, Any]:
        if self._record is None:
            self._record = json.loads(self.payload) if self.payload else {}
        return self._record


@dataclass
class ModelState:
    name: str
    versions: list[VersionState] = field(default_factory=list)
    by_digest: dict[str, int] = field(default_factory=dict)
    by_semver: dict[str, int] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    production: int | None = None
    production_history: list[int] = field(default_factory=list)  # versions in the order they entered production
    rolled_back: set[int] = field(default_factory=set)
    approvals: dict[tuple[int, str], set[str]] = field(default_factory=lambda: defaultdict(set))

    def get(self, version: int) -> VersionState | None:
        return self.versions[version - 1] if 1 <= version <= len(self.versions) else None

    def aliases_of(self, version: int) -> list[str]:
        return sorted(a for a, v in self.aliases.items() if v == version)

    def used_semvers(self) -> set[tuple[int, int, int]]:
        return {parse_semver(s) for s in self.by_semver}


class RegistryState:
    def __init__(self, production_stage: str = "production") -> None:
        self.models: dict[str, ModelState] = {}
        self.last_seq = 0
        self.last_ts: datetime | None = None
        self.problems: list[str] = []
        self.production_stage = production_stage

    def model(self, name: str) -> ModelState:
        m = self.models.get(name)
        if m is None:
            m = self.models[name] = ModelState(name)
        return m

    def apply_all(self, events: list[ev.Event]) -> None:
        for e in events:
            self.apply(e)

    def apply(self, e: ev.Event) -> None:
        if e.seq <= self.last_seq:
            return  # already folded (a re-read after compaction)
        if e.seq != self.last_seq + 1:
            self.problems.append(f"event log gap: event {e.seq} follows event {self.last_seq}")
        if self.last_ts is not None and e.ts < self.last_ts:
            self.problems.append(f"event {e.seq} is dated before event {self.last_seq}")
        self.last_seq = e.seq
        self.last_ts = e.ts
        if e.kind not in ev.STATE_KINDS:
            return
        m = self.model(e.model)
        if e.kind == ev.REGISTERED:
            if e.version != len(m.versions) + 1:
                self.problems.append(f"event {e.seq}: {e.model} version {e.version} registered after "
                                     f"version {len(m.versions)}")
                return
            record = json.loads(e.payload or "{}")
            vs = VersionState(e.version, e.to_value or "", e.digest or "", e.ts, e.actor,
                              record.get("stage", "development"), e.run_id, e.payload or "", e.seq,
                              dict(record.get("tags") or {}))
            vs._record = record
            m.versions.append(vs)
            m.by_digest.setdefault(vs.digest, vs.version)
            m.by_semver[vs.semver] = vs.version
            return
        vs = m.get(e.version or 0)
        if vs is None:
            self.problems.append(f"event {e.seq} ({e.kind}) refers to {e.model} version {e.version}, "
                                 "which does not exist")
            return
        if e.kind == ev.STAGE_CHANGED:
            if e.from_value != vs.stage:
                self.problems.append(f"event {e.seq}: {e.model} v{vs.version} moves from {e.from_value} "
                                     f"but was in {vs.stage}")
            if vs.stage == self.production_stage and m.production == vs.version:
                m.production = None
            vs.stage = e.to_value or vs.stage
            if vs.stage == self.production_stage:
                if m.production is not None and m.production != vs.version:
                    self.problems.append(f"event {e.seq}: {e.model} has two production versions "
                                         f"({m.production} and {vs.version})")
                m.production = vs.version
                m.production_history.append(vs.version)
        elif e.kind == ev.ALIAS_SET:
            m.aliases[e.key or ""] = vs.version
        elif e.kind == ev.ALIAS_REMOVED:
            m.aliases.pop(e.key or "", None)
        elif e.kind == ev.TAG_SET:
            vs.tags[e.key or ""] = e.to_value or ""
        elif e.kind == ev.TAG_REMOVED:
            vs.tags.pop(e.key or "", None)
        elif e.kind == ev.APPROVED:
            m.approvals[(vs.version, e.to_value or "")].add(e.actor)
        elif e.kind == ev.ROLLBACK:
            if e.from_value and e.from_value.isdigit():
                m.rolled_back.add(int(e.from_value))
