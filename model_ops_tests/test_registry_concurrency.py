"""Many writers on one root: version numbers stay unique and gap-free, no event is lost, nothing is overwritten.

The multi-process test starts its workers on a root that does not exist yet, so they also race to create the
tables. Workers wait on a barrier (and the movers on an event) instead of sleeping.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_mod
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from model_ops.registry import Registry
from model_ops_tests import helpers
from model_ops_tests.helpers import MODEL, check_audit, check_invariants, unique_bytes, write_file

REGISTRARS = 4
PER_REGISTRAR = 15
MOVES = 20
STEPS = 20
ROUNDS = 4


def _collect(q, procs: list, expected: int) -> list[tuple]:  # type: ignore[no-untyped-def]
    results = []
    while len(results) < expected:
        try:
            item = q.get(timeout=5)
        except queue_mod.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"worker(s) died: {[(p.name, p.exitcode) for p in dead]}"
            assert any(p.is_alive() for p in procs), "workers exited without reporting"
            continue
        assert item[0] != "error", f"{item[1]} {item[2]} failed:\n{item[3]}"
        results.append(item)
    return results


@pytest.mark.slow
def test_processes_registering_moving_aliases_and_transitioning_at_once(root: Path, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    n_procs = REGISTRARS + 2
    barrier, first, q = ctx.Barrier(n_procs), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=helpers.registrar,
            name=f"registrar-{w}",
            args=(str(root), w, PER_REGISTRAR, str(tmp_path / "in"), barrier, first, q, ROUNDS),
        )
        for w in range(REGISTRARS)
    ]
    procs.append(
        ctx.Process(target=helpers.alias_mover, name="mover", args=(str(root), 0, MOVES, barrier, first, q, ROUNDS))
    )
    procs.append(
        ctx.Process(
            target=helpers.transitioner, name="transitioner", args=(str(root), 0, STEPS, barrier, first, q, ROUNDS)
        )
    )
    for p in procs:
        p.start()
    try:
        results = _collect(q, procs, n_procs)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * n_procs

    registered = {r[2]: r[3] for r in results if r[0] == "registrar"}
    mover_writes = next(r[3] for r in results if r[0] == "mover")
    transition_events = next(r[3] for r in results if r[0] == "transitioner")
    total = REGISTRARS * PER_REGISTRAR

    reg = Registry.open(root)
    versions = reg.versions(MODEL)
    assert [v.version for v in versions] == list(range(1, total + 1))
    assert len({v.digest for v in versions}) == total
    # Every registrar got distinct numbers, together exactly 1..total, each naming the digest it stored.
    numbers = [v for got in registered.values() for v, _ in got]
    assert sorted(numbers) == list(range(1, total + 1))
    for wid, got in registered.items():
        assert len(got) == PER_REGISTRAR
        assert [v for v, _ in got] == sorted(v for v, _ in got), f"registrar {wid} saw versions go backwards"
        for v, digest in got:
            assert reg.get(MODEL, v).digest == digest, f"registrar {wid} was told v{v} but it holds other bytes"

    events = reg.audit()
    check_audit(events)
    assert len(events) == total + mover_writes + transition_events, "events were lost or duplicated"
    kinds = Counter(e.kind for e in events)
    assert kinds["registered"] == total
    assert sum(1 for e in events if e.key == "challenger") == mover_writes
    assert kinds["stage_changed"] + sum(1 for e in events if e.key == "champion") == transition_events
    check_invariants(reg)
    assert "challenger" not in {a for v in versions for a in v.aliases}
    assert reg.fsck() == []


@pytest.mark.slow
def test_threads_with_shared_and_separate_registry_objects(root: Path, tmp_path: Path) -> None:
    """A Registry object is shared between threads; other threads use their own objects on the same root."""
    shared = Registry.open(root, actor="shared")
    n_threads, per_thread = 6, 5
    barrier = threading.Barrier(n_threads)
    got: dict[int, list[tuple[int, str]]] = {}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            reg = shared if t % 2 else Registry.open(root, actor=f"t{t}")
            paths = [
                write_file(tmp_path / f"t{t}" / str(i), "model.bin", unique_bytes(f"t{t}-{i}"))
                for i in range(per_thread)
            ]
            barrier.wait(timeout=60)
            got[t] = [(mv.version, mv.digest) for mv in (reg.register(MODEL, p) for p in paths)]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    total = n_threads * per_thread
    assert sorted(v for vals in got.values() for v, _ in vals) == list(range(1, total + 1))
    fresh = Registry.open(root)
    for vals in got.values():
        for v, digest in vals:
            assert fresh.get(MODEL, v).digest == digest
    assert len(shared.audit()) == total
    check_audit(fresh.audit())
    assert fresh.fsck() == []


@pytest.mark.slow
def test_fresh_root_table_creation_race(tmp_path: Path) -> None:
    """Writers that all start on a root nobody created yet: one creates the tables, nobody fails."""
    for trial in range(4):
        root = tmp_path / f"root{trial}"
        n = 5
        barrier = threading.Barrier(n)
        results: list = [None] * n

        def work(i: int) -> None:
            path = write_file(tmp_path / f"in{trial}-{i}", "model.bin", unique_bytes(f"{trial}-{i}"))
            reg = Registry.open(root, actor=f"w{i}")
            barrier.wait(timeout=60)
            try:
                results[i] = reg.register(MODEL, path).version
            except BaseException as e:  # noqa: BLE001 - reported by the assertion below
                results[i] = e

        threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert all(isinstance(r, int) for r in results), results
        assert sorted(results) == list(range(1, n + 1)), results


def test_a_writer_that_lost_the_race_retries_against_the_new_state(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compare-and-swap, forced deterministically: a writer whose "did anything change?" probe misses the other
    writer's commit builds its events against stale state; its commit must fail and be redone, not land on top."""
    a, b = Registry.open(root, actor="a"), Registry.open(root, actor="b")
    a.register(MODEL, write_file(tmp_path / "1", "model.bin", b"one"))
    a.transition(f"{MODEL}/1", "staging", reason="r")
    assert [v.version for v in b.versions(MODEL)] == [1]  # b's fold is now at this point

    b.transition(f"{MODEL}/1", "production", reason="b promotes")
    a.register(MODEL, write_file(tmp_path / "2", "model.bin", b"two"))
    a.transition(f"{MODEL}/2", "staging", reason="r")

    # Now b writes again, but its probe misses a's commits once: it builds on stale state (v1 in production, no v2).
    probe = b._log.has_commit
    calls = {"n": 0}

    def stale_once(version: int) -> bool:
        calls["n"] += 1
        return False if calls["n"] == 1 else probe(version)

    monkeypatch.setattr(b._log, "has_commit", stale_once)
    mv = b.register(MODEL, write_file(tmp_path / "3", "model.bin", b"three"))
    assert calls["n"] >= 2, "the stale build was never retried"
    assert mv.version == 3  # not a second version 2
    fresh = Registry.open(root)
    assert [(v.version, v.stage) for v in fresh.versions(MODEL)] == [
        (1, "production"),
        (2, "staging"),
        (3, "development"),
    ]
    check_audit(fresh.audit())
    assert fresh.fsck() == []


def test_audit_and_as_of_see_commits_of_other_writers(root: Path, tmp_path: Path) -> None:
    """A Registry object's audit() and as_of() read the log as stored, including what other processes (here:
    another Registry object) committed after this object last wrote or read."""
    a, b = Registry.open(root, actor="a"), Registry.open(root, actor="b")
    a.register(MODEL, write_file(tmp_path / "1", "model.bin", b"one"))
    assert len(a.audit()) == 1 and len(b.audit()) == 1
    b.register(MODEL, write_file(tmp_path / "2", "model.bin", b"two"))
    b.transition(f"{MODEL}/2", "staging", reason="r")
    events = a.audit()
    assert [e.seq for e in events] == [1, 2, 3]
    assert len(a.audit(MODEL)) == 3
    assert a.as_of(events[-1].ts)[MODEL]["versions"][1]["stage"] == "staging"


@pytest.mark.slow
def test_a_long_idle_registry_object_still_sees_and_joins_the_log(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that holds a Registry for a long time (a service, a Dagster code server) while others commit: once
    Delta's log retention has expired the commit files after a checkpoint (``delta.logRetentionDuration``, here
    simulated by dating the log files 8 days back and running the same cleanup), the idle object must still see
    the new versions and be able to write, not keep serving its old state or fail with a raw Delta error."""
    from deltalake import DeltaTable

    idle = Registry.open(root, actor="idle")
    idle.register(MODEL, write_file(tmp_path / "0", "model.bin", b"first"))
    assert len(idle.versions(MODEL)) == 1
    busy = Registry.open(root, actor="busy")
    n = 105  # past a checkpoint (delta.checkpointInterval = 100)
    for i in range(1, n + 1):
        busy.register(MODEL, write_file(tmp_path / str(i), "model.bin", unique_bytes(f"busy-{i}")))

    events = root / "registry" / "events"
    eight_days_ago = time.time() - 8 * 86400
    for f in (events / "_delta_log").glob("*.json"):
        os.utime(f, (eight_days_ago, eight_days_ago))
    DeltaTable(str(events)).cleanup_metadata()
    assert not (events / "_delta_log" / f"{2:020d}.json").exists(), "the cleanup did not expire old commits"
    # Expiry needs the idle time too: the idle object last looked at the log 8 days ago.
    import model_ops.registry.registry as registry_module

    real_monotonic = time.monotonic
    monkeypatch.setattr(registry_module.time, "monotonic", lambda: real_monotonic() + 8 * 86400)

    assert [v.version for v in idle.versions(MODEL)] == list(range(1, n + 2)), "the idle object serves stale state"
    mv = idle.register(MODEL, write_file(tmp_path / "late", "model.bin", b"late"))
    assert mv.version == n + 2
    fresh = Registry.open(root)
    assert [v.version for v in fresh.versions(MODEL)] == list(range(1, n + 3))
    check_audit(fresh.audit())
    assert fresh.fsck() == []
