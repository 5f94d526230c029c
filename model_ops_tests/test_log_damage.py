"""A damaged event log is found, refuses writes, and `fsck --repair` restores it; the audit log is a hash chain.

Each damage is done to the files as an attacker or a broken disk would: the newest commit emptied, stripped of its
actions, deleted, cut in half, a checkpoint corrupted, a data file removed with its commit; events edited,
deleted, reordered, and a forged promotion appended with the Delta API (hashes computed correctly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from model_ops.errors import IntegrityError
from model_ops.registry import Registry
from model_ops.registry import events as ev
from model_ops.registry.chain import chain_problems
from model_ops_tests.helpers import unique_bytes, write_file

REPO = Path(__file__).resolve().parents[1]


def _registry(root: Path, tmp: Path, n: int = 3) -> Registry:
    reg = Registry.open(root, actor="alice")
    for i in range(n):
        reg.register("m", write_file(tmp / f"src{i}", "m.bin", unique_bytes(f"v{i}")))
    return reg


def _log(root: Path) -> Path:
    return root / "registry" / "events" / "_delta_log"


def _newest(root: Path) -> Path:
    return sorted(_log(root).glob("*.json"))[-1]


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MODEL_OPS_ACTOR="alice")
    return subprocess.run(
        [sys.executable, "-m", "model_ops.cli", "--root", str(root), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        timeout=120,
    )


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _no_actions(path: Path) -> None:
    path.write_text(json.dumps({"commitInfo": {"timestamp": 1}}) + "\n")


def _deleted(path: Path) -> None:
    path.unlink()


def _half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage", [_empty, _no_actions, _deleted, _half], ids=["empty", "no-actions", "deleted", "half"]
)
def test_damaged_newest_commit_is_found_refuses_writes_and_is_repaired(tmp_path: Path, damage) -> None:
    root = tmp_path / "root"
    reg = _registry(root, tmp_path)
    digests = [v.digest for v in reg.versions("m")]
    damage(_newest(root))

    fsck = _cli(root, "fsck")
    assert fsck.returncode == 1, fsck.stdout + fsck.stderr
    assert "commit 3" in fsck.stdout
    assert "a bug" not in fsck.stderr

    register = _cli(root, "register", "m", str(write_file(tmp_path / "new", "m.bin", unique_bytes("new"))))
    assert register.returncode == 1, register.stdout + register.stderr
    assert "repair" in register.stderr and "a bug" not in register.stderr and "Traceback" not in register.stderr

    repaired = _cli(root, "fsck", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "damaged log is kept at" in repaired.stdout

    fresh = Registry.open(root, actor="alice")
    assert [v.digest for v in fresh.versions("m")] == digests
    nxt = fresh.register("m", write_file(tmp_path / "next", "m.bin", unique_bytes("next")))
    assert nxt.version == 4  # never the lost version's number again
    assert fresh.fsck() == []


def test_a_process_holding_state_refuses_to_write_after_the_newest_commit_vanished(tmp_path: Path) -> None:
    root = tmp_path / "root"
    reg = _registry(root, tmp_path)
    reg.versions("m")
    _newest(root).unlink()
    with pytest.raises(IntegrityError, match="vanished|missing"):
        reg.register("m", write_file(tmp_path / "x", "m.bin", unique_bytes("x")))
    assert len(Registry.open(root).versions("m")) == 2  # nothing was written over the gap


def test_lost_commit_and_its_data_file_are_restored_from_the_receipt(tmp_path: Path) -> None:
    root = tmp_path / "root"
    reg = _registry(root, tmp_path)
    digest3 = reg.get("m", 3).digest
    commit = _newest(root)
    adds = [json.loads(line)["add"]["path"] for line in commit.read_text().splitlines() if '"add"' in line]
    commit.unlink()
    for rel in adds:
        (root / "registry" / "events" / rel).unlink()
    report = Registry.open(root, actor="alice").repair(apply=True)
    assert report["applied"] and report["from_receipts_only"] == [3]
    assert Registry.open(root).get("m", 3).digest == digest3


@pytest.mark.slow
def test_damaged_checkpoint_is_named_and_repaired(tmp_path: Path) -> None:
    root = tmp_path / "root"
    reg = _registry(root, tmp_path, n=1)
    for i in range(101):  # the log checkpoints every 100 commits
        reg.set_tag("models:/m/1", "k", str(i))
    # The 100th commit also starts a compaction in the background, whose commit may bring a second checkpoint
    # depending on how the two threads interleave: let it finish, then damage the one readers start from.
    from model_ops.registry.maintenance import wait_for_background

    wait_for_background(60)
    checkpoint = max(_log(root).glob("*.checkpoint.parquet"), key=lambda p: int(p.name.split(".")[0]))
    data = bytearray(checkpoint.read_bytes())
    for i in range(len(data) // 4, len(data) * 3 // 4):  # the column chunks, whichever actions they hold
        data[i] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="cannot be read"):
        Registry.open(root).versions("m")
    problems = Registry.open(root).fsck()
    assert any("checkpoint" in p for p in problems) and all("\n" not in p for p in problems)
    Registry.open(root, actor="alice").repair(apply=True)
    fresh = Registry.open(root)
    assert fresh.get("m", 1).tags["k"] == "100"
    assert fresh.fsck() == []


def test_leftover_of_an_unacknowledged_write_is_not_restored(tmp_path: Path) -> None:
    """A data file written by a writer that died before committing chains onto the tip, but no receipt or commit
    confirms it: repair must not resurrect a write its caller was never told succeeded."""
    root = tmp_path / "root"
    reg = _registry(root, tmp_path)
    tip = reg.audit()[-1]
    ghost = ev.Event(seq=tip.seq + 1, ts=tip.ts + timedelta(seconds=1), model="m", kind=ev.TAG_SET, actor="alice")
    ghost.version, ghost.key, ghost.to_value, ghost.prev_hash = 1, "ghost", "1", tip.hash
    ghost.hash = ev.chain_hash(ghost)
    import pyarrow.parquet as pq

    pq.write_table(ev.to_arrow([ghost]), root / "registry" / "events" / "part-ghost.parquet")
    _empty(_newest(root))  # and damage the real tip so that repair runs
    report = Registry.open(root, actor="alice").repair(apply=True)
    assert report["unacknowledged_leftovers"] == [tip.seq + 1]
    assert "ghost" not in Registry.open(root).get("m", 1).tags


# ------------------------------------------------------------------------------------------ the hash chain


def _rewrite(root: Path, change) -> None:  # type: ignore[no-untyped-def]
    """Rewrite the events table through the Delta API (an overwrite commit), as someone with raw access could."""
    uri = str(root / "registry" / "events")
    rows = DeltaTable(uri).to_pyarrow_table().sort_by("seq").to_pylist()
    rows = change(rows)
    write_deltalake(uri, pa.Table.from_pylist(rows, schema=ev.SCHEMA), mode="overwrite")


def _chained(root: Path) -> Registry:
    reg = Registry.open(root, actor="alice")
    return reg


def test_edit_delete_and_reorder_are_named_by_the_chain(tmp_path: Path) -> None:
    root = tmp_path / "root"
    reg = _registry(root, tmp_path)
    reg.set_tag("models:/m/2", "owner", "team-a")
    assert chain_problems(reg.audit()) == []

    def edit(rows):  # type: ignore[no-untyped-def]
        rows[3]["to_value"] = "team-b"
        return rows

    _rewrite(root, edit)
    found = chain_problems(Registry.open(root).audit())
    assert any("event 4" in p and "altered" in p for p in found), found
    assert any("event 4" in p for p in Registry.open(root).fsck())


def test_deleted_and_reordered_events_break_the_chain(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _registry(root, tmp_path, n=4)
    events = Registry.open(root).audit()

    deleted = [e for e in events if e.seq != 2]
    assert any("does not follow" in p for p in chain_problems(deleted))
    swapped = list(events)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    assert any("does not follow" in p for p in chain_problems(swapped))


def _forge(root: Path, reg: Registry, **fields) -> None:  # type: ignore[no-untyped-def]
    """Append one event with a correct chain hash through the Delta API, bypassing the registry's checks."""
    tip = reg.audit()[-1]
    forged = ev.Event(seq=tip.seq + 1, ts=tip.ts + timedelta(seconds=1), **fields)
    forged.prev_hash = tip.hash
    forged.hash = ev.chain_hash(forged)
    write_deltalake(str(root / "registry" / "events"), ev.to_arrow([forged]), mode="append", schema_mode="merge")


def test_forged_promotion_with_a_valid_chain_is_found_by_the_policy_replay(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "registry").mkdir(parents=True)
    policy = (REPO / "model_ops" / "registry" / "default_policy.yaml").read_text()
    policy = policy.replace("    approvals: 0\n", "    approvals: 1\n")
    (root / "registry" / "policy.yaml").write_text(policy)
    reg = _registry(root, tmp_path, n=1)
    reg.transition("models:/m/1", "staging", reason="ready")
    assert reg.fsck() == []
    _forge(
        root,
        reg,
        model="m",
        kind=ev.STAGE_CHANGED,
        actor="alice",
        version=1,
        from_value="staging",
        to_value="production",
        reason="forged",
        payload=json.dumps({"cause": "transition", "gates": {}}),
    )
    problems = Registry.open(root).fsck()
    assert any("gate was not met" in p and "approval" in p for p in problems), problems
    assert chain_problems(Registry.open(root).audit()) == []  # the chain itself is intact: the replay found it


def test_forged_champion_move_is_found(tmp_path: Path) -> None:
    root = tmp_path / "root"
    reg = _registry(root, tmp_path, n=2)
    _forge(
        root,
        reg,
        model="m",
        kind=ev.ALIAS_SET,
        actor="alice",
        version=2,
        key="champion",
        to_value="2",
        reason="forged",
    )
    assert any("champion" in p for p in Registry.open(root).fsck())


def test_event_appended_without_a_hash_is_found(tmp_path: Path) -> None:
    root = tmp_path / "root"
    reg = _registry(root, tmp_path, n=1)
    tip = reg.audit()[-1]
    bare = ev.Event(seq=tip.seq + 1, ts=tip.ts + timedelta(seconds=1), model="m", kind=ev.TAG_SET, actor="alice")
    bare.version, bare.key, bare.to_value = 1, "k", "v"
    write_deltalake(str(root / "registry" / "events"), ev.to_arrow([bare]), mode="append")
    assert any("has no hash" in p for p in Registry.open(root).fsck())


def test_forged_event_claiming_another_policy_is_found(tmp_path: Path) -> None:
    """Claiming that another policy decided a write does not exempt it from the replay: the log records which
    policy was in force, and a claim that no recorded policy change explains is named."""
    root = tmp_path / "root"
    reg = _registry(root, tmp_path, n=2)
    _forge(
        root,
        reg,
        model="m",
        kind=ev.STAGE_CHANGED,
        actor="alice",
        version=2,
        from_value="development",
        to_value="production",
        reason="forged",
        policy="root=sha256:" + "0" * 64,
        payload=json.dumps({"cause": "transition"}),
    )
    problems = Registry.open(root).fsck()
    assert any("claims it was decided by policy" in p for p in problems), problems


def test_a_process_holding_state_refuses_to_write_on_an_emptied_newest_commit(tmp_path: Path) -> None:
    """The Delta engine cannot tell this process that its newest commit was emptied; a write on top would make the
    damaged commit an older one, which the tip check no longer looks at, and the lost number would be handed out."""
    root = tmp_path / "root"
    reg = _registry(root, tmp_path)
    reg.versions("m")
    _empty(_newest(root))
    with pytest.raises(IntegrityError, match="commit 3 of the event log is empty"):
        reg.register("m", write_file(tmp_path / "x", "m.bin", unique_bytes("x")))


def test_a_gap_in_the_numbering_is_damage_that_refuses_writes(tmp_path: Path) -> None:
    """A damaged commit below the newest one (someone wrote on top of it with another tool) leaves a gap in the
    event numbers: readers see it as damage and refuse to write, so its numbers are never handed out again."""
    root = tmp_path / "root"
    reg = _registry(root, tmp_path)
    damaged = _newest(root)
    tip = reg.audit()[-1]
    after = ev.Event(seq=tip.seq + 1, ts=tip.ts + timedelta(seconds=1), model="m", kind=ev.TAG_SET, actor="alice")
    after.version, after.key, after.to_value = 1, "k", "v"
    _empty(damaged)
    write_deltalake(str(root / "registry" / "events"), ev.to_arrow([after]), mode="append", schema_mode="merge")
    fresh = Registry.open(root, actor="alice")
    assert len(fresh.versions("m")) == 2
    assert any("skips events" in d for d in fresh.damage)
    with pytest.raises(IntegrityError, match="skips events"):
        fresh.register("m", write_file(tmp_path / "y", "m.bin", unique_bytes("y")))


def test_a_payload_that_is_not_json_is_named_by_fsck_and_breaks_no_reader(tmp_path: Path) -> None:
    root = tmp_path / "root"
    reg = _registry(root, tmp_path, n=1)
    _forge(root, reg, model="m", kind=ev.TAG_SET, actor="alice", version=1, key="k", to_value="v", payload="not-json")
    fresh = Registry.open(root)
    assert any("not a JSON object" in p for p in fresh.fsck())
    assert [e.to_dict()["details"] for e in fresh.audit()][-1] == {}


def _forge_commit(root: Path, reg: Registry, *specs: dict) -> None:
    """Append several events as one commit (one timestamp), each with a correct chain hash and the policy in force."""
    tip = reg.audit()[-1]
    prev, out = tip.hash, []
    for i, fields in enumerate(specs):
        e = ev.Event(seq=tip.seq + 1 + i, ts=tip.ts + timedelta(seconds=1), **{"policy": tip.policy, **fields})
        e.prev_hash = prev
        e.hash = prev = ev.chain_hash(e)
        out.append(e)
    write_deltalake(str(root / "registry" / "events"), ev.to_arrow(out), mode="append", schema_mode="merge")


def _gated(root: Path, tmp_path: Path) -> Registry:
    (root / "registry").mkdir(parents=True)
    policy = (REPO / "model_ops" / "registry" / "default_policy.yaml").read_text()
    (root / "registry" / "policy.yaml").write_text(policy.replace("    approvals: 0\n", "    approvals: 1\n"))
    reg = _registry(root, tmp_path, n=2)
    reg.transition("models:/m/1", "staging", reason="ready")
    reg.transition("models:/m/2", "staging", reason="ready")
    assert reg.fsck() == []
    return reg


PROMOTE = {"model": "m", "kind": ev.STAGE_CHANGED, "actor": "alice", "version": 1, "from_value": "staging"}


@pytest.mark.parametrize(
    "commit",
    [
        [{**PROMOTE, "to_value": "production", "payload": json.dumps({"cause": "replaced"})}],
        [{**PROMOTE, "to_value": "production", "payload": json.dumps({"cause": "rollback"})}],
        [
            {**PROMOTE, "to_value": "production", "payload": json.dumps({"cause": "transition"})},
            {**PROMOTE, "version": 2, "to_value": "development", "payload": json.dumps({"cause": "transition"})},
        ],
        [
            {"model": "m", "kind": ev.REGISTERED, "actor": "alice", "version": 3, "from_value": "production"},
        ],
        [
            {"model": "m", "kind": ev.DENIED, "actor": "alice", "key": "deploy"},
            {"model": "m", "kind": ev.ALIAS_SET, "actor": "alice", "version": 2, "key": "champion", "to_value": "2"},
        ],
        [
            {"model": "m", "kind": ev.TAG_SET, "actor": "bob", "version": 1, "key": "k", "to_value": "v"},
            {**PROMOTE, "to_value": "production", "payload": json.dumps({"cause": "transition"})},
        ],
    ],
    ids=["cause-replaced", "cause-rollback", "second-move", "born-in-production", "beside-a-denial", "mixed-writers"],
)
def test_forged_commits_of_shapes_the_registry_never_writes_are_found(tmp_path: Path, commit: list[dict]) -> None:
    root = tmp_path / "root"
    reg = _gated(root, tmp_path)
    _forge_commit(root, reg, *commit)
    assert Registry.open(root).fsck(), "a forged commit with a valid hash chain passed fsck"


def test_a_forged_policy_change_to_a_policy_nobody_had_is_found(tmp_path: Path) -> None:
    root = tmp_path / "root"
    reg = _gated(root, tmp_path)
    fake = "root=sha256:" + "1" * 64
    real = reg.audit()[-1].policy
    _forge_commit(
        root,
        reg,
        {
            "model": "m",
            "kind": "policy_changed",
            "actor": "alice",
            "key": "policy",
            "from_value": real,
            "to_value": fake,
        },
    )
    _forge_commit(
        root,
        Registry.open(root),
        {**PROMOTE, "to_value": "production", "policy": fake, "payload": json.dumps({"cause": "transition"})},
    )
    assert any("whose text the registry does not hold" in p for p in Registry.open(root).fsck())


def test_legitimate_writes_under_an_edited_policy_are_judged_by_the_policy_that_decided_them(tmp_path: Path) -> None:
    """A promotion decided under a policy without an approvals gate stays legitimate after the gate is added."""
    root = tmp_path / "root"
    (root / "registry").mkdir(parents=True)
    text = (REPO / "model_ops" / "registry" / "default_policy.yaml").read_text()
    (root / "registry" / "policy.yaml").write_text(text)
    reg = _registry(root, tmp_path, n=1)
    reg.transition("models:/m/1", "staging", reason="ready")
    reg.transition("models:/m/1", "production", reason="ship")
    (root / "registry" / "policy.yaml").write_text(text.replace("    approvals: 0\n", "    approvals: 1\n"))
    later = Registry.open(root, actor="alice")
    later.set_tag("models:/m/1", "k", "v")  # records the policy change
    assert later.fsck() == []


def test_a_losing_writers_leftover_chain_never_replaces_committed_events(tmp_path: Path) -> None:
    """A writer that lost its race for events 2 and 3 left a data file holding its own events 2 and 3 (linked to
    event 1, like the committed ones). With the table unreadable and only the newest receipt left, repair must walk
    back from the acknowledged tip and keep the committed events, whatever order the files are read in."""
    import pyarrow.parquet as pq

    root = tmp_path / "root"
    reg = _registry(root, tmp_path)
    committed = reg.audit()
    one = committed[0]
    loser = []
    prev = one.hash
    for seq in (2, 3):
        e = ev.Event(seq=seq, ts=one.ts + timedelta(microseconds=seq), model="m", kind=ev.TAG_SET, actor="loser")
        e.version, e.key, e.to_value, e.policy, e.prev_hash = 1, "lost", "race", one.policy, prev
        e.hash = prev = ev.chain_hash(e)
        loser.append(e)
    pq.write_table(ev.to_arrow(loser), root / "registry" / "events" / "a-leftover.parquet")  # sorts first
    for receipt in sorted((root / "registry" / "receipts").glob("*.json"))[:-1]:
        receipt.unlink()
    _half(_newest(root))
    report = Registry.open(root, actor="alice").repair(apply=True)
    assert report["unacknowledged_leftovers"] == [] and report["kept"] == 3
    fresh = Registry.open(root)
    assert [(e.seq, e.hash) for e in fresh.audit()] == [(e.seq, e.hash) for e in committed]
    assert "lost" not in fresh.get("m", 1).tags
