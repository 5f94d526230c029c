"""Retention: archive staging versions nobody is going to deploy, and never anything still referenced.

A version is stale when it has waited in staging longer than ``monitoring.staging_retention_days``. It is kept
anyway when an alias points at it, when the deployment manifest uses it (production, canary, shadow), or when
a kept version's lineage names it as its parent (transitively), so archiving never breaks a "how did we get
here" question. Archiving is a stage change with its reason in the audit log; nothing is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from model_ops.ops import deployment as dep
from model_ops.registry import Registry
from model_ops.registry import events as ev
from model_ops.specs.schema import ModelSpec

ARCHIVE = "archived"


@dataclass
class RetentionPlan:
    model: str
    archive: dict[int, str] = field(default_factory=dict)  # version -> why it goes
    kept: dict[int, str] = field(default_factory=dict)     # stale version -> why it stays


def plan(reg: Registry, spec: ModelSpec, now: datetime | None = None) -> RetentionPlan:
    name = spec.name
    now = now or datetime.now(timezone.utc)
    limit = timedelta(days=spec.monitoring.staging_retention_days)
    if name not in reg.models():
        return RetentionPlan(name)  # nothing registered yet: nothing to keep or archive
    versions = {v.version: v for v in reg.versions(name)}
    entered: dict[int, datetime] = {}
    for e in reg.audit(name):
        if e.kind == ev.STAGE_CHANGED and e.version is not None and e.to_value == "staging":
            entered[e.version] = e.ts
    stale = {n: entered.get(n, v.created_at) for n, v in versions.items()
             if v.stage == "staging" and now - entered.get(n, v.created_at) > limit}
    manifest = dep.current(reg, name)
    why: dict[int, str] = {}
    for n, v in versions.items():
        if v.aliases:
            why[n] = "alias " + ", ".join(sorted(v.aliases))
    for role, n in (("production", manifest.production), ("canary", manifest.canary), ("shadow", manifest.shadow)):
        if n is not None:
            why.setdefault(n, f"deployed as {role}")
    retained = set(versions) - set(stale) | set(why)
    changed = True
    while changed:  # a retained version keeps its ancestors
        changed = False
        for n in sorted(retained):
            parent = versions[n].parent
            if parent is not None and parent in versions and parent not in retained:
                retained.add(parent)
                why.setdefault(parent, f"parent of retained v{n}")
                changed = True
    out = RetentionPlan(name)
    for n, since in sorted(stale.items()):
        if n in retained:
            out.kept[n] = why.get(n, "retained")
        else:
            days = (now - since).total_seconds() / 86400
            out.archive[n] = (f"retention: in staging for {days:.0f} days (> {spec.monitoring.staging_retention_days:g}), "
                              "not referenced by an alias, a deployment or a retained version's lineage")
    return out


def apply(reg: Registry, retention: RetentionPlan, run_id: str | None = None) -> list[int]:
    done = []
    for n, reason in sorted(retention.archive.items()):
        reg.transition(f"models:/{retention.model}/{n}", ARCHIVE, reason=reason, run_id=run_id)
        done.append(n)
    return done
