"""The sensors' reading of the world: registry state, audit records and monitoring rows → one decision.

Dagster-free (the sensors are thin wrappers), so the whole loop can be driven and tested without a daemon. Every
decision carries a ``run_key`` derived from the state it was taken on: the same state always gives the same key
(a sensor evaluated twice requests one run) and a changed state a new one. Deployment decisions also carry the
``production:canary`` they were taken on, and the deployment asset does nothing if that changed before the run
executed, so a queued or late run can never act on a different deployment.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from model_ops.data.delta import Dataset
from model_ops.data.partitions import Partitioning
from model_ops.errors import NotFoundError
from model_ops.jsonable import numbers
from model_ops.ml.monitoring import Decision, canary_decision, guard_decision, retrain_decision
from model_ops.ops import deployment as dep
from model_ops.registry import Registry
from model_ops.registry import events as ev
from model_ops.registry.registry import breaking_changes
from model_ops.specs.schema import LIVE_METRICS, ModelSpec
from model_ops.vocab import Arm, DecisionAction, DeployAction, RecordKind


def _events(reg: Registry, name: str) -> list[ev.Event]:
    try:
        return reg.audit(name)
    except NotFoundError:
        return []


def _ts(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def window_keys(spec: ModelSpec, seen: list[str]) -> list[str]:
    """Every window in order, for "consecutive" to mean something: the model's partitions, or, for a static
    table, the days it was scored and monitored (each scoring of the table is one observation)."""
    parts = Partitioning.of(spec)
    return sorted(set(seen)) if parts.static else parts.keys()


def window_rows(table: Dataset) -> list[dict[str, Any]]:
    """All rows of a monitoring table (one or a few per month: small), oldest window first."""
    if not table.exists():
        return []
    rows = table.read().to_dict("records")
    for r in rows:
        r["window"] = r["partition"]
    return sorted(rows, key=lambda r: (r["window"], str(r.get("arm", ""))))


def fresh_staging(reg: Registry, name: str, manifest: dep.Manifest, events: list[ev.Event]) -> list[Any]:
    """Staging versions newer than production and than anything deployed before: what the next canary should be.
    An older staging version (passed over, or superseded) is left for a person to deploy by hand."""
    deployed = [
        e.version
        for e in events
        if e.kind == RecordKind.DEPLOYMENT and e.data.get("action") == DeployAction.DEPLOY and e.version is not None
    ]
    floor = max([manifest.production or 0, *deployed])
    staging = dep.staging_stage(reg)
    return [v for v in reg.versions(name) if v.stage == staging and v.version > floor]


def deployment_step(reg: Registry, spec: ModelSpec) -> Decision:
    """Start a canary for a new staging version, or take the running canary's next step."""
    name = spec.name
    events = _events(reg, name)
    if not events:
        return Decision(DecisionAction.NONE, f"{name} has no versions yet")
    manifest = dep.current(reg, name, events)
    state_seq = max(
        [e.seq for e in events if e.kind in (RecordKind.DEPLOYMENT, ev.STAGE_CHANGED, ev.ROLLBACK)], default=0
    )
    if manifest.canary is not None:
        # only a change of this canary's weight starts a new measurement window (a shadow change does not)
        changes = [
            e
            for e in events
            if e.kind == RecordKind.DEPLOYMENT
            and e.version == manifest.canary
            and e.data.get("action") in (DeployAction.DEPLOY, DeployAction.ADVANCE)
        ]
        started = [e for e in changes if e.data.get("action") == DeployAction.DEPLOY]
        start = (started or changes)[-1].ts if changes else None
        last_change = changes[-1].ts if changes else None
        measurements = []
        for e in events:
            if e.kind != RecordKind.CANARY_ANALYSIS or e.version != manifest.canary:
                continue
            scored = _ts(e.data.get("scored_at") or e.ts)
            if start is not None and scored <= start:
                continue
            measurements.append({**e.data, "at_current_weight": last_change is None or scored > last_change})
        decision = canary_decision(
            manifest.canary,
            manifest.canary_weight,
            measurements,
            spec,
            window_keys(spec, [m["window"] for m in measurements]),
        )
    else:
        fresh = fresh_staging(reg, name, manifest, events)
        if not fresh:
            return Decision(DecisionAction.NONE, f"{manifest.describe()}; nothing new in {dep.staging_stage(reg)}")
        v = fresh[-1]
        breaks = (
            []
            if manifest.production is None
            else breaking_changes(reg.get(name, manifest.production).signature, v.signature)
        )
        if breaks:
            # promotion would be refused: a canary of it could only end stuck, so a person decides
            return Decision(
                DecisionAction.HOLD,
                f"v{v.version} ({v.semver}) waits in {v.stage}: it breaks production "
                f"v{manifest.production}'s interface ({'; '.join(breaks)}); deploy it by hand and promote "
                "with --breaking once callers are ready",
                v.version,
                evidence={"state_seq": state_seq, "serving": manifest.serving, "breaking": breaks},
            )
        where = (
            "to production (nothing serves yet)"
            if manifest.production is None
            else f"as a canary at {spec.deployment.canary_steps[0]:.0%} beside production v{manifest.production}"
        )
        decision = Decision(
            DeployAction.DEPLOY, f"v{v.version} ({v.semver}) reached {v.stage}: deploy {where}", v.version
        )
    decision.evidence.update({"state_seq": state_seq, "serving": manifest.serving})
    return decision


def run_key(decision: Decision) -> str:
    """``action:vN:window@state``: one run per decision on a given registry state."""
    return f"{decision.action}:v{decision.version}:{decision.window or '-'}@{decision.evidence.get('state_seq', 0)}"


def _production_since(reg: Registry, manifest: dep.Manifest, events: list[ev.Event]) -> datetime | None:
    """When the production version (last) entered production."""
    entered = [
        e.ts
        for e in events
        if e.kind == ev.STAGE_CHANGED and e.version == manifest.production and e.to_value == reg.policy.production.stage
    ]
    return entered[-1] if entered else None


def evaluated_metrics(events: list[ev.Event]) -> dict[int, dict[str, float]]:
    """Each evaluated version's metrics, from its evaluation records (on its own holdout): for every metric the
    newest record's number. A record that left a metric undefined, or was written by hand in another shape, does
    not hide an older number."""
    out: dict[int, dict[str, float]] = {}
    for e in events:  # oldest first: a newer record's numbers replace an older one's
        metrics = e.data.get("metrics") if e.kind == RecordKind.EVALUATION and e.version is not None else None
        if isinstance(metrics, dict):
            out.setdefault(e.version, {}).update(numbers(metrics))  # type: ignore[arg-type]
    return out


def evaluation_metric(events: list[ev.Event], version: int, metric: str) -> float | None:
    """The version's value of ``metric`` in its newest evaluation record that has one."""
    return evaluated_metrics(events).get(version, {}).get(metric)


def _watched(reg: Registry, name: str) -> tuple[list[ev.Event], dep.Manifest, datetime | None]:
    """What the retrain and guard rules watch: the audit log, the manifest in force, and when the production
    version (last) entered production."""
    events = _events(reg, name)
    manifest = dep.current(reg, name, events)
    return events, manifest, _production_since(reg, manifest, events)


def retrain_step(
    reg: Registry, spec: ModelSpec, drift_rows: list[dict[str, Any]], performance_rows: list[dict[str, Any]]
) -> Decision:
    """Request a retrain when the production version's traffic keeps drifting (and, with labels, it hurts).

    Only windows served since the version (last) entered production count, so months it served before a
    rollback, or another version's months, are never held against it.
    """
    name = spec.name
    events, manifest, since = _watched(reg, name)
    production = manifest.production
    if production is None:
        return Decision(DecisionAction.NONE, f"nothing serves {name} in production; nothing to monitor")
    if manifest.canary is not None:
        return Decision(
            DecisionAction.NONE, f"canary v{manifest.canary} is already being rolled out; retraining waits for it"
        )
    waiting = fresh_staging(reg, name, manifest, events)
    if waiting:
        return Decision(
            DecisionAction.NONE,
            f"v{waiting[-1].version} waits in {waiting[-1].stage} for deployment; retraining waits for it",
        )

    def served_by_production(r: dict[str, Any], stamp: str) -> bool:
        return int(r["model_version"]) == production and (since is None or _ts(r[stamp]) > since)

    mine = [r for r in drift_rows if served_by_production(r, "computed_at")]
    perf = {
        r["window"]: {"status": r["status"], "metrics": {m: r.get(m) for m in LIVE_METRICS[spec.task]}}
        for r in performance_rows
        if r.get("arm") == Arm.PRODUCTION and served_by_production(r, "scored_at")
    }
    baseline = evaluation_metric(events, production, spec.monitoring_metric)
    decision = retrain_decision(
        mine, perf, baseline, spec, partition_keys=window_keys(spec, [r["window"] for r in mine])
    )
    decision.version = production
    return decision


def guard_step(reg: Registry, spec: ModelSpec, performance_rows: list[dict[str, Any]]) -> Decision:
    """Roll production back to its predecessor when it stays below the spec's floor after promotion."""
    name = spec.name
    events, manifest, since = _watched(reg, name)
    production = manifest.production
    if production is None:
        return Decision(DecisionAction.NONE, f"nothing serves {name} in production")
    if not spec.monitoring.performance_floor:
        return Decision(DecisionAction.NONE, "the spec sets no performance floor", production)
    rows = [
        r
        for r in performance_rows
        if r.get("arm") == Arm.PRODUCTION
        and int(r["model_version"]) == production
        and (since is None or _ts(r["scored_at"]) > since)
    ]
    decision = guard_decision(production, rows, dep.previous_production(reg, name), spec)
    decision.evidence.update(
        {
            "state_seq": max([e.seq for e in events if e.kind in (ev.STAGE_CHANGED, ev.ROLLBACK)], default=0),
            "production": production,
            "serving": manifest.serving,
        }
    )
    return decision
