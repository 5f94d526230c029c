"""Old commit files of a local event log are deleted by upkeep, oldest first, so the log directory stays small
and a write's cost stays flat; a reader or writer whose state is older than what was deleted still sees every
write, and a write built on a deleted commit never counts as landed unless readers can see it."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from model_ops.registry import Registry, eventlog, maintenance
from model_ops.registry.eventlog import EventLog


def _log_files(reg: Registry) -> list[str]:
    return sorted(os.listdir(reg.location.path / "events" / "_delta_log"))


def _commits(reg: Registry) -> list[int]:
    return [int(n[:20]) for n in _log_files(reg) if n.endswith(".json") and n[:20].isdigit()]


@pytest.fixture
def no_min_age(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventlog, "EXPIRE_MIN_AGE_SECONDS", 0.0)


def test_upkeep_deletes_old_commits_and_every_reader_still_sees_every_write(tmp_path: Path, no_min_age: None) -> None:
    reg = Registry.open(tmp_path / "root")
    model = tmp_path / "m.bin"
    model.write_text("a model")
    reg.register("m", model)
    reader = Registry.open(reg.root)
    assert reader.resolve("models:/m/1").tags == {}
    seen_at = reader.log_version()
    for i in range(260):
        reg.set_tag("models:/m/1", "n", str(i))
    maintenance.wait_for_background(60)
    report = reg.maintain()
    assert report["problems"] == []
    commits = _commits(reg)
    assert seen_at not in commits and seen_at + 1 not in commits  # the reader's commit and the next are gone
    assert commits == list(range(commits[0], commits[-1] + 1))  # what is left is unbroken
    assert len(_log_files(reg)) < 120, _log_files(reg)
    assert reader.resolve("models:/m/1").tags == {"n": "259"}  # probed past the deleted commits
    reader.set_tag("models:/m/1", "by", "reader")  # and writes on top of the newest
    fresh = Registry.open(reg.root)
    assert fresh.resolve("models:/m/1").tags == {"n": "259", "by": "reader"}
    assert fresh.fsck() == []
    assert [e.seq for e in fresh.audit("m")] == list(range(1, 263))


def test_a_write_whose_base_commit_was_deleted_under_it_does_not_count(tmp_path: Path, no_min_age: None) -> None:
    reg = Registry.open(tmp_path / "root")
    model = tmp_path / "m.bin"
    model.write_text("a model")
    reg.register("m", model)
    stale = EventLog(reg.location)  # a writer holding the table as it was at its base commit
    base = stale.version
    schema = stale.read().schema
    template = stale.read().slice(0, 1).to_pylist()[0]
    for i in range(260):
        reg.set_tag("models:/m/1", "n", str(i))
    maintenance.wait_for_background(60)
    reg.maintain()
    assert not stale.has_commit(base) and not stale.has_commit(base + 1)
    rogue = [{**template, "seq": 2, "hash": "f" * 64, "key": "n", "to_value": "rogue"}]
    data = pa.Table.from_pylist(rogue, schema=schema)
    assert stale.try_append(data) is False  # the Delta engine refuses to commit on a base it cannot find
    fresh = EventLog(reg.location)
    assert fresh.read(pc.field("hash") == "f" * 64).num_rows == 0
    assert Registry.open(reg.root).fsck() == []
    assert Registry.open(reg.root).resolve("models:/m/1").tags == {"n": "259"}


def test_expiry_waits_for_old_enough_files_and_keeps_the_newest_two_checkpoints(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "root")
    model = tmp_path / "m.bin"
    model.write_text("a model")
    reg.register("m", model)
    for i in range(210):
        reg.set_tag("models:/m/1", "n", str(i))
    maintenance.wait_for_background(60)
    log = EventLog(reg.location)
    log.maintain(vacuum=False)
    before = _log_files(reg)
    assert log.expire_commits(min_age_seconds=3600) == 0 and _log_files(reg) == before  # nothing old enough
    assert log.expire_commits(min_age_seconds=0) > 0
    checkpoints = sorted({int(n[:20]) for n in _log_files(reg) if ".checkpoint." in n})
    assert len(checkpoints) == 2 and min(_commits(reg)) == checkpoints[0]


def test_the_read_back_counts_a_write_as_landed_only_if_readers_see_its_rows(tmp_path: Path) -> None:
    """The last guard, for a base commit deleted between the engine's check and its put: a commit whose rows a
    fresh read does not hold sits below the checkpoint readers start from, and did not land."""
    reg = Registry.open(tmp_path / "root")
    model = tmp_path / "m.bin"
    model.write_text("a model")
    reg.register("m", model)
    log = EventLog(reg.location)
    ours = log.read(pc.field("seq") == 1)
    assert log._landed_after_expiry(log.version - 1, ours) is True
    theirs = ours.set_column(ours.schema.get_field_index("hash"), "hash", pa.array(["0" * 64]))
    assert log._landed_after_expiry(log.version - 1, theirs) is False


def test_a_writer_whose_base_went_while_it_wrote_still_folds_in_the_commits_after_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the read-back exists for, made to happen: A's commit lands, B commits after it, a checkpoint is
    taken and upkeep deletes everything up to A's base, all before A looks. A must record the version its own commit
    landed at, so its next read folds in B's, and its next write does not reuse B's sequence number."""
    from deltalake import DeltaTable

    model = tmp_path / "m.bin"
    model.write_text("a model")
    a = Registry.open(tmp_path / "root", actor="a")
    a.register("m", model)
    b = Registry.open(a.root, actor="b")
    b.resolve("models:/m/1")
    log_dir = a.location.path / "events" / "_delta_log"
    real = eventlog.write_deltalake
    fired: list[int] = []

    def racing(table, data, **kw):  # type: ignore[no-untyped-def]
        real(table, data, **kw)
        if fired:
            return
        fired.append(1)
        base = table.version() - 1
        b.set_tag("models:/m/1", "by", "b")
        DeltaTable(str(a.location.path / "events")).create_checkpoint()
        for n in os.listdir(log_dir):
            if n[:20].isdigit() and int(n[:20]) <= base:
                os.remove(log_dir / n)

    monkeypatch.setattr(eventlog, "write_deltalake", racing)
    a.set_tag("models:/m/1", "by_a", "1")
    monkeypatch.setattr(eventlog, "write_deltalake", real)
    assert a.resolve("models:/m/1").tags == {"by_a": "1", "by": "b"}
    a.set_tag("models:/m/1", "second", "2")
    fresh = Registry.open(a.root)
    assert [e.seq for e in fresh.audit("m")] == [1, 2, 3, 4]
    assert fresh.fsck() == [] and fresh.damage == []
