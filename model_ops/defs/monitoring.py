"""Monitoring assets, one per partition: drift of the served traffic, realized performance per arm, and the
live server's serving health (latency, throughput, error rate per version and arm).

The first two read the partition's prediction log, so they judge exactly the traffic that was served, and both
keep one Delta row per window (``drift``, ``live_performance``) that the sensors read; the canary measurements also
go to the registry's audit log, where the deployment sensor counts them. ``live_performance`` also judges the
declared ``metric_drop`` alerts, which need the outcomes the live server never sees (the server judges the other
alert kinds itself, every few seconds). ``serving_health`` reads the ``serving_stats`` table the live server writes.
"""

import json
from datetime import datetime, timezone
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa

from model_ops.data.delta import PARTITION
from model_ops.data.snapshot import SPLIT, TRAIN
from model_ops.data.sources import read_labels
from model_ops.defs.common import attribution, key, md_table, partition_key, typed_spec
from model_ops.defs.partitions import partitions_def
from model_ops.defs.resources import ModelOpsResource
from model_ops.jsonable import json_safe, readable
from model_ops.ml import drift
from model_ops.ml import monitoring as mon
from model_ops.serving import alerts as live_alerts
from model_ops.serving import stats as serving_stats
from model_ops.specs.schema import LIVE_METRICS, AlertKind, ModelSpec
from model_ops.vocab import Arm, ArmStatus, CanaryPhase, DriftStatus, RecordKind

MONITOR_CODE_VERSION = "monitor-2"
DRIFT_SCHEMA = pa.schema(
    [
        (PARTITION, pa.string()),
        ("model_version", pa.int64()),
        ("status", pa.string()),
        ("dataset_drift", pa.bool_()),
        ("drift_share", pa.float64()),
        ("drifted", pa.string()),
        ("prediction_statistic", pa.float64()),
        ("prediction_drift", pa.bool_()),
        ("rows", pa.int64()),
        ("computed_at", pa.timestamp("us", tz="UTC")),
        ("report", pa.string()),
    ]
)


def performance_schema(spec: ModelSpec) -> pa.Schema:
    return pa.schema(
        [
            (PARTITION, pa.string()),
            ("arm", pa.string()),
            ("model_version", pa.int64()),
            ("served", pa.int64()),
            ("labelled", pa.int64()),
            ("coverage", pa.float64()),
            ("status", pa.string()),
            ("reason", pa.string()),
            ("scored_at", pa.timestamp("us", tz="UTC")),
            *[(m, pa.float64()) for m in sorted(LIVE_METRICS[spec.task])],
        ]
    )


def _partition_log(model_ops: ModelOpsResource, spec: ModelSpec, partition: str) -> pd.DataFrame:
    log_ds = model_ops.dataset(spec.name, "predictions")
    if not log_ds.exists() or partition not in log_ds.partition_keys():
        raise dg.Failure(
            f"{spec.name} has no predictions for {partition}: materialize {spec.name}/predictions for {partition} first"
        )
    return log_ds.read([partition])


def window_of(spec: ModelSpec, partition: str, log: pd.DataFrame) -> str:
    """The monitoring window a scoring belongs to: its partition, or, for a static table scored again and again,
    the day it was scored (so drift persistence, canary analysis and the guard have windows to count)."""
    if spec.partitioning is not None:
        return partition
    return pd.Timestamp(log["scored_at"].max()).tz_convert("UTC").date().isoformat()


def _classes(reg: Any, spec: ModelSpec, versions: list[int]) -> dict[int, list[Any]]:
    """Each version's classes, from its signature (classifiers only)."""
    out = {}
    for v in versions:
        classes = ((reg.get(spec.name, v).signature or {}).get("outputs") or {}).get("classes")
        if classes is not None:
            out[v] = list(classes)
    return out


def _reference(
    context: dg.AssetExecutionContext, model_ops: ModelOpsResource, spec: ModelSpec, version: int
) -> drift.Profile:
    """The version's reference profile; one built once from its recorded training snapshot when it has none."""
    snap = model_ops.dataset(spec.name, "training_set")

    def training_rows(mv: Any) -> pd.DataFrame:
        recorded = (mv.dataset or {}).get("version")
        if recorded is None or (mv.dataset or {}).get("uri") != snap.uri:
            raise dg.Failure(
                f"{mv.ref} has no drift reference profile and records no training snapshot of "
                f"{snap.uri} to build one from; attach one with Registry.attach(..., "
                f"'{mon.PROFILE_LABEL}', ...) or register the version through {spec.name}/candidate_model"
            )
        df = snap.read(version=int(recorded))
        return df[df[SPLIT] == TRAIN]

    profile, built = mon.reference_profile_for(
        model_ops.get_registry(),
        spec,
        version,
        training_rows,
        run_id=context.run.run_id,
        source=f"its training snapshot {snap.uri}",
    )
    if built:
        context.log.warning(f"{spec.name} v{version} had no drift reference profile; built it and attached it")
    return profile


def drift_report_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    asset_key = key(spec, "drift_report")
    columns = mon.drift_columns(spec)

    @dg.asset(
        key=asset_key,
        partitions_def=partitions_def(spec),
        deps=[key(spec, "predictions")],
        code_version=f"{MONITOR_CODE_VERSION}-{spec.fingerprint('features', 'monitoring')}",
        kinds={"deltalake"},
        description="Feature and prediction drift of the partition's traffic served by production, against the "
        "production version's reference profile (computed from its training rows when it was "
        "registered). Normalised Wasserstein / Jensen-Shannon above 1,000 reference rows, KS / "
        "chi-square below; dataset drift when at least half the monitored features drift; fewer than "
        f"{spec.monitoring.drift_window_min_rows} rows is 'insufficient data', never drift. "
        f"Monitored: {', '.join(columns)} and the model's output"
        + (f" (excluded: {', '.join(spec.monitoring.drift_exclude)})" if spec.monitoring.drift_exclude else "")
        + ". One row per partition in the `drift` Delta table, read by the drift sensor.",
        check_specs=[
            dg.AssetCheckSpec(
                "no_dataset_drift",
                asset=asset_key,
                description=(
                    "Warns when the partition's served traffic has drifted from the production version's training data "
                    "(or is too small to judge). Retraining waits for persistence; see the drift sensor."
                ),
            )
        ],
        **attribution(spec),
    )
    def _drift_report(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.MaterializeResult:
        log = _partition_log(model_ops, spec, partition_key(context))
        partition = window_of(spec, partition_key(context), log)
        typed = typed_spec(spec, model_ops.dataset(spec.name, "features"))
        served = log[log["served"] & (log["arm"] == Arm.PRODUCTION)]
        if served.empty:
            raise dg.Failure(f"no production traffic in the {partition} prediction log of {spec.name}")
        version = int(served["model_version"].mode().iloc[0])
        served = served[served["model_version"] == version]
        reference = _reference(context, model_ops, typed, version)
        classes = _classes(model_ops.get_registry(), typed, [version]).get(version)
        window = mon.compare_window(reference, mon.log_drift_table(served, typed, classes), typed)
        report, prediction = window.report, window.prediction
        row = {
            PARTITION: partition,
            "model_version": version,
            "status": str(report.status),
            "dataset_drift": report.dataset_drift,
            "drift_share": report.drift_share,
            "drifted": ",".join(report.drifted),
            "prediction_statistic": prediction.statistic if prediction else None,
            "prediction_drift": window.prediction_drift,
            "rows": int(len(served)),
            "computed_at": datetime.now(timezone.utc),
            "report": json.dumps(json_safe(window.to_dict()), sort_keys=True),
        }
        table = model_ops.dataset(spec.name, "drift")
        table.replace_partition(partition, pa.Table.from_pylist([row], schema=DRIFT_SCHEMA))
        feature_rows = [
            {
                "feature": f.feature,
                "method": f.method,
                "statistic": f.statistic,
                "threshold": f.threshold,
                "psi": f.psi,
                "drift": f.drift,
                "status": f.status,
                "n_current": f.n_current,
            }
            for f in [*report.features, *window.predictions]
        ]
        verdict = {
            DriftStatus.DRIFT: f"dataset drift: {len(report.drifted)} of {len(report.features)} features "
            f"drifted ({', '.join(report.drifted)})",
            DriftStatus.NO_DRIFT: f"no dataset drift (share {report.drift_share})",
            DriftStatus.INSUFFICIENT_DATA: f"insufficient data: {len(served)} rows < "
            f"{spec.monitoring.drift_window_min_rows}, no verdict",
        }[DriftStatus(report.status)]
        context.log.info(f"{spec.name} {partition} against v{version}: {verdict}")
        metadata: dict[str, object] = {
            "status": str(report.status),
            "dataset_drift": report.dataset_drift,
            "drifted_features": ", ".join(report.drifted) or "none",
            "production_version": version,
            "rows": len(served),
            "prediction_drift": window.prediction_drift,
            "features": dg.MetadataValue.md(md_table(feature_rows)),
            "table_uri": table.uri,
        }
        if report.drift_share is not None:
            metadata["drift_share"] = readable(float(report.drift_share))
        if prediction is not None and prediction.statistic is not None:
            metadata["prediction_statistic"] = readable(float(prediction.statistic))
        for f in report.features:
            if f.statistic is not None:
                metadata[f"drift_{f.feature}"] = readable(float(f.statistic))
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    asset_key=asset_key,
                    check_name="no_dataset_drift",
                    passed=report.status == DriftStatus.NO_DRIFT,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=verdict,
                    metadata={"drifted": ", ".join(report.drifted) or "none"},
                )
            ],
        )

    return _drift_report


def labels_for(model_ops: ModelOpsResource, spec: ModelSpec, partition: str, keys: pd.Series) -> pd.Series:
    """The known outcome of each key, indexed by key: from the declared labels table (late outcomes, labelled by
    the target's rule) or else from the features' own label column."""
    if spec.labels is not None:
        return read_labels(spec, keys, model_ops.location())
    feats = model_ops.dataset(spec.name, "features").read([partition], columns=[spec.key_column, spec.label])
    feats = feats.drop_duplicates(spec.key_column)
    return pd.Series(feats[spec.label].to_numpy(), index=feats[spec.key_column].to_numpy())


def live_performance_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    asset_key = key(spec, "live_performance")
    floor = ", ".join(f"{m} {b.describe()}" for m, b in spec.monitoring.performance_floor.items()) or "none set"
    where = f"the labels table {spec.labels.uri}" if spec.labels else f"the features' {spec.label} column"
    schema = performance_schema(spec)

    @dg.asset(
        key=asset_key,
        partitions_def=partitions_def(spec),
        deps=[key(spec, "predictions"), key(spec, "features")],
        code_version=f"{MONITOR_CODE_VERSION}-{spec.fingerprint('target', 'labels', 'deployment', 'monitoring')}",
        kinds={"deltalake"},
        description="Realized quality of each served arm (production, canary) once the partition's outcomes are "
        f"known: labels from {where} joined to the prediction log by {spec.key_column}, with label "
        f"coverage; {', '.join(sorted(LIVE_METRICS[spec.task]))}. Fewer than "
        f"{spec.monitoring.min_labels} labels is inconclusive, never 'fine'. When a canary served, the "
        "canary analysis of the partition (Successful / Failed / Inconclusive against production's share "
        "of the same traffic) is recorded in the registry's audit log for the deployment sensor. "
        f"Production floor: {floor}.",
        check_specs=[
            dg.AssetCheckSpec(
                "production_within_floor",
                asset=asset_key,
                description=(
                    "Warns when production's realized quality is below the declared floor, or cannot be judged."
                ),
            ),
            dg.AssetCheckSpec(
                "canary_analysis",
                asset=asset_key,
                description=("Warns when the partition's canary measurement is Failed or Inconclusive."),
            ),
        ],
        **attribution(spec),
    )
    def _live_performance(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.MaterializeResult:
        stored = partition_key(context)
        log = _partition_log(model_ops, spec, stored)
        partition = window_of(spec, stored, log)
        typed = typed_spec(spec, model_ops.dataset(spec.name, "features"))
        labels = labels_for(model_ops, typed, stored, log[spec.key_column])
        reg = model_ops.get_registry()
        versions = sorted(int(v) for v in log["model_version"].unique())
        arms = mon.arm_performance(partition, log, labels, typed, _classes(reg, typed, versions))
        scored_at = pd.Timestamp(log["scored_at"].max()).to_pydatetime()
        by_arm = {a.arm: a for a in arms}
        prod, canary = by_arm.get(Arm.PRODUCTION), by_arm.get(Arm.CANARY)
        analysis = mon.analyse_canary(partition, prod, canary, typed)
        if analysis is not None:
            reg.record(
                spec.name,
                RecordKind.CANARY_ANALYSIS,
                version=analysis.canary_version,
                run_id=context.run.run_id,
                reason=f"{partition} {analysis.phase}: {analysis.message}",
                details=json_safe(
                    {**analysis.to_dict(), "scored_at": scored_at.isoformat(), "arms": [a.to_dict() for a in arms]}
                ),
            )
            if analysis.phase == CanaryPhase.INCONCLUSIVE:
                reg.record(
                    spec.name,
                    RecordKind.ALERT,
                    version=analysis.canary_version,
                    run_id=context.run.run_id,
                    reason=f"canary v{analysis.canary_version} is held at its weight: {partition} was "
                    f"inconclusive ({analysis.message}); it waits for a conclusive partition, or for "
                    "a person to advance or roll it back",
                    details={"window": partition, "phase": str(analysis.phase)},
                )
                context.log.warning(f"{spec.name}: canary v{analysis.canary_version} held, {partition} inconclusive")
        rows = [
            {
                PARTITION: partition,
                "arm": a.arm,
                "model_version": a.model_version,
                "served": a.served,
                "labelled": a.labelled,
                "coverage": a.coverage,
                "status": str(a.status),
                "reason": a.reason,
                "scored_at": scored_at,
                **{m: a.metrics.get(m) for m in LIVE_METRICS[spec.task]},
            }
            for a in arms
        ]
        table = model_ops.dataset(spec.name, "live_performance")
        table.replace_partition(partition, pa.Table.from_pylist(rows, schema=schema))
        drops = live_alerts.judge_metric_drops(
            reg, model_ops.location(), typed, partition, arms, run_id=context.run.run_id
        )
        for d in drops:
            (context.log.warning if d.status == live_alerts.FIRING else context.log.info)(
                f"alert {d.alert}: {d.reason}"
            )
        shown = sorted(LIVE_METRICS[spec.task])
        metadata: dict[str, object] = {
            "arms": dg.MetadataValue.md(
                md_table(
                    [
                        {
                            "arm": a.arm,
                            "version": a.model_version,
                            "served": a.served,
                            "labelled": a.labelled,
                            "coverage": a.coverage,
                            **{m: a.metrics.get(m, float("nan")) for m in shown},
                            "status": str(a.status),
                        }
                        for a in arms
                    ]
                )
            ),
            "table_uri": table.uri,
        }
        for a in arms:
            metadata[f"{a.arm}_version"] = a.model_version
            metadata[f"{a.arm}_label_coverage"] = a.coverage
            metadata[f"{a.arm}_status"] = str(a.status)
            for m, v in a.metrics.items():
                metadata[f"{a.arm}_{m}"] = readable(float(v))
        if analysis is not None:
            metadata["canary_analysis"] = str(analysis.phase)
            metadata["canary_analysis_message"] = analysis.message
        if drops:
            metadata["metric_drop_alerts"] = dg.MetadataValue.md(
                md_table([{"alert": d.alert, "arm": d.arm, "status": d.status, "reason": d.reason} for d in drops])
            )
            for d in drops:
                if d.value is not None:
                    metadata[f"alert_{d.alert}_{d.arm}_drop"] = readable(float(d.value))
        prod_ok = prod is not None and prod.status == ArmStatus.OK
        prod_text = (
            "no production traffic"
            if prod is None
            else (f"production v{prod.model_version}: {prod.status} ({prod.reason})")
        )
        canary_text = (
            "no canary served in this partition"
            if analysis is None
            else f"canary v{analysis.canary_version} {analysis.phase}: {analysis.message}"
        )
        context.log.info(f"{spec.name} {partition}: {prod_text}; {canary_text}")
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    asset_key=asset_key,
                    check_name="production_within_floor",
                    passed=prod_ok,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=prod_text,
                ),
                dg.AssetCheckResult(
                    asset_key=asset_key,
                    check_name="canary_analysis",
                    passed=analysis is None or analysis.phase == CanaryPhase.SUCCESSFUL,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=canary_text,
                ),
            ],
        )

    return _live_performance


def serving_health_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    """The live server's latency, throughput and error rate in one partition, per version and arm."""
    asset_key = key(spec, "serving_health")
    server_alerts = [a for a in spec.alerts if a.kind is not AlertKind.METRIC_DROP]
    guard = spec.deployment.guard

    @dg.asset(
        key=asset_key,
        partitions_def=partitions_def(spec),
        code_version=f"{MONITOR_CODE_VERSION}-serving-1",
        kinds={"deltalake"},
        description="How `model-ops serve` answered this partition's live traffic, per model version and arm: "
        "requests, errors and error rate (refusals after routing and server failures over everything judged), "
        "throughput (requests per second over the intervals that saw traffic) and p50 / p95 / p99 latency, "
        "merged from the latency histograms every server appends to the `serving_stats` table every few seconds. "
        "Alerts the server judges: "
        + (", ".join(f"{a.name} ({a.kind} > {a.threshold:g})" for a in server_alerts) or "none declared")
        + "; canary guard: "
        + (
            f"max error rate {guard.max_error_rate}, max p99 {guard.max_p99_ms} ms over {guard.window_seconds:g} s"
            if guard
            else "none"
        )
        + ". Materialize a partition after (or while) the server answers its traffic.",
        **attribution(spec),
    )
    def _serving_health(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.MaterializeResult:
        partition = partition_key(context)
        table = serving_stats.stats_dataset(model_ops.location(), spec.name)
        frame = serving_stats.read_stats(model_ops.location(), spec.name, [partition])
        if frame.empty:
            told = (
                f"no live traffic recorded for {partition}: {table.uri} "
                + ("has no rows for it" if table.exists() else "does not exist yet")
                + f" (no `model-ops serve` answered {spec.name} requests in this window)"
            )
            context.log.info(told)
            return dg.MaterializeResult(metadata={"status": told, "requests": 0, "table_uri": table.uri})
        summary = serving_stats.summarize(frame)
        total = serving_stats.overall(frame)
        rows = []
        metadata: dict[str, object] = {}
        for r in summary.to_dict("records"):
            who = "unattributed" if r["arm"] is None else f"{r['arm']}_v{r['model_version']}"
            rows.append(
                {
                    "arm": r["arm"] or "(before routing / server error)",
                    "version": "" if r["model_version"] is None else r["model_version"],
                    "semver": r["model_semver"] or "",
                    "requests": r["requests"],
                    "errors": r["errors"],
                    "error_rate": _num(r["error_rate"]),
                    "throughput_rps": _num(r["throughput_rps"]),
                    "p50_ms": _num(r["latency_p50_ms"]),
                    "p95_ms": _num(r["latency_p95_ms"]),
                    "p99_ms": _num(r["latency_p99_ms"]),
                }
            )
            for name in ("requests", "errors", "error_rate", "throughput_rps", "latency_p50_ms", "latency_p95_ms",
                         "latency_p99_ms"):  # fmt: skip
                if r[name] is not None:
                    metadata[f"{who}_{name}"] = readable(float(r[name]))
        for name in ("requests", "errors", "error_rate", "throughput_rps", "latency_p50_ms", "latency_p95_ms",
                     "latency_p99_ms"):  # fmt: skip
            if total.get(name) is not None:
                metadata[name] = readable(float(total[name]))
        servers = sorted(frame["server"].dropna().unique())
        first, last = frame["window_start"].min(), frame["window_end"].max()
        metadata.update(
            {
                "versions_and_arms": dg.MetadataValue.md(md_table(rows)),
                "servers": ", ".join(servers),
                "covered": f"{pd.Timestamp(first).isoformat()} to {pd.Timestamp(last).isoformat()}",
                "table_uri": table.uri,
            }
        )
        context.log.info(
            f"{spec.name} {partition}: {total['requests']} requests, {total['errors']} errors, "
            f"p99 {_num(total['latency_p99_ms'])} ms"
        )
        return dg.MaterializeResult(metadata=metadata)

    return _serving_health


def _num(value: float | None) -> float | str:
    return "" if value is None else round(float(value), 4)
