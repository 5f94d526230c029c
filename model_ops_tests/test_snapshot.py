"""The state snapshot: written by maintenance, answered from while current, resumed from when not, never trusted
when it does not check out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from model_ops.registry import Registry, snapshot
from model_ops.registry.eventlog import EventLog
from model_ops.registry.policy import default_policy_text

FRESH_READ = """
import json, sys
from model_ops.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "heavy": sorted(m for m in ("pyarrow", "deltalake", "numpy") if m in sys.modules)}))
"""


def blob(tmp_path: Path, content: str) -> Path:
    p = tmp_path / f"{abs(hash(content))}.bin"
    p.write_text(content)
    return p


def busy_registry(tmp_path: Path) -> Registry:
    """Every kind of state a snapshot keeps: versions with tags, aliases, stages, approvals, production history,
    a rollback and deployment records, over two models."""
    reg = Registry.open(tmp_path / "root", actor="alice")
    for i in range(4):
        reg.register("clf", blob(tmp_path, f"clf{i}"), params={"i": i}, metrics={"auc": 0.7 + i / 100})
    reg.register("team/other", blob(tmp_path, "other"))
    reg.set_tag("models:/clf/2", "team", "fraud")
    reg.set_alias("clf", "challenger", 2, reason="best so far")
    reg.approve("models:/clf/3", "staging", reason="looked at it")
    for number in (2, 3):
        reg.transition(f"models:/clf/{number}", "staging", reason="candidate")
        reg.transition(f"models:/clf/{number}", "production", reason="release")
    reg.rollback("clf", reason="worse on live traffic")
    reg.record("clf", "deployment", version=2, reason="manifest", details={"strategy": "canary"})
    return reg


def fresh_read(root: Path, *args: str) -> tuple[dict, str]:
    out = subprocess.run(
        [sys.executable, "-c", FRESH_READ, "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    *printed, last = out.stdout.strip().splitlines()
    return json.loads(last), "\n".join(printed) + out.stderr


def all_versions(reg: Registry) -> dict:
    return {name: [v.to_dict() for v in reg.versions(name)] for name in reg.models()}


def test_a_fresh_registry_answers_from_a_current_snapshot_as_the_log_would(tmp_path: Path) -> None:
    reg = busy_registry(tmp_path)
    expected = all_versions(reg)
    summaries = reg.model_summaries()
    report = reg.maintain()
    assert report["problems"] == [] and report["snapshot"]["written"]

    fresh = Registry.open(reg.root)
    assert fresh._direct() is not None  # answered without folding the log
    assert all_versions(fresh) == expected
    assert (
        fresh.model_summaries()
        == summaries
        == [
            {"name": "clf", "versions": 4, "latest": 4, "production": 2},
            {"name": "team/other", "versions": 1, "latest": 1, "production": None},
        ]
    )
    for ref in ("clf@challenger", "clf/production", "clf/1.0.0", "clf@latest", "team/other/1"):
        assert fresh.resolve(ref) == reg.resolve(ref)
    assert fresh._state is None

    # A write elsewhere makes the snapshot stale at once: the next read folds (resuming from it) and sees it.
    reg.set_alias("clf", "challenger", 4, reason="retrained")
    assert fresh.resolve("clf@challenger").version == 4
    assert fresh._state is not None


def test_the_command_line_reads_a_current_snapshot_without_the_delta_engine(tmp_path: Path) -> None:
    reg = busy_registry(tmp_path)
    root = Path(reg.root.uri)
    before, _ = fresh_read(root, "resolve", "clf@challenger")
    assert before == {"code": 0, "heavy": ["deltalake", "numpy", "pyarrow"]}  # no snapshot yet: the log is read
    reg.maintain()
    for args in (("resolve", "clf@challenger"), ("show", "clf/3"), ("versions", "clf"), ("models",)):
        result, text = fresh_read(root, *args)
        assert result == {"code": 0, "heavy": []}, (args, text)
    result, text = fresh_read(root, "show", "clf/3", "--json")
    doc = json.loads(text)
    assert doc == json.loads(json.dumps(reg.resolve("clf/3").to_dict(), default=str))
    result, text = fresh_read(root, "resolve", "clf@nobody")
    assert result["code"] == 1 and "clf has no alias 'nobody'" in text and "aliases: challenger" in text
    result, text = fresh_read(root, "resolve", "clf/nostage")
    assert result["code"] == 2 and "unknown stage 'nostage'" in text

    reg.set_alias("clf", "challenger", 3, reason="moved after maintenance")
    result, text = fresh_read(root, "resolve", "clf@challenger")
    assert result == {"code": 0, "heavy": ["deltalake", "numpy", "pyarrow"]} and text.strip() == "3"


def test_resuming_from_a_snapshot_gives_the_state_a_full_fold_gives(tmp_path: Path) -> None:
    reg = busy_registry(tmp_path)
    reg.maintain()
    reg.register("clf", blob(tmp_path, "after"), params={"i": 9})
    reg.transition("models:/clf/5", "staging", reason="next")
    reg.record("clf", "deployment", version=5, reason="canary", details={"strategy": "canary"})

    seen: list[int] = []
    original = EventLog.read_after

    def spy(self: EventLog, seq: int):  # type: ignore[no-untyped-def]
        seen.append(seq)
        return original(self, seq)

    resumed = Registry.open(reg.root)
    EventLog.read_after = spy  # type: ignore[method-assign]
    try:
        resumed_state = resumed._sync()
    finally:
        EventLog.read_after = original  # type: ignore[method-assign]
    snap = snapshot.open_verified(reg.location)
    assert snap is not None and seen == [snap.last_seq] and snap.last_seq > 0

    os.remove(reg.location.path / snapshot.POINTER)
    folded = Registry.open(reg.root)
    assert snapshot.contents(resumed_state) == snapshot.contents(folded._sync())
    assert all_versions(resumed) == all_versions(folded)
    assert [e.to_dict() for e in resumed.serving_records("clf")] == [e.to_dict() for e in folded.serving_records("clf")]


@pytest.mark.parametrize(
    "damage", ["flipped byte", "flipped byte, times set back", "garbage pointer", "stale", "policy edited", "foreign"]
)
def test_a_snapshot_that_does_not_check_out_is_never_used(tmp_path: Path, damage: str) -> None:
    reg = busy_registry(tmp_path)
    expected = all_versions(reg)
    reg.maintain()
    pointer_path = reg.location.path / snapshot.POINTER
    pointer = json.loads(pointer_path.read_text())
    file = reg.location.path / snapshot.DIRECTORY / pointer["file"]
    if damage.startswith("flipped byte"):
        before = file.stat()
        data = bytearray(file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        file.write_bytes(bytes(data))
        if damage.endswith("set back"):  # what a careless tool does; the change time cannot be set back
            os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif damage == "garbage pointer":
        pointer_path.write_text("{not json")
    elif damage == "stale":
        pointer["confirmed_at"] = (datetime.now(timezone.utc) - timedelta(days=2)).isoformat()
        pointer_path.write_text(json.dumps(pointer))
    elif damage == "policy edited":
        (reg.location.path / "policy.yaml").write_text(default_policy_text() + "\n# edited\n")
    elif damage == "foreign":
        # Another registry's snapshot (same shape, other events) copied in beside this log.
        (tmp_path / "other").mkdir()
        other = busy_registry(tmp_path / "other")
        other.register("clf", blob(tmp_path, "only-there"))
        other.maintain()
        other_pointer = json.loads((other.location.path / snapshot.POINTER).read_text())
        (reg.location.path / snapshot.DIRECTORY / other_pointer["file"]).write_bytes(
            (other.location.path / snapshot.DIRECTORY / other_pointer["file"]).read_bytes()
        )
        other_pointer["delta_version"] = pointer["delta_version"]  # even claiming this log's version
        pointer_path.write_text(json.dumps(other_pointer))

    fresh = Registry.open(reg.root)
    if damage == "stale":
        assert fresh._direct() is None  # the fold resumes from it: its state is still the log's at its event
    elif damage == "policy edited":
        assert fresh._direct() is not None  # this process judges stages by its own policy; the CLI cannot
    else:
        assert fresh._direct() is None and fresh._resumed() is None
    assert snapshot.open_current(reg.location) is None
    assert all_versions(fresh) == expected
    problems = Registry.open(reg.root).fsck()
    if damage.startswith("flipped byte") or damage in ("garbage pointer", "foreign"):
        assert any("state snapshot" in p for p in problems), problems
    else:
        assert problems == []
    assert Registry.open(reg.root).maintain()["problems"] == []
    assert Registry.open(reg.root).fsck() == []


def test_a_read_hashes_the_snapshot_only_when_the_file_is_not_the_one_maintenance_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = busy_registry(tmp_path)
    reg.maintain()
    hashed: list[Path] = []
    real = snapshot.file_digest
    monkeypatch.setattr(snapshot, "file_digest", lambda p: hashed.append(p) or real(p))
    snap = snapshot.open_verified(reg.location)
    assert snap is not None and hashed == []  # untouched since maintenance hashed it: a stat, no read
    snap.close()
    (file := snap.path).touch()  # same bytes, but no longer provably the file that was hashed
    snap = snapshot.open_verified(reg.location)
    assert snap is not None and hashed == [file]
    snap.close()
    full = snapshot.open_verified(reg.location, full=True)  # fsck and maintenance always read it all
    assert full is not None and hashed == [file, file]
    full.close()


def test_a_snapshot_whose_search_tables_disagree_is_named_by_fsck_and_replaced_by_maintenance(tmp_path: Path) -> None:
    import sqlite3

    reg = busy_registry(tmp_path)
    reg.maintain()
    pointer = snapshot.read_pointer(reg.location)
    assert pointer is not None
    file = reg.location.path / snapshot.DIRECTORY / pointer["file"]
    conn = sqlite3.connect(file)
    conn.execute("DELETE FROM search_tags")  # what a build whose search tables were wrong would have left
    conn.commit()
    conn.close()
    pointer.update(sha256=snapshot.file_digest(file), size=file.stat().st_size, stat=snapshot.stat_key(file))
    snapshot.write_pointer(reg.location, pointer)
    assert Registry.open(reg.root).search("tags.team = fraud").versions == []  # answered from the bad file
    assert any("answers searches differently" in p for p in Registry.open(reg.root).fsck())
    assert Registry.open(reg.root).maintain()["snapshot"]["written"] is True
    assert [v.ref for v in Registry.open(reg.root).search("tags.team = fraud").versions] == ["models:/clf/2"]
    assert Registry.open(reg.root).fsck() == []


def test_fsck_finds_a_snapshot_that_contradicts_the_log(tmp_path: Path) -> None:
    import sqlite3

    reg = busy_registry(tmp_path)
    reg.maintain()
    pointer = json.loads((reg.location.path / snapshot.POINTER).read_text())
    file = reg.location.path / snapshot.DIRECTORY / pointer["file"]
    conn = sqlite3.connect(file)
    conn.execute("UPDATE aliases SET version = 1 WHERE alias = 'challenger'")
    conn.commit()
    conn.close()
    # Re-sealed with a matching digest: only the comparison with the log can tell.
    pointer["sha256"], pointer["size"] = snapshot.file_digest(file), file.stat().st_size
    (reg.location.path / snapshot.POINTER).write_text(json.dumps(pointer))
    problems = Registry.open(reg.root).fsck()
    assert any("differs from the event log's fold" in p and "clf" in p for p in problems), problems
    # Maintenance folds the log afresh, so it replaces the wrong snapshot instead of confirming it.
    assert Registry.open(reg.root).maintain()["snapshot"]["written"]
    assert Registry.open(reg.root).fsck() == []
    assert Registry.open(reg.root).resolve("clf@challenger").version == 2


def test_two_maintenance_runs_at_once_never_duplicate_the_log(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "root", actor="alice")
    for i in range(30):
        reg.register("m", blob(tmp_path, f"v{i}"))
    barrier = threading.Barrier(3)
    reports: list[dict] = []

    def run() -> None:
        barrier.wait()
        reports.append(Registry.open(reg.root).maintain())

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for r in reports if not r.get("skipped")) >= 1
    assert all(r["problems"] == [] for r in reports), reports
    events = EventLog(reg.location).read_after(0)
    assert events.num_rows == 30 and sorted(events.column("seq").to_pylist()) == list(range(1, 31))
    assert Registry.open(reg.root).fsck() == []
    reg.register("m", blob(tmp_path, "after"))  # writes are not refused


def test_maintenance_beside_writers_loses_nothing(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "root", actor="alice")
    reg.register("m", blob(tmp_path, "first"))
    errors: list[BaseException] = []

    def write() -> None:
        try:
            writer = Registry.open(reg.root, actor="bob")
            for i in range(40):
                writer.register("m", blob(tmp_path, f"w{i}"))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=write)
    t.start()
    reports = []
    while t.is_alive():
        reports.append(Registry.open(reg.root).maintain())
    t.join()
    assert not errors
    assert all(r["problems"] == [] for r in reports), [r["problems"] for r in reports]
    final = Registry.open(reg.root).maintain()
    assert final["problems"] == []
    fresh = Registry.open(reg.root)
    assert fresh._direct() is not None
    assert [v.version for v in fresh.versions("m")] == list(range(1, 42))
    assert Registry.open(reg.root).fsck() == []
    assert len(list((reg.location.path / snapshot.DIRECTORY).glob("*.sqlite"))) <= 2


def test_the_maintenance_job_writes_the_snapshot_and_fails_loudly_on_a_damaged_log(tmp_path: Path) -> None:
    from model_ops.defs.resources import ModelOpsResource
    from model_ops.defs.upkeep import registry_maintenance

    reg = busy_registry(tmp_path)
    resource = ModelOpsResource(root=reg.root.uri)
    result = registry_maintenance.execute_in_process(resources={"model_ops": resource})
    assert result.success
    materialized = result.output_for_node("maintain_registry")
    assert materialized is None
    assert snapshot.open_current(reg.location) is not None

    (reg.location.path / "receipts" / f"{reg.log_version() + 1:020d}.json").write_text("{}")  # acknowledged, gone
    failed = registry_maintenance.execute_in_process(resources={"model_ops": resource}, raise_on_error=False)
    assert not failed.success
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    assert "snapshot: not written, the event log has problems" in str(failure.event_specific_data)
