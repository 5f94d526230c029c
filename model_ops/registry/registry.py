"""The model registry: versions, semantic versions, stages, aliases, tags, approvals, audit and rollback.

All state is a fold over the append-only event log (see ``eventlog.py``); this module turns requests into events.
Each write runs the same loop: bring the fold up to date, check the request against the policy and the current
state, commit the events by compare-and-swap, retry from the top if another writer got there first. A request that
fails a check writes nothing (denials are the exception: they are recorded, by design). ``Registry._write`` holds
the steps the write verbs share, ``Registry._commit`` the compare-and-swap loop.

Beside this module: ``inputs.py`` coerces what callers pass into what the log stores, ``gates.py`` decides whether
a version may enter a stage, ``maintenance.py`` holds fsck, gc and the SQL-readable versions table. Names other
modules import from here (``parse_timestamp``, ``breaking_changes`` …) are re-exported.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar, overload

import pyarrow as pa
import pyarrow.compute as pc

from model_ops.artifacts import ArtifactStore, signing
from model_ops.artifacts.manifest import FLAVOR_SKOPS
from model_ops.errors import (
    ConflictError,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
    PolicyError,
    UsageError,
)
from model_ops.location import Location, resolve_root, retry_transient
from model_ops.registry import attest, inputs, lookup, maintenance, receipts, relations, search, snapshot
from model_ops.registry import events as ev
from model_ops.registry import semver as sv
from model_ops.registry.environment import ACTOR_ENV, environment, git_commit
from model_ops.registry.eventlog import EventLog
from model_ops.registry.gates import breaking_changes, gate_results
from model_ops.registry.identity import prove as prove_identity
from model_ops.registry.inputs import as_ref, parse_dataset, parse_timestamp, require_reason
from model_ops.registry.maintenance import VERSIONS_SCHEMA
from model_ops.registry.policy import POLICY_CHANGED, Policy, PolicyArchive, load_policy, root_part
from model_ops.registry.receipts import Receipts
from model_ops.registry.refs import Ref, check_alias, check_name, parse_ref
from model_ops.registry.repair import unreadable_log
from model_ops.registry.state import ModelState, RegistryState, VersionState, gc_paused
from model_ops.registry.version import ModelVersion

# Imported by other modules from here since before the split (``model_ops.registry.registry.parse_timestamp`` …).
__all__ = ["VERSIONS_SCHEMA", "ModelVersion", "Registry", "breaking_changes", "parse_dataset", "parse_timestamp"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 200
# Well inside the event log's retention (delta.logRetentionDuration, 7 days): see Registry._sync.
STALE_AFTER = timedelta(days=1)
RUN_ID_ENV = "MODEL_OPS_RUN_ID"

T = TypeVar("T")
# What a write's build step returns: the events to commit, and how to compute the result once they are committed.
Built = tuple[list[ev.Event], Callable[[], T]]


class _LazyRecord(Mapping[str, Any]):
    """A version's registration record, parsed from its event only when first read: listing 100k versions must
    not parse 100k JSON documents."""

    __slots__ = ("_vs",)

    def __init__(self, vs: VersionState) -> None:
        self._vs = vs

    def __getitem__(self, key: str) -> Any:
        return self._vs.record[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._vs.record)

    def __len__(self) -> int:
        return len(self._vs.record)

    def __repr__(self) -> str:
        return repr(self._vs.record)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _payload(payload: dict | None, window: str | None) -> str | None:
    """An event's stored payload: its details, and the business window it was written for (when there is one)."""
    if window:
        payload = {**(payload or {}), ev.BUSINESS_WINDOW: window}
    return json.dumps(payload, sort_keys=True) if payload is not None else None


def _clock(business: object) -> str:
    """How a moment is read, for messages: in business time when a ``business`` clock is given."""
    return "in business time" if business is not None else "on the wall clock"


class Registry:
    """Open with :meth:`open`; safe to share between threads; any number of processes may use one root at once."""

    def __init__(
        self, root: Location, actor: str | None = None, policy_path: str | os.PathLike[str] | None = None
    ) -> None:
        self.root = root
        self.location = root.child("registry")
        self.artifacts = ArtifactStore(root)
        # The root's policy, narrowed (never widened) by ``policy_path`` or $MODEL_OPS_POLICY: see policy.py.
        self._policy_path = policy_path
        self.policy: Policy = load_policy(self.location, policy_path)
        # The claimed actor; None when nothing was claimed, and then the actor is the proven identity's name.
        self._claimed = actor or os.environ.get(ACTOR_ENV) or None
        self._identity: str | None = None  # proven on first use (an STS round trip on S3): see ``identity``
        self._policy_seen: tuple[int, str | None] | None = None  # (seq, its ``policy`` column): see _check_policy
        self._made: ev.Event | None = None  # the event this object built last: see _newest_policy
        self._log = EventLog(self.location)  # tied to the folded state: compare-and-swap commits start from it
        self._reader = EventLog(self.location)  # audit and as-of read the latest table through this one
        self._receipts = Receipts(self.location)
        self._policies_kept: set[str] = set()
        # The window (partition key) of the world the writes are about: the Dagster run's partition, or the window
        # a sensor's decision was taken on. Every event written carries it (``Event.business_window``), so the
        # log answers "what served in 2013-07" as well as "what did the registry say at 14:00 today".
        self.business_window: str | None = None
        self._state: RegistryState | None = None
        self._state_version = -1
        self._direct_snapshot: snapshot.Snapshot | None = None  # see _direct
        self._direct_checked = False
        self._search_index: search.SearchIndex | None = None  # built by the first search not answered by a snapshot
        self._resume = True  # whether a fold may start from the snapshot (maintenance's own fold does not)
        # What is wrong with the newest commits of the log, found by the last read (see ``_check_tip``). Reads go
        # on answering from what is readable; every write is refused until ``fsck --repair``.
        self.damage: list[str] = []
        self._confirmed = 0.0
        self._lock = threading.RLock()

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str] | Location | None = None,
        *,
        actor: str | None = None,
        policy: str | os.PathLike[str] | None = None,
    ) -> Registry:
        """Open the registry under ``root`` (default ``$MODEL_OPS_ROOT`` or ``./.model_ops``), creating it on first use.

        ``actor`` (default ``$MODEL_OPS_ACTOR``) is a claimed name: writing under a name other than the proven
        identity's needs the ``impersonate`` verb. ``policy`` can only narrow the root's policy."""
        return cls(resolve_root(root), actor=actor, policy_path=policy)

    @property
    def identity(self) -> str:
        """Who the backend proves this process to be (the OS user of the effective uid; the STS caller on S3),
        recorded in every event's ``identity`` column beside the claimed ``actor``."""
        if self._identity is None:
            self._identity = prove_identity(self.root, self.policy.access.sts_endpoint)
        return self._identity

    @property
    def actor(self) -> str:
        """The name this registry writes under: the claimed one, else the proven identity's name in the policy."""
        return self._claimed or self.policy.name_of(self.identity)

    # ------------------------------------------------------------------ reading

    def _sync(self) -> RegistryState:
        """The fold, brought up to date. Costs two stats (one HEAD on S3) when nothing changed.

        The probe is ``EventLog.moved_past``: "does Delta commit V+1 exist, or is V itself gone?". Locally, upkeep
        deletes old commit files oldest first, so V+1 never goes while V stays, and the probe is exact at any age.
        On S3 commits are expired only by Delta's log retention (7 days), and V+1 is younger than the last moment
        we saw V as the newest; so a state last confirmed longer ago than ``STALE_AFTER`` is rebuilt from scratch
        instead of probed.
        """
        with self._lock:
            now = time.monotonic()
            if self._state is not None and now - self._confirmed > STALE_AFTER.total_seconds():
                self._state = None
                self._log = EventLog(self.location)
            if self._state is None:
                with unreadable_log(self._log.location):
                    state = self._resumed() or RegistryState(self.policy.production.stage)
                    state.apply_table(self._log.read_after(state.last_seq))
                    self._state, self._state_version = state, self._log.version
                self._check_tip(state)
            elif self._log.moved_past(self._state_version):
                with unreadable_log(self._log.location):
                    self._log.refresh()
                    self._state.apply_table(self._log.read_after(self._state.last_seq))
                    self._state_version = self._log.version
                self._check_tip(self._state)
            self._confirmed = now
            return self._state

    def _resumed(self) -> RegistryState | None:
        """The state of the current snapshot, when it belongs to this log: folded under the same production stage,
        at a Delta version the log has reached, ending with the very event (same hash) the log holds at its
        ``last_seq``. Then only the events after it are read. Anything else, and the log is folded from the start."""
        if self._direct_snapshot is not None:
            self._direct_snapshot.close()
            self._direct_snapshot = None
        # Hashed in full, whatever its stat says: a state writers build on is not taken on a quick check.
        snap = snapshot.open_verified(self.location, full=True) if self._resume else None
        if snap is None:
            return None
        if snap.production_stage != self.policy.production.stage or snap.delta_version > self._log.version:
            return None
        try:
            tip = self._log.read(pc.field("seq") == snap.last_seq, columns=["hash"]).column("hash").to_pylist()
            state = snap.state()
        except Exception as e:  # a snapshot is never trusted: whatever is wrong with it, the log is folded instead
            log.warning("registry %s: the state snapshot %s is not used: %s", self.root, snap.path.name, e)
            return None
        if snap.last_seq and tip != [state.last_hash]:
            log.warning(
                "registry %s: the state snapshot %s does not match the event log at event %s; folding the whole log",
                self.root,
                snap.path.name,
                snap.last_seq,
            )
            return None
        return state

    def _direct(self) -> snapshot.Snapshot | None:
        """The snapshot to answer a read from before this object has folded the log: a fresh process answers
        ``resolve``, ``versions`` and ``models`` from it, without reading the log, while nothing was written since
        (see ``snapshot.py``). Once the log is folded (a write, or a read the snapshot cannot answer), never."""
        if self._state is not None:
            return None
        snap = self._direct_snapshot
        if snap is None and not self._direct_checked:
            self._direct_checked = True
            snap = snapshot.open_verified(self.location)
            if snap is not None and (
                snap.production_stage != self.policy.production.stage or snap.pointer.get("problems")
            ):
                snap = None
            self._direct_snapshot = snap
        if snap is None or snap.is_current():
            return snap
        return None  # kept in _direct_snapshot: the fold resumes from it

    def log_version(self) -> int:
        """The Delta version of the event log this registry's state is folded at, brought up to date first.

        The change probe of a follower (the live server polls it): the number moves with every write to the
        registry, by any process, and stays when nothing was written. Asking costs one stat (one HEAD on S3) when
        nothing changed; when something did, the new events are folded in, so reads after it see them."""
        with self._lock:
            self._sync()
            return self._state_version

    def _check_tip(self, state: RegistryState) -> None:
        """Compare the fold's newest event with the receipt of the Delta version it was read at, and look for a
        receipt beyond it: a commit file that was emptied, rewritten without its actions or deleted reads as
        "nothing happened" to the Delta engine, and only the receipt shows what it held. Two small reads, paid only
        when the log moved."""
        version = self._state_version
        damage = []
        if state.gap_after is not None:
            damage.append(
                f"the event log skips events after event {state.gap_after}: a commit holding them was damaged "
                "or deleted"
            )
        receipt = self._receipts.read(version)
        if receipt is not None and (receipt["last_seq"], receipt["last_hash"]) != (state.last_seq, state.last_hash):
            damage.append(
                f"the event log's commit {version} is damaged: it was acknowledged with events "
                f"{receipt['first_seq']}..{receipt['last_seq']}, and the log now ends at event {state.last_seq}"
            )
        if (
            self._receipts.exists(version + 1)
            and not self._log.has_commit(version + 1)
            and self._log.has_commit(version)  # else upkeep expired both: the log moved on (see moved_past)
        ):
            damage.append(
                f"the event log's commit {version + 1} is missing: it was acknowledged (its receipt is in "
                f"{self._receipts.location}), and its commit file is gone"
            )
        if damage and damage != self.damage:
            log.warning("warning: registry %s: %s", self.root, "; ".join(damage))
        self.damage = damage

    def _newest_commit_problem(self) -> str | None:
        """What is wrong with the commit file of the version this state was folded at, read again just before a
        write builds on it: a process holding the state cannot notice through the Delta engine that the file was
        emptied or deleted under it, and a commit on top would bury the loss (the damaged commit would no longer be
        the newest). One small read per write."""
        version = self._state_version
        if version <= 0:
            return None
        if not self._log.has_commit(version):
            return f"the event log's newest commit {version} vanished under this process"
        problem = self._log.commit_problem(version)
        return f"{problem} (found by this process before writing on top of it)" if problem else None

    def _refuse_if_damaged(self) -> None:
        if self.damage:
            raise IntegrityError(
                "the registry's event log is damaged, so nothing can be written until it is repaired (a write now "
                "could reuse the numbers of the lost events): " + "; ".join(self.damage),
                hint="`model-ops fsck` lists what is wrong; `model-ops fsck --repair` restores the lost events "
                "from their receipts and the log's data files",
            )

    def _model(self, state: RegistryState, name: str) -> ModelState:
        check_name(name)
        m = state.models.get(name)
        if m is None or not m.versions:
            raise lookup.unknown_model(name, self.root, (n for n, mm in state.models.items() if mm.versions))
        return m

    def _mv(self, m: ModelState, vs: VersionState) -> ModelVersion:
        return ModelVersion(
            m.name,
            vs.version,
            vs.semver,
            vs.stage,
            tuple(m.aliases_of(vs.version)),
            vs.digest,
            vs.created_at,
            vs.created_by,
            vs.run_id,
            dict(vs.tags),
            _LazyRecord(vs),
        )

    def _find(self, state: RegistryState, ref: Ref) -> tuple[ModelState, VersionState]:
        m = self._model(state, ref.name)
        vs = m.get(lookup.find_number(m, ref, self.policy.stages))
        assert vs is not None  # find_number answers only numbers the model has
        lookup.check_kind(ref, str(vs.record.get("flavor", "")), f"models:/{m.name}/{vs.version}")
        return m, vs

    def resolve(self, ref: str | Ref) -> ModelVersion:
        """The version a reference points at now (``models:/NAME/3``, ``/1.2.0``, ``@alias``, ``/stage``)."""
        parsed = as_ref(ref)
        with self._lock:
            direct = self._direct()
            if direct is not None:
                return direct.resolve(parsed, self.policy.stages)
            mv = self._mv(*self._find(self._sync(), parsed))
        lookup.check_kind(parsed, mv.flavor, mv.ref)
        return mv

    def get(self, name: str, version: int) -> ModelVersion:
        return self.resolve(Ref(name, version=int(version)))

    def models(self) -> list[str]:
        with self._lock:
            direct = self._direct()
            if direct is not None:
                return direct.models()
            return sorted(n for n, m in self._sync().models.items() if m.versions)

    def model_summaries(self) -> list[dict[str, Any]]:
        """One row per model: its name, how many versions, the latest and the one in production (None)."""
        with self._lock:
            direct = self._direct()
            if direct is not None:
                return direct.model_summaries()
            models = sorted((m for m in self._sync().models.values() if m.versions), key=lambda m: m.name)
            return [
                {
                    "name": m.name,
                    "versions": len(m.versions),
                    "latest": len(m.versions),
                    "production": m.newest_in_stage(self.policy.production.stage),
                }
                for m in models
            ]

    def versions(self, name: str) -> list[ModelVersion]:
        with self._lock:
            direct = self._direct()
            if direct is not None:
                return direct.versions(name)
            m = self._model(self._sync(), name)
            with gc_paused():
                return [self._mv(m, vs) for vs in m.versions]

    def search(
        self,
        query: str = "",
        *,
        order_by: str | None = None,
        limit: int = search.DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> search.SearchPage:
        """Versions of every model that match ``query`` (see ``model_ops/registry/search.py`` for the language, e.g.
        ``stage = production and metrics.roc_auc > 0.7 and tags.team = fraud``), ordered by ``order_by`` (default
        ``created desc``), ``limit`` to a page; pass the page's ``cursor`` to get the next one.

        Answered from the current snapshot when there is one; otherwise from search tables this object builds in
        memory from its fold on the first search and then keeps up to date with each later change."""
        with self._lock:
            direct = self._direct()
            if direct is not None:
                return direct.search(query, order_by=order_by, limit=limit, cursor=cursor)
            state = self._sync()
            if self._search_index is None:
                self._search_index = search.SearchIndex()
            conn = self._search_index.refresh(state)
            pairs, following, order = search.run(conn, query, order_by=order_by, limit=limit, cursor=cursor)
            found = []
            for name, number in pairs:
                m = state.models[name]
                vs = m.get(number)
                assert vs is not None  # the index holds only versions of this fold
                found.append(self._mv(m, vs))
            return search.SearchPage(found, following, order)

    def audit(self, name: str | None = None) -> list[ev.Event]:
        """Every event, oldest first (for one model when ``name`` is given). Read from the table, not the cache."""
        if name is not None:
            check_name(name)
        with unreadable_log(self._reader.location):
            events = ev.from_arrow(self._reader.read_latest(model=name))
        if name is not None and not events:
            self._model(self._sync(), name)  # raises NotFoundError with the list of models
        return events

    def serving_records(self, name: str) -> list[ev.Event]:
        """The model's deployment and experiment records, oldest first, from the fold (brought up to date: one
        stat when nothing changed), not from the table as :meth:`audit` reads: what serves is decided from them,
        and a server following the registry asks after every move of the log."""
        check_name(name)
        with self._lock:
            m = self._sync().models.get(name)
            return list(m.serving_records) if m is not None else []

    def as_of(
        self,
        when: str | datetime,
        name: str | None = None,
        *,
        business: Callable[[str, str], datetime | None] | None = None,
    ) -> dict[str, dict]:
        """Stages and aliases as they were at ``when``: by default on the wall clock (the event fold cut at that
        moment); with ``business``, in the world the events describe.

        ``business(model, window)`` is the moment an event written for ``window`` takes effect (the window's end:
        a decision taken on a month's evidence governs the next month). An event written for no window took
        effect with the model's event before it (the first ones, before any window: from the start). The fold
        then takes, in log order, the events in effect at ``when``."""
        cut = parse_timestamp(when)
        if name is not None:
            check_name(name)
        state = self._state_at(cut, business)
        models = {n: m for n, m in state.models.items() if m.versions and (name is None or n == name)}
        if name is not None and not models:
            raise self._none_at(name, cut, business)
        return {
            n: {
                "production": m.production,
                "aliases": dict(sorted(m.aliases.items())),
                "versions": [
                    {
                        "version": v.version,
                        "semver": v.semver,
                        "stage": v.stage,
                        "aliases": m.aliases_of(v.version),
                        "digest": v.digest,
                    }
                    for v in m.versions
                ],
            }
            for n, m in sorted(models.items())
        }

    def resolve_as_of(
        self,
        ref: str | Ref,
        when: str | datetime,
        *,
        business: Callable[[str, str], datetime | None] | None = None,
    ) -> ModelVersion:
        """The version ``ref`` pointed at ``when`` (on the clock :meth:`as_of` reads), as it was then: its stage,
        aliases and tags then (``@champion`` in July 2013 is the version that was champion then)."""
        parsed, cut = as_ref(ref), parse_timestamp(when)
        state = self._state_at(cut, business)
        m = state.models.get(parsed.name)
        if m is None or not m.versions:
            raise self._none_at(parsed.name, cut, business)
        try:
            return self._mv(*self._find(state, parsed))
        except NotFoundError as e:
            raise NotFoundError(
                f"{ref} named no version at {cut.isoformat()} ({_clock(business)}): {e.message}",
                hint=f"model-ops as-of {cut.isoformat()} {parsed.name}{' --business' if business else ''} lists "
                "what there was",
            ) from None

    def _state_at(self, cut: datetime, business: Callable[[str, str], datetime | None] | None) -> RegistryState:
        """The fold of the events in effect at ``cut``: written by then, or with ``business`` in effect by then
        in the world they describe (see :meth:`as_of`)."""
        state = RegistryState(self.policy.production.stage)
        with unreadable_log(self._reader.location):
            if business is None:
                state.apply_table(self._reader.read_latest(until=cut))
            else:
                table = self._reader.read_latest()
                keep = ev.in_effect(ev.from_arrow(table), cut, business)
                state.apply_table(table.filter(pc.is_in(table.column("seq"), pa.array(keep, type=pa.int64()))))
        return state

    @staticmethod
    def _none_at(name: str, cut: datetime, business: object) -> NotFoundError:
        return NotFoundError(f"model {name!r} had no versions at {cut.isoformat()} ({_clock(business)})")

    # ------------------------------------------------------------------ writing

    def _commit(self, build: Callable[[RegistryState], tuple[list[ev.Event], Callable[[], Any]]]) -> Any:
        """Run ``build`` against the current state and commit its events atomically; retry on a lost race."""
        delay = 0.002
        for _ in range(MAX_ATTEMPTS):
            with self._lock:
                state = self._sync()
                pending, result = build(state)
                if not pending:
                    return result()
                self._refuse_if_damaged()
                if self._log.expired(self._state_version):
                    self._state = None  # upkeep expired the commit this state was read at: the log moved on
                    continue
                vanished = self._newest_commit_problem()
                if vanished:
                    self.damage = [vanished]
                    self._refuse_if_damaged()
                ts = _now()
                if state.last_ts is not None and ts <= state.last_ts:
                    ts = state.last_ts + timedelta(microseconds=1)
                prev = state.last_hash or ev.GENESIS
                for i, e in enumerate(pending):
                    e.seq = state.last_seq + 1 + i
                    e.ts = ts
                    e.prev_hash = prev
                    e.hash = prev = ev.chain_hash(e)
                if self._log.try_append(ev.to_arrow(pending)):
                    state.apply_all(pending)
                    landed = self._log.landed
                    self._state_version = landed if landed is not None else self._log.version
                    try:
                        version = self._state_version
                        retry_transient(lambda: self._receipts.write(version, pending))
                    except Exception as e:  # the commit stands (acknowledged); only the check of it is weaker
                        log.warning("could not store the receipt of commit %s: %s", self._state_version, e)
                    self._after_commit()
                    return result()
                if not self._log.has_commit(self._state_version + 1):
                    self._state = None  # lost the race yet no V+1: the log moved on past expiry; rebuild
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.25)
        raise ConflictError(
            "the registry is too busy: the write lost the race to other writers "
            f"{MAX_ATTEMPTS} times; nothing was written",
            hint="try again",
        )

    def _after_commit(self) -> None:
        """What follows an acknowledged commit, none of it waited for: webhook delivery is woken, and every
        ``BACKGROUND_EVERY`` commits the log is compacted in a background thread. The rest of the upkeep (vacuum,
        the versions table, the state snapshot) is :meth:`maintain`'s."""
        from model_ops.registry import webhooks

        webhooks.after_commit(self)  # wakes background delivery; never waits for a receiver, never raises
        version = self._log.version
        if version and version % maintenance.BACKGROUND_EVERY == 0:
            maintenance.compact_in_background(self.location)

    def _event(
        self,
        model: str,
        kind: str,
        *,
        version: int | None = None,
        key: str | None = None,
        from_value: str | None = None,
        to_value: str | None = None,
        digest: str | None = None,
        reason: str | None = None,
        run_id: str | None = None,
        payload: dict | None = None,
    ) -> ev.Event:
        self._made = made = ev.Event(
            seq=0,
            ts=_now(),
            model=model,
            kind=kind,
            actor=self.actor,
            version=version,
            key=key,
            from_value=from_value,
            to_value=to_value,
            digest=digest,
            reason=reason,
            run_id=run_id or os.environ.get(RUN_ID_ENV) or None,
            payload=_payload(payload, self.business_window),
            identity=self.identity,
            policy=self.policy.digest,
        )
        return made

    def _authorize(self, verb: str, model: str, version: int | None = None, run_id: str | None = None) -> None:
        """Refuse ``verb`` on ``model`` unless the root's policy (and every narrowing one) allows it for this actor
        and identity; a refusal is committed to the audit log as a denial, then raised. Every write passes here
        first, so this is also where a lost or changed root policy is noticed (see :meth:`_check_policy`)."""
        self._check_policy(model, run_id)
        self._keep_policy()
        why = self.policy.refusal(self.actor, self.identity, verb, model)
        if why is None:
            return
        message = why.message + (f" v{version}" if version else "")
        denial = self._event(
            model, ev.DENIED, version=version, key=verb, reason=message, run_id=run_id, payload={"refused_by": why.by}
        )
        self._commit(lambda state: ([denial], lambda: None))
        raise PermissionDeniedError(message + f" (refused by {why.by} and recorded in the audit log)", hint=why.hint)

    def _keep_policy(self) -> None:
        """Keep the root policy's text by digest before the first write it decides (once per process and
        policy), so fsck can replay this write against it after the file changes (see ``PolicyArchive``)."""
        digest = root_part(self.policy.digest)
        if digest is not None and digest not in self._policies_kept:
            retry_transient(lambda: PolicyArchive(self.location).keep(self.policy))
            self._policies_kept.add(digest)

    def _newest_policy(self, state: RegistryState) -> str | None:
        """The ``policy`` column of the fold's newest event (None: not recorded). Cheapest source first: the event
        this object committed last; the receipt of the folded Delta version, when its last event hashes to the
        fold's tip (the chain hash covers the column, so a receipt that says otherwise is not believed); else the
        table itself, whose scan set-up costs about 0.1 s on a large log."""
        seq, tip, made = state.last_seq, state.last_hash, self._made
        if made is not None and tip is not None and (made.seq, made.hash) == (seq, tip):
            return made.policy
        if tip is not None:
            try:
                doc = receipts.Receipts(self.location).read(self._state_version)
                tail = receipts.events_of(doc)[-1:] if doc is not None else []
            except Exception:  # the receipt is only a shortcut: the table below is the truth
                tail = []
            if tail and tail[0].seq == seq and ev.chain_hash(tail[0]) == tip:
                return tail[0].policy
        table = self._log.read(pc.field("seq") == seq)
        if table.num_rows == 0 or "policy" not in table.column_names:
            return None
        return table.column("policy")[0].as_py()

    def _check_policy(self, model: str, run_id: str | None) -> None:
        """Compare the root's policy with the one that decided the newest event, before anything is written.

        The root had a policy file and it is gone: refuse (PolicyError), since the shipped default that would
        take its place makes everyone a maintainer. The root's policy is another one than before (edited,
        replaced, added): record a ``policy_changed`` event naming both digests, so the audit shows when the
        rules changed, then go on under the new one. Nothing is decided when the newest event predates the
        ``policy`` column."""
        with self._lock:
            state = self._sync()
            seq = state.last_seq
            if seq == 0:
                return
            if self._policy_seen is None or self._policy_seen[0] != seq:
                self._policy_seen = (seq, self._newest_policy(state))
            before = root_part(self._policy_seen[1])
        now = root_part(self.policy.digest) or ""
        if before is None or before == now:
            return
        # The log says another policy decided the newest write: this process may hold a policy the root no longer
        # has (a long-lived server, a sensor). Judge by the file as it is now, and record a change only to that.
        fresh = load_policy(self.location, self._policy_path)
        if root_part(fresh.digest) != now:
            self.policy, now = fresh, root_part(fresh.digest) or ""
            self._policies_kept.discard(now)
            if before == now:
                return
        if before.startswith("root=") and now.startswith("default="):
            raise PolicyError(
                f"the registry's policy {self.policy.root_file} is missing: its newest event was decided by the "
                f"policy {before.split('=', 1)[1]}, and without the file every actor would get the shipped "
                "default's roles (maintainer for everyone); nothing was written",
                hint=f"restore {self.policy.root_file} (the file whose SHA-256 is {before.split(':', 1)[1][:16]}…) "
                "or put the policy you mean there (the change is then recorded); reads still work, writes are "
                "refused until then",
            )
        change = self._event(
            model,
            POLICY_CHANGED,
            key="policy",
            from_value=before,
            to_value=now,
            reason=f"the registry's policy changed ({self.policy.root_file})",
            run_id=run_id,
            payload={"file": self.policy.root_file, "from": before, "to": now},
        )

        def build(state: RegistryState) -> tuple[list[ev.Event], Callable[[], None]]:
            if state.last_seq != seq:  # another writer came first: judge against what is newest now
                latest = root_part(self._newest_policy(state))
                if latest is None or latest == now:
                    return [], lambda: None
                change.from_value = latest
                change.payload = json.dumps({**json.loads(change.payload or "{}"), "from": latest}, sort_keys=True)
            return [change], lambda: None

        self._commit(build)

    @overload
    def _write(
        self,
        verb: str,
        name: str,
        build: Callable[[RegistryState, ModelState, VersionState], Built[T]],
        *,
        ref: Ref,
        run_id: str | None = None,
        check: Callable[[ModelState], None] | None = None,
    ) -> T: ...

    @overload
    def _write(
        self,
        verb: str,
        name: str,
        build: Callable[[RegistryState, ModelState], Built[T]],
        *,
        ref: None = None,
        run_id: str | None = None,
        check: Callable[[ModelState], None] | None = None,
    ) -> T: ...

    def _write(
        self,
        verb: str,
        name: str,
        build: Callable[..., Built[T]],
        *,
        ref: Ref | None = None,
        run_id: str | None = None,
        check: Callable[[ModelState], None] | None = None,
    ) -> T:
        """The steps the stage, approval, alias, tag and rollback verbs share, so each of them states only its own
        rule. ``register_many``, ``record`` and ``attach`` authorize and commit directly: they may write for a model
        with no versions yet (a first registration, a record naming no version), or store an artifact once, between
        authorization and the commit, outside the retry loop.

        1. Resolve the target once, against the state brought up to date: the version ``ref`` points at (``build``
           is then called as ``build(state, m, vs)``), or with no ``ref`` just model ``name`` (``build(state, m)``).
           ``check`` may refuse the request on that model. A missing target or a refusal is raised before
           authorization, so it records no denial.
        2. Authorize ``verb`` on ``name`` (and the version's number): a denial is committed to the audit log as its
           own event and raised, before anything of the request is built.
        3. Commit: ``build`` runs inside :meth:`_commit`'s compare-and-swap loop, once per attempt, against the
           state as of that attempt. The version is pinned by the number resolved in step 1, not re-resolved from
           ``ref``: an alias or stage moved by a racing writer cannot redirect a write that was authorized for
           another version. ``build`` returns no events when there is nothing to change, and nothing is written.
        """
        with self._lock:
            state = self._sync()
            if ref is not None:
                m0, vs0 = self._find(state, ref)
                number: int | None = vs0.version
            else:
                m0, number = self._model(state, name), None
            if check is not None:
                check(m0)
        self._authorize(verb, name, number, run_id)
        if ref is None:
            return self._commit(lambda latest: build(latest, self._model(latest, name)))
        pinned = Ref(ref.name, version=number)
        return self._commit(lambda latest: build(latest, *self._find(latest, pinned)))

    def _known_stage(self, stage: str) -> str:
        if stage not in self.policy.stages:
            raise UsageError(f"unknown stage {stage!r}", hint="stages: " + ", ".join(self.policy.stages))
        return stage

    def register(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        dataset: Any = None,
        signature: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        lineage: Mapping[str, Any] | None = None,
        parent: int | str | None = None,
        description: str | None = None,
        flavor: str | None = None,
        run_id: str | None = None,
        base: str | None = None,
    ) -> ModelVersion:
        """Store the file or directory at ``path`` and register it as the next version of ``name``.

        Registering bytes identical to an existing version of the model returns that version and writes nothing.
        An adapter names the base model it was trained on in ``base`` (``models:/NAME@ALIAS`` or ``/N``): see
        :mod:`model_ops.registry.relations`.
        """
        entry = {
            "path": path,
            "params": params,
            "metrics": metrics,
            "dataset": dataset,
            "signature": signature,
            "tags": tags,
            "lineage": lineage,
            "parent": parent,
            "description": description,
            "flavor": flavor,
            "base": base,
        }
        return self.register_many(name, [entry], run_id=run_id)[0]

    def register_many(
        self, name: str, entries: list[Mapping[str, Any]], *, run_id: str | None = None
    ) -> list[ModelVersion]:
        """Register several artifacts of one model in a single atomic commit (imports and migrations).

        Each entry takes the keyword arguments of :meth:`register` (``path`` required). Versions are numbered in
        entry order; an entry's default parent is the entry before it. All or none are registered.
        """
        check_name(name)
        if not entries:
            return []
        self._authorize("register", name, run_id=run_id)
        signer = signing.signer_from_env()
        if signer is None and self.policy.signature_required(self.policy.initial_stage):
            raise UsageError(
                f"this registry requires signatures in {self.policy.initial_stage}, where new versions start, and "
                f"{signing.KEY_ENV} is not set; nothing was registered",
                hint=f"set {signing.KEY_ENV} to the registry's signing key (a PEM private key)",
            )
        prepared = [inputs.registration(e) for e in entries]  # validates everything before storing anything
        built_on = [relations.prepare(self, e["path"], e["flavor"], e.pop("base")) for e in prepared]
        effective_run = run_id or os.environ.get(RUN_ID_ENV) or None
        sources: list[tuple[str, Callable[[], Any]]] = []
        for item, llm in zip(prepared, built_on, strict=True):
            path, flavor = item.pop("path"), item.pop("flavor") or llm.flavor
            stored = self.artifacts.put(path, flavor)
            known = self._known_with_same_links(name, stored.digest, llm.lineage)
            sources.append((stored.digest, functools.partial(self.artifacts.put, path, flavor)))
            item["digest"], item["manifest"] = stored.digest, stored.manifest
            item["lineage"] = {
                "code_version": None,
                "git_commit": git_commit(),
                "environment": environment(),
                "seed": None,
                "estimator": None,
                **item["lineage"],
                **llm.lineage,  # read from the files, so a caller's lineage cannot claim another base
            }
            item["trust"] = None
            if signer is not None and not known:
                item["trust"], stored_too = self._sign_artifact(signer, name, path, item, effective_run)
                sources.extend(stored_too)
            if llm.attachments and not known:
                attached = dict(item["trust"] or {})
                for label, (filename, data) in llm.attachments.items():
                    put = functools.partial(self._put_bytes, filename, data)
                    attached[label] = (put().digest, len(data))
                    sources.append((attached[label][0], put))
                item["trust"] = attached
        versions = self._commit(lambda state: self._build_registrations(state, name, prepared, run_id, signer))
        for digest, put_again in sources:
            self._still_stored(digest, put_again)
        return versions

    def _known_with_same_links(self, name: str, digest: str, lineage: Mapping[str, Any]) -> bool:
        """Whether a version of ``name`` already has these bytes (registering them again returns it). Refused when
        what the file refers to now resolves elsewhere than it did for that version (an alias moved), which
        returning it would hide."""
        with self._lock:
            m = self._sync().models.get(name)
            number = m.by_digest.get(digest) if m is not None else None
        if number is None:
            return False
        existing = self.get(name, number)
        for key in relations.LINKS:
            then, now = (existing.lineage.get(key) or {}), (lineage.get(key) or {})
            if (then.get("name"), then.get("version")) != (now.get("name"), now.get("version")):
                raise UsageError(
                    f"these bytes are {existing.ref}, registered when its {key.replace('_', ' ')} was "
                    f"{then.get('name')} {then.get('version')}; it resolves to {now.get('name')} {now.get('version')} now",
                    hint="pin the exact version in the file (models:/NAME/N), which makes it a new version, "
                    "or register it under another name",
                )
        return True

    def _put_bytes(self, filename: str, data: bytes) -> Any:
        with tempfile.TemporaryDirectory(prefix="model_ops_attach_") as tmp:
            path = Path(tmp) / filename
            path.write_bytes(data)
            return self.artifacts.put(path)

    def _sign_artifact(
        self, signer: signing.Signer, name: str, path: Any, item: dict[str, Any], run_id: str | None
    ) -> tuple[dict[str, tuple[str, int]], list[tuple[str, Callable[[], Any]]]]:
        """The OMS bundle of one artifact's files and its signed provenance statement, stored in the artifact
        store beside it: (label -> (digest, size), how to store each again). Made once, before the commit loop:
        hashing the files and storing blobs do not belong in a loop that may run many times; neither depends on
        the version number (the version record's own signature, which does, is made in the loop)."""
        manifest = item["manifest"]
        bundle = attest.oms_bundle(signer, Path(path), manifest)
        statement = attest.provenance_statement(
            model=name,
            digest=item["digest"],
            manifest=manifest,
            params=item["params"],
            dataset=item["dataset"],
            lineage=item["lineage"],
            flavor=manifest.flavor,
            run_id=run_id,
            actor=self.actor,
            lock=attest.lockfile(),
        )
        envelope = json.dumps(signing.envelope(signing.canonical(statement), signer), indent=2).encode()
        trust: dict[str, tuple[str, int]] = {}
        again: list[tuple[str, Callable[[], Any]]] = []
        for label, filename, data in (
            (attest.OMS_LABEL, signing.OMS_FILE, bundle),
            (attest.PROVENANCE_LABEL, attest.PROVENANCE_FILE, envelope),
        ):
            if data is None:
                continue
            put = functools.partial(self._put_bytes, filename, data)
            digest = put().digest
            trust[label] = (digest, len(data))
            again.append((digest, put))
        return trust, again

    def _still_stored(self, digest: str, put_again: Callable[[], Any]) -> None:
        """After a commit that references ``digest``: its blobs are all in the store, stored again from the
        caller's copy where a garbage collection that chose them before the commit took them away. Nothing is
        acknowledged before this holds (see :func:`model_ops.registry.maintenance.gc`)."""
        if not self.artifacts.missing(digest):
            return
        put_again()
        gone = self.artifacts.missing(digest)
        if gone:
            raise IntegrityError(
                f"{len(gone)} blob(s) of artifact {digest[:12]} vanished after it was committed and could not be "
                "stored again",
                hint="run `model-ops fsck`, then register the same files again",
            )

    def _build_registrations(
        self,
        state: RegistryState,
        name: str,
        prepared: list[dict[str, Any]],
        run_id: str | None,
        signer: signing.Signer | None = None,
    ) -> tuple[list[ev.Event], Callable[[], list[ModelVersion]]]:
        m = state.models.get(name) or ModelState(name)
        count = len(m.versions)
        digests: dict[str, int] = {}  # this batch's; the model's own stay in m.by_digest (not copied: O(1))
        used = sv.SemverIndex(over=m.semvers)
        fresh: dict[int, tuple[dict, str]] = {}  # versions created by this batch: number -> (record, semver)

        def lookup(number: int) -> tuple[dict, str] | None:
            if number in fresh:
                return fresh[number]
            vs = m.get(number)
            return (vs.record, vs.semver) if vs else None

        out: list[ev.Event] = []
        numbers: list[int] = []
        for item in prepared:
            known = digests.get(item["digest"]) or m.by_digest.get(item["digest"])
            if known is not None:
                numbers.append(known)
                continue
            parent_no = self._parent_number(m, item["parent"]) if item["parent"] is not None else (count or None)
            parent = lookup(parent_no) if parent_no else None
            if parent_no and parent is None:
                raise NotFoundError(f"parent {item['parent']!r} is not a version of {name}")
            manifest = item["manifest"]
            record = {
                "params": item["params"],
                "metrics": item["metrics"],
                "dataset": item["dataset"],
                "signature": item["signature"],
                "lineage": item["lineage"],  # with the defaults filled in by register_many
                "parent": parent_no,
                "flavor": manifest.flavor,
                "size": manifest.total_size,
                "files": len(manifest.files),
                "description": item["description"],
            }
            level, why = sv.classify(parent[0] if parent else None, record)
            semver = sv.bump(level, parent[1] if parent else None, used)
            record["bump"] = {"level": level, "reason": why, "from": parent[1] if parent else None}
            if self.business_window:  # part of the record, so a signature covers it (the event payload is the record)
                record[ev.BUSINESS_WINDOW] = self.business_window
            count += 1
            trust: dict[str, tuple[str, int]] = item["trust"] or {}
            if signer is not None:
                # Here, not before the loop: the signature covers the number and semver this attempt assigns.
                record["signing"] = attest.sign_version(
                    signer,
                    oms=trust.get(attest.OMS_LABEL, (None, 0))[0],
                    provenance=trust.get(attest.PROVENANCE_LABEL, (None, 0))[0],
                    model=name,
                    version=count,
                    semver=semver,
                    digest=item["digest"],
                    created_by=self.actor,
                    run_id=run_id or os.environ.get(RUN_ID_ENV) or None,
                    record=record,
                )
            used.add(semver)
            digests[item["digest"]] = count
            fresh[count] = (record, semver)
            numbers.append(count)
            out.append(
                self._event(
                    name,
                    ev.REGISTERED,
                    version=count,
                    from_value=self.policy.initial_stage,
                    to_value=semver,
                    digest=item["digest"],
                    reason=why,
                    run_id=run_id,
                    payload=record,
                )
            )
            out.extend(
                self._event(
                    name,
                    ev.ATTACHMENT,
                    version=count,
                    key=label,
                    digest=digest,
                    reason={**attest.ATTACHED_REASON, **relations.ATTACHED_REASON}[label],
                    run_id=run_id,
                    payload=self._attachment_payload(signer, name, count, item["digest"], label, digest, size),
                )
                for label, (digest, size) in sorted(trust.items())
            )
            out.extend(
                self._event(
                    name, ev.TAG_SET, version=count, key=k, to_value=v, run_id=run_id, reason="set at registration"
                )
                for k, v in sorted(item["tags"].items())
            )
        return out, lambda: [self.get(name, n) for n in numbers]

    def register_model(
        self, name: str, model: Any, *, signature: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> ModelVersion:
        """Register a fitted model of any flavor (scikit-learn, XGBoost, LightGBM: see ``model_ops.ml.flavors``)
        as a directory artifact, serialised deterministically, so identical training gives the same version.

        Without ``signature`` the model's own is recorded (the columns it was fitted on, their types where it
        shows them, its task and classes), so semver bumps and promotion checks name real columns. Takes the
        keyword arguments of :meth:`register` otherwise.
        """
        from model_ops.ml import flavors  # ml sits above the registry; imported only when a model is stored

        if "flavor" in kwargs:
            raise UsageError(
                "register_model() chooses the flavor from the model",
                hint="use register(path, flavor=...) to store files of your own",
            )
        sig = signature if signature is not None else flavors.signature_of(model)
        with tempfile.TemporaryDirectory(prefix="model_ops_register_") as tmp:
            path = Path(tmp) / "artifact"
            flavor = flavors.save(model, path)
            return self.register(name, path, flavor=flavor, signature=sig, **kwargs)

    @staticmethod
    def _parent_number(m: ModelState, parent: int | str) -> int | None:
        if isinstance(parent, int) or str(parent).isdigit():
            return int(parent)
        ref = parse_ref(str(parent))
        return ref.version or m.by_semver.get(ref.semver or "") or m.aliases.get(ref.alias or "")

    def transition(
        self,
        ref: str | Ref,
        stage: str,
        *,
        reason: str | None = None,
        run_id: str | None = None,
        breaking: bool = False,
    ) -> ModelVersion:
        """Move a version to ``stage`` if the policy allows it. Promoting to production retires the old production
        version (per policy) and moves the production alias, in one atomic commit.

        A version whose signature breaks the production version's (see :func:`breaking_changes`) enters
        production only with ``breaking=True``; what it breaks is recorded in the stage change's data."""
        parsed = as_ref(ref)
        reason = require_reason(reason, "a stage transition")
        self._known_stage(stage)
        prod = self.policy.production

        def build(state: RegistryState, m: ModelState, vs: VersionState) -> Built[ModelVersion]:
            if vs.stage == stage:
                return [], lambda: self._mv(m, vs)
            allowed = self.policy.allowed_targets(vs.stage)
            if stage not in allowed:
                raise PolicyError(
                    f"{m.name} v{vs.version} cannot move from {vs.stage} to {stage}",
                    hint=f"from {vs.stage} the policy allows: " + (", ".join(allowed) or "nothing"),
                )
            # Unsigned or badly signed: refused entry to a stage that requires signatures (PolicyError, naming the
            # version and what is missing; nothing is written). Moving a bad version out of the way stays possible.
            if self.policy.signature_required(stage):
                attest.enforce(self, self._mv(m, vs), purpose=f"cannot enter {stage}", stage=stage, error=PolicyError)
            gates = gate_results(self.policy, self.actor, m, vs, stage, identity=self.identity)
            payload: dict[str, Any] = {"gates": gates, "cause": "transition"}
            replacing = stage == prod.stage and m.production is not None and m.production != vs.version
            current = m.get(m.production) if replacing and m.production is not None else None
            if current is not None:
                breaks = breaking_changes(current.record.get("signature"), vs.record.get("signature"))
                if breaks and not breaking:
                    raise PolicyError(
                        f"{m.name} v{vs.version} breaks the interface of v{current.version} in "
                        f"{prod.stage}: " + "; ".join(breaks),
                        hint="once its callers are ready, promote it with breaking=True "
                        "(`model-ops transition REF production --breaking --reason TEXT`)",
                    )
                if breaks:
                    payload["breaking"] = {"accepted": True, "against": current.version, "changes": breaks}
            out = []
            if replacing:
                # The old version leaves before the new one enters: at no event are there two in production.
                out.append(
                    self._event(
                        m.name,
                        ev.STAGE_CHANGED,
                        version=m.production,
                        from_value=prod.stage,
                        to_value=prod.replaced_goes_to,
                        run_id=run_id,
                        reason=f"replaced in production by v{vs.version}",
                        payload={"cause": "replaced", "by": vs.version},
                    )
                )
            out.append(
                self._event(
                    m.name,
                    ev.STAGE_CHANGED,
                    version=vs.version,
                    from_value=vs.stage,
                    to_value=stage,
                    reason=reason,
                    run_id=run_id,
                    payload=payload,
                )
            )
            if stage == prod.stage:
                if prod.alias and m.aliases.get(prod.alias) != vs.version:
                    old = m.aliases.get(prod.alias)
                    out.append(
                        self._event(
                            m.name,
                            ev.ALIAS_SET,
                            version=vs.version,
                            key=prod.alias,
                            from_value=str(old) if old else None,
                            to_value=str(vs.version),
                            reason=f"follows production: {reason}",
                            run_id=run_id,
                        )
                    )
            elif vs.stage == prod.stage and prod.alias and m.aliases.get(prod.alias) == vs.version:
                out.append(
                    self._event(
                        m.name,
                        ev.ALIAS_REMOVED,
                        version=vs.version,
                        key=prod.alias,
                        from_value=str(vs.version),
                        run_id=run_id,
                        reason=f"v{vs.version} left production: {reason}",
                    )
                )
            return out, lambda: self.get(m.name, vs.version)

        return self._write(f"transition:{stage}", parsed.name, build, ref=parsed, run_id=run_id)

    def approve(
        self, ref: str | Ref, stage: str, *, reason: str | None = None, run_id: str | None = None
    ) -> ModelVersion:
        """Record this actor's approval of a version for ``stage`` (counted by the stage's approvals gate)."""
        parsed = as_ref(ref)
        reason = require_reason(reason, "an approval")
        self._known_stage(stage)

        def build(state: RegistryState, m: ModelState, vs: VersionState) -> Built[ModelVersion]:
            if (self.actor, self.identity) in m.approvals.get((vs.version, stage), set()):
                return [], lambda: self._mv(m, vs)
            return (
                [self._event(m.name, ev.APPROVED, version=vs.version, to_value=stage, reason=reason, run_id=run_id)],
                lambda: self.get(m.name, vs.version),
            )

        return self._write("approve", parsed.name, build, ref=parsed, run_id=run_id)

    def set_alias(
        self, name: str, alias: str, version: int | str, *, reason: str | None = None, run_id: str | None = None
    ) -> ModelVersion:
        """Point ``alias`` at ``version`` (an alias names exactly one version; moving it is an audited event)."""
        check_name(name)
        check_alias(alias)
        reason = require_reason(reason, "moving an alias")
        prod_alias = self.policy.production.alias
        if alias == prod_alias:
            raise PolicyError(
                f"alias {alias!r} follows the production version and is not moved by hand",
                hint="promote with `model-ops transition REF production` or use `model-ops rollback`",
            )
        target = Ref(name, version=int(version)) if str(version).isdigit() else parse_ref(str(version))
        if target.name != name:
            raise UsageError(
                f"alias {alias!r} of {name} cannot point at {version}: that is a version of {target.name}",
                hint=f"name a version of {name} (a number, a semver or models:/{name}@ALIAS)",
            )

        def build(state: RegistryState, _: ModelState, vs: VersionState) -> Built[ModelVersion]:
            # The alias is looked up on ``name`` itself: ``version`` is resolved as a reference of its own.
            m = self._model(state, name)
            old = m.aliases.get(alias)
            if old == vs.version:
                return [], lambda: self._mv(m, m.versions[vs.version - 1])
            return (
                [
                    self._event(
                        name,
                        ev.ALIAS_SET,
                        version=vs.version,
                        key=alias,
                        from_value=str(old) if old else None,
                        to_value=str(vs.version),
                        reason=reason,
                        run_id=run_id,
                    )
                ],
                lambda: self.get(name, vs.version),
            )

        return self._write(f"alias:{alias}", name, build, ref=target, run_id=run_id)

    def remove_alias(self, name: str, alias: str, *, reason: str | None = None, run_id: str | None = None) -> None:
        check_name(name)
        check_alias(alias)
        reason = require_reason(reason, "removing an alias")
        if alias == self.policy.production.alias:
            raise PolicyError(
                f"alias {alias!r} follows the production version and is not removed by hand",
                hint="move the production version out of production instead",
            )

        def exists(m: ModelState) -> None:
            if alias not in m.aliases:
                raise NotFoundError(
                    f"{name} has no alias {alias!r}", hint="aliases: " + (", ".join(sorted(m.aliases)) or "none")
                )

        def build(state: RegistryState, m: ModelState) -> Built[None]:
            old = m.aliases.get(alias)
            if old is None:
                return [], lambda: None
            return (
                [
                    self._event(
                        name,
                        ev.ALIAS_REMOVED,
                        version=old,
                        key=alias,
                        from_value=str(old),
                        reason=reason,
                        run_id=run_id,
                    )
                ],
                lambda: None,
            )

        self._write(f"alias:{alias}", name, build, run_id=run_id, check=exists)

    def set_tag(self, ref: str | Ref, key: str, value: Any, *, run_id: str | None = None) -> ModelVersion:
        parsed = as_ref(ref)
        tag = inputs.tags({key: value})

        def build(state: RegistryState, m: ModelState, vs: VersionState) -> Built[ModelVersion]:
            if vs.tags.get(key) == tag[key]:
                return [], lambda: self._mv(m, vs)
            return (
                [
                    self._event(
                        m.name,
                        ev.TAG_SET,
                        version=vs.version,
                        key=key,
                        from_value=vs.tags.get(key),
                        to_value=tag[key],
                        run_id=run_id,
                    )
                ],
                lambda: self.get(m.name, vs.version),
            )

        return self._write("tag", parsed.name, build, ref=parsed, run_id=run_id)

    def remove_tag(self, ref: str | Ref, key: str, *, run_id: str | None = None) -> ModelVersion:
        parsed = as_ref(ref)

        def build(state: RegistryState, m: ModelState, vs: VersionState) -> Built[ModelVersion]:
            if key not in vs.tags:
                return [], lambda: self._mv(m, vs)
            return (
                [
                    self._event(
                        m.name, ev.TAG_REMOVED, version=vs.version, key=key, from_value=vs.tags[key], run_id=run_id
                    )
                ],
                lambda: self.get(m.name, vs.version),
            )

        return self._write("tag", parsed.name, build, ref=parsed, run_id=run_id)

    @staticmethod
    def _rollback_candidates(m: ModelState) -> list[int]:
        """Earlier production versions, newest first, skipping those that were themselves rolled back."""
        return [v for v in reversed(m.production_history) if v != m.production and v not in m.rolled_back]

    def rollback_target(self, name: str) -> int | None:
        """The version ``rollback(name)`` would put back in production now, or None when there is none."""
        with self._lock:
            m = self._model(self._sync(), name)
            current = m.production
            candidates = self._rollback_candidates(m)
        return candidates[0] if current is not None and candidates else None

    def rollback(
        self, name: str, to: int | str | None = None, *, reason: str | None = None, run_id: str | None = None
    ) -> ModelVersion:
        """Put the previous production version (or ``to``) back in production, with the production alias.

        "Previous" skips versions that were themselves rolled back, so repeated rollbacks walk further back in
        history instead of bouncing between two bad versions.
        """
        check_name(name)
        reason = require_reason(reason, "a rollback")
        prod = self.policy.production

        def build(state: RegistryState, m: ModelState) -> Built[ModelVersion]:
            current = m.production
            if current is None:
                raise PolicyError(
                    f"{name} has no version in {prod.stage}, so there is nothing to roll back",
                    hint="promote a version with `model-ops transition REF production`",
                )
            if to is not None:
                _, target = self._find(state, Ref(name, version=int(to)) if str(to).isdigit() else parse_ref(str(to)))
                if target.version == current:
                    raise PolicyError(f"{name} v{current} is already in {prod.stage}")
            else:
                candidates = self._rollback_candidates(m)
                if not candidates:
                    raise PolicyError(
                        f"{name} has no earlier {prod.stage} version to roll back to", hint="name one with --to VERSION"
                    )
                target = m.versions[candidates[0] - 1]
            if self.policy.signature_required(prod.stage):  # the version put back must be one production accepts
                attest.enforce(
                    self,
                    self._mv(m, target),
                    purpose=f"cannot be rolled back to in {prod.stage}",
                    stage=prod.stage,
                    error=PolicyError,
                )
            out = [
                self._event(
                    name,
                    ev.ROLLBACK,
                    version=target.version,
                    from_value=str(current),
                    to_value=str(target.version),
                    reason=reason,
                    run_id=run_id,
                ),
                self._event(
                    name,
                    ev.STAGE_CHANGED,
                    version=current,
                    from_value=prod.stage,
                    to_value=prod.rolled_back_goes_to,
                    reason=f"rolled back: {reason}",
                    run_id=run_id,
                    payload={"cause": "rollback", "to": target.version},
                ),
                self._event(
                    name,
                    ev.STAGE_CHANGED,
                    version=target.version,
                    from_value=target.stage,
                    to_value=prod.stage,
                    reason=f"rollback from v{current}: {reason}",
                    run_id=run_id,
                    payload={"cause": "rollback", "from": current},
                ),
            ]
            if prod.alias:
                out.append(
                    self._event(
                        name,
                        ev.ALIAS_SET,
                        version=target.version,
                        key=prod.alias,
                        from_value=str(m.aliases.get(prod.alias) or "") or None,
                        to_value=str(target.version),
                        reason=f"rollback: {reason}",
                        run_id=run_id,
                    )
                )
            return out, lambda: self.get(name, target.version)

        return self._write("rollback", name, build, run_id=run_id)

    def record(
        self,
        name: str,
        kind: str,
        *,
        version: int | None = None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> ev.Event:
        """Append an operational record (deployment, evaluation, monitoring, retrain, note) to the audit log."""
        check_name(name)
        if kind not in ev.RECORD_KINDS:
            raise UsageError(f"unknown record kind {kind!r}", hint="kinds: " + ", ".join(sorted(ev.RECORD_KINDS)))
        payload = inputs.json_obj(details, "details")
        if version is not None:
            self.get(name, version)
        if kind == "deployment":  # what a deployment puts in front of traffic meets production's signature rule
            for number in attest.deployment_versions(version, payload, self._served(name)):
                attest.require_deployable(self, name, number)
        self._authorize("deploy" if kind == "deployment" else "record", name, version, run_id)
        event = self._event(name, kind, version=version, reason=reason, run_id=run_id, payload=payload)
        return self._commit(lambda state: ([event], lambda: event))

    def _served(self, name: str) -> set[int]:
        """The versions serving ``name`` now by the registry's own account: the production version and those the
        newest deployment record's manifest names. Never what a caller's record says was serving."""
        served: set[int] = set()
        try:
            production = self.resolve(Ref(name, stage=self.policy.production.stage)).version
            served.add(production)
        except NotFoundError:
            pass
        try:
            events = self.audit(name)
        except NotFoundError:
            return served
        for e in reversed(events):
            if e.kind == "deployment":
                manifest = e.data.get("manifest")
                if isinstance(manifest, Mapping):
                    served |= {v for r in ("production", "canary", "shadow") if isinstance((v := manifest.get(r)), int)}
                break
        return served

    def attach(
        self, name: str, version: int, label: str, data: bytes, *, reason: str | None = None, run_id: str | None = None
    ) -> ev.Event:
        """Keep ``data`` beside a version (its drift reference profile, a report) in the artifact store, verified
        on read like the model itself, and record it in the audit log. ``gc`` keeps every attached blob and
        ``fsck`` checks them. Attaching the same bytes again records nothing new.

        With a signing key the attachment is signed, bound to this model, version (and its digest) and label, so
        one swapped in from elsewhere is refused on read. A version that is signed, or whose stage requires
        signatures, takes only signed attachments: an unsigned one could not be told from a stripped one."""
        check_name(name)
        check_alias(label)
        if label in attest.RESERVED_LABELS:
            raise UsageError(
                f"attachment label {label!r} is kept for the signatures made at registration", hint="choose another"
            )
        mv = self.get(name, version)
        signer = signing.signer_from_env()
        if signer is None and (
            self.policy.signature_required(mv.stage) or isinstance(mv.record.get("signing"), Mapping)
        ):
            raise PolicyError(
                f"{mv.ref} is signed or in a stage that requires signatures, so its attachments must be signed, "
                f"and {signing.KEY_ENV} is not set; nothing was attached",
                hint=f"set {signing.KEY_ENV} to the registry's signing key",
            )
        self._authorize("record", name, version, run_id)
        current = self._attachment_event(name, version, label)
        put = functools.partial(self._put_bytes, label, data)
        stored = put()
        if current is not None and current.digest == stored.digest and (signer is None or "signing" in current.data):
            return current
        payload = self._attachment_payload(signer, name, version, mv.digest, label, stored.digest, len(data))
        event = self._event(
            name,
            ev.ATTACHMENT,
            version=version,
            key=label,
            digest=stored.digest,
            reason=reason or f"{label} attached",
            run_id=run_id,
            payload=payload,
        )
        committed = self._commit(lambda state: ([event], lambda: event))
        self._still_stored(stored.digest, put)
        return committed

    @staticmethod
    def _attachment_payload(
        signer: signing.Signer | None, name: str, version: int, version_digest: str, label: str, digest: str, size: int
    ) -> dict[str, Any]:
        """An attachment's event payload: the OMS bundle and provenance (made at registration) are covered by the
        version's own signature; any other (a base model's tensor table, what ``attach`` adds) is signed on its
        own when a signer is at hand."""
        payload: dict[str, Any] = {"bytes": size}
        if signer is not None and label not in attest.RESERVED_LABELS:
            payload["signing"] = attest.sign_attachment(
                signer,
                model=name,
                version=version,
                version_digest=version_digest,
                label=label,
                digest=digest,
                size=size,
            )
        return payload

    def _attachment_event(self, name: str, version: int, label: str) -> ev.Event | None:
        found = None
        for e in self.audit(name):
            if e.kind == ev.ATTACHMENT and e.version == version and e.key == label:
                found = e
        return found

    def attachment(self, name: str, version: int, label: str) -> bytes | None:
        """The newest bytes attached to ``name`` v``version`` under ``label`` (verified, and its signature checked
        as the version's would be: see :func:`model_ops.registry.attest.enforce_attachment`), or None."""
        event = self._attachment_event(name, version, label)
        if event is None or event.digest is None:
            return None
        attest.enforce_attachment(self, self.get(name, version), event)
        return self.artifacts.read_file(event.digest)

    def _attached_digests(self) -> list[str]:
        return [e.digest for e in self.audit() if e.kind == ev.ATTACHMENT and e.digest]

    # ------------------------------------------------------------------ artifacts

    def verify_signature(self, mv: ModelVersion, *, purpose: str = "cannot be loaded") -> signing.Verifier | None:
        """Refuse ``mv`` (IntegrityError) unless its signatures hold where its stage requires them, and wherever
        a key is at hand when it is signed (:func:`model_ops.registry.attest.enforce`). Returns the verifier when
        they were checked. Cheap: the record, the OMS bundle and the provenance are small, and nothing is
        re-hashed; the files are verified against the signed digest by the store as they are read."""
        return attest.enforce(self, mv, purpose=purpose)

    def fetch(self, ref: str | Ref, dest: str | os.PathLike[str]) -> Path:
        """Download a version's artifact to ``dest``, verifying every byte (and its signature, per policy).

        A signed version whose signatures were checked is also verified as a downloaded model would be: the OMS
        bundle against the fetched copy, with ``model_signing``, in a staging directory beside ``dest``; nothing
        appears at ``dest`` unless that holds."""
        mv = self.resolve(ref)
        verifier = self.verify_signature(mv, purpose="cannot be fetched")
        block = mv.record.get("signing")
        if verifier is None or not isinstance(block, Mapping) or not block.get("oms"):
            return self.artifacts.fetch(mv.digest, dest)
        manifest = self.artifacts.manifest(mv.digest)
        dest = Path(dest)
        target = dest / manifest.files[0].path if manifest.kind == "file" and dest.is_dir() else dest
        if target.exists() and (manifest.kind == "file" or not target.is_dir() or any(target.iterdir())):
            raise UsageError(f"{target} already exists", hint="choose a new destination or remove it first")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.verify-", dir=target.parent))
        try:
            copy = self.artifacts.fetch(mv.digest, staging / target.name)
            bundle = self.artifacts.read_file(str(block["oms"]), signing.OMS_FILE)
            verifier.oms_verify(copy, bundle, str(block["key_id"]), f"the OMS bundle of {mv.ref}")
            if target.is_dir():
                target.rmdir()  # empty, checked above
            os.replace(copy, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def load_model(self, ref: str | Ref, *, trusted: list[str] | tuple[str, ...] = ()) -> Any:
        """Load a version of any model flavor ready to predict: every byte verified against its digest, the
        signature checked per policy, skops types checked against what the artifact recorded (``trusted`` names
        more). Versions of earlier releases (one ``.skops`` file) load with that release's allow-list.
        ``model_ops.load`` adds a local cache and input checks on top of this."""
        from model_ops.ml import flavors

        mv = self.resolve(ref)
        self.verify_signature(mv)  # first: nothing a record claims (its flavor …) is acted on before it is checked
        if mv.flavor not in (FLAVOR_SKOPS, *flavors.FLAVORS):
            raise UsageError(
                f"{mv.ref} is a {mv.flavor!r} artifact, not a model model_ops can load",
                hint="use fetch() to get its files",
            )
        manifest = self.artifacts.manifest(mv.digest)
        files = {f.path: self.artifacts.read_entry(f) for f in manifest.files}
        return flavors.load(files, trusted=trusted, flavor=manifest.flavor, what=mv.ref)

    # ------------------------------------------------------------------ maintenance

    def maintain(self) -> dict[str, Any]:
        """Upkeep of the log and its projections, off the write path: compaction, checkpoint, vacuum, the versions
        table, receipt pruning and the state snapshot. Run by ``model-ops maintain`` and the Dagster
        ``registry_maintenance`` schedule; runs are serialised by the upkeep lock (one that finds it held does
        nothing and says so). See maintenance.maintain."""
        return maintenance.maintain(self)

    def fsck(self) -> list[str]:
        """Everything wrong with the registry and its artifacts; empty when consistent. Reads all from storage."""
        return maintenance.fsck(self)

    def repair(self, *, apply: bool = False) -> dict[str, Any]:
        """Rebuild a damaged event log from its data files and commit receipts (dry run unless ``apply``); see
        ``repair.py``. Run with the registry's writers stopped. Afterwards this object reads the rebuilt log."""
        from model_ops.registry import repair

        if apply:
            self._authorize_repair()
        report = repair.repair(self, apply=apply)
        if report["applied"]:
            with self._lock:
                self._log = EventLog(self.location)
                self._reader = EventLog(self.location)
                self._state, self._state_version, self.damage = None, -1, []
        return report

    def _authorize_repair(self) -> None:
        """Repair rewrites the log, so it needs the ``delete`` verb; the policy is judged without writing a denial
        (the log it would go to is the damaged one)."""
        why = self.policy.refusal(self.actor, self.identity, "delete", None)
        if why is not None:
            raise PermissionDeniedError(
                f"{why.message}: repairing the event log needs the delete verb (refused by {why.by})", hint=why.hint
            )

    def gc(self, *, apply: bool = False, grace: timedelta = timedelta(hours=24)) -> dict[str, Any]:
        """Blobs that no version references (and leftovers of interrupted writes) older than ``grace``.

        Dry run unless ``apply``. Refuses to delete anything while any version's manifest is unreadable, because
        then it cannot know which blobs that version needs.
        """
        return maintenance.gc(self, apply=apply, grace=grace)
