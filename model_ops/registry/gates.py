"""The checks a version must pass to enter a stage: the policy's gate, and interface compatibility with production.

Both are pure functions of the folded state and the policy, so ``Registry.transition`` can run them inside its
compare-and-swap loop: on a lost race they are evaluated again against the newer state, so an approval or a new
production version committed in the meantime is part of the verdict.

Four-eyes counts people, not names: with the shipped setting (``four_eyes: true``, i.e. "proven") approvals are
counted by the identity the backend proved (see ``identity.py``), so one person approving under two actor names
counts once, and never for their own move.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from model_ops.bounds import Bound
from model_ops.errors import PolicyError
from model_ops.registry.policy import Policy
from model_ops.registry.semver import outputs_key
from model_ops.registry.state import ModelState, VersionState


def gate_results(
    policy: Policy, actor: str, m: ModelState, vs: VersionState, stage: str, *, identity: str | None = None
) -> dict:
    """What ``stage``'s gate found for ``vs`` (recorded in the stage change's data), or PolicyError naming every
    unmet condition at once. ``actor`` is the claimed name of whoever makes the move, ``identity`` the one the
    backend proved (None: not known, as for events written before identities were recorded).

    The metric check is written out here rather than taken from ``Gate.metric_results``: that helper words its
    failures as the evaluation gates do (``roc_auc = 0.6500, needs >= 0.7``), and the registry's message (``metric
    roc_auc is 0.65, the gate needs >= 0.7``) is what callers and tests of the registry see today.
    """
    gate = policy.gates.get(stage)
    if gate is None:
        return {}
    results: dict[str, Any] = {}
    failures = []
    if gate.approvals:
        counted, ignored = count_approvals(policy, m.approvals.get((vs.version, stage), set()), actor, identity)
        results["approvals"] = {"required": gate.approvals, "given": counted}
        if ignored:
            results["approvals"]["not_counted"] = ignored
        if len(counted) < gate.approvals:
            why = f"; not counted: {'; '.join(ignored)}" if ignored else ""
            failures.append(
                f"needs {gate.approvals} approval(s) for {stage} from someone other than the "
                f"actor, has {len(counted)}{why}"
            )
    metrics = vs.record.get("metrics") or {}
    for metric, bound in gate.metrics.items():
        value = metrics.get(metric)
        ok = _within(bound, value)
        results[f"metric:{metric}"] = {"value": value, "min": bound.min, "max": bound.max, "passed": ok}
        if not ok:
            limits = " and ".join(
                x
                for x in (
                    f">= {bound.min}" if bound.min is not None else "",
                    f"<= {bound.max}" if bound.max is not None else "",
                )
                if x
            )
            failures.append(
                f"metric {metric} is {value if value is not None else 'not recorded'}, the gate needs {limits}"
            )
    if failures:
        raise PolicyError(
            f"{m.name} v{vs.version} cannot enter {stage}: " + "; ".join(failures),
            hint="`model-ops approve` records an approval; metrics come from registration",
        )
    return results


def count_approvals(
    policy: Policy, approvals: Iterable[tuple[str, str | None]], actor: str, identity: str | None
) -> tuple[list[str], list[str]]:
    """Whose approvals count towards a gate, per ``policy.four_eyes``, and why the others do not.

    ``approvals`` holds one ``(claimed actor, proven identity)`` pair per approval. "proven": one per distinct
    identity, the mover's own identity excluded, and approvals with no recorded identity (written before
    identities were) excluded too, since nothing shows they came from another person; the result names the
    identities. "claimed": one per distinct actor name, the mover's name excluded (one person with two names
    passes: a convenience for a single-user setup, not a control). "off": every distinct name counts.
    """
    pairs = sorted(set(approvals), key=lambda p: (p[0], p[1] or ""))
    ignored: list[str] = []
    if policy.four_eyes == "proven":
        counted: set[str] = set()
        for name, who in pairs:
            if who is None:
                ignored.append(f"{name} (approved before identities were recorded)")
            elif identity is not None and who == identity:
                ignored.append(f"{name} (the same identity as the mover, {who})")
            elif identity is None and name == actor:
                ignored.append(f"{name} (the mover)")
            elif who in counted:
                ignored.append(f"{name} (identity {who} already counted)")
            else:
                counted.add(who)
        return sorted(counted), ignored
    names = {name for name, _ in pairs}
    if policy.four_eyes == "claimed" and actor in names:
        names.discard(actor)
        ignored.append(f"{actor} (the mover)")
    return sorted(names), ignored


def _within(bound: Bound, value: Any) -> bool:
    """A recorded metric within ``bound`` (inclusive); a missing metric is not."""
    return value is not None and (bound.min is None or value >= bound.min) and (bound.max is None or value <= bound.max)


def breaking_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    """How a version with signature ``new`` breaks callers of one with signature ``old``: an input column removed
    or retyped, another task, other classes (or another order of them: it is the column order of predict_proba).
    Added columns are not breaking. Nothing is breaking when either side records no signature to compare."""
    if not old or not new:
        return []
    out = []
    old_in, new_in = old.get("inputs"), new.get("inputs")
    if isinstance(old_in, list) and isinstance(new_in, list):
        before = {str(i["name"]): i.get("type", i.get("dtype")) for i in old_in if isinstance(i, Mapping)}
        after = {str(i["name"]): i.get("type", i.get("dtype")) for i in new_in if isinstance(i, Mapping)}
        removed = sorted(set(before) - set(after))
        if removed:
            out.append("removes input column(s) " + ", ".join(removed))
        retyped = [
            f"{n} ({before[n]} -> {after[n]})"
            for n in sorted(set(before) & set(after))
            if before[n] is not None and after[n] is not None and str(before[n]) != str(after[n])
        ]
        if retyped:
            out.append("retypes input column(s) " + ", ".join(retyped))
    old_out, new_out = old.get("outputs") or {}, new.get("outputs") or {}
    if old_out.get("task") and new_out.get("task") and old_out["task"] != new_out["task"]:
        out.append(f"changes the task from {old_out['task']} to {new_out['task']}")
    elif (
        "classes" in old_out
        and "classes" in new_out
        and outputs_key({"classes": old_out["classes"]}) != outputs_key({"classes": new_out["classes"]})
    ):
        out.append(f"changes the classes from {old_out['classes']} to {new_out['classes']}")
    return out
