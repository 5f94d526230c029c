"""Retention per stage, from the registry policy: each stage's expiry, what is never archived (what serves, what an
alias points at, the lineage those need), the old "parent of retained vN" bug, the dry run, and stage names taken
from the policy. A real registry throughout; times are controlled by passing ``now=`` (every registry event happens
at the real time of the test, the plan looks at the registry from days later)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from model_ops.bounds import Bound
from model_ops.errors import UsageError
from model_ops.ops import deployment as dep
from model_ops.ops import retention
from model_ops.registry import Registry
from model_ops.registry.policy import Gate, default_policy_text
from model_ops.specs.schema import ModelSpec
from model_ops_tests.helpers import tiny_model

SPEC = ModelSpec.model_validate(
    {
        "name": "churn",
        "description": "retention tests",
        "owner": "team:ops",
        "task": "binary_classification",
        "source": {
            "kind": "delta",
            "uri": "/nonexistent/churn",
            "time_column": "event_time",
            "key_column": "customer_id",
        },
        "partitions": {"cadence": "monthly", "start": "2024-01-01"},
        "features": [{"name": "tenure", "type": "float"}],
        "target": {"column": "churned"},
        "estimator": {"class": "sklearn.linear_model.LogisticRegression"},
    }
)


def with_staging_days(days: float) -> ModelSpec:
    return SPEC.model_copy(update={"monitoring": SPEC.monitoring.model_copy(update={"staging_retention_days": days})})


def later(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def register(reg: Registry, tmp_path: Path, count: int, stage: str | None = None) -> list[int]:
    numbers = []
    for _ in range(count):
        n = len(list(tmp_path.glob("artifact-*"))) + 1
        path = tmp_path / f"artifact-{n}.bin"
        path.write_text(f"model bytes {n}")
        mv = reg.register(SPEC.name, path)
        if stage:
            reg.transition(mv.ref, stage, reason="test")
        numbers.append(mv.version)
    return numbers


def policy_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def governed_by(root: Path, text: str) -> Path:
    """``root`` with ``text`` as its own policy: stages, production rules and retention are the root's policy's
    alone (a --policy file can only narrow access, transitions and gates)."""
    (root / "registry").mkdir(parents=True, exist_ok=True)
    (root / "registry" / "policy.yaml").write_text(text)
    return root


def edit(text: str, *pairs: tuple[str, str]) -> str:
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new)
    return text


# ------------------------------------------------------------------------------------------- each stage expires


def test_retention_on_a_model_never_registered_is_empty(reg) -> None:  # type: ignore[no-untyped-def]
    plan = retention.plan(reg, SPEC)
    assert plan.archive == {} and plan.kept == {} and plan.entries == ()
    assert "no versions to decide on" in retention.render(plan)


def test_development_and_staging_expire_after_their_policy_periods(reg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (dev,) = register(reg, tmp_path, 1)  # stays in development (30 days)
    (stg,) = register(reg, tmp_path, 1, "staging")  # staging (60 days), its parent is the development one
    plan = retention.plan(reg, SPEC, now=later(29))
    assert plan.archive == {}
    assert plan.kept[dev].startswith("within retention: 29.0 days in development (limit 30)")
    assert plan.periods == {"development": 30, "staging": 60, "production": 180}

    plan = retention.plan(reg, SPEC, now=later(31))
    assert set(plan.archive) == {dev} and plan.archive[dev].startswith("retention: 31.0 days in development (> 30)")
    assert plan.kept[stg].startswith("within retention: 31.0 days in staging (limit 60)")

    plan = retention.plan(reg, SPEC.name, now=later(61))  # by name: the policy's periods alone
    assert set(plan.archive) == {dev, stg}
    assert retention.apply(reg, plan) == [dev, stg]
    assert {v.stage for v in reg.versions(SPEC.name)} == {"archived"}
    assert retention.plan(reg, SPEC, now=later(400)).already_archived == 2


def test_the_spec_overrides_the_staging_period(reg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (stg,) = register(reg, tmp_path, 1, "staging")
    plan = retention.plan(reg, with_staging_days(5), now=later(6))
    assert plan.periods["staging"] == 5 and plan.overridden == "staging"
    assert set(plan.archive) == {stg} and "(> 5)" in plan.archive[stg]
    assert "staging 5 d (this model's override)" in retention.render(plan)
    assert retention.plan(reg, SPEC, now=later(6)).archive == {}  # the policy's 60 days


def test_a_production_version_that_stopped_serving_expires_after_the_production_period(tmp_path) -> None:
    text = edit(default_policy_text(), ("replaced_goes_to: archived", "replaced_goes_to: staging"))
    reg = Registry.open(governed_by(tmp_path / "root", text), actor="tester")
    old, new = register(reg, tmp_path, 2, "staging")
    reg.transition(f"models:/churn/{old}", "production", reason="first")
    reg.transition(f"models:/churn/{new}", "production", reason="better")  # old is demoted to staging
    assert reg.get("churn", old).stage == "staging"
    # In staging for 61 days, past staging's 60: but it served, so the production period (180) is its rule.
    plan = retention.plan(reg, SPEC, now=later(61))
    assert plan.archive == {}
    assert plan.kept[old].startswith("within retention: stopped serving in production 61.0 days ago (limit 180)")
    assert plan.kept[new] == "serves as production"
    # Its successor serves, but the lineage a served version needs stops before an ancestor that served.
    plan = retention.plan(reg, SPEC, now=later(181))
    assert set(plan.archive) == {old}
    assert plan.archive[old].startswith("retention: stopped serving in production 181.0 days ago (> 180)")
    assert retention.apply(reg, plan) == [old]
    # Archiving loses nothing: a rollback can still bring it back.
    assert reg.rollback("churn", reason="the new one is bad").version == old


def test_an_expired_version_the_transitions_cannot_archive_is_kept_and_reported(tmp_path) -> None:
    text = edit(
        default_policy_text(),
        ("replaced_goes_to: archived", "replaced_goes_to: staging"),
        ("staging: [production, development, archived]", "staging: [production, development]"),
        ("    staging: 60\n", ""),
    )
    reg = Registry.open(governed_by(tmp_path / "root", text), actor="tester")
    old, new = register(reg, tmp_path, 2, "staging")
    reg.transition(f"models:/churn/{old}", "production", reason="first")
    reg.transition(f"models:/churn/{new}", "production", reason="better")
    plan = retention.plan(reg, SPEC, now=later(200))
    assert plan.archive == {} and set(plan.held) == {old}
    assert "do not allow staging -> archived" in plan.kept[old]
    assert "keep*" in retention.render(plan)


# -------------------------------------------------------------------------------- never what serves or is needed


@pytest.mark.slow
def test_never_archives_what_serves_an_alias_or_their_lineage(reg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = register(reg, tmp_path, 8, "staging")
    dep.apply(reg, SPEC, "deploy", version=v[0])  # v1 production
    dep.apply(reg, SPEC, "deploy", version=v[1])  # v2 canary
    dep.apply(reg, SPEC, "shadow_on", version=v[2])  # v3 shadow
    reg.set_alias("churn", "challenger", v[3], reason="kept for comparison")  # v4 aliased
    reg.set_alias("churn", "candidate", v[5], reason="next to try")  # v6 aliased: v5 is its parent
    plan = retention.plan(reg, SPEC, now=later(61))  # every staging version is stale by now
    assert plan.kept == {
        1: "serves as production",
        2: "serves as canary",
        3: "serves as shadow",
        4: "alias challenger",
        5: "lineage of v6 (alias candidate)",
        6: "alias candidate",
    }
    assert set(plan.archive) == {7, 8}  # v8 does not pin its parent v7
    assert set(plan.held) == {2, 3, 4, 5, 6}  # expired, kept for the reason given
    assert retention.plan(reg, SPEC).archive == {}  # nothing is stale today
    reg.remove_alias("churn", "candidate", reason="done")
    assert set(retention.plan(reg, SPEC, now=later(61)).archive) == {5, 6, 7, 8}


def test_lineage_walks_the_whole_parent_chain_of_a_pin_back_to_production(reg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = register(reg, tmp_path, 5, "staging")
    dep.apply(reg, SPEC, "deploy", version=v[0])  # v1 production
    reg.set_alias("churn", "challenger", v[4], reason="r")  # v5: parents v4, v3, v2, then v1 (served)
    plan = retention.plan(reg, SPEC, now=later(61))
    assert plan.archive == {}
    assert {n: plan.kept[n] for n in (2, 3, 4)} == {n: "lineage of v5 (alias challenger)" for n in (2, 3, 4)}


def test_a_young_version_no_longer_keeps_its_stale_parent_forever(reg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The old rule kept every version's parent, so any newer version kept a stale one ("parent of retained v2")."""
    spec = with_staging_days(10)
    (stale,) = register(reg, tmp_path, 1, "staging")
    (young,) = register(reg, tmp_path, 1)  # development, its parent is the stale one
    plan = retention.plan(reg, spec, now=later(20))
    assert set(plan.archive) == {stale}, plan.kept
    assert plan.kept[young].startswith("within retention: 20.0 days in development")
    # Once the young one is chosen (an alias), its lineage is needed and the parent is kept again.
    reg.set_alias("churn", "challenger", young, reason="try it")
    plan = retention.plan(reg, spec, now=later(20))
    assert plan.archive == {} and plan.kept[stale] == f"lineage of v{young} (alias challenger)"


# -------------------------------------------------------------------------------------------- dry run and apply


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_the_dry_run_writes_nothing_and_apply_records_why(reg, root, tmp_path) -> None:  # type: ignore[no-untyped-def]
    register(reg, tmp_path, 3)
    before, events = snapshot(root), len(reg.audit("churn"))
    plan = retention.plan(reg, SPEC, now=later(31))
    report = retention.render(plan)
    doc = json.loads(json.dumps(plan.to_dict()))  # what `model-ops retention --json` prints
    assert doc["archive"] == [1, 2, 3] and doc["entries"][0]["action"] == "archive"
    assert doc["periods"] == {"development": 30, "staging": 60, "production": 180}
    assert snapshot(root) == before and len(reg.audit("churn")) == events
    assert report.splitlines()[0].endswith("(dry run): 3 to archive, 0 kept, 0 already archived")
    assert "archive v1" in " ".join(report.split())
    done = retention.apply(reg, plan, run_id="run-1")
    assert done == [1, 2, 3]
    archived = [e for e in reg.audit("churn") if e.kind == "stage_changed" and e.to_value == "archived"]
    assert [e.version for e in archived] == [1, 2, 3] and {e.run_id for e in archived} == {"run-1"}
    assert archived[0].reason.startswith("retention: 31.0 days in development (> 30)")
    assert "archived v1, v2, v3" in retention.render(plan, done)


def test_apply_does_not_archive_what_was_referenced_after_the_dry_run(reg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    register(reg, tmp_path, 2)
    plan = retention.plan(reg, SPEC, now=later(31))
    assert set(plan.archive) == {1, 2}
    reg.set_alias("churn", "challenger", 1, reason="someone wants it after all")
    done = retention.apply(reg, plan)
    assert done == [2] and reg.get("churn", 1).stage == "development"
    assert "not archived after all (referenced since the dry run): v1" in retention.render(plan, done)


# ------------------------------------------------------------------------------------ stage names from the policy

CUSTOM_POLICY = """
stages: [draft, review, live, retired]
initial_stage: draft
transitions:
  draft: [review, retired]
  review: [live, draft, retired]
  live: [review, retired]
  retired: [draft, review]
production: {stage: live, alias: champion, replaced_goes_to: retired, rolled_back_goes_to: retired}
access: {default_role: maintainer, roles: {maintainer: ["*"]}}
retention:
  archive_stage: retired
  staging_stage: review
  days: {draft: 5, review: 10, live: 20}
"""


def test_stage_names_come_from_the_policy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    reg = Registry.open(governed_by(tmp_path / "root", CUSTOM_POLICY), actor="tester")
    draft, review = register(reg, tmp_path, 2)
    reg.transition(f"models:/churn/{review}", "review", reason="r")
    plan = retention.plan(reg, with_staging_days(3), now=later(4))
    assert plan.periods == {"draft": 5, "review": 3, "live": 20} and plan.archive_stage == "retired"
    assert set(plan.archive) == {review} and plan.kept[draft].startswith("within retention: 4.0 days in draft")
    assert retention.apply(reg, plan) == [review] and reg.get("churn", review).stage == "retired"


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ((("    staging: 60\n", "    staging: 60\n    qa: 3\n"),), "retention.days.qa is not one of stages"),
        ((("    staging: 60\n", "    staging: 0\n"),), "positive numbers of days"),
        ((("archive_stage: archived", "archive_stage: trash"),), "retention.archive_stage 'trash'"),
        ((("staging_stage: staging", "staging_stage: qa"),), "retention.staging_stage 'qa'"),
        (
            (("development: [staging, archived]", "development: [staging]"),),
            "the transitions do not allow development -> archived",
        ),
        ((("    staging: 60\n", "    staging: 60\n    archived: 9\n"),), "do not expire again"),
    ],
)
def test_a_retention_section_that_does_not_hold_together_fails_to_load(tmp_path, pairs, message) -> None:  # type: ignore[no-untyped-def]
    path = policy_file(tmp_path, edit(default_policy_text(), *pairs))
    with pytest.raises(UsageError, match=message):
        Registry.open(tmp_path / "root", policy=path)


def test_a_policy_without_a_retention_section_gets_the_defaults_it_can_carry_out(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = default_policy_text()
    text = text[: text.index("retention:")] + text[text.index("# Approvals") :]
    reg = Registry.open(governed_by(tmp_path / "root", text))
    assert reg.policy.retention.days == {"development": 30, "staging": 60, "production": 180}
    custom = CUSTOM_POLICY[: CUSTOM_POLICY.index("retention:")]
    reg = Registry.open(governed_by(tmp_path / "root2", custom))  # no stage named archived
    assert reg.policy.retention.days == {} and reg.policy.retention.staging_stage is None
    no_dev_archive = edit(text, ("development: [staging, archived]", "development: [staging]"))
    reg = Registry.open(governed_by(tmp_path / "root3", no_dev_archive))
    assert reg.policy.retention.days == {"staging": 60, "production": 180}


# ------------------------------------------------------------------------------------------ gates: one Bound


def test_policy_gates_check_metrics_with_the_shared_bound() -> None:
    gate = Gate(metrics={"roc_auc": Bound(min=0.7), "log_loss": Bound(max=0.5)})
    results, failures = gate.metric_results({"roc_auc": 0.65, "log_loss": 0.4})
    assert failures == ["roc_auc = 0.6500, needs >= 0.7"]
    assert results["metric:roc_auc"] == {"value": 0.65, "min": 0.7, "max": None, "passed": False}
    assert results["metric:log_loss"]["passed"] is True
    assert gate.metric_results({"log_loss": float("nan")})[1] == [
        "roc_auc is not available, needs >= 0.7",
        "log_loss is not available, needs <= 0.5",
    ]


def test_the_retention_command_is_a_dry_run_unless_applied(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model_ops.cli import main

    reg = Registry.open(root, actor="tester")
    for seed in range(2):
        reg.register_model("m", tiny_model(seed))
    later = "2030-01-01T00:00:00Z"
    assert main(["--root", str(root), "retention", "--now", later]) == 0
    assert "2 to archive" in capsys.readouterr().out
    assert [v.stage for v in Registry.open(root).versions("m")] == ["development", "development"]
    assert main(["--root", str(root), "retention", "--now", later, "--apply", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["applied"] == [1, 2]
    assert [v.stage for v in Registry.open(root).versions("m")] == ["archived", "archived"]
    assert main(["--root", str(root), "retention", "nosuch"]) == 1
    assert main(["--root", str(root), "retention", "--now", "soon"]) == 2
