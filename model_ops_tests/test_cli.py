"""The `model-ops` command line: the contract in DESIGN.md, its exit codes, and that bad input writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from model_ops.artifacts import sklearn_io
from model_ops.cli import main


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    r = tmp_path / "root"
    monkeypatch.setenv("MODEL_OPS_ROOT", str(r))
    monkeypatch.setenv("MODEL_OPS_ACTOR", "alice")
    monkeypatch.delenv("MODEL_OPS_POLICY", raising=False)
    monkeypatch.delenv("MODEL_OPS_SIGNING_KEY", raising=False)
    return r


def model_file(tmp_path: Path, c: float) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    y = (x[:, 0] > 0).astype(int)
    path = tmp_path / f"model_{c}.skops"
    path.write_bytes(sklearn_io.dumps(LogisticRegression(C=c).fit(x, y)))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def store_files(root: Path) -> set[Path]:
    base = root / "artifacts" / "sha256"
    return {p for p in base.rglob("*") if p.is_file()} if base.exists() else set()


def test_register_list_show_resolve(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sig = json.dumps({"inputs": [{"name": f"f{i}", "dtype": "float64"} for i in range(3)]})
    first = run_json(
        capsys,
        "register",
        "flight_delay",
        str(model_file(tmp_path, 1.0)),
        "--params",
        '{"C": 1.0}',
        "--metrics",
        '{"roc_auc": 0.71}',
        "--dataset",
        "/lake/features@3",
        "--signature",
        sig,
    )
    assert first["version"] == 1 and first["semver"] == "1.0.0" and first["stage"] == "development"
    second = run_json(
        capsys,
        "register",
        "flight_delay",
        str(model_file(tmp_path, 2.0)),
        "--params",
        '{"C": 2.0}',
        "--dataset",
        "/lake/features@4",
        "--signature",
        sig,
    )
    assert second["version"] == 2 and second["semver"] == "1.1.0"
    assert "training data version changed" in second["bump"]["reason"]

    versions = run_json(capsys, "versions", "flight_delay")
    assert [v["version"] for v in versions] == [1, 2]
    assert set(versions[0]) >= {"version", "semver", "stage", "aliases", "digest", "created_at", "created_by"}
    assert versions[0]["created_by"] == "alice"

    shown = run_json(capsys, "show", "models:/flight_delay/1.0.0")
    assert shown["dataset"] == {"uri": "/lake/features", "version": 3}
    assert shown["lineage"]["environment"]["packages"]["scikit-learn"]
    assert shown["metrics"] == {"roc_auc": 0.71}

    code, out, _ = run(capsys, "resolve", "models:/flight_delay@latest")
    assert (code, out.strip()) == (0, "2")
    code, out, _ = run(capsys, "show", "models:/flight_delay/2")
    assert code == 0 and "semver" not in out.splitlines()[0] and "1.1.0" in out


def test_lifecycle_audit_as_of_and_rollback(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for c in (1.0, 2.0):
        assert run(capsys, "register", "m", str(model_file(tmp_path, c)))[0] == 0
    for ref in ("models:/m/1", "models:/m/2"):
        assert run(capsys, "transition", ref, "staging", "--reason", "checks passed")[0] == 0
        assert run(capsys, "transition", ref, "production", "--reason", "release")[0] == 0
    before_rollback = time.time()
    time.sleep(0.01)
    code, out, _ = run(capsys, "rollback", "m", "--reason", "latency regression")
    assert code == 0 and "from v2 to v1" in out
    code, out, _ = run(capsys, "resolve", "models:/m@champion")
    assert out.strip() == "1"

    events = run_json(capsys, "audit", "m")
    kinds = [e["kind"] for e in events]
    assert kinds.count("registered") == 2 and "rollback" in kinds
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert all(e["actor"] == "alice" for e in events)

    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(before_rollback)) + f".{int(before_rollback % 1 * 1e6):06d}Z"
    then = run_json(capsys, "as-of", when, "m")["models"]["m"]
    assert then["production"] == 2 and then["aliases"] == {"champion": 2}
    now = run_json(capsys, "as-of", "2999-01-01T00:00:00Z")["models"]["m"]
    assert now["production"] == 1


def test_alias_set_and_remove(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "register", "m", str(model_file(tmp_path, 1.0)))
    assert run(capsys, "alias", "set", "m", "challenger", "1", "--reason", "try it")[0] == 0
    assert run(capsys, "resolve", "models:/m@challenger")[1].strip() == "1"
    assert run(capsys, "alias", "rm", "m", "challenger", "--reason", "done")[0] == 0
    code, _, err = run(capsys, "resolve", "models:/m@challenger")
    assert code == 1 and "no alias 'challenger'" in err
    code, _, err = run(capsys, "alias", "set", "m", "champion", "1", "--reason", "by hand")
    assert code == 2 and "follows the production version" in err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["resolve", "models:/flight delay/1"], 2, "invalid model name"),
        (["resolve", "models:/m"], 2, "names no version"),
        (["resolve", "models:/m/0"], 2, "start at 1"),
        (["resolve", "models:/nope/1"], 1, "no model named 'nope'"),
        (["resolve", "models:/m/7"], 1, "has no version 7"),
        (["show", "models:/m/9.9.9"], 1, "no version with semver 9.9.9"),
        (["transition", "models:/m/1", "prod", "--reason", "x"], 2, "unknown stage 'prod'"),
        (["transition", "models:/m/1", "production", "--reason", "x"], 2, "cannot move from development to production"),
        (["transition", "models:/m/1", "staging", "--reason", "  "], 2, "needs a reason"),
        (["transition", "models:/m/1", "staging"], 2, "--reason"),
        (["register", "m", "MISSING"], 2, "does not exist"),
        (["register", "m", "EMPTY"], 2, "is empty"),
        (["register", "m", "GOOD", "--params", "{bad"], 2, "--params is not valid JSON"),
        (["register", "m", "GOOD", "--params", "[1, 2]"], 2, "params must be a JSON object"),
        (["register", "m", "GOOD", "--metrics", '{"auc": "high"}'], 2, "metrics must be finite numbers"),
        (["register", "m", "GOOD", "--dataset", "no-version"], 2, "must be URI@VERSION"),
        (["as-of", "yesterday"], 2, "cannot read 'yesterday' as a time"),
        (["rollback", "m", "--reason", "x"], 2, "nothing to roll back"),
        (["alias", "set", "m", "latest", "1", "--reason", "x"], 2, "reserved"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    run(capsys, "register", "m", str(model_file(tmp_path, 1.0)))
    (tmp_path / "EMPTY").write_bytes(b"")
    good = model_file(tmp_path, 5.0)
    argv = [str(tmp_path / a) if a in ("MISSING", "EMPTY") else str(good) if a == "GOOD" else a for a in argv]
    events_before = len(run_json(capsys, "audit"))
    blobs_before = store_files(root)
    try:
        got, _, err = run(capsys, *argv)
    except SystemExit as e:  # argparse usage errors
        got, err = int(e.code or 0), capsys.readouterr().err
    assert got == code, err
    assert message in err
    assert err.startswith("usage:") or err.startswith("error:")
    assert len(run_json(capsys, "audit")) == events_before
    assert store_files(root) == blobs_before
    assert run(capsys, "fsck")[0] == 0


def test_denied_action_is_refused_and_audited(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "policy.yaml"
    text = (Path(__file__).parents[1] / "model_ops" / "registry" / "default_policy.yaml").read_text()
    policy.write_text(text.replace("actors: {}", "actors: {bob: data-scientist, carol: approver}"))
    monkeypatch.setenv("MODEL_OPS_POLICY", str(policy))
    assert run(capsys, "--actor", "bob", "register", "m", str(model_file(tmp_path, 1.0)))[0] == 0
    assert run(capsys, "--actor", "bob", "transition", "models:/m/1", "staging", "--reason", "ok")[0] == 0
    code, _, err = run(capsys, "--actor", "bob", "transition", "models:/m/1", "production", "--reason", "ship it")
    assert code == 2
    assert "actor 'bob' (role data-scientist) may not transition production" in err
    assert "approver" in err  # names the roles that may
    assert run(capsys, "resolve", "models:/m/production")[0] == 1
    denied = [e for e in run_json(capsys, "audit", "m") if e["kind"] == "denied"]
    assert len(denied) == 1 and denied[0]["actor"] == "bob" and denied[0]["key"] == "transition:production"
    assert run(capsys, "--actor", "carol", "transition", "models:/m/1", "production", "--reason", "approved")[0] == 0


def test_fetch_fsck_and_a_flipped_byte(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = model_file(tmp_path, 1.0)
    mv = run_json(capsys, "register", "m", str(src))
    dest = tmp_path / "out.skops"
    assert run(capsys, "fetch", "models:/m/1", str(dest))[0] == 0
    assert dest.read_bytes() == src.read_bytes()
    assert run_json(capsys, "fsck") == {"consistent": True, "problems": []}

    manifest = json.loads((root / "artifacts" / "sha256" / mv["digest"][:2] / mv["digest"][2:]).read_bytes())
    blob = root / "artifacts" / "sha256" / manifest["files"][0]["sha256"][:2] / manifest["files"][0]["sha256"][2:]
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    code, out, _ = run(capsys, "fsck", "--json")
    report = json.loads(out)
    assert code == 1 and not report["consistent"]
    assert any(
        p.startswith("m v1: file model_1.0.skops") and "does not match its digest" in p for p in report["problems"]
    )
    code, _, err = run(capsys, "fetch", "models:/m/1", str(tmp_path / "again.skops"))
    assert code == 1 and "does not match its digest" in err
    assert not (tmp_path / "again.skops").exists()


def test_gc_is_a_dry_run_until_applied_and_keeps_referenced_blobs(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model_ops.artifacts import ArtifactStore

    run(capsys, "register", "m", str(model_file(tmp_path, 1.0)))
    orphan = tmp_path / "orphan.bin"
    orphan.write_bytes(os.urandom(1000))
    stored = ArtifactStore.open(root).put(orphan)  # stored but never registered: a crashed register leaves this
    before = store_files(root)
    report = run_json(capsys, "gc", "--grace-hours", "0")
    assert {b["digest"] for b in report["unreferenced"]} == {stored.digest, stored.manifest.files[0].sha256}
    assert store_files(root) == before
    young = run_json(capsys, "gc")  # default grace keeps fresh blobs: they may belong to a registration in flight
    assert young["unreferenced"] == [] and young["too_recent"] == 2
    applied = run_json(capsys, "gc", "--apply", "--grace-hours", "0")
    assert applied["applied"] and len(applied["unreferenced"]) == 2
    assert len(store_files(root)) == len(before) - 2
    assert run(capsys, "fsck")[0] == 0
    assert run(capsys, "fetch", "models:/m/1", str(tmp_path / "still.skops"))[0] == 0


def test_every_listing_command_prints_one_json_document(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "register", "m", str(model_file(tmp_path, 1.0)))
    for argv in (
        ["versions", "m"],
        ["models"],
        ["show", "models:/m/1"],
        ["resolve", "models:/m/1"],
        ["audit"],
        ["audit", "m"],
        ["as-of", "2999-01-01"],
        ["fsck"],
        ["gc"],
    ):
        doc = run_json(capsys, *argv)
        assert doc not in (None, "", [])


@pytest.mark.slow
def test_console_script_exit_codes(root: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "model-ops"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "model_ops.cli"]
    env = {**os.environ}

    def sh(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cmd, *argv], capture_output=True, text=True, env=env, timeout=120)

    assert sh("register", "m", str(model_file(tmp_path, 1.0))).returncode == 0
    ok = sh("resolve", "models:/m/1")
    assert (ok.returncode, ok.stdout.strip()) == (0, "1")
    missing = sh("resolve", "models:/m@nope")
    assert missing.returncode == 1 and "error: m has no alias 'nope'" in missing.stderr
    bad = sh("resolve", "not a ref")
    assert bad.returncode == 2 and "hint:" in bad.stderr


@pytest.mark.parametrize(
    "failure",
    [
        OSError(28, "No space left on device", "/data/models/artifacts/tmp/abc.part"),
        RuntimeError("Generic DeltaTable error: Failed to write: No space left on device (os error 28)"),
    ],
    ids=["oserror", "wrapped"],
)
def test_a_full_disk_is_said_plainly_not_as_a_bug(
    root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
) -> None:
    from model_ops.registry import Registry

    def full(*args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr(Registry, "register", full)
    code, _, err = run(capsys, "register", "m", str(model_file(tmp_path, 1.0)))
    where = "/data/models/artifacts/tmp/abc.part" if isinstance(failure, OSError) else "the device"
    assert code == 1 and f"error: no space left on {where}" in err and "a bug" not in err
    assert "Traceback" not in err


def test_tables_fit_the_terminal_and_wide_or_json_keep_every_character(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = "the holdout AUC rose from 0.71 to 0.74 and the slices by carrier all held within 0.01 of the champion"
    assert run(capsys, "register", "m", str(model_file(tmp_path, 1.0)))[0] == 0
    assert run(capsys, "transition", "models:/m/1", "staging", "--reason", reason)[0] == 0
    monkeypatch.setenv("COLUMNS", "100")
    code, out, _ = run(capsys, "audit", "m")
    assert code == 0 and max(len(line) for line in out.splitlines()) <= 100
    heading, *lines = out.splitlines()
    assert heading.split() == ["SEQ", "TIME", "WINDOW", "VERSION", "EVENT", "CHANGE", "ACTOR", "REASON", "RUN"]
    start = next(i for i, line in enumerate(lines) if "stage_changed" in line)
    moved = lines[start:]  # the row and its continuation lines
    assert len(moved) > 1 and moved[0].rstrip().endswith("-")  # no run: the placeholder
    assert moved[0].split()[3] == "-"  # written for no window
    reason_at = heading.index("REASON")
    assert " ".join(line[reason_at:].split("  ")[0].strip() for line in moved).split() == reason.split()
    code, out, _ = run(capsys, "audit", "m", "--wide")
    assert code == 0 and reason in out and len(out.splitlines()) == 3
    assert any(e["reason"] == reason for e in run_json(capsys, "audit", "m"))  # --json as it always was
    code, out, _ = run(capsys, "versions", "m")
    assert code == 0 and max(len(line) for line in out.splitlines()) <= 100
    monkeypatch.delenv("COLUMNS")  # piped (as here, no terminal) and no COLUMNS: one line per row
    assert reason in run(capsys, "audit", "m")[1]
