"""Jobs, sensors and schedules that close the loop for one model.

The sensors only read (the registry, the monitoring tables) and request runs; every change they cause is a run of
an asset or job, so it is in the run history, the asset history and the registry's audit log (a retrain's evidence
is recorded by the retrain run itself, so a sensor preview or a failed submission records nothing). Their
decisions live in the Dagster-free ``ml.automation`` and ``ml.monitoring``. Run keys come from the state a
decision was taken on, so evaluating a sensor twice on the same state requests one run. Each sensor keeps its own
cursor, the last decision and the state it was taken on, shown in the UI's tick history.
"""

import json
from collections.abc import Callable

import dagster as dg

from model_ops.data import nycflights13
from model_ops.defs.common import EVIDENCE_TAG, REASON_TAG, TRIGGER_TAG, key
from model_ops.defs.resources import ModelOpsResource
from model_ops.ml.monitoring import Decision
from model_ops.ops import automation, retention
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import RunTag, SourceKind

SENSOR_INTERVAL_SECONDS = 60
MONITOR_ASSETS = ("predictions", "drift_report", "live_performance")
RETRAIN_ASSETS = ("training_set", "candidate_model", "evaluation")


def ingest_assets(spec: ModelSpec) -> list[str]:
    """What ingesting a partition materializes: the built-in raw tables, then the features (an external table is
    observed, and a user's upstream asset is the user's own to materialize)."""
    return [*(nycflights13.TABLES if spec.source.kind is SourceKind.NYCFLIGHTS13 else ()), "features"]


def job_names(spec: ModelSpec) -> dict[str, str]:
    """``partition``: a partition arrives (``flight_delay_monthly``, ``churn_daily``; ``NAME_score`` when static)."""
    cadence = spec.partitioning.cadence if spec.partitioning else "score"
    return {
        "ingest": f"{spec.name}_ingest",
        "partition": f"{spec.name}_{cadence}",
        "retrain": f"{spec.name}_retrain",
        "deploy": f"{spec.name}_deploy",
        "retention": f"{spec.name}_retention",
    }


def sensor_names(spec: ModelSpec) -> dict[str, str]:
    return {
        "drift": f"{spec.name}_drift_sensor",
        "deployment": f"{spec.name}_deployment_sensor",
        "guard": f"{spec.name}_production_guard",
    }


def jobs(spec: ModelSpec) -> list:
    names = job_names(spec)
    return [
        dg.define_asset_job(
            names["partition"],
            selection=[key(spec, n) for n in (*ingest_assets(spec), *MONITOR_ASSETS)],
            description=f"A partition of {spec.name} traffic arrives: ingest and check it, score it "
            "with the manifest in force, then measure drift and realized performance.",
        ),
        dg.define_asset_job(
            names["ingest"],
            selection=[key(spec, n) for n in ingest_assets(spec)],
            description=f"Ingest and check a partition of {spec.name} source data, without scoring "
            "it (backfills, and the partitions a first model is trained on).",
        ),
        dg.define_asset_job(
            names["retrain"],
            selection=[key(spec, n) for n in RETRAIN_ASSETS],
            description=f"Retrain {spec.name}: snapshot the training window, fit and register a "
            "candidate, evaluate it against the champion (staging when every gate passes).",
        ),
        dg.define_asset_job(
            names["deploy"],
            selection=[key(spec, "deployment")],
            description=f"One deployment action on {spec.name} (run config: action, version, reason).",
        ),
    ]


def _deploy_request(spec: ModelSpec, decision: Decision, sensor: str) -> dg.RunRequest:
    op = "__".join(key(spec, "deployment").path)
    return dg.RunRequest(
        run_key=automation.run_key(decision),
        job_name=job_names(spec)["deploy"],
        run_config={
            "ops": {
                op: {
                    "config": {
                        "action": str(decision.action),
                        "version": decision.version,
                        "reason": decision.reason,
                        "expect_serving": decision.evidence.get("serving"),
                    }
                }
            }
        },
        tags={
            TRIGGER_TAG: sensor,
            RunTag.ACTION.value: str(decision.action),
            RunTag.VERSION.value: str(decision.version),
            **window_tag(decision.window),
        },
    )


def window_tag(window: str | None) -> dict[str, str]:
    """The run's window tag, or no tag at all when the decision acts on no window (an empty tag reads as one)."""
    return {RunTag.WINDOW.value: window} if window else {}


def _result(decision: Decision, request: Callable[[], dg.RunRequest]) -> dg.SensorResult:
    """Skip with the decision's reason, or request the run; the cursor records the decision and its state."""
    cursor = json.dumps(
        {
            "decision": decision.action,
            "version": decision.version,
            "window": decision.window,
            "state": decision.evidence.get("state_seq"),
        },
        sort_keys=True,
    )
    if not decision.acts:
        return dg.SensorResult(skip_reason=decision.reason, cursor=cursor)
    return dg.SensorResult(run_requests=[request()], cursor=cursor)


def deployment_sensor(spec: ModelSpec) -> dg.SensorDefinition:
    @dg.sensor(
        name=sensor_names(spec)["deployment"],
        job_name=job_names(spec)["deploy"],
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Progressive delivery of {spec.name}: a version reaching staging starts a canary at "
        f"{spec.deployment.canary_steps[0]:.0%}; each partition of canary traffic is judged against production "
        "(live_performance); a Successful partition advances the weight (past the last step: promotion, the "
        f"old version archived); Failed partitions are counted and more than "
        f"{spec.deployment.analysis.failure_limit} roll the canary back; an Inconclusive partition holds.",
    )
    def _sensor(context: dg.SensorEvaluationContext, model_ops: ModelOpsResource) -> dg.SensorResult:
        decision = automation.deployment_step(model_ops.get_registry(), spec)
        return _result(decision, lambda: _deploy_request(spec, decision, "deployment_sensor"))

    return _sensor


def drift_sensor(spec: ModelSpec) -> dg.SensorDefinition:
    @dg.sensor(
        name=sensor_names(spec)["drift"],
        job_name=job_names(spec)["retrain"],
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Retrains {spec.name} when the production version's traffic shows dataset drift for "
        f"{spec.monitoring.persistence_windows} consecutive partitions and, where labels exist, its "
        f"{spec.monitoring.performance_metric} is worse than at evaluation by more than "
        f"{spec.monitoring.performance_drop}. Too little data never counts. The evidence goes into the "
        "run's tags and a `retrain` record in the registry's audit log.",
    )
    def _sensor(context: dg.SensorEvaluationContext, model_ops: ModelOpsResource) -> dg.SensorResult:
        decision = automation.retrain_step(
            model_ops.get_registry(),
            spec,
            automation.window_rows(model_ops.dataset(spec.name, "drift")),
            automation.window_rows(model_ops.dataset(spec.name, "live_performance")),
        )
        return _result(decision, lambda: _retrain_request(spec, decision))

    return _sensor


def _retrain_request(spec: ModelSpec, decision: Decision) -> dg.RunRequest:
    """The retrain run with the evidence in its tags (the run writes the audit record from them)."""
    ev = decision.evidence
    tags = {
        TRIGGER_TAG: "drift_sensor",
        RunTag.PRODUCTION_VERSION.value: str(decision.version),
        **window_tag(decision.window),
        RunTag.DRIFT_WINDOWS.value: ",".join(ev.get("windows", [])),
        RunTag.DRIFT_SHARE.value: ",".join(f"{s:.3f}" for s in ev.get("drift_share", []) if s is not None),
        REASON_TAG: decision.reason,
        EVIDENCE_TAG: json.dumps(ev, sort_keys=True, default=str),
    }
    if ev.get("metric"):
        tags[RunTag.LIVE_PREFIX.value + ev["metric"]] = f"{ev['live']:.4f}"
        tags[RunTag.BASELINE_PREFIX.value + ev["metric"]] = f"{ev['baseline']:.4f}"
    return dg.RunRequest(
        run_key=f"retrain:v{decision.version}:{decision.window}", job_name=job_names(spec)["retrain"], tags=tags
    )


def production_guard(spec: ModelSpec) -> dg.SensorDefinition:
    floor = ", ".join(f"{m} {b.model_dump(exclude_none=True)}" for m, b in spec.monitoring.performance_floor.items())

    @dg.sensor(
        name=sensor_names(spec)["guard"],
        job_name=job_names(spec)["deploy"],
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Keeps watching {spec.name} after promotion: when the production version's realized quality "
        f"is below the floor ({floor or 'none set'}) for {spec.monitoring.guard_windows} consecutive "
        "conclusive partitions, production is rolled back to the previous production version.",
    )
    def _sensor(context: dg.SensorEvaluationContext, model_ops: ModelOpsResource) -> dg.SensorResult:
        decision = automation.guard_step(
            model_ops.get_registry(), spec, automation.window_rows(model_ops.dataset(spec.name, "live_performance"))
        )
        return _result(decision, lambda: _deploy_request(spec, decision, "production_guard"))

    return _sensor


def retention_job(spec: ModelSpec) -> dg.JobDefinition:
    override = spec.monitoring.staging_retention_days

    @dg.op(
        name=f"{spec.name}_archive_expired",
        description=f"Archives {spec.name} versions past their stage's retention (the registry policy's "
        "retention section"
        + (f"; staging: {override:g} days for this model" if override else "")
        + "), never one that serves, has an alias, or is needed by a served version's lineage. "
        "The plan (what goes, what stays and why) is logged before anything changes.",
    )
    def _archive(context: dg.OpExecutionContext, model_ops: ModelOpsResource) -> None:
        reg = model_ops.get_registry()
        todo = retention.plan(reg, spec)
        context.log.info(retention.render(todo))
        done = retention.apply(reg, todo, run_id=context.run.run_id)
        context.log.info(f"{spec.name}: archived {', '.join(f'v{n}' for n in done) or 'nothing'}")

    @dg.job(name=job_names(spec)["retention"], description=f"Retention for {spec.name}'s registry entries.")
    def _job() -> None:
        _archive()

    return _job


def schedules(spec: ModelSpec, partition_job: object, retention_def: dg.JobDefinition) -> list[dg.ScheduleDefinition]:
    builtin = spec.source.kind is SourceKind.NYCFLIGHTS13
    if spec.partitioning is None:
        arrive = dg.ScheduleDefinition(
            name=f"{spec.name}_score_schedule",
            job=partition_job,
            cron_schedule="0 6 * * *",  # type: ignore[arg-type]
            default_status=dg.DefaultScheduleStatus.STOPPED,
            description="Re-reads, scores and monitors the static table daily. Off by default: turn it on when the "
            "table is refreshed in place.",
        )
    else:
        arrive = dg.build_schedule_from_partitioned_job(
            partition_job,
            name=f"{spec.name}_{spec.partitioning.cadence}_schedule",
            hour_of_day=6,  # type: ignore[arg-type]
            default_status=dg.DefaultScheduleStatus.STOPPED,
            description=f"Ingests, scores and monitors each {spec.partitioning.cadence} partition once it is "
            "complete. Off by default: "
            + (
                "the built-in source is the fixed year 2013, so a schedule "
                "would only redo December; turn it on for a live source."
                if builtin
                else "turn it on when the source receives new rows."
            ),
        )
    return [
        arrive,
        dg.ScheduleDefinition(
            name=f"{spec.name}_retention_schedule",
            job=retention_def,
            cron_schedule="0 3 * * *",
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description="Daily retention: archives stale staging versions, never anything referenced.",
        ),
    ]


def automation_defs(spec: ModelSpec) -> dg.Definitions:
    """The model's jobs, sensors and schedules."""
    asset_jobs = jobs(spec)
    keep = retention_job(spec)
    return dg.Definitions(
        jobs=[*asset_jobs, keep],
        sensors=[deployment_sensor(spec), drift_sensor(spec), production_guard(spec)],
        schedules=schedules(spec, asset_jobs[0], keep),
    )
