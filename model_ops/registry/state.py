"""Registry state as a fold over events. The same fold, cut at a timestamp, answers "as of" questions.

The fold trusts nothing: an event that contradicts the state so far (a version number out of order, a stage change
for a version that does not exist) is not applied and is recorded in ``problems``, which ``fsck`` reports.
"""

from __future__ import annotations

import contextlib
import gc
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model_ops.registry import events as ev
from model_ops.registry.semver import SemverIndex

if TYPE_CHECKING:
    from model_ops.registry.snapshot import Snapshot

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while allocating many objects that hold no cycles: otherwise each
    allocation burst triggers full collections that walk every object in the process (3x slower at 100k)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class VersionState:
    """One version in the fold. Slotted, with its timestamp and registration record kept raw until read: a
    registry with 100k versions holds 100k of these."""

    __slots__ = (
        "version",
        "semver",
        "digest",
        "_created",
        "created_by",
        "stage",
        "run_id",
        "_payload",
        "seq",
        "tags",
        "_record",
    )

    def __init__(
        self,
        version: int,
        semver: str,
        digest: str,
        created: datetime | int,
        created_by: str,
        stage: str,
        run_id: str | None,
        payload: str | tuple[Any, int] | None,
        seq: int = 0,
    ) -> None:
        self.version = version
        self.semver = semver
        self.digest = digest
        self._created = created  # a datetime, or microseconds since the epoch straight from the table
        self.created_by = created_by
        self.stage = stage
        self.run_id = run_id
        self._payload = payload
        self.seq = seq
        self.tags: dict[str, str] = {}
        self._record: dict[str, Any] | None = None

    @property
    def created_at(self) -> datetime:
        if isinstance(self._created, int):
            self._created = _EPOCH + timedelta(microseconds=self._created)
        return self._created

    @property
    def payload(self) -> str:
        if isinstance(self._payload, tuple):
            source, index = self._payload
            # An Arrow column of the log, or the payload table of the snapshot the fold resumed from.
            text = source[index].as_py() if isinstance(source, pa.Array) else source.text(index)
            self._payload = str(text or "")
        return self._payload or ""

    @property
    def record(self) -> dict[str, Any]:
        """The immutable registration record (params, metrics, lineage …), parsed on first use."""
        if self._record is None:
            # A payload that is not a JSON object was not written by model_ops; fsck names the event.
            self._record = ev.payload_object(self.payload) or {}
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
    # (version, stage) -> one (claimed actor, proven identity or None) pair per approval: four-eyes counts people
    # by identity, so the claimed name alone is not enough (gates.count_approvals).
    approvals: dict[tuple[int, str], set[tuple[str, str | None]]] = field(default_factory=lambda: defaultdict(set))
    _semvers: SemverIndex | None = field(default=None, repr=False)  # built on first registration, then kept
    # The deployment and experiment records, oldest first: what serves is decided from them (with the stages),
    # and a follower (the live server) reads them from the fold instead of reading the audit table each poll.
    serving_records: list[ev.Event] = field(default_factory=list)

    def get(self, version: int) -> VersionState | None:
        return self.versions[version - 1] if 1 <= version <= len(self.versions) else None

    def aliases_of(self, version: int) -> list[str]:
        return sorted(a for a, v in self.aliases.items() if v == version)

    # The questions lookup.find_number asks (the snapshot answers the same ones from SQLite).
    def count(self) -> int:
        return len(self.versions)

    def semver_number(self, semver: str) -> int | None:
        return self.by_semver.get(semver)

    def alias_number(self, alias: str) -> int | None:
        return self.aliases.get(alias)

    def alias_names(self) -> list[str]:
        return list(self.aliases)

    def newest_in_stage(self, stage: str) -> int | None:
        for vs in reversed(self.versions):
            if vs.stage == stage:
                return vs.version
        return None

    @property
    def semvers(self) -> SemverIndex:
        if self._semvers is None:
            self._semvers = SemverIndex.of(set(self.by_semver))
        return self._semvers


class RegistryState:
    def __init__(self, production_stage: str = "production") -> None:
        self.models: dict[str, ModelState] = {}
        self.last_seq = 0
        self.last_ts: datetime | None = None
        self.last_hash: str | None = None  # the chain hash of event last_seq (None: a log from before the chain)
        self.gap_after: int | None = None  # the first event after which the numbering breaks (lost events)
        self.problems: list[str] = []
        self.production_stage = production_stage
        # (model, version) of every version an event registered or changed since the search index last looked
        # (search.SearchIndex); None until a search asks, so a fold nobody searches records nothing, except a fold
        # resumed from a snapshot, which records from the snapshot's event on (see ``seed``).
        self.touched: set[tuple[str, int]] | None = None
        # The snapshot this fold was resumed from (``Snapshot.state``): its search tables are this fold's as of the
        # snapshot's event, so the first search copies them and applies only ``touched`` instead of building.
        self.seed: Snapshot | None = None

    def model(self, name: str) -> ModelState:
        m = self.models.get(name)
        if m is None:
            m = self.models[name] = ModelState(name)
        return m

    def apply_all(self, events: list[ev.Event]) -> None:
        for e in events:
            self.apply(e)

    def apply_table(self, table: pa.Table) -> None:
        """Fold rows read from the log. Same final state as :meth:`apply_all` on a well-formed log, much faster.

        Registrations (nearly every row of a large registry) go straight from columns into version objects;
        the other events then fold one by one. Every non-registration event refers to a version registered before
        it, so registering first cannot change the outcome. ``fsck`` uses the strict event-by-event fold instead,
        which also reports events out of order.
        """
        table = table.filter(pc.field("seq") > self.last_seq).sort_by("seq")
        if table.num_rows == 0:
            return
        seqs = table.column("seq").to_numpy()
        expected = np.arange(self.last_seq + 1, self.last_seq + 1 + len(seqs))
        if not np.array_equal(seqs, expected):
            self.problems.append(f"event log gap or duplicate after event {self.last_seq}")
            if self.gap_after is None:
                first = int(np.argmax(seqs != expected))
                self.gap_after = self.last_seq + first
        is_reg = pc.equal(table.column("kind"), ev.REGISTERED)
        regs = table.filter(is_reg)
        with gc_paused():
            self._register_rows(regs)
        for e in ev.from_arrow(table.filter(pc.invert(is_reg))):
            self._apply_change(e)
        self.last_seq = int(seqs[-1])
        self.last_hash = table.column("hash")[-1].as_py() if "hash" in table.column_names else None
        newest = ev.utc(pc.max(table.column("ts")).as_py())
        self.last_ts = newest if self.last_ts is None else max(self.last_ts, newest)

    def _register_rows(self, regs: pa.Table) -> None:
        if regs.num_rows:
            cols = {
                n: regs.column(n).to_pylist()
                for n in ("model", "version", "to_value", "digest", "actor", "from_value", "run_id", "seq")
            }
            created = pc.cast(regs.column("ts"), pa.int64()).to_pylist()
            payloads = regs.column("payload").combine_chunks()
            m: ModelState | None = None
            current = None
            for i, name in enumerate(cols["model"]):
                if m is None or name != current:
                    m, current = self.model(name), name
                number = cols["version"][i]
                if number != len(m.versions) + 1:
                    self.problems.append(
                        f"event {cols['seq'][i]}: {name} version {number} registered after version {len(m.versions)}"
                    )
                    continue
                vs = VersionState(
                    number,
                    cols["to_value"][i] or "",
                    cols["digest"][i] or "",
                    created[i],
                    cols["actor"][i],
                    cols["from_value"][i] or "development",
                    cols["run_id"][i],
                    (payloads, i),
                    cols["seq"][i],
                )
                m.versions.append(vs)
                m.by_digest.setdefault(vs.digest, number)
                m.by_semver[vs.semver] = number
                if m._semvers is not None:
                    m._semvers.add(vs.semver)
                if self.touched is not None:
                    self.touched.add((name, number))

    def apply(self, e: ev.Event) -> None:
        if e.seq <= self.last_seq:
            return  # already folded (a re-read after compaction)
        if e.seq != self.last_seq + 1:
            self.problems.append(f"event log gap: event {e.seq} follows event {self.last_seq}")
            if self.gap_after is None:
                self.gap_after = self.last_seq
        if self.last_ts is not None and e.ts < self.last_ts:
            self.problems.append(f"event {e.seq} is dated before event {self.last_seq}")
        self.last_seq = e.seq
        self.last_ts = e.ts
        self.last_hash = e.hash
        if e.kind == ev.REGISTERED:
            m = self.model(e.model)
            if e.version != len(m.versions) + 1:
                self.problems.append(
                    f"event {e.seq}: {e.model} version {e.version} registered after version {len(m.versions)}"
                )
                return
            payload = e.payload if e.payload is not None else e.payload_ref
            vs = VersionState(
                e.version,
                e.to_value or "",
                e.digest or "",
                e.ts,
                e.actor,
                e.from_value or "development",
                e.run_id,
                payload,
                e.seq,
            )
            m.versions.append(vs)
            m.by_digest.setdefault(vs.digest, vs.version)
            m.by_semver[vs.semver] = vs.version
            if m._semvers is not None:
                m._semvers.add(vs.semver)
            if self.touched is not None:
                self.touched.add((e.model, vs.version))
            return
        self._apply_change(e)

    def _apply_change(self, e: ev.Event) -> None:
        """Every event but a registration: stage, alias, tag, approval and rollback changes, and the records
        serving follows."""
        if e.kind in ev.SERVING_RECORD_KINDS:
            self.model(e.model).serving_records.append(e)
            return
        if e.kind not in ev.STATE_KINDS:
            return
        m = self.model(e.model)
        vs = m.get(e.version or 0)
        if vs is None:
            self.problems.append(
                f"event {e.seq} ({e.kind}) refers to {e.model} version {e.version}, which does not exist"
            )
            return
        if self.touched is not None:
            self.touched.add((m.name, vs.version))
            if e.kind in (ev.ALIAS_SET, ev.ALIAS_REMOVED) and (e.key or "") in m.aliases:
                self.touched.add((m.name, m.aliases[e.key or ""]))  # the version the alias leaves
        if e.kind == ev.STAGE_CHANGED:
            if e.from_value != vs.stage:
                self.problems.append(
                    f"event {e.seq}: {e.model} v{vs.version} moves from {e.from_value} but was in {vs.stage}"
                )
            if vs.stage == self.production_stage and m.production == vs.version:
                m.production = None
            vs.stage = e.to_value or vs.stage
            if vs.stage == self.production_stage:
                if m.production is not None and m.production != vs.version:
                    self.problems.append(
                        f"event {e.seq}: {e.model} has two production versions ({m.production} and {vs.version})"
                    )
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
            m.approvals[(vs.version, e.to_value or "")].add((e.actor, e.identity))
        elif e.kind == ev.ROLLBACK:
            if e.from_value and e.from_value.isdigit():
                m.rolled_back.add(int(e.from_value))
