"""The registry in the Dagster UI: each model's ``registry`` asset, observed by a sensor on every registry change.

The asset's latest observation holds the versions table (version, semver, stage, aliases, digest, key metrics,
created, by) as a Dagster table; every stage or alias move, approval, rollback and deployment is an observation of
its own, with the version, the change and its reason, so the asset's event history is the model's registry
history. Beside it, the ``versions`` asset has one partition per version (``v1``, ``v2``, ...), recorded with that
version's semver, stage, aliases and evaluation metrics whenever it is registered or changes, so the asset's
metadata plots draw each metric by version. The sensor reads the registry only when its event log moved (one
stat, or one HEAD on S3, otherwise).
"""

from __future__ import annotations

import json

import dagster as dg

from model_ops.defs.common import attribution, key
from model_ops.defs.resources import ModelOpsResource
from model_ops.ops import registry_view
from model_ops.specs.schema import ModelSpec

SENSOR_INTERVAL_SECONDS = 30
# Moves observed per tick at most: a first tick over a long history shows its newest (the table shows the rest);
# a later one that finds more (after the sensor was off) shows the oldest and the next tick goes on from there.
MOVES_PER_TICK = 200


def sensor_name(spec: ModelSpec) -> str:
    return f"{spec.name}_registry_sensor"


def version_partitions(spec: ModelSpec) -> dg.DynamicPartitionsDefinition:
    """One partition per registered version of the model, added by its registry sensor."""
    return dg.DynamicPartitionsDefinition(name=f"{spec.name}_versions")


def versions_asset(spec: ModelSpec) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=key(spec, "versions"),
        deps=[key(spec, "registry")],
        partitions_def=version_partitions(spec),
        kinds={"registry"},
        description=f"{spec.name}'s versions one by one: partition `vN` is version N, recorded with its semver, "
        "stage, aliases and every evaluation metric when it is registered and whenever its stage, an alias or "
        "its evaluation changes. Its metadata plots (by partition) draw each metric against the version; a "
        f"partition's events are that version's life. Recorded by `{sensor_name(spec)}`.",
        **attribution(spec),
    )


def registry_asset(spec: ModelSpec) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=key(spec, "registry"),
        deps=[key(spec, "candidate_model"), key(spec, "evaluation"), key(spec, "deployment")],
        kinds={"registry"},
        description=f"{spec.name} in the model registry, as it is now: every version with its stage, aliases, "
        "digest and key metrics (the latest observation's `versions` table), and every move of a stage or an "
        "alias, approval, rollback and deployment as an observation with its reason. Observed by "
        f"`{sensor_name(spec)}` whenever the registry changes; the same facts as `model-ops versions "
        f"{spec.name}` and `model-ops audit {spec.name}`.",
        **attribution(spec),
    )


def preferred_metrics(spec: ModelSpec) -> list[str]:
    """The versions table's first metric columns: what the model is monitored on, then what its gates judge."""
    return [spec.monitoring_metric, *spec.gates.thresholds, *spec.gates.max_regression]


def observations(
    spec: ModelSpec, found: registry_view.View, moved: list[registry_view.Move]
) -> list[dg.AssetObservation]:
    """``moved`` (the moves since the cursor, oldest first), then the table as it is now."""
    asset = key(spec, "registry")
    out = []
    for move in moved:
        metadata: dict[str, object] = {"event": move.event, "change": move.change, "actor": move.actor}
        if move.version is not None:
            metadata["version"] = move.version
        if move.reason:
            metadata["reason"] = move.reason
        metadata["seq"] = str(move.seq)  # an identifier: the UI would plot a number
        metadata["recorded_at"] = move.time
        out.append(dg.AssetObservation(asset_key=asset, description=move.describe(), metadata=metadata))
    columns = [
        dg.TableColumn(name, "float" if name in found.metrics else "int" if name == "version" else "string")
        for name in (found.versions[0] if found.versions else {})
    ]
    table: dict[str, object] = {
        "versions": dg.MetadataValue.table(
            records=[dg.TableRecord(row) for row in found.versions], schema=dg.TableSchema(columns=columns)
        ),
        "version_count": len(found.versions),
        "stages": dg.MetadataValue.json(found.stages),
    }
    if found.production is not None:
        table["production_version"] = found.production
    table["last_event"] = str(found.last_seq)
    summary = f"{len(found.versions)} version(s)" + (
        f", production v{found.production}" if found.production is not None else ", none in production"
    )
    out.append(dg.AssetObservation(asset_key=asset, description=summary, metadata=table))
    return out


def version_records(spec: ModelSpec, found: registry_view.View, versions: list[int]) -> list[dg.AssetMaterialization]:
    """Each of ``versions`` as it is now, on its own partition of the ``versions`` asset.

    Materializations, not observations, though nothing runs: the UI's by-partition plots read only each
    partition's latest materialization (Dagster 1.13), and a version's record is what this external asset holds."""
    out = []
    for version in versions:
        facts = found.facts[version]
        out.append(
            dg.AssetMaterialization(
                asset_key=key(spec, "versions"),
                partition=registry_view.partition_key(version),
                description=f"v{version} {facts['semver']}: {facts['stage']}",
                metadata=facts,
            )
        )
    return out


def registry_sensor(spec: ModelSpec) -> dg.SensorDefinition:
    @dg.sensor(
        name=sensor_name(spec),
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Shows {spec.name}'s registry in the UI: when the registry changed since the last tick, "
        "each new move of a stage or alias (with its reason) and then the versions table are observations of "
        "the `registry` asset, and each version that changed is recorded on its partition of the `versions` "
        "asset. It reads and requests nothing else.",
    )
    def _sensor(context: dg.SensorEvaluationContext, model_ops: ModelOpsResource) -> dg.SensorResult:
        state = json.loads(context.cursor) if context.cursor else {}
        seen, recorded = int(state.get("seq", 0)), int(state.get("recorded", 0))
        behind = recorded < int(state.get("top", 0))  # versions not yet recorded on the versions asset
        reg = model_ops.get_registry()
        log = reg.log_version()
        if state.get("log") == log and not behind:
            return dg.SensorResult(
                skip_reason=f"the registry has not changed (event log version {log})", cursor=context.cursor
            )
        found = registry_view.view(reg, spec.name, after=seen, preferred=preferred_metrics(spec))
        if found is None:
            return dg.SensorResult(
                skip_reason=f"no version of {spec.name} is registered yet", cursor=json.dumps({"log": log, "seq": 0})
            )
        top = max(found.facts)
        if found.last_seq <= seen and recorded >= top:
            cursor = json.dumps({"log": log, "seq": found.last_seq, "recorded": recorded, "top": top})
            return dg.SensorResult(skip_reason=f"no change to {spec.name} (other models changed)", cursor=cursor)
        if context.cursor is None or len(found.moved) <= MOVES_PER_TICK:
            moved, upto, log_seen = found.moved[-MOVES_PER_TICK:], found.last_seq, log
        else:  # more than a tick shows: the oldest now, the rest from the next tick on (it reads again)
            moved = found.moved[:MOVES_PER_TICK]
            upto, log_seen = moved[-1].seq, None
        # Versions get their partition in version order, MOVES_PER_TICK a tick, so the UI plots them in order
        # and a long history is recorded over several ticks; a version not reached yet is recorded when it is.
        new = [v for v in sorted(found.facts) if v > recorded][:MOVES_PER_TICK]
        recorded = new[-1] if new else recorded
        versions = sorted({*new, *(v for v in found.changed(upto) if v <= recorded)})
        cursor = json.dumps({"log": log_seen, "seq": upto, "recorded": recorded, "top": top})
        return dg.SensorResult(
            asset_events=[*observations(spec, found, moved), *version_records(spec, found, versions)],
            dynamic_partitions_requests=[
                version_partitions(spec).build_add_request([registry_view.partition_key(v) for v in new])
            ]
            if new
            else None,
            cursor=cursor,
        )

    return _sensor
