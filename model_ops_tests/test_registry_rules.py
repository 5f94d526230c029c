"""The registry's rules one at a time: references, semver bumps, policy loading, gates, approvals, tags, records,
and the table maintenance that keeps a long-lived registry fast."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from model_ops.errors import NotFoundError, PermissionDeniedError, PolicyError, UsageError
from model_ops.registry import Registry, maintenance, parse_ref
from model_ops.registry import semver as sv
from model_ops.registry.policy import default_policy_text

SIG = {
    "inputs": [{"name": "a", "dtype": "float64"}, {"name": "b", "dtype": "int64"}],
    "outputs": {"task": "binary", "classes": [0, 1]},
}


def blob(tmp_path: Path, content: str) -> Path:
    p = tmp_path / f"artifact-{abs(hash(content))}.bin"
    p.write_text(content)
    return p


@pytest.fixture()
def reg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.delenv("MODEL_OPS_POLICY", raising=False)
    return Registry.open(tmp_path / "root", actor="alice")


def policy_file(tmp_path: Path, replacements: dict[str, str]) -> Path:
    text = default_policy_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models:/m/3", dict(name="m", version=3)),
        ("m/3", dict(name="m", version=3)),
        ("models:/m/1.2.0", dict(name="m", semver="1.2.0")),
        ("models:/m@champion", dict(name="m", alias="champion")),
        ("models:/m@latest", dict(name="m", alias="latest")),
        ("models:/flight_delay.v2-x/production", dict(name="flight_delay.v2-x", stage="production")),
    ],
)
def test_references_parse(text: str, expected: dict) -> None:
    ref = parse_ref(text)
    assert {k: getattr(ref, k) for k in expected} == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "models:/",
        "models:/m",
        "models:/m/",
        "models:/m/0",
        "models:/m/1.2",
        "models:/m@Bad",
        "models:/ m/1",
        "models:/m/1.2.0.0",
        "models:/-m/1",
        "m@",
    ],
)
def test_malformed_references_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_ref(text)


def test_semver_classification() -> None:
    base = {
        "signature": SIG,
        "dataset": {"uri": "x", "version": 1},
        "params": {"C": 1},
        "lineage": {"estimator": "lr", "code_version": "a"},
    }
    assert sv.classify(None, base)[0] == "initial"
    assert sv.classify(base, {**base, "signature": {**SIG, "inputs": SIG["inputs"][:1]}}) == (
        "major",
        "input signature changed (removed b)",
    )
    retyped = {**SIG, "inputs": [{"name": "a", "dtype": "float32"}, SIG["inputs"][1]]}
    assert sv.classify(base, {**base, "signature": retyped})[0] == "major"
    assert (
        sv.classify(base, {**base, "signature": {**SIG, "outputs": {"task": "binary", "classes": [0, 1, 2]}}})[0]
        == "major"
    )
    assert sv.classify(base, {**base, "dataset": {"uri": "x", "version": 2}}) == (
        "minor",
        "training data version changed",
    )
    assert sv.classify(base, {**base, "params": {"C": 2}}) == ("minor", "parameters changed (C)")
    assert sv.classify(base, {**base, "lineage": {"estimator": "gbm", "code_version": "a"}})[0] == "minor"
    assert sv.classify(base, {**base, "lineage": {"estimator": "lr", "code_version": "b"}}) == (
        "patch",
        "same interface, data and parameters; changed: code_version",
    )
    assert sv.classify(base, dict(base))[0] == "patch"


def test_semver_bumps_never_repeat() -> None:
    used = sv.SemverIndex.of({"1.0.0", "1.1.0", "1.2.0"})
    assert sv.bump("minor", "1.1.0", used) == "1.3.0"  # parent is not the newest: still a fresh minor
    assert sv.bump("patch", "1.1.0", used) == "1.1.1"
    assert sv.bump("major", "1.1.0", used) == "2.0.0"
    assert sv.bump("initial", None, sv.SemverIndex()) == "1.0.0"
    batch = sv.SemverIndex(over=used)  # a batch's own bumps stack on the model's without copying them
    batch.add("1.3.0")
    assert sv.bump("minor", "1.0.0", batch) == "1.4.0" and sv.bump("minor", "1.0.0", used) == "1.3.0"
    batch.add("2.0.0")
    assert sv.bump("major", "1.0.0", batch) == "3.0.0" and sv.bump("patch", "2.0.0", batch) == "2.0.1"


def test_registered_semvers_follow_the_parent(reg: Registry, tmp_path: Path) -> None:
    v1 = reg.register("m", blob(tmp_path, "1"), params={"C": 1}, signature=SIG)
    v2 = reg.register("m", blob(tmp_path, "2"), params={"C": 2}, signature=SIG)
    v3 = reg.register("m", blob(tmp_path, "3"), params={"C": 2}, signature=SIG, lineage={"code_version": "b"})
    v4 = reg.register("m", blob(tmp_path, "4"), params={"C": 9}, signature=SIG, parent=1)
    v5 = reg.register("m", blob(tmp_path, "5"), params={"C": 9}, signature={**SIG, "inputs": SIG["inputs"][:1]})
    assert [v.semver for v in (v1, v2, v3, v4, v5)] == ["1.0.0", "1.1.0", "1.1.1", "1.2.0", "2.0.0"]
    assert v4.parent == 1 and v4.bump["from"] == "1.0.0"
    assert reg.resolve("models:/m/1.1.1").version == 3
    with pytest.raises(NotFoundError):
        reg.register("m", blob(tmp_path, "6"), parent=42)


def test_stage_reference_resolves_newest_in_stage(reg: Registry, tmp_path: Path) -> None:
    for i in range(3):
        reg.register("m", blob(tmp_path, str(i)))
        reg.transition(f"models:/m/{i + 1}", "staging", reason="r")
    assert reg.resolve("models:/m/staging").version == 3
    with pytest.raises(NotFoundError, match="no version in stage production"):
        reg.resolve("models:/m/production")
    with pytest.raises(UsageError, match="unknown stage"):
        reg.resolve("models:/m/prod")


def test_invalid_policy_names_the_field(tmp_path: Path) -> None:
    bad = policy_file(tmp_path, {"development: [staging, archived]": "development: [staging, retired]"})
    with pytest.raises(UsageError, match=r"transitions.development names unknown stage 'retired'"):
        Registry.open(tmp_path / "root", policy=bad)
    (tmp_path / "typo.yaml").write_text(default_policy_text().replace("four_eyes:", "four_eye:"))
    with pytest.raises(UsageError, match="four_eye"):
        Registry.open(tmp_path / "root", policy=tmp_path / "typo.yaml")
    (tmp_path / "notyaml.yaml").write_text("stages: [a\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        Registry.open(tmp_path / "root", policy=tmp_path / "notyaml.yaml")
    with pytest.raises(UsageError, match="does not exist"):
        Registry.open(tmp_path / "root", policy=tmp_path / "missing.yaml")


def test_policy_in_the_root_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_OPS_POLICY", raising=False)
    root = tmp_path / "root"
    (root / "registry").mkdir(parents=True)
    (root / "registry" / "policy.yaml").write_text(
        default_policy_text().replace(
            "staging: [production, development, archived]", "staging: [development, archived]"
        )
    )
    reg = Registry.open(root)
    reg.register("m", blob(tmp_path, "x"))
    reg.transition("models:/m/1", "staging", reason="r")
    with pytest.raises(PolicyError, match="cannot move from staging to production"):
        reg.transition("models:/m/1", "production", reason="r")


def test_approval_gate_counts_other_people_only(tmp_path: Path) -> None:
    # One OS user plays alice, bob and carol here, so the gate counts names ("claimed"): the root's policy must say
    # so (a --policy file can only make four-eyes stricter). Counting proven identities is in test_access.py.
    path = policy_file(tmp_path, {"    approvals: 0": "    approvals: 2", "four_eyes: true": "four_eyes: claimed"})
    (tmp_path / "root" / "registry").mkdir(parents=True)
    (tmp_path / "root" / "registry" / "policy.yaml").write_bytes(path.read_bytes())
    alice = Registry.open(tmp_path / "root", actor="alice", policy=path)
    alice.register("m", blob(tmp_path, "x"))
    alice.transition("models:/m/1", "staging", reason="r")
    alice.approve("models:/m/1", "production", reason="mine")
    with pytest.raises(PolicyError, match=r"needs 2 approval\(s\) for production .* has 0"):
        alice.transition("models:/m/1", "production", reason="ship")
    Registry.open(tmp_path / "root", actor="bob", policy=path).approve("models:/m/1", "production", reason="ok")
    with pytest.raises(PolicyError, match="has 1"):
        alice.transition("models:/m/1", "production", reason="ship")
    Registry.open(tmp_path / "root", actor="carol", policy=path).approve("models:/m/1", "production", reason="ok")
    mv = alice.transition("models:/m/1", "production", reason="ship")
    assert mv.stage == "production"
    gates = [e for e in alice.audit("m") if e.kind == "stage_changed" and e.to_value == "production"][0].data["gates"]
    assert gates["approvals"] == {"required": 2, "given": ["bob", "carol"], "not_counted": ["alice (the mover)"]}


def test_metric_gate(tmp_path: Path) -> None:
    path = policy_file(tmp_path, {"    metrics: {}": "    metrics: {roc_auc: {min: 0.7}, log_loss: {max: 0.5}}"})
    reg = Registry.open(tmp_path / "root", policy=path)
    reg.register("m", blob(tmp_path, "low"), metrics={"roc_auc": 0.65, "log_loss": 0.4})
    reg.register("m", blob(tmp_path, "none"))
    reg.register("m", blob(tmp_path, "good"), metrics={"roc_auc": 0.75, "log_loss": 0.4})
    for v in (1, 2, 3):
        reg.transition(f"models:/m/{v}", "staging", reason="r")
    with pytest.raises(PolicyError, match="metric roc_auc is 0.65, the gate needs >= 0.7"):
        reg.transition("models:/m/1", "production", reason="r")
    with pytest.raises(PolicyError, match="roc_auc is not recorded"):
        reg.transition("models:/m/2", "production", reason="r")
    assert reg.transition("models:/m/3", "production", reason="r").stage == "production"


def test_roles_grant_verbs(tmp_path: Path) -> None:
    path = policy_file(tmp_path, {"actors: {}": "actors: {ds: data-scientist, viewer1: viewer}"})
    ds = Registry.open(tmp_path / "root", actor="ds", policy=path)
    ds.register("m", blob(tmp_path, "x"))
    ds.set_alias("m", "challenger", 1, reason="ok")
    with pytest.raises(PermissionDeniedError, match="may not alias shadow"):
        ds.set_alias("m", "shadow", 1, reason="no")
    viewer = Registry.open(tmp_path / "root", actor="viewer1", policy=path)
    assert viewer.resolve("models:/m@challenger").version == 1  # reading needs no verb
    with pytest.raises(PermissionDeniedError, match=r"\(role viewer\) may not register"):
        viewer.register("m", blob(tmp_path, "y"))
    denied = [e for e in ds.audit("m") if e.kind == "denied"]
    assert [(e.actor, e.key) for e in denied] == [("ds", "alias:shadow"), ("viewer1", "register")]
    assert len(ds.versions("m")) == 1


def test_tags_and_records(reg: Registry, tmp_path: Path) -> None:
    reg.register("m", blob(tmp_path, "x"), tags={"team": "ml"})
    assert reg.set_tag("models:/m/1", "ticket", "OPS-1").tags == {"team": "ml", "ticket": "OPS-1"}
    assert reg.remove_tag("models:/m/1", "team").tags == {"ticket": "OPS-1"}
    event = reg.record("m", "deployment", version=1, reason="canary 10%", details={"weight": 0.1}, run_id="run-1")
    assert event.kind == "deployment" and event.run_id == "run-1"
    last = reg.audit("m")[-1]
    assert (last.kind, last.data, last.reason) == ("deployment", {"weight": 0.1}, "canary 10%")
    with pytest.raises(UsageError, match="unknown record kind"):
        reg.record("m", "party")
    with pytest.raises(NotFoundError):
        reg.record("m", "deployment", version=7)


def test_run_id_comes_from_the_environment(reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_OPS_RUN_ID", "dagster-run-123")
    mv = reg.register("m", blob(tmp_path, "x"))
    assert mv.run_id == "dagster-run-123"
    assert reg.audit("m")[0].run_id == "dagster-run-123"


def test_a_second_handle_sees_changes_without_reopening(reg: Registry, tmp_path: Path) -> None:
    other = Registry.open(reg.root, actor="bob")
    reg.register("m", blob(tmp_path, "x"))
    assert other.resolve("models:/m@latest").version == 1
    other.register("m", blob(tmp_path, "y"))
    other.set_alias("m", "challenger", 2, reason="r")
    assert reg.resolve("models:/m@challenger").version == 2
    assert reg.versions("m")[1].created_by == "bob"


@pytest.mark.slow
def test_maintenance_compacts_the_log_and_writes_the_versions_table(reg: Registry, tmp_path: Path) -> None:
    count = 105
    for i in range(count):
        reg.register("m", blob(tmp_path, f"v{i}"))
    # The 100th commit started a compaction in the background, which the next writes raced and lost nothing to.
    maintenance.wait_for_background(120)
    events_dir = str(reg.root.child("registry", "events"))
    assert len(DeltaTable(events_dir).file_uris()) <= count - 100 + 1
    assert not os.path.exists(str(reg.root.child("registry", "versions")))  # the rest is maintenance's
    report = reg.maintain()
    assert report["problems"] == []
    assert report["versions_projected"] == count
    events = DeltaTable(events_dir)
    assert len(events.file_uris()) < 5
    assert events.to_pyarrow_table().num_rows == count
    versions = DeltaTable(str(reg.root.child("registry", "versions"))).to_pyarrow_table()
    assert sorted(versions.column("version").to_pylist()) == list(range(1, count + 1))
    assert pc.all(pc.equal(versions.column("model"), "m")).as_py()
    reg.register("m", blob(tmp_path, "after"))
    again = reg.maintain()
    assert again["versions_projected"] == 1 and again["snapshot"]["written"]
    fresh = Registry.open(reg.root)
    assert [v.version for v in fresh.versions("m")] == list(range(1, count + 2))
    assert fresh.fsck() == []


def test_open_does_not_create_anything_until_needed(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "root")
    with pytest.raises(NotFoundError, match="the registry is empty"):
        reg.versions("m")
    assert reg.models() == []
    assert not (tmp_path / "root" / "artifacts").exists()
    assert os.listdir(tmp_path / "root" / "registry") == ["events"]


def test_register_many_is_one_atomic_commit(reg: Registry, tmp_path: Path) -> None:
    reg.register("m", blob(tmp_path, "0"), params={"C": 0})
    entries = [
        {"path": blob(tmp_path, "a"), "params": {"C": 1}, "tags": {"src": "import"}},
        {"path": blob(tmp_path, "a")},  # same bytes as the entry before: same version
        {"path": blob(tmp_path, "0")},  # same bytes as v1
        {"path": blob(tmp_path, "b"), "params": {"C": 1}, "lineage": {"code_version": "2"}},
        {"path": blob(tmp_path, "c"), "params": {"C": 5}, "parent": 1},
    ]
    got = reg.register_many("m", entries)
    assert [v.version for v in got] == [2, 2, 1, 3, 4]
    assert [v.semver for v in got] == ["1.1.0", "1.1.0", "1.0.0", "1.1.1", "1.2.0"]
    assert got[0].tags == {"src": "import"} and got[4].parent == 1
    registered = [e for e in reg.audit("m") if e.kind == "registered"]
    assert len({e.ts for e in registered[1:]}) == 1  # the three new versions landed in one commit
    before = len(reg.audit("m"))
    with pytest.raises(UsageError, match="metrics must be finite"):
        reg.register_many("m", [{"path": blob(tmp_path, "d")}, {"path": blob(tmp_path, "e"), "metrics": {"x": "y"}}])
    with pytest.raises(UsageError, match="unknown registration field"):
        reg.register_many("m", [{"path": blob(tmp_path, "d"), "colour": "blue"}])
    assert len(reg.audit("m")) == before and len(reg.versions("m")) == 4


def test_records_are_read_lazily_and_survive_a_reopen(reg: Registry, tmp_path: Path) -> None:
    reg.register("m", blob(tmp_path, "x"), params={"C": 1}, metrics={"auc": 0.8}, description="first")
    fresh = Registry.open(reg.root)
    mv = fresh.resolve("models:/m/1")
    assert (mv.params, mv.metrics, mv.record["description"]) == ({"C": 1}, {"auc": 0.8}, "first")
    assert mv.stage == "development"


def test_an_alias_points_only_at_its_own_models_versions(reg: Registry, tmp_path: Path) -> None:
    for name, n in (("a", 3), ("b", 1)):
        for i in range(n):
            reg.register(name, blob(tmp_path, f"{name}{i}"))
    with pytest.raises(UsageError, match="that is a version of a"):
        reg.set_alias("b", "candidate", "models:/a/3", reason="r")
    assert not reg.get("b", 1).aliases  # nothing moved
    assert reg.set_alias("b", "candidate", "models:/b/1", reason="r").version == 1
    assert reg.set_alias("a", "candidate", 3, reason="r").ref == "models:/a/3"


@pytest.mark.parametrize("bad", ["\n", " ", "\t", "\r\n", "\x00"])
def test_names_that_print_like_others_are_refused(reg: Registry, tmp_path: Path, bad: str) -> None:
    for name in ("abc" + bad, bad + "abc", "a" + bad + "bc"):
        with pytest.raises(UsageError, match="invalid model name"):
            reg.register(name, blob(tmp_path, "x"))
    reg.register("abc", blob(tmp_path, "x"))
    with pytest.raises(UsageError, match="invalid alias"):
        reg.set_alias("abc", "challenger" + bad, 1, reason="r")
    with pytest.raises(UsageError, match="surrounding whitespace or control characters"):
        reg.register("abd", blob(tmp_path, "y"), tags={"team" + bad: "fraud"})
    assert [m for m in reg.models()] == ["abc"]


def test_a_policy_stage_with_control_characters_is_refused(tmp_path: Path) -> None:
    path = policy_file(tmp_path, {"stages: [development, staging,": 'stages: [development, "staging\\n", staging,'})
    with pytest.raises(UsageError, match="stage 'staging\\\\n' must be lowercase"):
        Registry.open(tmp_path / "root", policy=path)
