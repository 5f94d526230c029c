"""The deployment manifest: which versions serve a model's traffic, and the actions that change it.

Who serves production is the registry's production stage, always (so the CLI, a rollback sensor and this module
can never disagree about it). The canary (version + traffic weight) and the shadow live in the newest
``deployment`` record of the registry's audit log. Every action that changes what serves appends such a record,
so the deployment history is the audit log, and "what served at 14:00" is answered by the records before 14:00.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from model_ops.errors import NotFoundError, PolicyError, UsageError
from model_ops.registry import Registry, attest
from model_ops.specs.schema import Deployment
from model_ops.vocab import DeployAction, RecordKind

ACTIONS = tuple(a.value for a in DeployAction)
CANARY_ALIAS = "canary"


class Deployable(Protocol):
    """What a deployment action needs of a model's declaration: its name and its deployment settings (a
    :class:`~model_ops.specs.schema.ModelSpec`, or a :class:`Target` for a model declared nowhere)."""

    @property
    def name(self) -> str: ...

    @property
    def deployment(self) -> Deployment: ...


@dataclass(frozen=True)
class Target:
    """A model deployed without a declaration (an LLM application): the shipped deployment settings."""

    name: str
    deployment: Deployment = field(default_factory=Deployment)


@dataclass(frozen=True)
class Manifest:
    model: str
    production: int | None
    canary: int | None = None
    canary_weight: float = 0.0
    shadow: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def serving(self) -> str:
        """``production:canary`` (``-`` for none): what a decision was taken on, so a late run can tell."""
        return f"{self.production or '-'}:{self.canary or '-'}"

    def describe(self) -> str:
        parts = [f"production v{self.production}" if self.production else "nothing in production"]
        if self.canary:
            parts.append(f"canary v{self.canary} at {self.canary_weight:.0%}")
        if self.shadow:
            parts.append(f"shadow v{self.shadow}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Change:
    action: str
    before: Manifest
    after: Manifest
    message: str
    changed: bool

    @property
    def version(self) -> int | None:
        """The version the change was about: the canary started, advanced or aborted, the version put in (or
        back in) production, the shadow turned on or off; None when nothing changed."""
        b, a = self.before, self.after
        if a.production != b.production:
            return a.production if a.production is not None else b.production
        if a.canary != b.canary:
            return a.canary if a.canary is not None else b.canary
        if a.canary_weight != b.canary_weight:
            return a.canary
        if a.shadow != b.shadow:
            return a.shadow if a.shadow is not None else b.shadow
        return None


def _production(reg: Registry, name: str) -> int | None:
    try:
        return reg.resolve(f"models:/{name}/{reg.policy.production.stage}").version
    except NotFoundError:
        return None


def current(reg: Registry, name: str, events: list[Any] | None = None) -> Manifest:
    """The manifest in force now (from ``events``, the model's audit log, when the caller already read it)."""
    prod = _production(reg, name)
    canary, weight, shadow = None, 0.0, None
    if events is None:
        try:
            events = reg.audit(name)
        except NotFoundError:
            events = []
    for event in reversed(events):
        if event.kind == RecordKind.DEPLOYMENT:
            m = event.data.get("manifest") or {}
            canary, weight, shadow = m.get("canary"), float(m.get("canary_weight") or 0.0), m.get("shadow")
            break
    if canary is not None and canary == prod:
        canary, weight = None, 0.0
    if shadow is not None and shadow == prod:
        shadow = None
    return Manifest(name, prod, canary, weight if canary else 0.0, shadow)


def staging_stage(reg: Registry) -> str:
    """The stage a candidate waits in before deployment: the policy's ``retention.staging_stage`` (``staging``, the
    shipped name, when the policy names none)."""
    return reg.policy.retention.staging_stage or "staging"


def _newest_in(reg: Registry, name: str, stage: str, exclude: set[int | None]) -> int:
    in_stage = [v.version for v in reg.versions(name) if v.stage == stage and v.version not in exclude]
    if not in_stage:
        raise PolicyError(
            f"{name} has no version in {stage} to deploy",
            hint=f"versions reach {stage} when their evaluation passes every gate "
            f"(materialize the evaluation asset), or with `model-ops transition REF {stage}`",
        )
    return in_stage[-1]


@dataclass(frozen=True)
class _Request:
    """One deployment action being carried out, on the manifest in force when it started."""

    reg: Registry
    spec: Deployable
    action: DeployAction
    version: int | None
    before: Manifest
    why: str
    run_id: str | None

    @property
    def name(self) -> str:
        return self.spec.name

    def unchanged(self, message: str) -> Change:
        return Change(self.action.value, self.before, self.before, message, False)


# What an action did: the manifest after it, the version it acted on, and the message; or a Change when it
# changed nothing (or handed over to another action, which recorded itself).
_Outcome = tuple[Manifest, int | None, str] | Change


def _deploy(r: _Request) -> _Outcome:
    reg, name, before, steps = r.reg, r.name, r.before, r.spec.deployment.canary_steps
    staging = staging_stage(reg)
    target = r.version or _newest_in(reg, name, staging, {before.production})
    if target in (before.production, before.canary):
        role = "production" if target == before.production else "the canary"
        return r.unchanged(f"v{target} already serves as {role}; nothing changed")
    _require_deployable(reg, name, target)  # before anything moves, so a refusal leaves nothing half-done
    if before.production is None:
        reg.transition(f"models:/{name}/{target}", reg.policy.production.stage, reason=r.why, run_id=r.run_id)
        return (
            replace(before, production=target),
            target,
            f"v{target} deployed straight to production (nothing was serving)",
        )
    _require_stage(reg, name, target, staging)
    _require_same_variables(reg, name, before.production, target)
    reg.set_alias(name, CANARY_ALIAS, target, reason=r.why, run_id=r.run_id)
    message = f"v{target} started as canary at {steps[0]:.0%} beside production v{before.production}"
    if before.canary:
        message += f" (supersedes canary v{before.canary})"
    return replace(before, canary=target, canary_weight=steps[0]), target, message


def _advance(r: _Request) -> _Outcome:
    before = r.before
    if before.canary is None:
        raise PolicyError(f"{r.name} has no canary to advance", hint="start one with action deploy")
    later = [s for s in r.spec.deployment.canary_steps if s > before.canary_weight]
    if not later:
        return apply(
            r.reg, r.spec, DeployAction.PROMOTE, reason=r.why + " (advanced past the last canary step)", run_id=r.run_id
        )
    return (
        replace(before, canary_weight=later[0]),
        before.canary,
        f"canary v{before.canary} advanced from {before.canary_weight:.0%} to {later[0]:.0%}",
    )


def _promote(r: _Request) -> _Outcome:
    reg, name, before = r.reg, r.name, r.before
    target = r.version or before.canary
    if target is None:
        raise PolicyError(f"{name} has no canary to promote", hint="start one with action deploy, or name a version")
    if target == before.production:
        return r.unchanged(f"v{target} is already in production; nothing changed")
    _require_deployable(reg, name, target)  # the canary was checked when it started; what it uses may have moved
    reg.transition(f"models:/{name}/{target}", reg.policy.production.stage, reason=r.why, run_id=r.run_id)
    _drop_canary_alias(reg, name, r.why, r.run_id)
    after = replace(
        before,
        production=target,
        canary=None,
        canary_weight=0.0,
        shadow=None if before.shadow == target else before.shadow,
    )
    was = f"was v{before.production}" if before.production is not None else "nothing was in production"
    return after, target, f"v{target} promoted to production ({was})"


def _rollback(r: _Request) -> _Outcome:
    """``rollback`` aborts a running canary (unless it names another version); otherwise, and always for
    ``rollback_production``, production goes back to the previous (or the named) version."""
    reg, name, before, why = r.reg, r.name, r.before, r.why
    if r.action is DeployAction.ROLLBACK and before.canary is not None and r.version in (None, before.canary):
        reg.transition(
            f"models:/{name}/{before.canary}",
            reg.policy.production.rolled_back_goes_to,
            reason=f"canary rolled back: {why}",
            run_id=r.run_id,
        )
        _drop_canary_alias(reg, name, why, r.run_id)
        return (
            replace(before, canary=None, canary_weight=0.0),
            before.canary,
            f"canary v{before.canary} rolled back; "
            + (
                f"production v{before.production} serves all traffic"
                if before.production is not None
                else "nothing is in production"
            ),
        )
    target = r.version or reg.rollback_target(name)
    if target is not None:
        _require_deployable(reg, name, target)
    mv = reg.rollback(name, to=r.version, reason=why, run_id=r.run_id)
    after = replace(
        before,
        production=mv.version,
        canary=None if before.canary == mv.version else before.canary,
        canary_weight=0.0 if before.canary == mv.version else before.canary_weight,
    )
    return after, mv.version, f"production rolled back from v{before.production or '-'} to v{mv.version}"


def _shadow_on(r: _Request) -> _Outcome:
    before = r.before
    target = r.version or _newest_in(r.reg, r.name, staging_stage(r.reg), {before.production})
    if target == before.production:
        raise PolicyError(f"v{target} is in production; a shadow must be another version")
    if target == before.shadow:
        return r.unchanged(f"v{target} already runs in shadow; nothing changed")
    _require_deployable(r.reg, r.name, target)  # a shadow is loaded and run on live traffic
    return replace(before, shadow=target), target, f"v{target} now scores in shadow (never served)"


def _shadow_off(r: _Request) -> _Outcome:
    before = r.before
    if before.shadow is None:
        return r.unchanged("no shadow was running; nothing changed")
    return replace(before, shadow=None), before.shadow, f"shadow v{before.shadow} stopped"


_HANDLERS: dict[DeployAction, Callable[[_Request], _Outcome]] = {
    DeployAction.DEPLOY: _deploy,
    DeployAction.ADVANCE: _advance,
    DeployAction.PROMOTE: _promote,
    DeployAction.ROLLBACK: _rollback,
    DeployAction.ROLLBACK_PRODUCTION: _rollback,
    DeployAction.SHADOW_ON: _shadow_on,
    DeployAction.SHADOW_OFF: _shadow_off,
}


def apply(
    reg: Registry,
    spec: Deployable,
    action: str,
    *,
    version: int | None = None,
    reason: str | None = None,
    run_id: str | None = None,
    expect: str | None = None,
) -> Change:
    """Carry out one deployment action (a ``DeployAction`` or its string) and record it; a request that changes
    nothing records nothing.

    ``expect`` (``Manifest.serving`` of the state the request was decided on) makes a late request harmless: when
    production or the canary changed since, nothing is done. Sensors always set it.
    """
    if action not in ACTIONS:
        raise UsageError(f"unknown deployment action {action!r}", hint="actions: " + ", ".join(ACTIONS))
    act = DeployAction(action)
    name = spec.name
    before = current(reg, name)
    if expect is not None and expect != before.serving:
        return Change(
            act.value,
            before,
            before,
            f"{act} was decided when production:canary was {expect}, but it "
            f"is {before.serving} now ({before.describe()}); nothing changed",
            False,
        )
    why = (reason or "").strip() or f"{act} requested" + (f" by run {run_id}" if run_id else "")

    if version is not None:
        reg.get(name, version)  # NotFoundError naming the model's versions

    outcome = _HANDLERS[act](_Request(reg, spec, act, version, before, why, run_id))
    if isinstance(outcome, Change):
        return outcome
    after, acted, message = outcome
    reg.record(
        name,
        RecordKind.DEPLOYMENT,
        version=acted,
        reason=why,
        run_id=run_id,
        details={"action": act.value, "message": message, "manifest": after.to_dict(), "previous": before.to_dict()},
    )
    return Change(act.value, before, after, message, True)


def _require_deployable(reg: Registry, name: str, version: int) -> None:
    """The policy's signature requirement for production traffic; for an LLM application, also that its parts
    resolve and fit each other now (an adapter on a base of another architecture is refused here, naming both)."""
    attest.require_deployable(reg, name, version)
    mv = reg.get(name, version)
    from model_ops.llm.layout import APPLICATION

    if mv.flavor == APPLICATION:
        from model_ops.loading import answering

        answering(reg, mv)


def _require_same_variables(reg: Registry, name: str, production: int, target: int) -> None:
    """A canary answers some of the requests production answers, so an LLM application's canary must take the
    variables production's prompt takes: otherwise the callers routed to one of them fail."""

    def variables(version: int) -> set[str] | None:
        prompt = (reg.get(name, version).lineage.get("application") or {}).get("prompt") or {}
        found = prompt.get("variables")
        return None if found is None else set(found)

    now, then = variables(production), variables(target)
    if now is None or then is None or now == then:
        return
    raise PolicyError(
        f"{name} v{target} renders its prompt with {', '.join(sorted(then)) or 'no variables'}, and production "
        f"v{production} with {', '.join(sorted(now)) or 'no variables'}: a canary would fail the callers routed to it",
        hint=f"callers must send the new variables first: promote v{target} with `model-ops deploy {name} promote "
        f"--version {target}` when they do, or serve it as another application",
    )


def _require_stage(reg: Registry, name: str, version: int, stage: str) -> None:
    mv = reg.get(name, version)
    if mv.stage != stage:
        raise PolicyError(
            f"{name} v{version} is in {mv.stage}; only {stage} versions can start a canary",
            hint=f"move it with `model-ops transition models:/{name}/{version} {stage}`",
        )


def _drop_canary_alias(reg: Registry, name: str, why: str, run_id: str | None) -> None:
    try:
        reg.remove_alias(name, CANARY_ALIAS, reason=why, run_id=run_id)
    except NotFoundError:
        pass


def previous_production(reg: Registry, name: str) -> int | None:
    """The version a production rollback would restore (None when there is none)."""
    return reg.rollback_target(name)


def history(reg: Registry, name: str) -> list[dict[str, Any]]:
    """Every deployment change, oldest first: when, who, what, why, and the manifest after it."""
    return [
        {
            "ts": e.ts.isoformat(),
            "actor": e.actor,
            "version": e.version,
            "reason": e.reason,
            "run_id": e.run_id,
            **e.data,
        }
        for e in reg.audit(name)
        if e.kind == RecordKind.DEPLOYMENT
    ]
