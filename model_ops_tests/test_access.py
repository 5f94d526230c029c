"""Access control that cannot be talked around: the root's policy governs (a --policy file or $MODEL_OPS_POLICY can
only narrow it), a root that loses its policy stops taking writes, identities the backend proves are recorded
beside the claimed actor and decide impersonation and four-eyes, and roles reach models by name pattern and by team
namespace (examples/policies/teams.yaml).

Each test states a way around the rules and checks that it no longer works. Different people are simulated by
replacing ``identity.local_user`` (the OS user of the effective uid), which is what the registry asks the OS.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from model_ops.cli import main
from model_ops.errors import PermissionDeniedError, PolicyError, UsageError
from model_ops.registry import Registry
from model_ops.registry import identity as identity_module
from model_ops.registry.policy import default_policy_text
from model_ops.registry.refs import check_name, parse_ref

REPO = Path(__file__).resolve().parents[1]
TEAMS = REPO / "examples" / "policies" / "teams.yaml"


# ---------------------------------------------------------------------------------------------------- helpers


def edited(replacements: dict[str, str], text: str | None = None) -> str:
    text = default_policy_text() if text is None else text
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def install(root: Path, text: str) -> Path:
    """Make ``text`` the root's own policy."""
    path = root / "registry" / "policy.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def local_file(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def blob(tmp_path: Path, content: str) -> Path:
    path = tmp_path / f"artifact-{hashlib.sha256(content.encode()).hexdigest()[:12]}.bin"
    path.write_text(content)
    return path


def as_user(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Run as OS user ``name`` from here on (what the registry would read from the password database)."""
    monkeypatch.setattr(identity_module, "local_user", lambda: name)


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def sign_flag() -> str:
    """The policy flag that requires signed artifacts, as the shipped default spells it."""
    found = re.search(r"^(require_sign\w*): false$", default_policy_text(), re.M)
    assert found, "the shipped policy has a flag requiring signatures"
    return found.group(1)


RESTRICTED = edited({"actors: {}": "actors: {bob: viewer, dora: data-scientist}"})


# --------------------------------------------------------------------------- the root's policy governs (narrowing)


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_denied_actor_cannot_bring_a_policy_that_grants_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    root = tmp_path / "root"
    install(root, RESTRICTED)
    generous = local_file(tmp_path, default_policy_text())  # bob is a maintainer in this one
    args = ["--root", str(root), "--actor", "bob"]
    if how == "option":
        args += ["--policy", str(generous)]
    else:
        monkeypatch.setenv("MODEL_OPS_POLICY", str(generous))
    code, _, err = run(capsys, *args, "register", "m", str(blob(tmp_path, "x")))
    assert code == 2, err
    assert "actor 'bob' (role viewer) may not register on m" in err
    assert f"the registry's policy ({root / 'registry' / 'policy.yaml'})" in err
    reg = Registry.open(root)
    assert reg.models() == []
    [denial] = reg.audit()
    assert (denial.kind, denial.actor, denial.key) == ("denied", "bob", "register")
    # The audit says which policies were consulted: the root's, and the file the caller brought.
    assert denial.policy == f"root={sha(root / 'registry' / 'policy.yaml')};narrowed={sha(generous)}"


def test_a_policy_option_cannot_drop_the_roots_signature_requirement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flag = sign_flag()
    root = tmp_path / "root"
    install(root, edited({f"{flag}: false": f"{flag}: true"}))
    lax = local_file(tmp_path, default_policy_text())
    code, _, err = run(capsys, "--root", str(root), "--policy", str(lax), "register", "m", str(blob(tmp_path, "x")))
    assert code == 2, err
    assert Registry.open(root).models() == []


def test_a_policy_option_cannot_drop_signature_stages(tmp_path: Path) -> None:
    text = default_policy_text()
    root = tmp_path / "root"
    install(root, text.replace("require_signature: []", "require_signature: [production]"))
    mine = local_file(tmp_path, text.replace("require_signature: []", "require_signature: [staging]"))
    policy = Registry.open(root, policy=mine).policy
    assert policy.require_signature == ["staging", "production"]
    assert Registry.open(root, policy=local_file(tmp_path, text, "lax.yaml")).policy.signature_required("production")


def test_a_policy_option_cannot_lower_gates_add_transitions_or_relax_four_eyes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    install(
        root,
        edited({"    approvals: 0": "    approvals: 1", "archived: [development, staging]": "archived: [development]"}),
    )
    lax = local_file(  # no approvals needed, four-eyes off, one more transition
        tmp_path,
        edited(
            {
                "archived: [development, staging]": "archived: [development, staging, production]",
                "four_eyes: true": "four_eyes: false",
            }
        ),
    )
    as_user(monkeypatch, "alice")
    reg = Registry.open(root, policy=lax)
    assert reg.policy.gates["production"].approvals == 1 and reg.policy.four_eyes == "proven"
    assert reg.policy.allowed_targets("archived") == ["development"]
    reg.register("m", blob(tmp_path, "x"))
    reg.transition("models:/m/1", "archived", reason="parked")
    with pytest.raises(PolicyError, match="cannot move from archived to staging"):
        reg.transition("models:/m/1", "staging", reason="the root does not allow it")
    with pytest.raises(PolicyError, match="cannot move from archived to production"):
        reg.transition("models:/m/1", "production", reason="nor this")
    reg.transition("models:/m/1", "development", reason="back")
    reg.transition("models:/m/1", "staging", reason="r")
    reg.approve("models:/m/1", "production", reason="my own")  # the mover's own approval never counts
    with pytest.raises(PolicyError, match=r"needs 1 approval\(s\) for production"):
        reg.transition("models:/m/1", "production", reason="ship")


def test_a_narrowing_policy_narrows_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "root"
    strict = local_file(
        tmp_path,
        edited(
            {
                "actors: {}": "actors: {carol: viewer}",
                "    approvals: 0\n    metrics: {}": "    approvals: 0\n    metrics: {roc_auc: {min: 0.8}}",
            }
        ),
    )
    reg = Registry.open(root, actor="carol", policy=strict)
    with pytest.raises(PermissionDeniedError, match=r"refused by the narrowing policy .*mine\.yaml"):
        reg.register("m", blob(tmp_path, "x"))
    alice = Registry.open(root, actor="alice", policy=strict)
    alice.register("m", blob(tmp_path, "x"), metrics={"roc_auc": 0.75})
    alice.transition("models:/m/1", "staging", reason="r")
    with pytest.raises(PolicyError, match="metric roc_auc is 0.75"):
        alice.transition("models:/m/1", "production", reason="the local gate is stricter")
    assert Registry.open(root, actor="alice").transition("models:/m/1", "production", reason="root").stage == (
        "production"
    )


def test_bounds_that_no_longer_overlap_pass_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, edited({"    metrics: {}": "    metrics: {roc_auc: {min: 0.7}}"}))
    other = local_file(tmp_path, edited({"    metrics: {}": "    metrics: {roc_auc: {max: 0.6}}"}))
    reg = Registry.open(root, policy=other)
    reg.register("m", blob(tmp_path, "x"), metrics={"roc_auc": 0.65})
    reg.transition("models:/m/1", "staging", reason="r")
    with pytest.raises(PolicyError, match=r"roc_auc .* needs >= 0\.7 and <= 0\.6"):
        reg.transition("models:/m/1", "production", reason="r")


def test_every_event_records_the_policy_that_decided_and_the_identity(tmp_path: Path) -> None:
    root = tmp_path / "root"
    reg = Registry.open(root, actor="pat")
    reg.register("m", blob(tmp_path, "x"))
    shipped = "sha256:" + hashlib.sha256(default_policy_text().encode()).hexdigest()
    [event] = reg.audit()
    assert event.policy == f"default={shipped}"
    assert (event.actor, event.identity) == ("pat", identity_module.local_user())
    path = install(root, edited({"actors: {}": "actors: {someone: viewer}"}))
    Registry.open(root, actor="pat").set_tag("models:/m/1", "k", "v")
    assert Registry.open(root).audit()[-1].policy == f"root={sha(path)}"


# ------------------------------------------------------------------------------- a root that loses its policy


def test_a_root_whose_policy_file_disappears_refuses_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    path = install(root, RESTRICTED)
    kept = path.read_bytes()
    Registry.open(root, actor="alice").register("m", blob(tmp_path, "x"))
    path.unlink()
    # bob was a viewer; without the file the shipped default would make him a maintainer.
    code, _, err = run(capsys, "--root", str(root), "--actor", "bob", "register", "m", str(blob(tmp_path, "y")))
    assert code == 2, err
    assert f"the registry's policy {path} is missing" in err and "restore" in err
    reg = Registry.open(root, actor="bob")
    with pytest.raises(PolicyError, match="is missing"):
        reg.approve("models:/m/1", "production", reason="sneak")
    assert [v.version for v in reg.versions("m")] == [1]  # reads still work
    assert [e.kind for e in reg.audit()] == ["registered"]  # and nothing was written, not even a denial
    path.write_bytes(kept)
    with pytest.raises(PermissionDeniedError):
        Registry.open(root, actor="bob").register("m", blob(tmp_path, "y"))


def test_a_receipt_that_contradicts_the_log_is_not_believed(tmp_path: Path) -> None:
    """The newest event's policy may be read from the commit's receipt, but only when that event hashes to the
    log's tip; an edited receipt does not, so it cannot make the registry refuse writes (or miss a lost policy)."""
    from dataclasses import replace

    from model_ops.registry.receipts import Receipts

    root = tmp_path / "root"
    reg = Registry.open(root, actor="alice")
    reg.register("m", blob(tmp_path, "x"))
    forged = replace(reg.audit()[-1], policy="root=sha256:" + "0" * 64)  # as if a root policy had decided it
    Receipts(reg.location).write(reg._log.version, [forged])
    assert Registry.open(root, actor="alice").register("m", blob(tmp_path, "y")).version == 2


def test_a_changed_root_policy_is_recorded(tmp_path: Path) -> None:
    root = tmp_path / "root"
    reg = Registry.open(root, actor="alice")
    reg.register("m", blob(tmp_path, "x"))  # under the shipped default
    first = sha(install(root, RESTRICTED))
    Registry.open(root, actor="alice").register("m", blob(tmp_path, "y"))
    second = sha(install(root, edited({"four_eyes: true": "four_eyes: claimed"})))
    Registry.open(root, actor="alice").set_tag("models:/m/1", "k", "v")
    Registry.open(root, actor="alice").set_tag("models:/m/1", "k", "w")  # no change this time
    changes = [e for e in Registry.open(root).audit() if e.kind == "policy_changed"]
    shipped = "sha256:" + hashlib.sha256(default_policy_text().encode()).hexdigest()
    assert [(e.from_value, e.to_value) for e in changes] == [
        (f"default={shipped}", f"root={first}"),
        (f"root={first}", f"root={second}"),
    ]
    assert changes[0].data["file"] == str(root / "registry" / "policy.yaml")


# ------------------------------------------------------------------------------------------- proven identities


def test_the_default_actor_is_the_os_user_not_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "mallory")
    monkeypatch.setenv("LOGNAME", "mallory")
    monkeypatch.setenv("USERNAME", "mallory")
    reg = Registry.open(tmp_path / "root")
    assert reg.actor == reg.identity == identity_module.local_user()
    from model_ops.registry.environment import default_actor

    assert default_actor() == identity_module.local_user()


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_a_claimed_name_needs_impersonate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    root = tmp_path / "root"
    install(root, TEAMS.read_text())
    as_user(monkeypatch, "alice")  # a data scientist
    if how == "environment":
        monkeypatch.setenv("MODEL_OPS_ACTOR", "erin")
        code, _, err = run(capsys, "--root", str(root), "register", "prod-model", str(blob(tmp_path, "x")))
    else:
        code, _, err = run(
            capsys, "--root", str(root), "--actor", "erin", "register", "prod-model", str(blob(tmp_path, "x"))
        )
    assert code == 2, err
    assert "'alice' (role data-scientist) may not act as actor 'erin'" in err and "impersonate" in err
    [denial] = Registry.open(root).audit()
    assert (denial.kind, denial.actor, denial.identity) == ("denied", "erin", "alice")
    # Under her own name she gets exactly her own rights.
    monkeypatch.delenv("MODEL_OPS_ACTOR", raising=False)
    assert run(capsys, "--root", str(root), "register", "dev-model", str(blob(tmp_path, "x")))[0] == 0
    assert Registry.open(root).audit()[-1].actor == "alice"


def test_impersonation_is_allowed_to_roles_that_grant_it_and_both_names_are_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    install(root, TEAMS.read_text())
    as_user(monkeypatch, "model-ops-admin")
    mv = Registry.open(root, actor="erin").register("m", blob(tmp_path, "x"))  # with erin's roles
    event = Registry.open(root).audit()[-1]
    assert (mv.created_by, event.actor, event.identity) == ("erin", "erin", "model-ops-admin")


def test_identities_bind_a_proven_identity_to_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    arn = "arn:aws:sts::111122223333:assumed-role/ml-engineer/erin-session"
    install(
        root,
        TEAMS.read_text().replace(
            "    {}\n  roles:", '    "arn:aws:sts::111122223333:assumed-role/ml-engineer/*": erin\n  roles:'
        ),
    )
    as_user(monkeypatch, arn)
    reg = Registry.open(root)
    assert reg.actor == "erin"
    reg.register("m", blob(tmp_path, "x"))
    assert (reg.audit()[-1].actor, reg.audit()[-1].identity) == ("erin", arn)
    with pytest.raises(PermissionDeniedError, match="may not act as actor 'grace'"):
        Registry.open(root, actor="grace").register("m", blob(tmp_path, "y"))


def test_a_narrowing_policy_cannot_bind_an_identity_to_a_stronger_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    install(root, TEAMS.read_text())
    mine = local_file(tmp_path, TEAMS.read_text().replace("    {}\n  roles:", "    alice: erin\n  roles:"))
    as_user(monkeypatch, "alice")
    with pytest.raises(PermissionDeniedError, match="may not act as actor 'erin'"):
        Registry.open(root, actor="erin", policy=mine).register("prod-model", blob(tmp_path, "x"))
    assert Registry.open(root, policy=mine).actor == "alice"  # the root's bindings name the actor


def test_a_team_cannot_grant_impersonation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    install(
        root,
        edited(
            {
                "default_role: maintainer": "default_role: viewer",
                "actors: {}": "actors: {erin: approver}",
                "namespaces: {}": 'namespaces: {fraud: {actors: {frank: owner}, roles: {owner: ["*"]}}}',
            }
        ),
    )
    as_user(monkeypatch, "frank")
    Registry.open(root).register("fraud/scorer", blob(tmp_path, "x"))  # everything in fraud/, as himself
    with pytest.raises(PermissionDeniedError, match="'frank' \\(role viewer\\) may not act as actor 'erin'"):
        Registry.open(root, actor="erin").set_tag("models:/fraud/scorer/1", "k", "v")


def test_four_eyes_counts_people_not_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    install(root, edited({"    approvals: 0": "    approvals: 1"}))
    as_user(monkeypatch, "alice")
    Registry.open(root, actor="alice").register("m", blob(tmp_path, "x"))
    Registry.open(root, actor="alice").transition("models:/m/1", "staging", reason="r")
    Registry.open(root, actor="bob").approve("models:/m/1", "production", reason="me, as bob")
    with pytest.raises(PolicyError, match=r"has 0; not counted: bob \(the same identity as the mover, alice\)"):
        Registry.open(root, actor="alice").transition("models:/m/1", "production", reason="ship")
    as_user(monkeypatch, "carol")
    Registry.open(root).approve("models:/m/1", "production", reason="looked at it")
    as_user(monkeypatch, "alice")
    Registry.open(root, actor="alice").transition("models:/m/1", "production", reason="ship")
    [move] = [e for e in Registry.open(root).audit() if e.kind == "stage_changed" and e.to_value == "production"]
    assert move.data["gates"]["approvals"]["given"] == ["carol"]


def test_four_eyes_claimed_is_names_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented single-user setting: one person with two names passes it (so it is not a control)."""
    root = tmp_path / "root"
    install(root, edited({"    approvals: 0": "    approvals: 1", "four_eyes: true": "four_eyes: claimed"}))
    reg = Registry.open(root, actor="alice")
    reg.register("m", blob(tmp_path, "x"))
    reg.transition("models:/m/1", "staging", reason="r")
    reg.approve("models:/m/1", "production", reason="mine")
    with pytest.raises(PolicyError, match="not counted: alice"):
        reg.transition("models:/m/1", "production", reason="ship")
    Registry.open(root, actor="bob").approve("models:/m/1", "production", reason="same person, other name")
    assert reg.transition("models:/m/1", "production", reason="ship").stage == "production"


# ------------------------------------------------------------------------------- model patterns and team names


def test_team_names_and_references() -> None:
    assert check_name("fraud/scorer") == "fraud/scorer"
    assert parse_ref("models:/fraud/scorer/3") == parse_ref("fraud/scorer/3")
    assert (parse_ref("models:/fraud/scorer/3").name, parse_ref("models:/fraud/scorer/3").version) == (
        "fraud/scorer",
        3,
    )
    assert parse_ref("models:/fraud/scorer/1.2.0").semver == "1.2.0"
    assert parse_ref("models:/fraud/scorer/staging").stage == "staging"
    assert parse_ref("models:/fraud/scorer@champion").alias == "champion"
    assert str(parse_ref("models:/fraud/scorer@champion")) == "models:/fraud/scorer@champion"
    # The last part is always the selector: two parts are a model and a stage, never a team model alone.
    assert (parse_ref("models:/fraud/scorer").name, parse_ref("models:/fraud/scorer").stage) == ("fraud", "scorer")
    for bad in ("a/b/c", "../x", "a/..", "/x", "a//b", "a/", "./a", "a/.b"):
        with pytest.raises(UsageError):
            check_name(bad)


def test_policy_grants_are_checked_when_loaded(tmp_path: Path) -> None:
    bad = edited({"    viewer: []": '    viewer: ["register@"]'})
    with pytest.raises(UsageError, match="is not a grant"):
        Registry.open(tmp_path / "root", policy=local_file(tmp_path, bad))
    bad = edited({"  namespaces: {}": "  namespaces: {fraud: {actors: {frank: nobody}}}"})
    with pytest.raises(UsageError, match="namespaces.fraud.actors.frank names undefined role 'nobody'"):
        Registry.open(tmp_path / "root", policy=local_file(tmp_path, bad))
    bad = edited({"  namespaces: {}": "  namespaces: {'a/b': {}}"})
    with pytest.raises(UsageError, match="a team name is"):
        Registry.open(tmp_path / "root", policy=local_file(tmp_path, bad))


@pytest.mark.slow
def test_the_teams_example_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    install(root, TEAMS.read_text())

    def who(name: str) -> Registry:
        as_user(monkeypatch, name)
        return Registry.open(root)

    # A data scientist writes dev-* models and deploys nothing.
    alice = who("alice")
    alice.register("dev-churn", blob(tmp_path, "a1"))
    alice.set_tag("models:/dev-churn/1", "note", "first try")
    alice.set_alias("dev-churn", "challenger", 1, reason="best so far")
    for attempt in (
        lambda: alice.register("churn", blob(tmp_path, "a2")),
        lambda: alice.register("fraud/dev-x", blob(tmp_path, "a3")),
        lambda: alice.transition("models:/dev-churn/1", "staging", reason="deploy"),
        lambda: alice.set_alias("dev-churn", "canary", 1, reason="deploy"),
        lambda: alice.record("dev-churn", "deployment", version=1, details={"action": "start_canary"}),
    ):
        with pytest.raises(PermissionDeniedError, match="'alice'"):
            attempt()
    # An ML engineer takes a model to staging and production, with another person's approval.
    erin = who("erin")
    erin.register("churn", blob(tmp_path, "e1"))
    erin.transition("models:/churn/1", "staging", reason="evaluated")
    erin.approve("models:/churn/1", "production", reason="my own does not count")
    with pytest.raises(PolicyError, match="needs 1 approval"):
        erin.transition("models:/churn/1", "production", reason="ship")
    with pytest.raises(PermissionDeniedError):
        who("alice").approve("models:/churn/1", "production", reason="not hers to give")
    who("grace").approve("models:/churn/1", "production", reason="reviewed")
    assert who("erin").transition("models:/churn/1", "production", reason="ship").aliases == ("champion",)
    assert who("erin").resolve("models:/churn@champion").version == 1
    # The fraud team owns fraud/... and nothing else; others cannot write there.
    frank = who("frank")
    frank.register("fraud/scorer", blob(tmp_path, "f1"))
    frank.transition("models:/fraud/scorer/1", "staging", reason="ready")
    who("heidi").approve("models:/fraud/scorer/1", "production", reason="reviewed")
    assert who("frank").transition("models:/fraud/scorer/staging", "production", reason="ship").stage == "production"
    assert who("frank").resolve("models:/fraud/scorer@champion").version == 1
    for attempt in (
        lambda: who("frank").register("churn", blob(tmp_path, "f2")),
        lambda: who("frank").register("risk/scorer", blob(tmp_path, "f3")),
        lambda: who("alice").register("fraud/scorer", blob(tmp_path, "a4")),
        lambda: who("mallory").register("dev-x", blob(tmp_path, "m1")),  # not listed: a viewer
    ):
        with pytest.raises(PermissionDeniedError):
            attempt()
    # Policy-wide grants that name no models reach team models too: an ML engineer may tag one.
    assert who("erin").set_tag("models:/fraud/scorer/1", "reviewed-by", "erin").tags == {"reviewed-by": "erin"}
    denials = [e for e in Registry.open(root).audit() if e.kind == "denied"]
    assert {e.identity for e in denials} == {"alice", "frank", "mallory"}
    assert all(e.policy == f"root={sha(root / 'registry' / 'policy.yaml')}" for e in Registry.open(root).audit())
    assert json.loads(json.dumps([e.to_dict() for e in denials]))  # the audit stays serialisable


# ------------------------------------------------------------------------------------------------------ on S3


@pytest.mark.slow
@pytest.mark.s3
def test_on_s3_the_root_policy_governs_and_the_caller_identity_is_recorded(s3_root: str, tmp_path: Path) -> None:
    from model_ops.location import Location, s3_client

    location = Location(s3_root).child("registry")
    # The STS endpoint comes from the root's policy, never the environment: a caller-chosen one is ignored.
    sts = os.environ["AWS_ENDPOINT_URL"]
    policy = RESTRICTED.replace("  actors: {bob", f"  sts_endpoint: {sts}\n  actors: {{bob")
    assert policy != RESTRICTED
    s3_client().put_object(Bucket=location.bucket, Key=location.key("policy.yaml"), Body=policy.encode())
    os.environ["AWS_ENDPOINT_URL_STS"] = "http://127.0.0.1:9"  # a spoofing STS the caller points at
    generous = local_file(tmp_path, default_policy_text())
    with pytest.raises(PermissionDeniedError, match="actor 'bob' \\(role viewer\\) may not register"):
        Registry.open(s3_root, actor="bob", policy=generous).register("m", blob(tmp_path, "x"))
    reg = Registry.open(s3_root, actor="alice")
    reg.register("m", blob(tmp_path, "x"))
    events = Registry.open(s3_root).audit()
    assert [e.kind for e in events] == ["denied", "registered"]
    del os.environ["AWS_ENDPOINT_URL_STS"]
    assert all(e.identity and e.identity.startswith("arn:aws:") for e in events)
    assert events[-1].policy and events[-1].policy.startswith("root=sha256:")


@pytest.mark.s3
def test_on_an_s3_compatible_store_without_a_named_sts_the_accepted_key_is_the_identity(
    s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9")  # never asked
    Registry.open(s3_root, actor="alice").register("m", blob(tmp_path, "x"))
    assert Registry.open(s3_root).audit()[-1].identity == "s3-access-key:testing"


def test_a_long_lived_process_follows_a_revoked_grant_and_never_records_a_change_back(tmp_path: Path) -> None:
    """A process opened before the root's policy took a right away must not go on using it (nor record the old
    policy as a change back) once another writer has written under the new policy."""
    root = tmp_path / "root"
    generous = default_policy_text()
    install(root, generous)
    old_process = Registry.open(root, actor="bob")
    old_process.register("m", blob(tmp_path, "first"))
    install(root, RESTRICTED)  # bob becomes a viewer
    Registry.open(root, actor="alice").register("m", blob(tmp_path, "second"))  # records the change
    with pytest.raises(PermissionDeniedError, match="actor 'bob' \\(role viewer\\)"):
        old_process.register("m", blob(tmp_path, "third"))
    changes = [e for e in Registry.open(root).audit() if e.kind == "policy_changed"]
    assert len(changes) == 1
