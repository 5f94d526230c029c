"""Predictions: score a month with the manifest in force and keep one row per prediction in a Delta log."""


import time
import uuid
from datetime import datetime, timezone

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from model_ops.data.delta import PARTITION
from model_ops.defs.common import common, key, md_table
from model_ops.defs.partitions import monthly
from model_ops.defs.resources import ModelOpsResource
from model_ops.ops import deployment as dep, routing
from model_ops.ml.training import predict_scores
from model_ops.specs.schema import ModelSpec

PREDICT_CODE_VERSION = "predict-1"
CHUNK = 512
REQUEST_NS = uuid.UUID("5b0c3d1e-9a57-4c43-8e8e-6d0f6a4d2b11")


def score_arm(model: object, rows: pd.DataFrame, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Scores and per-row latency (each chunk's wall time shared by its rows), in row order."""
    scores = np.empty(len(rows))
    latency = np.empty(len(rows))
    for start in range(0, len(rows), CHUNK):
        part = rows.iloc[start:start + CHUNK]
        t0 = time.perf_counter()
        scores[start:start + len(part)] = predict_scores(model, part, spec)
        latency[start:start + len(part)] = (time.perf_counter() - t0) * 1000 / max(len(part), 1)
    return scores, latency


def score_month(features: pd.DataFrame, manifest: dep.Manifest, models: dict[int, object],
                spec: ModelSpec, semvers: dict[int, str], scored_at: datetime | None = None) -> pd.DataFrame:
    """The prediction log rows of one month (pure apart from timing: tested directly). ``scored_at`` is taken
    before the manifest was read, so a window counts as served after a deployment change only if it was."""
    arms = routing.assign_arms(features["flight_id"], manifest.canary_weight if manifest.canary else 0.0,
                               salt=spec.name)
    plan = [(routing.PRODUCTION, manifest.production, arms == routing.PRODUCTION, True)]
    if manifest.canary:
        plan.append((routing.CANARY, manifest.canary, arms == routing.CANARY, True))
    if manifest.shadow:
        plan.append((routing.SHADOW, manifest.shadow, np.ones(len(features), dtype=bool), False))
    scored_at = scored_at or datetime.now(timezone.utc)
    frames = []
    for arm, version, mask, served in plan:
        rows = features[mask]
        if rows.empty:
            continue
        scores, latency = score_arm(models[version], rows, spec)
        out = pd.DataFrame({
            "request_id": [str(uuid.uuid5(REQUEST_NS, f"{spec.name}/{fid}/{arm}/{version}"))
                           for fid in rows["flight_id"]],
            "ts": rows["time_hour"].to_numpy(), "scored_at": scored_at, PARTITION: rows[PARTITION].to_numpy(),
            "flight_id": rows["flight_id"].to_numpy(), "model_version": version, "model_semver": semvers[version],
            "arm": arm, "served": served, "score": scores,
            "prediction": (scores >= spec.deployment.decision_threshold).astype("int8"), "latency_ms": latency,
        })
        for name in spec.feature_names:
            out[name] = rows[name].to_numpy()
        frames.append(out)
    return pd.concat(frames, ignore_index=True)


def predictions_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=key(spec, "predictions"), partitions_def=monthly,
        deps=[key(spec, "features"), key(spec, "deployment")], code_version=f"{PREDICT_CODE_VERSION}-"
        f"{spec.fingerprint('features', 'deployment')}", kinds={"deltalake", "scikitlearn"},
        description="Every flight of the month scored by the manifest in force: sticky routing by a hash of the "
                    "flight id into production or canary (by the canary weight), the shadow version scored on all "
                    "rows but never served. One row per prediction in a Delta log (request id, time, model "
                    "version, arm, served, features, score, latency); re-scoring a month replaces that month.",
        **common(spec),
    )
    def _predictions(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.MaterializeResult:
        month = context.partition_key
        reg = model_ops.get_registry()
        scored_at = datetime.now(timezone.utc)
        manifest = dep.current(reg, spec.name)
        if manifest.production is None:
            raise dg.Failure(f"nothing serves {spec.name} in production, so there is nothing to score with: "
                             f"materialize {spec.name}/deployment first")
        features_ds = model_ops.dataset(spec.name, "features")
        if not features_ds.exists() or month not in features_ds.partition_keys():
            raise dg.Failure(f"{spec.name} has no validated features for {month} (never materialized, or kept "
                             f"out by a failed check): materialize {spec.name}/features for {month} first")
        version = features_ds.version()
        features = features_ds.read([month], version=version).sort_values("flight_id", kind="stable")
        versions = {v for v in (manifest.production, manifest.canary, manifest.shadow) if v}
        models = {v: reg.load_model(f"models:/{spec.name}/{v}") for v in versions}
        semvers = {v: reg.get(spec.name, v).semver for v in versions}
        log = score_month(features.reset_index(drop=True), manifest, models, spec, semvers, scored_at)
        out = model_ops.dataset(spec.name, "predictions")
        delta_version = out.replace_partition(month, pa.Table.from_pandas(log, preserve_index=False))
        served = log[log["served"]]
        by_arm = log.groupby("arm").agg(rows=("score", "size"), mean_score=("score", "mean"),
                                        positive_rate=("prediction", "mean"),
                                        latency_ms=("latency_ms", "mean")).reset_index()
        meta: dict[str, object] = {
            "dagster/row_count": len(log), "served_rows": len(served), "delta_version": delta_version,
            "table_uri": out.uri, "features_version": version, "serving": manifest.describe(),
            "mean_score": float(served["score"].mean()), "predicted_positive_rate": float(served["prediction"].mean()),
            "latency_ms_p99": float(np.percentile(log["latency_ms"], 99)),
            "by_arm": dg.MetadataValue.md(md_table(by_arm.to_dict("records"))),
        }
        for arm, n in log["arm"].value_counts().items():
            meta[f"rows_{arm}"] = int(n)
        return dg.MaterializeResult(metadata=meta)

    return _predictions
