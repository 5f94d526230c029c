"""SIGKILL a process in the middle of register(), at many points spread over the call, again and again.

A registration either happened (and is whole) or did not: afterwards the registry opens, fsck is clean (leftover
blobs and temporary files of killed writes are allowed, they are not problems), every registration a child saw
complete is there with its digest, version numbers are gap-free, and the next registration gets the next number.
Each new child first retries the registration its predecessor was killed in (the same bytes), as a user would: a
half-written blob left under its final name would be picked up by that retry and show up in fsck.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model_ops.registry import Registry
from model_ops_tests.helpers import MODEL, check_audit, unique_bytes, write_file

REPO = Path(__file__).resolve().parents[1]
COLD_KILLS = 5  # during a process's first register() (which on the fresh root also creates the tables)
WARM_KILLS = 20  # during its second register(), the steady-state path


class Child:
    """``crash_worker`` in a fresh interpreter, speaking the go/done line protocol on stdout."""

    def __init__(self, root: Path, start: int, workdir: Path, limit: int = 0) -> None:
        code = (
            "import sys; from model_ops_tests.helpers import crash_worker; "
            "crash_worker(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))"
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(root), str(start), str(workdir), str(limit)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
            cwd=str(REPO),
        )
        self.done: list[tuple[int, str, float]] = []  # (version, digest, seconds) of calls that returned

    def wait_for(self, word: str, call: int) -> None:
        """Read until the child prints ``word call``; collect completed calls on the way."""
        while True:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                err = self.proc.stderr.read()  # type: ignore[union-attr]
                raise AssertionError(f"child exited ({self.proc.wait()}) before '{word} {call}':\n{err}")
            parts = line.split()
            if parts[0] == "done":
                self.done.append((int(parts[2]), parts[3], float(parts[4])))
            if parts[0] == word and int(parts[1]) == call:
                return

    def _drain(self) -> str:
        # Whatever the child managed to print before it ended counts: a "done" line is a completed registration.
        for line in self.proc.stdout.read().splitlines():  # type: ignore[union-attr]
            parts = line.split()
            if parts and parts[0] == "done":
                self.done.append((int(parts[2]), parts[3], float(parts[4])))
        err = self.proc.stderr.read()  # type: ignore[union-attr]
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()  # type: ignore[union-attr]
        return err

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._drain()
        assert self.proc.returncode == -signal.SIGKILL, self.proc.returncode

    def finish(self) -> None:
        """Wait for a child started with a limit to exit by itself, successfully."""
        code = self.proc.wait(timeout=120)
        err = self._drain()
        assert code == 0, err


def _calibrate(tmp_path: Path) -> tuple[float, float]:
    """Durations of a first (cold) and a second (warm) register() call in a fresh process, same workload."""
    child = Child(tmp_path / "calibration", 10_000, tmp_path / "work", limit=4)
    child.finish()
    return child.done[0][2], statistics.median(d[2] for d in child.done[1:])


@pytest.mark.slow
def test_sigkill_during_register_leaves_a_consistent_registry(root: Path, tmp_path: Path) -> None:
    cold, warm = _calibrate(tmp_path)
    # Kill delays from 0 to a little past the call's duration: every phase of the call gets hit (validation,
    # hashing, blob copies and publication, the manifest, the Delta commit, the reply), and some just after it.
    plan = [(0, cold * 1.2 * k / (COLD_KILLS - 1)) for k in range(COLD_KILLS)] + [
        (1, warm * 1.3 * k / (WARM_KILLS - 1)) for k in range(WARM_KILLS)
    ]
    completed: dict[int, str] = {}  # version -> digest, as the children were told
    interrupted = 0
    start = 0  # the artifact the next child registers first
    for call, delay in plan:
        child = Child(root, start, tmp_path / "work")
        child.wait_for("go", call)
        time.sleep(delay)  # the kill point itself, not synchronisation
        child.kill()
        for v, digest, _ in child.done:
            assert completed.setdefault(v, digest) == digest, f"v{v} was reported with two different digests"
        interrupted += len(child.done) == call  # the call we aimed at had not returned when the kill landed
        start += len(child.done)  # the next child retries the artifact this one was killed on (if it was)
    print(f"cold call {cold:.3f}s, warm call {warm:.4f}s; {interrupted} of {len(plan)} kills inside the call")
    assert interrupted >= (COLD_KILLS + WARM_KILLS) // 2, "most kills should land inside register()"

    reg = Registry.open(root)
    assert reg.fsck() == []
    versions = reg.versions(MODEL) if reg.models() else []
    n = len(versions)
    assert [v.version for v in versions] == list(range(1, n + 1))
    # Every registration a child saw return is there, with the bytes it was told.
    for v, digest in completed.items():
        assert reg.get(MODEL, v).digest == digest
    # Killed calls may or may not have committed, but at most one version each, and never one artifact twice
    # (a retry of a registration that did commit gets the existing version back).
    assert len(completed) <= n <= len(completed) + len(plan)
    assert len({v.digest for v in versions}) == n
    events = reg.audit()
    check_audit(events)
    assert [e.kind for e in events] == ["registered"] * n

    # The registry carries on: the next registration gets the next number, in this process and in a new one.
    mv = reg.register(MODEL, write_file(tmp_path / "after", "model.bin", unique_bytes("after the crashes")))
    assert mv.version == n + 1
    child = Child(root, 20_000, tmp_path / "work", limit=1)
    child.finish()
    assert [d[0] for d in child.done] == [n + 2]
    fresh = Registry.open(root)
    assert [v.version for v in fresh.versions(MODEL)] == list(range(1, n + 3))
    assert fresh.fsck() == []
    report = fresh.gc()  # a dry run: it must cope with the leftovers of killed writes
    assert report["applied"] is False
