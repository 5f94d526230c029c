"""Retention: archive the versions nobody is going to use, per stage, from the registry policy, and never anything
that serves or that something serving needs.

The rule, decided for every version of a model that is not in the archive stage yet:

1. **Pinned, never archived**: what serves (the production version, the canary, the shadow: the deployment
   manifest of :func:`model_ops.ops.deployment.current`) and every version an alias points at (``champion``,
   ``challenger``, ``canary``, …; the derived ``latest`` is not an alias anyone set and pins nothing).
2. **Lineage of a pin, never archived**: a pinned version's parent chain back to, not including, the nearest
   ancestor that has served in production, i.e. the versions the pinned one grew from since the model's last
   production version. That production ancestor is not kept by the lineage: it has its own rule (3, the production
   period, the window in which going back to it is plausible), and its own lineage was protected while it served.
   Without that stop every version older than the current production would be pinned forever, because a version's
   default parent is the version registered before it, and the production period could never apply.
3. **Expiry**: otherwise a version expires when it has been on its clock longer than the period of its stage in the
   policy (``retention.days``; defaults development 30 days, staging 60): the clock starts when it entered its
   current stage (registration for the initial stage). A version that has served in production and no longer does
   is judged by the production stage's period (default 180 days), counted from when it stopped serving, whatever
   stage it was moved to. A model's ``monitoring.staging_retention_days`` overrides the period of the policy's
   ``retention.staging_stage``. A stage without a period never expires. Expired versions move to
   ``retention.archive_stage``; one whose stage the transitions do not allow to be archived is kept and reported.
4. **Only pins keep ancestors.** A version that is merely within its period keeps itself, not its parent. If it
   kept its parent, every retrain (whose parent is the version before it) would renew the protection of the whole
   chain, and a stale version would be kept forever as soon as any newer version existed (the "parent of retained
   v3" bug). Its window protects it alone: nobody has chosen it yet, so there is no served lineage to protect. If
   it is deployed or aliased later, its chain is pinned from then on; ancestors archived in the meantime stay
   archived, which loses nothing: archiving is an audited stage change, the records, lineage and artifacts stay,
   and ``archived -> staging`` brings a version back.

:func:`plan` is the dry run (what would be archived and why, what is kept and why; it writes nothing),
:func:`render` prints it, :func:`apply` archives. ``apply`` re-plans at the dry run's ``now`` first and archives only
versions both plans archive, so a version aliased or deployed after the report was read is not archived.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from model_ops.ops import deployment as dep
from model_ops.registry import Registry
from model_ops.registry import events as ev
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import Arm

_DAY = 86400.0


@dataclass(frozen=True)
class Entry:
    """The decision on one version: archive it or keep it, and why."""

    version: int
    stage: str
    archive: bool
    reason: str
    expired: bool = False  # its period has run out (it may still be kept: pinned, lineage, transitions)
    age_days: float | None = None  # on the clock that applies: days in its stage, or since it stopped serving
    limit_days: float | None = None  # the period that applies (None: its stage never expires)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "stage": self.stage,
            "action": "archive" if self.archive else "keep",
            "reason": self.reason,
            "expired": self.expired,
            "age_days": None if self.age_days is None else round(self.age_days, 3),
            "limit_days": self.limit_days,
        }


@dataclass(frozen=True)
class RetentionPlan:
    model: str
    now: datetime
    archive_stage: str
    production_stage: str
    periods: dict[str, float]  # stage -> days in force for this model (policy, with the model's override)
    overridden: str | None = None  # the stage whose period this model's spec overrides
    staging_override: float | None = None
    entries: tuple[Entry, ...] = ()
    already_archived: int = 0

    @property
    def archive(self) -> dict[int, str]:
        """Version -> why it goes."""
        return {e.version: e.reason for e in self.entries if e.archive}

    @property
    def kept(self) -> dict[int, str]:
        """Every version that stays out of the archive -> why."""
        return {e.version: e.reason for e in self.entries if not e.archive}

    @property
    def held(self) -> dict[int, str]:
        """Versions whose period has run out but that are kept anyway -> why."""
        return {e.version: e.reason for e in self.entries if e.expired and not e.archive}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "now": self.now.isoformat(),
            "archive_stage": self.archive_stage,
            "production_stage": self.production_stage,
            "periods": dict(self.periods),
            "overridden": self.overridden,
            "already_archived": self.already_archived,
            "archive": sorted(self.archive),
            "kept": sorted(self.kept),
            "entries": [e.to_dict() for e in self.entries],
        }


def _utc(when: datetime | None) -> datetime:
    if when is None:
        return datetime.now(UTC)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def plan(reg: Registry, model: ModelSpec | str, now: datetime | None = None) -> RetentionPlan:
    """The dry run for one model at ``now`` (default: now): every version outside the archive stage with its
    decision. ``model`` is the model's spec (its ``monitoring.staging_retention_days`` applies) or just its name
    (the policy's periods alone). Reads the registry; writes nothing."""
    if isinstance(model, ModelSpec):
        return _plan(reg, model.name, model.monitoring.staging_retention_days, _utc(now))
    return _plan(reg, model, None, _utc(now))


def _plan(reg: Registry, name: str, staging_override: float | None, now: datetime) -> RetentionPlan:
    policy = reg.policy
    rules = policy.retention
    prod_stage, archive_stage = policy.production.stage, rules.archive_stage
    periods = {stage: d for stage in policy.stages if (d := policy.retention_days(stage, staging_override))}
    overridden = rules.staging_stage if staging_override is not None and rules.staging_stage else None
    empty = RetentionPlan(name, now, archive_stage, prod_stage, periods, overridden, staging_override)
    if name not in reg.models():
        return empty  # nothing registered yet: nothing to keep or archive

    versions = {v.version: v for v in reg.versions(name)}
    events = reg.audit(name)
    manifest = dep.current(reg, name, events)
    entered: dict[tuple[int, str], datetime] = {}  # (version, stage) -> when it last entered that stage
    left_production: dict[int, datetime] = {}  # version -> when it last stopped serving in production
    served: set[int] = set()  # versions that have ever been in production
    for e in events:
        if e.kind != ev.STAGE_CHANGED or e.version is None:
            continue
        if e.to_value:
            entered[(e.version, e.to_value)] = e.ts
        if e.to_value == prod_stage:
            served.add(e.version)
        if e.from_value == prod_stage:
            left_production[e.version] = e.ts

    # 1. pins: what serves, what an alias points at
    pins: dict[int, str] = {}
    for arm, n in ((Arm.PRODUCTION, manifest.production), (Arm.CANARY, manifest.canary), (Arm.SHADOW, manifest.shadow)):
        if n is not None and n in versions:
            pins.setdefault(n, f"serves as {arm}")
    for n, v in versions.items():
        if v.aliases:
            pins.setdefault(n, "alias " + ", ".join(sorted(v.aliases)))
    # 2. their lineage: parents back to (not including) the nearest ancestor that served in production
    lineage: dict[int, str] = {}
    for pin in sorted(pins):
        seen: set[int] = set()
        n = versions[pin].parent
        while n is not None and n in versions and n not in seen and n not in served:
            seen.add(n)
            if n not in pins:
                lineage.setdefault(n, f"lineage of v{pin} ({pins[pin]})")
            n = versions[n].parent

    entries: list[Entry] = []
    already = 0
    for n, v in sorted(versions.items()):
        stage = v.stage
        if stage == archive_stage:
            already += 1
            continue
        # 3. the clock and the period that apply
        if stage == prod_stage:  # it serves: the production period starts when it stops
            limit, since = None, entered.get((n, stage), v.created_at)
            clock = f"{{age}} days in {stage}"
        elif n in served and n in left_production:
            limit, since = periods.get(prod_stage), left_production[n]
            clock = f"stopped serving in {prod_stage} {{age}} days ago"
        else:
            limit, since = periods.get(stage), entered.get((n, stage), v.created_at)
            clock = f"{{age}} days in {stage}"
        age = max(0.0, (now - since).total_seconds() / _DAY)
        expired = limit is not None and age > limit
        facts: dict[str, Any] = {"version": n, "stage": stage, "expired": expired, "age_days": age, "limit_days": limit}
        text = clock.format(age=f"{age:.1f}")
        if n in pins:
            entries.append(Entry(archive=False, reason=pins[n], **facts))
        elif n in lineage:
            entries.append(Entry(archive=False, reason=lineage[n], **facts))
        elif limit is None:
            what = (
                f"versions that stopped serving in {prod_stage}"
                if n in served and n in left_production
                else f"stage {stage}"
            )
            entries.append(Entry(archive=False, reason=f"no retention period for {what} in the policy", **facts))
        elif not expired:
            entries.append(Entry(archive=False, reason=f"within retention: {text} (limit {limit:g})", **facts))
        elif archive_stage not in policy.allowed_targets(stage):
            entries.append(
                Entry(
                    archive=False,
                    reason=f"expired ({text} > {limit:g}) but the policy's transitions "
                    f"do not allow {stage} -> {archive_stage}",
                    **facts,
                )
            )
        else:
            entries.append(
                Entry(
                    archive=True,
                    reason=f"retention: {text} (> {limit:g}); not serving, no alias, "
                    "not in the lineage of a serving or aliased version",
                    **facts,
                )
            )
    return RetentionPlan(
        name, now, archive_stage, prod_stage, periods, overridden, staging_override, tuple(entries), already
    )


def apply(reg: Registry, retention: RetentionPlan, run_id: str | None = None) -> list[int]:
    """Archive what ``retention`` (a dry run) would archive and a fresh plan at the same ``now`` still would;
    returns the versions archived. Each is a stage change with its reason in the audit log."""
    still = _plan(reg, retention.model, retention.staging_override, retention.now).archive
    done = []
    for n in sorted(retention.archive):
        if n not in still:
            continue  # pinned, moved or archived since the dry run: not what was reviewed any more
        reg.transition(f"models:/{retention.model}/{n}", retention.archive_stage, reason=still[n], run_id=run_id)
        done.append(n)
    return done


def render(retention: RetentionPlan, done: list[int] | None = None) -> str:
    """The plan as text: a header, the periods in force, and one line per version (archive first)."""
    p = retention
    periods = []
    for stage, days in p.periods.items():
        what = f"{stage} {days:g} d"
        if stage == p.production_stage:
            what += " after it stops serving"
        if stage == p.overridden:
            what += " (this model's override)"
        periods.append(what)
    if done is None:
        head = (
            f"{p.model}: retention at {p.now:%Y-%m-%d %H:%M} UTC (dry run): {len(p.archive)} to archive, "
            f"{len(p.kept)} kept, {p.already_archived} already {p.archive_stage}"
        )
    else:
        head = (
            f"{p.model}: retention at {p.now:%Y-%m-%d %H:%M} UTC: archived "
            f"{', '.join(f'v{n}' for n in done) or 'nothing'}; {len(p.kept)} kept"
        )
        skipped = sorted(set(p.archive) - set(done))
        if skipped:
            head += f"; not archived after all (referenced since the dry run): {', '.join(f'v{n}' for n in skipped)}"
    in_force = ", ".join(periods) or "none (nothing expires)"
    lines = [head, f"  periods: {in_force}; expired versions go to {p.archive_stage}"]
    if not p.entries:
        lines.append("  no versions to decide on")
    width = max((len(e.stage) for e in p.entries), default=0)
    for e in sorted(p.entries, key=lambda e: (not e.archive, e.version)):
        if e.archive and done is not None:
            action = "archived" if e.version in done else "skipped"
        else:
            action = "archive" if e.archive else ("keep*" if e.expired else "keep")
        lines.append(f"  {action:<8} v{e.version:<5} {e.stage:<{width}}  {e.reason}")
    if p.held:
        lines.append("  keep* = its period has run out, kept for the reason given")
    return "\n".join(lines)
