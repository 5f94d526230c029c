"""``model-ops demo``: replay a model's partitions one by one through the real Dagster machinery (the built-in
flight_delay model's 2013 by default; the examples seattle_weather and flight_duration too).

Everything runs as Dagster runs of the workspace's own ``model_ops`` code location, launched as the UI launches
them and recorded in the instance at ``$DAGSTER_HOME`` (see ``model_ops.defs.workspace``), and every decision is
taken by the project's own sensors, ticked through the sensor daemon's own code, so each tick is stored with its
skip reason and cursor and its runs are the sensor's. Nothing here decides anything itself except two things it
says it does: which month "arrives" next, and releasing one deliberately faulty candidate (trained on shuffled
labels, staged by hand past the evaluation gates) so the canary analysis has something to catch. Sensors are
ticked right after each month instead of every minute, so the replay takes minutes, not a year.

Afterwards ``dagster dev -w workspace.yaml`` shows the runs on each job's page and the Overview timeline, each
sensor's ticks, the checks and plotted metrics, the registry on each model's ``registry`` asset, and
``model-ops audit flight_delay`` the same events as the timeline printed here.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from model_ops.defs.instance import prepare_home
from model_ops.errors import UsageError

MODEL = "flight_delay"
# Partitions ingested before the first model is trained (the newest of them is its holdout), per model replayed.
FIRST_TRAINING = {"flight_delay": 4, "flight_duration": 4, "seattle_weather": 13}


@dataclass
class Timeline:
    """What happened, month by month, in the order it happened; printed as it grows."""

    emit: Callable[[str], None]
    entries: list[dict[str, Any]] = field(default_factory=list)

    HEADING = "  month    event             ver  evidence"

    def add(self, month: str, kind: str, version: int | None, reason: str, **extra: Any) -> None:
        entry = {"month": month[:7], "kind": kind, "model_version": version, "reason": reason, **extra}
        self.entries.append(entry)
        self.say(month, kind, version, reason)

    def say(self, month: str, kind: str, version: int | None, text: str) -> None:
        """A line in the timeline's columns (under :attr:`HEADING`) that records no entry: what the replay does
        itself, such as ingesting a month."""
        tag = f"v{version}" if version is not None else "-"
        self.emit(f"  {month[:7]}  {kind:<17} {tag:<4} {text}")


def run_demo(
    *,
    root: str | None = None,
    dagster_home: str | None = None,
    until: str | None = None,
    faulty: bool = True,
    progress: Callable[[str], None] | None = None,
    model: str = MODEL,
) -> dict[str, Any]:
    """Replay ``model``'s partitions up to ``until`` (default: all) and return the timeline and a summary (see the
    module docstring)."""
    emit = progress or (lambda line: print(line, flush=True))
    from model_ops.data.partitions import Partitioning
    from model_ops.specs import get_spec

    if model not in FIRST_TRAINING:
        raise UsageError(f"the replay knows no model {model!r}", hint="models: " + ", ".join(FIRST_TRAINING))
    spec = get_spec(model)
    keys = Partitioning.of(spec).keys()
    first = FIRST_TRAINING[model]
    last = keys[-1] if until is None else next((k for k in keys if k.startswith(until[:7])), "")
    if last not in keys or keys.index(last) < first:
        raise UsageError(
            f"--until {until} is not a month the replay of {model} can stop at",
            hint=f"use a month from {keys[first][:7]} to {keys[-1][:7]}",
        )
    if root:
        os.environ["MODEL_OPS_ROOT"] = root
    home = prepare_home(dagster_home)

    import dagster as dg

    from model_ops.defs.automation import job_names, sensor_names
    from model_ops.defs.models.example_tables import feeding
    from model_ops.defs.registry_view import sensor_name as registry_sensor_name
    from model_ops.defs.resources import PARTITION_TAG, ModelOpsResource
    from model_ops.defs.workspace import LOCATION, CodeLocation, synchronous_instance
    from model_ops.ops import deployment as dep
    from model_ops.registry import events as ev
    from model_ops.vocab import Arm, DeployAction, RecordKind, RunTag, SourceKind

    upstream = feeding(spec)  # the replay also plays the team whose asset writes the source table, if any
    resource = ModelOpsResource()
    reg = resource.get_registry()
    staging = dep.staging_stage(reg)
    if model in reg.models():
        raise UsageError(
            f"the registry at {resource.location().uri} already holds {model}; the demo replays its "
            "partitions from an empty registry",
            hint="pass --root to a new directory (and --dagster-home to a new one), or remove "
            ".model_ops and .dagster_home",
        )
    instance = synchronous_instance(home)
    jobs, sensors = job_names(spec), sensor_names(spec)
    if instance.get_runs_count(dg.RunsFilter(job_name=jobs["retrain"])):
        raise UsageError(
            f"the Dagster instance at {home} already has {model} runs; its sensor run keys would "
            "collide with a fresh replay",
            hint="pass --dagster-home to a new directory",
        )

    timeline = Timeline(emit)
    seen = {"seq": 0}
    started = time.perf_counter()
    month = keys[0]

    def execute(
        job: str,
        *,
        partition: str | None = None,
        run_config: Any = None,
        tags: dict[str, str] | None = None,
        assets: list[dg.AssetKey] | None = None,
    ) -> None:
        outcome = location.run(job, partition=partition, run_config=run_config, tags=tags, assets=assets)
        if not outcome.success:
            report_failure(job, partition, outcome.failed_checks)

    def report_failure(job: str, partition: str | None, failed: list[str]) -> None:
        emit(
            f"  {month[:7]}  run {job} {'for ' + partition if partition else ''} did not succeed"
            + (f" ({'; '.join(failed)})" if failed else "")
        )

    def tick(name: str) -> int:
        """One tick of a sensor, as the daemon ticks it (stored in the instance with its skip reason and cursor);
        the runs it requests run before it returns. Returns how many it launched."""
        done = location.tick(name)
        for run_id in done.run_ids:
            outcome = location.outcome(run_id)
            if not outcome.success:
                run = instance.get_run_by_id(run_id)
                report_failure(
                    run.job_name if run else name,
                    run.tags.get(PARTITION_TAG) if run else None,
                    outcome.failed_checks,
                )
        return len(done.run_ids)

    def record_new_events() -> None:
        for e in reg.audit(model):
            if e.seq <= seen["seq"]:
                continue
            seen["seq"] = e.seq
            d = e.data
            if e.kind == ev.REGISTERED:
                lineage = d.get("lineage") or {}
                window = lineage.get("window") or []
                faulty_tag = lineage.get("faulty")
                timeline.add(
                    month,
                    "faulty_candidate" if faulty_tag else "candidate",
                    e.version,
                    f"registered {e.to_value or ''} trained on "
                    f"{window[0][:7] + '..' + window[-1][:7] if window else 'its window'}"
                    + (f" ({faulty_tag})" if faulty_tag else ""),
                )
            elif e.kind == RecordKind.EVALUATION:
                timeline.add(
                    month,
                    "evaluated",
                    e.version,
                    f"holdout {str(d.get('holdout'))[:7]}: {e.reason}",
                    metrics={k: d.get("metrics", {}).get(k) for k in ("roc_auc", "log_loss")},
                )
            elif e.kind == RecordKind.RETRAIN:
                timeline.add(month, "retrain", e.version, e.reason or "", evidence=d.get("evidence"))
            elif e.kind == RecordKind.CANARY_ANALYSIS:
                timeline.add(
                    month, "canary_analysis", e.version, e.reason or "", phase=d.get("phase"), checks=d.get("checks")
                )
            elif e.kind == RecordKind.DEPLOYMENT:
                action: Any = d.get("action")
                manifest = d.get("manifest") or {}
                kinds = {
                    DeployAction.DEPLOY: "canary_started" if manifest.get("canary") == e.version else "deployed",
                    DeployAction.ADVANCE: "canary_advanced",
                    DeployAction.PROMOTE: "promoted",
                    DeployAction.ROLLBACK: "rollback",
                    DeployAction.ROLLBACK_PRODUCTION: "rollback",
                }
                kind: str = kinds.get(action, action)
                timeline.add(
                    month,
                    kind,
                    e.version,
                    d.get("message", "") + (f" (why: {e.reason})" if kind in ("rollback", "promoted") else ""),
                    manifest=manifest,
                )
            elif e.kind == ev.STAGE_CHANGED and e.to_value == staging and "faulty" in (e.reason or ""):
                timeline.add(month, "staged_by_hand", e.version, e.reason or "")

    def settle() -> None:
        """Tick the sensors until none of them requests anything more (a retrain's result starts a canary)."""
        for _ in range(4):
            launched = sum(tick(sensors[s]) for s in ("drift", "deployment", "guard"))
            tick(registry_sensor_name(spec))
            record_new_events()
            if not launched:
                return

    def monitored(m: str) -> None:
        drift = resource.dataset(model, "drift")
        perf = resource.dataset(model, "live_performance")
        d = drift.read([m]).to_dict("records") if drift.exists() else []
        p = perf.read([m]).to_dict("records") if perf.exists() else []
        if not d:
            return
        row = d[0]
        arms = {r["arm"]: r for r in p}
        prod = arms.get(Arm.PRODUCTION, {})
        share = row.get("drift_share")
        text = f"drift share {share:.2f} ({row['status']})" if share == share and share is not None else row["status"]
        shown = [k for k in (spec.monitoring_metric, *spec.monitoring.performance_floor) if k in prod]
        shown = list(dict.fromkeys(shown))
        if shown and all(prod.get(k) == prod.get(k) and prod.get(k) is not None for k in shown):
            text += "; production " + ", ".join(f"{k} {prod[k]:.3f}" for k in shown)
        if Arm.CANARY in arms:
            c = arms[Arm.CANARY]
            text += f"; canary v{c['model_version']} on {c['served']} {spec.key_column}s"
        timeline.add(
            m,
            "monitored",
            int(row["model_version"]),
            text,
            drift_share=share,
            dataset_drift=bool(row["dataset_drift"]),
            drifted=row["drifted"],
            live={k: prod.get(k) for k in (*shown, "labelled")},
        )

    emit(
        f"model_ops demo: replaying {keys[0][:7]}..{last[:7]} for {model} into {resource.location().uri} "
        f"(Dagster instance {home}; loading the {LOCATION} code location)"
    )
    with CodeLocation.load(instance) as location:
        emit(Timeline.HEADING)
        if upstream is not None:
            execute(upstream.to_user_string(), assets=[upstream])
            timeline.say(
                keys[0],
                "source",
                None,
                f"{upstream.to_user_string()} materialized (the team's own asset that writes the source table)",
            )
        what = "flights, weather and features" if spec.source.kind is SourceKind.NYCFLIGHTS13 else "features"
        for month in keys[:first]:
            timeline.say(month, "ingest", None, f"{what} with their checks")
            execute(jobs["ingest"], partition=month)
        execute(jobs["retrain"], tags={RunTag.TRIGGER.value: "demo: first model"})
        record_new_events()
        settle()
        faulty_done = not faulty
        for month in keys[first : keys.index(last) + 1]:
            execute(jobs["partition"], partition=month)
            monitored(month)
            record_new_events()
            settle()
            if (
                not faulty_done
                and any(t["kind"] == "promoted" for t in timeline.entries)
                and dep.current(reg, model).canary is None
                and month < last
            ):
                version = release_faulty_candidate(reg, resource, spec)
                faulty_done = True
                record_new_events()
                timeline.say(
                    month,
                    "(demo)",
                    version,
                    "released a deliberately faulty candidate to show the canary analysis catching it",
                )
                settle()

    versions = [
        {
            "version": v.version,
            "semver": v.semver,
            "stage": v.stage,
            "aliases": list(v.aliases),
            "faulty": bool(v.tags.get("faulty")),
        }
        for v in reg.versions(model)
    ]
    counts = {
        k: sum(1 for t in timeline.entries if t["kind"] == k)
        for k in ("retrain", "canary_started", "promoted", "rollback", "canary_analysis")
    }
    summary = {
        "model": model,
        "months": [m[:7] for m in keys[: keys.index(last) + 1]],
        "complete": last == keys[-1],
        "production": dep.current(reg, model).production,
        "versions": versions,
        "counts": counts,
        "seconds": round(time.perf_counter() - started, 1),
        "root": resource.location().uri,
        "dagster_home": str(home),
        "fsck_problems": reg.fsck(),
    }
    emit(
        f"done in {summary['seconds']} s: production v{summary['production']}; "
        + ", ".join(f"{n} {k}" for k, n in counts.items())
    )
    emit(f"next: `dagster dev -w workspace.yaml` (runs, checks, plotted metrics) and `model-ops audit {model}`")
    return {"timeline": timeline.entries, "summary": summary}


def story_problems(summary: dict[str, Any], *, faulty: bool, full_year: bool) -> list[str]:
    """What the replay promised and did not happen. Every replayed model's data has real drift, so a full replay
    must end with a version serving, a retrain, a canary promoted, and (when the faulty candidate was released)
    that candidate rolled back; a shorter replay must at least leave something serving."""
    counts = summary["counts"]
    problems = [] if summary["production"] else [f"nothing serves {summary['model']} in production at the end"]
    if full_year:
        wanted = {"retrain": "no retrain was triggered by drift", "promoted": "no canary was promoted"}
        if faulty:
            wanted["rollback"] = "the faulty candidate was never rolled back"
        problems += [why for kind, why in wanted.items() if not counts.get(kind)]
    return problems + [f"fsck: {p}" for p in summary["fsck_problems"]]


def release_faulty_candidate(reg: Any, resource: Any, spec: Any) -> int:
    """Register a model fitted on shuffled labels (the bug a mis-joined label table causes) and stage it by hand,
    skipping the evaluation gates that would have caught it: the canary is the last line of defence. The
    permutation's seed is in its lineage, so ``model-ops reproduce`` rebuilds it byte for byte like any other."""
    from model_ops.defs.common import typed_spec
    from model_ops.ml import candidates
    from model_ops.ops import deployment as dep

    reason = "labels shuffled on purpose by model-ops demo"
    snap = resource.dataset(spec.name, "training_set")
    made = candidates.train_and_register(
        reg,
        snap,
        typed_spec(spec, snap),
        permutation_seed=spec.seed,
        tags={"faulty": reason},
        lineage={"faulty": reason},
        description="A deliberately faulty candidate released by the demo (fitted on shuffled labels).",
    )
    reg.transition(
        made.version.ref,
        dep.staging_stage(reg),
        reason="demo: deliberately faulty candidate (trained on shuffled labels), staged by hand past "
        "the evaluation gates to show canary analysis",
    )
    return made.version.version


def main_json(result: dict[str, Any]) -> None:
    import json

    json.dump(result, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
