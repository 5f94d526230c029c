"""Model-based test: random sequences of registry operations against a plain in-memory model of the rules.

The model knows the default policy (stages, allowed moves, champion follows production, rollback skips rolled-back
versions), which calls write nothing, and how many events each call writes. After every step the registry must
agree with it; now and then (and at the end) a second reader opened on the root must agree too, ``fsck`` must be
clean, and ``as_of`` cut at a recorded commit must give back the model's state right after (and right before) it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from model_ops.errors import NotFoundError, PolicyError, UsageError
from model_ops.registry import Registry
from model_ops.registry.semver import parse as parse_semver
from model_ops_tests.helpers import check_audit, local_blobs, local_temporaries, snapshot, write_file

STAGES = ["development", "staging", "production", "archived"]
ALLOWED = {
    "development": {"staging", "archived"},
    "staging": {"production", "development", "archived"},
    "production": {"staging", "archived"},
    "archived": {"development", "staging"},
}
NAMES = ["alpha", "beta"]
NAME = st.sampled_from(["alpha", "alpha", "alpha", "beta"])  # most of the action on one model: longer histories
ALIASES = ["challenger", "shadow", "champion", "latest"]
TAGS = st.sampled_from(["owner", "team"])
TAG_VALUES = st.sampled_from(["ann", "bob"])
PICK = st.integers(min_value=0, max_value=50)  # which version: taken modulo the number of versions
PARAMS = st.sampled_from([None, {"C": 1}, {"C": 2}])
REG_TAGS = st.sampled_from([None, {"owner": "ann"}, {"owner": "bob", "team": "x"}])


@dataclass
class MVersion:
    data: bytes
    digest: str
    semver: str
    stage: str = "development"
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class MModel:
    versions: list[MVersion] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)
    history: list[int] = field(default_factory=list)  # versions in the order they entered production
    rolled_back: set[int] = field(default_factory=set)

    @property
    def production(self) -> int | None:
        prod = [i + 1 for i, v in enumerate(self.versions) if v.stage == "production"]
        assert len(prod) <= 1, "the model itself broke the one-production rule"
        return prod[0] if prod else None

    def pick(self, i: int) -> int:
        return i % len(self.versions) + 1


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="model_ops_sm_"))
        self.root = self.tmp / "root"
        self.reg = Registry.open(self.root, actor="alice")
        self.observer = Registry.open(self.root, actor="bob")  # a long-lived second reader: incremental sync
        self.models = {n: MModel() for n in NAMES}
        self.n_events = 0
        self.counter = 0
        self.snapshots: list[tuple] = []  # (ts of a commit's events, expected as_of right after it)

    def teardown(self) -> None:
        try:
            if any(m.versions for m in self.models.values()):
                self._check_storage(len(self.snapshots) - 1)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ model helpers

    def _input(self, data: bytes) -> Path:
        self.counter += 1
        return write_file(self.tmp / "in" / str(self.counter), "model.bin", data)

    def _expected_as_of(self) -> dict:
        out = {}
        for name, m in self.models.items():
            if m.versions:
                out[name] = {
                    "production": m.production,
                    "aliases": dict(sorted(m.aliases.items())),
                    "versions": [(i + 1, v.stage, v.digest) for i, v in enumerate(m.versions)],
                }
        return out

    @staticmethod
    def _as_of_view(doc: dict) -> dict:
        return {
            n: {
                "production": d["production"],
                "aliases": d["aliases"],
                "versions": [(v["version"], v["stage"], v["digest"]) for v in d["versions"]],
            }
            for n, d in doc.items()
        }

    @staticmethod
    def _expect_unchanged(fn, error: type[Exception]) -> None:  # type: ignore[no-untyped-def]
        """The call is refused. That it changed nothing is checked after the step: the model did not change, and
        the invariants compare the registry (and the number of events in its log) with the model."""
        with pytest.raises(error):
            fn()

    def _check_storage(self, which: int) -> None:
        # A reader opened now, from storage only, sees exactly what the model says.
        fresh = Registry.open(self.root, actor="carol")
        expected = {
            n: {
                "versions": [(i + 1, v.stage, v.digest, v.semver) for i, v in enumerate(m.versions)],
                "aliases": dict(m.aliases),
                "tags": {i + 1: dict(v.tags) for i, v in enumerate(m.versions)},
            }
            for n, m in self.models.items()
            if m.versions
        }
        assert snapshot(fresh) == expected
        assert snapshot(self.observer) == expected
        assert fresh.fsck() == []
        # as_of at a recorded commit is the state right after it; a microsecond earlier, the state right before.
        if self.snapshots:
            which %= len(self.snapshots)
            ts, after = self.snapshots[which]
            before = self.snapshots[which - 1][1] if which else {}
            assert self._as_of_view(fresh.as_of(ts)) == after
            assert self._as_of_view(fresh.as_of(ts - timedelta(microseconds=1))) == before
            assert self._as_of_view(fresh.as_of(ts.isoformat())) == after

    # ------------------------------------------------------------------ rules

    def _new_data(self, name: str, payload: bytes) -> bytes:
        return f"{name}-{self.counter}-{len(self.snapshots)}-".encode() + payload

    @rule(name=NAME, payload=st.binary(max_size=48), params=PARAMS, tags=REG_TAGS)
    def register_new(self, name: str, payload: bytes, params: dict | None, tags: dict | None) -> None:
        m = self.models[name]
        data = self._new_data(name, payload)
        blobs_before = local_blobs(self.root)
        mv = self.reg.register(name, self._input(data), params=params, tags=tags)
        assert mv.version == len(m.versions) + 1
        assert mv.stage == "development" and mv.aliases == ()
        assert dict(mv.tags) == (tags or {})
        assert mv.digest not in {v.digest for v in m.versions}
        if m.versions:
            assert parse_semver(mv.semver) > parse_semver(m.versions[-1].semver), "semver did not increase"
        else:
            assert mv.semver == "1.0.0"
        assert len(local_blobs(self.root) - blobs_before) == 2  # the file and its manifest
        m.versions.append(MVersion(data, mv.digest, mv.semver, tags=dict(tags or {})))
        self.n_events += 1 + len(tags or {})  # the registration, and one event per tag

    @rule(
        name=NAME,
        entries=st.lists(
            st.tuples(st.sampled_from(["new", "new", "again"]), PICK, st.binary(max_size=8), REG_TAGS),
            min_size=1,
            max_size=4,
        ),
    )
    def register_many(self, name: str, entries: list[tuple]) -> None:
        """One atomic commit for several artifacts; identical bytes (to an existing version or to an earlier entry
        of the same batch) map to that version."""
        m = self.models[name]
        every = [v for n in NAMES for v in self.models[n].versions]
        batch, expect = [], []
        pending: list[MVersion] = []
        for kind, pick, payload, tags in entries:
            if kind == "again" and (every or pending):
                pool = every + pending
                data = pool[pick % len(pool)].data
            else:
                data = self._new_data(name, payload)
            batch.append({"path": self._input(data), "tags": tags})
            known = [i + 1 for i, v in enumerate(m.versions + pending) if v.data == data]
            if known:
                expect.append((known[0], False))
            else:
                pending.append(MVersion(data, "", "", tags=dict(tags or {})))
                expect.append((len(m.versions) + len(pending), True))
        got = self.reg.register_many(name, batch)
        assert [mv.version for mv in got] == [v for v, _ in expect]
        event("register_many: " + ("with duplicates" if len(set(v for v, _ in expect)) < len(expect) else "all new"))
        for mv, (number, created) in zip(got, expect):
            if created:  # the entry that created the version (a later identical entry maps to it, its tags unused)
                new = pending[number - len(m.versions) - 1]
                new.digest, new.semver = mv.digest, mv.semver
                assert dict(mv.tags) == new.tags and mv.stage == "development" and mv.aliases == ()
        for new in pending:
            others = {v.digest for v in m.versions} | {p.digest for p in pending if p is not new}
            assert new.digest not in others
            same = [v.digest for v in every if v.data == new.data]
            assert new.digest == (same[0] if same else new.digest)
            if m.versions:
                assert parse_semver(new.semver) > parse_semver(m.versions[-1].semver), "semver did not increase"
            else:
                assert new.semver == "1.0.0"
            m.versions.append(new)
            self.n_events += 1 + len(new.tags)

    @rule(name=NAME, payload=st.binary(max_size=8))
    def register_many_with_a_bad_entry(self, name: str, payload: bytes) -> None:
        """A batch whose last artifact does not exist registers none of them (orphan blobs are allowed)."""
        good = self._input(self._new_data(name, payload))
        missing = self.tmp / "in" / "does-not-exist" / "model.bin"
        self._expect_unchanged(lambda: self.reg.register_many(name, [{"path": good}, {"path": missing}]), UsageError)

    @precondition(lambda self: any(m.versions for m in self.models.values()))
    @rule(name=NAME, pick=PICK)
    def register_identical(self, name: str, pick: int) -> None:
        """Bytes of an existing version (of this model or another): the same version again, or for another
        model a new version sharing every blob. Either way no new blob."""
        every = [v for n in NAMES for v in self.models[n].versions]
        src = every[pick % len(every)]
        m = self.models[name]
        blobs_before = local_blobs(self.root)
        mv = self.reg.register(name, self._input(src.data))
        same = [i + 1 for i, v in enumerate(m.versions) if v.data == src.data]
        assert mv.digest == src.digest
        event("register identical: " + ("same model" if same else "other model"))
        if same:
            assert mv.version == same[0]  # and no event: the invariant counts them
        else:
            assert mv.version == len(m.versions) + 1
            m.versions.append(MVersion(src.data, mv.digest, mv.semver))
            self.n_events += 1
        assert local_blobs(self.root) == blobs_before, "identical bytes stored a new blob"
        assert local_temporaries(self.root) == []

    @rule(name=NAME, pick=PICK, allowed=st.booleans(), k=st.integers(min_value=0, max_value=11))
    def transition(self, name: str, pick: int, allowed: bool, k: int) -> None:
        """Half the time a move the policy allows, half the time any stage (often refused, sometimes a no-op)."""
        m = self.models[name]
        if not m.versions:
            stage = STAGES[k % len(STAGES)]
            self._expect_unchanged(lambda: self.reg.transition(f"{name}/1", stage, reason="r"), NotFoundError)
            return
        v = m.pick(pick)
        cur = m.versions[v - 1].stage
        targets = sorted(ALLOWED[cur]) if allowed else STAGES
        stage = targets[k % len(targets)]
        if stage != cur and stage not in ALLOWED[cur]:
            self._expect_unchanged(lambda: self.reg.transition(f"{name}/{v}", stage, reason="r"), PolicyError)
            return
        mv = self.reg.transition(f"models:/{name}/{v}", stage, reason="r")
        assert mv.version == v and mv.stage == stage
        event(f"transition {cur} -> {stage}")
        if stage == cur:
            return  # no-op
        if stage == "production":
            old = m.production
            if old is not None:
                m.versions[old - 1].stage = "archived"
                self.n_events += 1
            m.aliases["champion"] = v
            m.history.append(v)
            self.n_events += 2  # stage change + champion
        elif cur == "production":
            del m.aliases["champion"]
            self.n_events += 2  # stage change + champion removed
        else:
            self.n_events += 1
        m.versions[v - 1].stage = stage

    @precondition(lambda self: any(m.versions for m in self.models.values()))
    @rule(name=NAME, pick=PICK)
    def promote(self, name: str, pick: int) -> None:
        """Walk a version into production by allowed moves (so that rollbacks have a history to work with)."""
        m = self.models[name]
        if not m.versions:
            return
        v = m.pick(pick)
        path = {
            "development": ["staging", "production"],
            "archived": ["staging", "production"],
            "staging": ["production"],
            "production": [],
        }[m.versions[v - 1].stage]
        for stage in path:
            self.transition(name, v - 1, True, sorted(ALLOWED[m.versions[v - 1].stage]).index(stage))
            self._record_commit()  # two commits in one step: as_of must see the state between them too
        assert self.reg.resolve(f"models:/{name}@champion").version == v

    @rule(name=NAME, pick=PICK, alias=st.sampled_from(ALIASES))
    def set_alias(self, name: str, pick: int, alias: str) -> None:
        m = self.models[name]
        if alias == "latest":
            self._expect_unchanged(lambda: self.reg.set_alias(name, alias, 1, reason="r"), UsageError)
            return
        if alias == "champion":
            self._expect_unchanged(lambda: self.reg.set_alias(name, alias, 1, reason="r"), PolicyError)
            return
        if not m.versions:
            self._expect_unchanged(lambda: self.reg.set_alias(name, alias, 1, reason="r"), NotFoundError)
            return
        v = m.pick(pick)
        mv = self.reg.set_alias(name, alias, v, reason="r")
        assert mv.version == v and alias in mv.aliases
        assert self.reg.resolve(f"models:/{name}@{alias}").version == v
        if m.aliases.get(alias) != v:
            m.aliases[alias] = v
            self.n_events += 1

    @rule(name=NAME, alias=st.sampled_from(ALIASES))
    def remove_alias(self, name: str, alias: str) -> None:
        m = self.models[name]
        if alias == "latest":
            self._expect_unchanged(lambda: self.reg.remove_alias(name, alias, reason="r"), UsageError)
        elif alias == "champion":
            self._expect_unchanged(lambda: self.reg.remove_alias(name, alias, reason="r"), PolicyError)
        elif alias not in m.aliases:
            self._expect_unchanged(lambda: self.reg.remove_alias(name, alias, reason="r"), NotFoundError)
        else:
            self.reg.remove_alias(name, alias, reason="r")
            del m.aliases[alias]
            self.n_events += 1
            with pytest.raises(NotFoundError):
                self.reg.resolve(f"models:/{name}@{alias}")

    @rule(name=NAME, to=st.none() | st.integers(min_value=1, max_value=8))
    def rollback(self, name: str, to: int | None) -> None:
        m = self.models[name]
        if not m.versions:
            self._expect_unchanged(lambda: self.reg.rollback(name, to, reason="r"), NotFoundError)
            return
        current = m.production
        if current is None:
            self._expect_unchanged(lambda: self.reg.rollback(name, to, reason="r"), PolicyError)
            return
        if to is not None:
            if to > len(m.versions):
                self._expect_unchanged(lambda: self.reg.rollback(name, to, reason="r"), NotFoundError)
                return
            if to == current:
                self._expect_unchanged(lambda: self.reg.rollback(name, to, reason="r"), PolicyError)
                return
            target = to
        else:
            candidates = [v for v in reversed(m.history) if v != current and v not in m.rolled_back]
            if not candidates:
                self._expect_unchanged(lambda: self.reg.rollback(name, None, reason="r"), PolicyError)
                return
            target = candidates[0]
        mv = self.reg.rollback(name, to, reason="r")
        event("rollback " + ("to a named version" if to is not None else "to the previous production version"))
        assert mv.version == target and mv.stage == "production" and "champion" in mv.aliases
        m.rolled_back.add(current)
        m.versions[current - 1].stage = "archived"
        m.versions[target - 1].stage = "production"
        m.aliases["champion"] = target
        m.history.append(target)
        self.n_events += 4  # rollback record, two stage changes, champion

    @rule(name=NAME, pick=PICK, key=TAGS, value=TAG_VALUES)
    def set_tag(self, name: str, pick: int, key: str, value: str) -> None:
        m = self.models[name]
        if not m.versions:
            self._expect_unchanged(lambda: self.reg.set_tag(f"{name}/1", key, value), NotFoundError)
            return
        v = m.pick(pick)
        mv = self.reg.set_tag(f"models:/{name}/{v}", key, value)
        assert mv.tags[key] == value
        if m.versions[v - 1].tags.get(key) != value:
            m.versions[v - 1].tags[key] = value
            self.n_events += 1

    @precondition(lambda self: any(m.versions for m in self.models.values()))
    @rule(which=st.integers(min_value=0, max_value=1000))
    def check_storage(self, which: int) -> None:
        self._check_storage(which)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def agrees_with_model(self) -> None:
        assert self.reg.models() == [n for n in NAMES if self.models[n].versions]
        for name, m in self.models.items():
            if not m.versions:
                continue
            got = self.reg.versions(name)
            assert [v.version for v in got] == list(range(1, len(m.versions) + 1))
            for v, mv in zip(got, m.versions):
                assert (v.stage, v.digest, v.semver, dict(v.tags)) == (mv.stage, mv.digest, mv.semver, mv.tags), v.ref
                assert list(v.aliases) == sorted(a for a, n in m.aliases.items() if n == v.version), v.ref
            prod = [v.version for v in got if v.stage == "production"]
            assert len(prod) <= 1
            assert m.aliases.get("champion") == (prod[0] if prod else None)
            for alias, number in m.aliases.items():
                assert self.reg.resolve(f"models:/{name}@{alias}").version == number
            assert self.reg.resolve(f"models:/{name}@latest").version == len(m.versions)
            for v in got:
                assert self.reg.resolve(f"models:/{name}/{v.semver}").version == v.version

    @invariant()
    def audit_log_is_complete_and_ordered(self) -> None:
        events = self.reg.audit()
        check_audit(events)
        assert len(events) == self.n_events, f"{len(events)} events in the log, the model expects {self.n_events}"
        self._record_commit(events)

    def _record_commit(self, events: list | None = None) -> None:
        """If a commit happened since the last call, remember the model's state right after it (for as_of)."""
        events = self.reg.audit() if events is None else events
        if events and (not self.snapshots or self.snapshots[-1][0] != events[-1].ts):
            assert not self.snapshots or events[-1].ts > self.snapshots[-1][0], "commit timestamps went backwards"
            self.snapshots.append((events[-1].ts, self._expected_as_of()))


TestRegistryModel = RegistryMachine.TestCase
TestRegistryModel.pytestmark = [pytest.mark.slow]
TestRegistryModel.settings = settings(
    max_examples=15,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_repeated_rollbacks_walk_back_through_history(reg: Registry, tmp_path: Path) -> None:
    """The same rules on a fixed path the random walk reaches only rarely: rollbacks skip versions that were
    themselves rolled back, so they walk back through production history instead of bouncing between two."""
    for i in range(1, 5):
        reg.register("m", write_file(tmp_path / str(i), "model.bin", f"v{i}".encode()))
    for v in (1, 2, 3):
        reg.transition(f"m/{v}", "staging", reason="r")
        reg.transition(f"m/{v}", "production", reason="r")
    assert reg.rollback("m", reason="3 is bad").version == 2
    assert reg.rollback("m", reason="2 is bad too").version == 1
    with pytest.raises(PolicyError):
        reg.rollback("m", reason="nothing older")  # 2 and 3 were rolled back, 1 is current
    assert reg.rollback("m", to=3, reason="fixed after all").version == 3
    stages = {v.version: v.stage for v in reg.versions("m")}
    assert stages == {1: "archived", 2: "archived", 3: "production", 4: "development"}
    assert reg.resolve("m@champion").version == 3
    kinds = [e.kind for e in reg.audit()]
    assert kinds.count("rollback") == 3
    check_audit(reg.audit())
    assert reg.fsck() == []
