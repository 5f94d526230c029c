"""Monthly monitoring assets: drift of the served traffic and realized performance per arm.

Both read the month's prediction log, so they judge exactly the traffic that was served, and both keep one
Delta row per window (``drift``, ``live_performance``) that the sensors read; the canary measurements also go
to the registry's audit log, where the deployment sensor counts them.
"""


import json
from datetime import datetime, timezone

import dagster as dg
import pandas as pd
import pyarrow as pa

from model_ops.defs.common import common, json_safe, key, md_table
from model_ops.defs.partitions import monthly
from model_ops.defs.resources import ModelOpsResource
from model_ops.ml import drift, monitoring as mon
from model_ops.ops.routing import CANARY, PRODUCTION
from model_ops.specs.schema import ModelSpec

MONITOR_CODE_VERSION = "monitor-1"
DRIFT_SCHEMA = pa.schema([
    ("partition", pa.string()), ("model_version", pa.int64()), ("status", pa.string()), ("dataset_drift", pa.bool_()),
    ("drift_share", pa.float64()), ("drifted", pa.string()), ("prediction_statistic", pa.float64()),
    ("prediction_drift", pa.bool_()), ("rows", pa.int64()), ("computed_at", pa.timestamp("us", tz="UTC")),
    ("report", pa.string())])
PERFORMANCE_SCHEMA = pa.schema([
    ("partition", pa.string()), ("arm", pa.string()), ("model_version", pa.int64()), ("served", pa.int64()),
    ("labelled", pa.int64()), ("coverage", pa.float64()), ("status", pa.string()), ("reason", pa.string()),
    ("scored_at", pa.timestamp("us", tz="UTC")), ("roc_auc", pa.float64()), ("log_loss", pa.float64()),
    ("brier", pa.float64()), ("accuracy", pa.float64())])


def _month_log(model_ops: ModelOpsResource, spec: ModelSpec, month: str) -> pd.DataFrame:
    log_ds = model_ops.dataset(spec.name, "predictions")
    if not log_ds.exists() or month not in log_ds.partition_keys():
        raise dg.Failure(f"{spec.name} has no predictions for {month}: materialize {spec.name}/predictions for "
                         f"{month} first")
    return log_ds.read([month])


def _reference_profile(context: dg.AssetExecutionContext, model_ops: ModelOpsResource, spec: ModelSpec,
                       version: int) -> drift.Profile:
    """The version's attached reference profile. A version registered without one (by hand, or before profiles
    existed) gets it built once from its recorded training snapshot and attached, so later months reuse it."""
    reg = model_ops.get_registry()
    raw = reg.attachment(spec.name, version, mon.PROFILE_LABEL)
    if raw is not None:
        return drift.Profile.from_json(raw.decode())
    mv = reg.get(spec.name, version)
    snap = model_ops.dataset(spec.name, "training_set")
    recorded = (mv.dataset or {}).get("version")
    if recorded is None or (mv.dataset or {}).get("uri") != snap.uri:
        raise dg.Failure(f"{mv.ref} has no drift reference profile and records no training snapshot of "
                         f"{snap.uri} to build one from; attach one with Registry.attach(..., "
                         f"'{mon.PROFILE_LABEL}', ...) or register the version through {spec.name}/candidate_model")
    df = snap.read(version=int(recorded))
    reference = mon.reference_profile(df[df["split"] == "train"], reg.load_model(mv.ref), spec)
    reg.attach(spec.name, version, mon.PROFILE_LABEL, reference.to_json().encode(), run_id=context.run.run_id,
               reason=f"drift reference built from the recorded training snapshot {snap.uri}@{recorded} "
                      f"({reference.rows} rows): the version was registered without one")
    context.log.warning(f"{mv.ref} had no drift reference profile; built it from {snap.uri}@{recorded} and attached it")
    return reference


def drift_report_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    asset_key = key(spec, "drift_report")
    columns = mon.drift_columns(spec)

    @dg.asset(
        key=asset_key, partitions_def=monthly, deps=[key(spec, "predictions")],
        code_version=f"{MONITOR_CODE_VERSION}-{spec.fingerprint('features', 'monitoring')}", kinds={"deltalake"},
        description="Feature and prediction drift of the month's traffic served by production, against the "
                    "production version's reference profile (computed from its training rows when it was "
                    "registered). Normalised Wasserstein / Jensen-Shannon above 1,000 reference rows, KS / "
                    "chi-square below; dataset drift when at least half the monitored features drift; fewer than "
                    f"{spec.monitoring.drift_window_min_rows} rows is 'insufficient data', never drift. "
                    f"Monitored: {', '.join(columns)} and the score"
                    + (f" (excluded: {', '.join(spec.monitoring.drift_exclude)})" if spec.monitoring.drift_exclude
                       else "") + ". One row per month in the `drift` Delta table, read by the drift sensor.",
        check_specs=[dg.AssetCheckSpec("no_dataset_drift", asset=asset_key, description=(
            "Warns when the month's served traffic has drifted from the production version's training data "
            "(or is too small to judge). Retraining waits for persistence; see the drift sensor."))],
        **common(spec),
    )
    def _drift_report(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.MaterializeResult:
        month = context.partition_key
        log = _month_log(model_ops, spec, month)
        served = log[log["served"] & (log["arm"] == PRODUCTION)]
        if served.empty:
            raise dg.Failure(f"no production traffic in the {month} prediction log of {spec.name}")
        version = int(served["model_version"].mode().iloc[0])
        served = served[served["model_version"] == version]
        reference = _reference_profile(context, model_ops, spec, version)
        report, prediction = mon.compare_window(reference, mon.drift_table(served, served["score"].to_numpy(), spec),
                                                spec)
        row = {"partition": month, "model_version": version, "status": report.status,
               "dataset_drift": report.dataset_drift, "drift_share": report.drift_share,
               "drifted": ",".join(report.drifted), "prediction_statistic": prediction.statistic,
               "prediction_drift": prediction.drift, "rows": int(len(served)),
               "computed_at": datetime.now(timezone.utc), "report": report_json(report, prediction)}
        table = model_ops.dataset(spec.name, "drift")
        delta_version = table.replace_partition(month, pa.Table.from_pylist([row], schema=DRIFT_SCHEMA))
        feature_rows = [{"feature": f.feature, "method": f.method, "statistic": f.statistic, "threshold": f.threshold,
                         "psi": f.psi, "drift": f.drift, "status": f.status, "n_current": f.n_current}
                        for f in [*report.features, prediction]]
        verdict = {"drift": f"dataset drift: {len(report.drifted)} of {len(report.features)} features drifted "
                            f"({', '.join(report.drifted)})",
                   "no_drift": f"no dataset drift (share {report.drift_share})",
                   "insufficient_data": f"insufficient data: {len(served)} rows < "
                                        f"{spec.monitoring.drift_window_min_rows}, no verdict"}[report.status]
        context.log.info(f"{spec.name} {month} against v{version}: {verdict}")
        metadata: dict[str, object] = {
            "status": report.status, "dataset_drift": report.dataset_drift,
            "drift_share": report.drift_share if report.drift_share is not None else float("nan"),
            "drifted_features": ", ".join(report.drifted) or "none", "production_version": version,
            "rows": len(served), "prediction_drift": prediction.drift,
            "prediction_statistic": prediction.statistic if prediction.statistic is not None else float("nan"),
            "features": dg.MetadataValue.md(md_table(feature_rows)), "delta_version": delta_version,
            "table_uri": table.uri,
        }
        for f in report.features:
            if f.statistic is not None:
                metadata[f"drift_{f.feature}"] = float(f.statistic)
        return dg.MaterializeResult(metadata=metadata, check_results=[dg.AssetCheckResult(
            asset_key=asset_key, check_name="no_dataset_drift", passed=report.status == "no_drift",
            severity=dg.AssetCheckSeverity.WARN, description=verdict,
            metadata={"drift_share": report.drift_share if report.drift_share is not None else float("nan"),
                      "drifted": ", ".join(report.drifted) or "none"})])

    return _drift_report


def report_json(report: drift.DriftReport, prediction: drift.FeatureDrift) -> str:
    return json.dumps(json_safe({**report.to_dict(), "prediction": prediction.__dict__}), sort_keys=True)


def live_performance_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    asset_key = key(spec, "live_performance")
    floor = ", ".join(f"{m} {'≥ ' + str(b.min) if b.min is not None else ''}{'≤ ' + str(b.max) if b.max is not None else ''}"
                      for m, b in spec.monitoring.performance_floor.items()) or "none set"

    @dg.asset(
        key=asset_key, partitions_def=monthly, deps=[key(spec, "predictions"), key(spec, "features")],
        code_version=f"{MONITOR_CODE_VERSION}-{spec.fingerprint('target', 'deployment', 'monitoring')}",
        kinds={"deltalake"},
        description="Realized quality of each served arm (production, canary) once the month's outcomes are known: "
                    "labels (actual arrival delay) joined to the prediction log by flight id, with label coverage. "
                    f"Fewer than {spec.monitoring.min_labels} labels is inconclusive, never 'fine'. When a canary "
                    "served, the canary analysis of the month (Successful / Failed / Inconclusive against production's "
                    "share of the same month's traffic) is recorded in the registry's audit log for the deployment sensor. "
                    f"Production floor: {floor}.",
        check_specs=[
            dg.AssetCheckSpec("production_within_floor", asset=asset_key, description=(
                "Warns when production's realized quality is below the spec's floor, or cannot be judged.")),
            dg.AssetCheckSpec("canary_analysis", asset=asset_key, description=(
                "Warns when the month's canary measurement is Failed or Inconclusive."))],
        **common(spec),
    )
    def _live_performance(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.MaterializeResult:
        month = context.partition_key
        log = _month_log(model_ops, spec, month)
        feats = model_ops.dataset(spec.name, "features").read([month], columns=["flight_id", spec.target.name])
        labels = feats.drop_duplicates("flight_id").set_index("flight_id")[spec.target.name].astype("float64")
        arms = mon.arm_performance(month, log, labels, spec)
        scored_at = pd.Timestamp(log["scored_at"].max()).to_pydatetime()
        by_arm = {a.arm: a for a in arms}
        prod, canary = by_arm.get(PRODUCTION), by_arm.get(CANARY)
        analysis = mon.analyse_canary(month, prod, canary, spec)
        reg = model_ops.get_registry()
        if analysis is not None:
            reg.record(spec.name, "canary_analysis", version=analysis.canary_version, run_id=context.run.run_id,
                       reason=f"{month} {analysis.phase}: {analysis.message}",
                       details=json_safe({**analysis.to_dict(), "scored_at": scored_at.isoformat(),
                                          "arms": [a.to_dict() for a in arms]}))
            if analysis.phase == mon.INCONCLUSIVE:
                reg.record(spec.name, "alert", version=analysis.canary_version, run_id=context.run.run_id,
                           reason=f"canary v{analysis.canary_version} is held at its weight: {month} was "
                                  f"inconclusive ({analysis.message}); it waits for a conclusive month, or for a "
                                  "person to advance or roll it back",
                           details={"window": month, "phase": analysis.phase})
                context.log.warning(f"{spec.name}: canary v{analysis.canary_version} held, {month} inconclusive")
        rows = [{"partition": month, "arm": a.arm, "model_version": a.model_version, "served": a.served,
                 "labelled": a.labelled, "coverage": a.coverage, "status": a.status, "reason": a.reason,
                 "scored_at": scored_at, **{m: a.metrics.get(m) for m in ("roc_auc", "log_loss", "brier", "accuracy")}}
                for a in arms]
        table = model_ops.dataset(spec.name, "live_performance")
        delta_version = table.replace_partition(month, pa.Table.from_pylist(rows, schema=PERFORMANCE_SCHEMA))
        metadata: dict[str, object] = {"arms": dg.MetadataValue.md(md_table([
            {"arm": a.arm, "version": a.model_version, "served": a.served, "labelled": a.labelled,
             "coverage": a.coverage, **{m: a.metrics.get(m, float("nan")) for m in ("roc_auc", "log_loss")},
             "status": a.status} for a in arms])), "delta_version": delta_version, "table_uri": table.uri}
        for a in arms:
            metadata[f"{a.arm}_version"] = a.model_version
            metadata[f"{a.arm}_label_coverage"] = a.coverage
            metadata[f"{a.arm}_status"] = a.status
            for m, v in a.metrics.items():
                metadata[f"{a.arm}_{m}"] = float(v)
        if analysis is not None:
            metadata["canary_analysis"] = analysis.phase
            metadata["canary_analysis_message"] = analysis.message
        prod_ok = prod is not None and prod.status == mon.OK
        prod_text = "no production traffic" if prod is None else (
            f"production v{prod.model_version}: {prod.status} ({prod.reason})")
        canary_text = "no canary served this month" if analysis is None else \
            f"canary v{analysis.canary_version} {analysis.phase}: {analysis.message}"
        context.log.info(f"{spec.name} {month}: {prod_text}; {canary_text}")
        return dg.MaterializeResult(metadata=metadata, check_results=[
            dg.AssetCheckResult(asset_key=asset_key, check_name="production_within_floor", passed=prod_ok,
                                severity=dg.AssetCheckSeverity.WARN, description=prod_text),
            dg.AssetCheckResult(asset_key=asset_key, check_name="canary_analysis",
                                passed=analysis is None or analysis.phase == mon.SUCCESSFUL,
                                severity=dg.AssetCheckSeverity.WARN, description=canary_text)])

    return _live_performance
