"""Registry upkeep as a Dagster job on a schedule: what writes leave to maintenance (``Registry.maintain``)."""

import dagster as dg

from model_ops.defs.resources import ModelOpsResource

JOB = "registry_maintenance"
SCHEDULE = "registry_maintenance_schedule"


@dg.op(
    name="maintain_registry",
    description="Compacts the registry's event log (one small file per write) into large files, checkpoints and "
    "vacuums it, brings the SQL-readable versions table up to date and writes the state snapshot that lets a fresh "
    "`model-ops resolve` answer without reading the log. Registrations never do this themselves, so their cost "
    "stays flat; a failed step fails the run and names itself, and nothing the registry means changes.",
)
def maintain_registry(context: dg.OpExecutionContext, model_ops: ModelOpsResource) -> dg.Output[None]:
    report = model_ops.get_registry().maintain()
    if report.get("skipped"):
        context.log.info(f"nothing done: {report['skipped']}")
        return dg.Output(None, metadata={"skipped": report["skipped"]})
    log = report.get("log") or {}
    snap = report.get("snapshot") or {}
    context.log.info(
        f"event log at commit {report['log_version']} ({report['events']} events): {log.get('files_removed', 0)} "
        f"files compacted into {log.get('files_added', 0)}; versions table +{report.get('versions_projected') or 0}; "
        f"snapshot {snap.get('file', 'not written')}{' (new)' if snap.get('written') else ''}"
    )
    if report["problems"]:
        raise dg.Failure(
            description="registry maintenance did not complete: " + "; ".join(report["problems"]),
            metadata={"problems": dg.MetadataValue.json(report["problems"])},
        )
    return dg.Output(
        None,
        metadata={
            "log commit": report["log_version"],
            "events": report["events"],
            "files compacted": log.get("files_removed", 0),
            "versions added to the table": report.get("versions_projected") or 0,
            "snapshot": snap.get("file", "-"),
            "seconds": report["seconds"]["total"],
        },
    )


@dg.job(
    name=JOB,
    description="Upkeep of the model registry: log compaction, the versions table and the state snapshot.",
)
def registry_maintenance() -> None:
    maintain_registry()


def upkeep_defs() -> dg.Definitions:
    schedule = dg.ScheduleDefinition(
        name=SCHEDULE,
        job=registry_maintenance,
        cron_schedule="*/15 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every 15 minutes: keeps the snapshot current (reads answer from it until the next write) "
        "and the log compact, so no registration pays for upkeep.",
    )
    return dg.Definitions(jobs=[registry_maintenance], schedules=[schedule])
