"""Predictions: score a partition with the manifest in force and keep one row per prediction in a Delta log."""

import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from model_ops.data.delta import PARTITION
from model_ops.defs.common import attribution, delta_version, key, md_table, partition_key, typed_spec
from model_ops.defs.partitions import partitions_def
from model_ops.defs.resources import ModelOpsResource
from model_ops.jsonable import readable
from model_ops.ml import tasks
from model_ops.ml.training import model_input, version_spec
from model_ops.ops import deployment as dep
from model_ops.ops import experiments, routing
from model_ops.ops.experiments import Experiment
from model_ops.serving.predlog import ORIGIN, Origin, replace_batch_rows
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import Arm

PREDICT_CODE_VERSION = "predict-2"
CHUNK = 512
REQUEST_NS = uuid.UUID("5b0c3d1e-9a57-4c43-8e8e-6d0f6a4d2b11")


def score_arm(model: object, rows: pd.DataFrame, spec: ModelSpec) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The model's output columns (prediction, score, per-class probabilities) and per-row latency (each chunk's
    wall time shared by its rows), in row order."""
    parts: list[dict[str, np.ndarray]] = []
    latency = np.empty(len(rows))
    for start in range(0, len(rows), CHUNK):
        part = rows.iloc[start : start + CHUNK]
        t0 = time.perf_counter()
        predicted = tasks.predict(model, model_input(part, spec), spec)
        latency[start : start + len(part)] = (time.perf_counter() - t0) * 1000 / max(len(part), 1)
        parts.append(predicted.columns())
    names = list(dict.fromkeys(n for p in parts for n in p))
    return {n: np.concatenate([np.asarray(p[n]) for p in parts]) for n in names}, latency


def request_id(model: str, partition: Any, key: Any, arm: Any, version: Any) -> str:
    """The batch path's id of one prediction: a name-based UUID of model, partition, key, arm and version, so
    scoring the same row with the same version again gives it the same id."""
    return str(uuid.uuid5(REQUEST_NS, f"{model}/{partition}/{key}/{arm}/{version}"))


def written_by_batch(spec: ModelSpec) -> Callable[[pd.DataFrame], np.ndarray]:
    """Which of some prediction-log rows the batch path wrote, for rows that do not say (written before the log
    recorded an origin): those whose request id is the one :func:`request_id` gives them. A live row's id is
    its caller's, or random."""

    def is_batch(rows: pd.DataFrame) -> np.ndarray:
        columns = [rows[c] for c in (PARTITION, spec.key_column, "arm", "model_version")]
        expected = [request_id(spec.name, *values) for values in zip(*columns)]
        return rows["request_id"].to_numpy(dtype=object) == np.array(expected, dtype=object)

    return is_batch


def score_partition(
    features: pd.DataFrame,
    manifest: dep.Manifest,
    models: dict[int, object],
    spec: ModelSpec,
    semvers: dict[int, str],
    scored_at: datetime | None = None,
    specs: dict[int, ModelSpec] | None = None,
    experiment: Experiment | None = None,
) -> pd.DataFrame:
    """The prediction log rows of one partition (pure apart from timing: tested directly). ``scored_at`` is taken
    before the manifest was read, so a window counts as served after a deployment change only if it was.
    ``specs`` holds each version's view of the declaration (its own inputs) where it differs from ``spec``.
    ``experiment``, the A/B experiment running on the model, routes the served rows as the live server does
    (:func:`model_ops.ops.routing.plan`, the one routing rule of both); ``models`` then holds its arms' versions."""
    specs = specs or {}
    keys = features[spec.key_column]
    plan = [
        (arm, version, np.isin(np.arange(len(features)), idx), True)
        for arm, version, idx in routing.plan(keys, manifest, experiment, salt=spec.name)
    ]
    if manifest.shadow:
        plan.append((Arm.SHADOW, manifest.shadow, np.ones(len(features), dtype=bool), False))
    scored_at = scored_at or datetime.now(timezone.utc)
    frames = []
    for arm, version, mask, served in plan:
        rows = features[mask]
        if rows.empty:
            continue
        outputs, latency = score_arm(models[version], rows, specs.get(version, spec))
        out = pd.DataFrame(
            {
                "request_id": [
                    request_id(spec.name, p, k, arm, version) for p, k in zip(rows[PARTITION], rows[spec.key_column])
                ],
                "ts": rows[spec.time_column].to_numpy(),
                "scored_at": scored_at,
                PARTITION: rows[PARTITION].to_numpy(),
                spec.key_column: rows[spec.key_column].to_numpy(),
                "model_version": version,
                "model_semver": semvers[version],
                "arm": str(arm),
                "served": served,
                **outputs,
                "latency_ms": latency,
            }
        )
        for name in spec.feature_names:
            out[name] = rows[name].to_numpy()
        frames.append(out)
    return pd.concat(frames, ignore_index=True)


def predictions_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=key(spec, "predictions"),
        partitions_def=partitions_def(spec),
        deps=[key(spec, "features"), key(spec, "deployment")],
        code_version=f"{PREDICT_CODE_VERSION}-{spec.fingerprint('features', 'deployment')}",
        kinds={"deltalake"},
        description=f"Every {spec.key_column} of the partition scored by the manifest in force: sticky routing by a "
        "hash of the key into production or canary (by the canary weight), the shadow version scored on "
        "all rows but never served. One row per prediction in a Delta log (request id, time, model "
        "version, arm, served, features, prediction, score, latency), shared with the live server "
        "(origin batch or live); re-scoring a partition replaces its batch rows and keeps the live ones.",
        **attribution(spec),
    )
    def _predictions(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.MaterializeResult:
        partition = partition_key(context)
        reg = model_ops.get_registry()
        scored_at = datetime.now(timezone.utc)
        manifest = dep.current(reg, spec.name)
        if manifest.production is None:
            raise dg.Failure(
                f"nothing serves {spec.name} in production, so there is nothing to score with: "
                f"materialize {spec.name}/deployment first"
            )
        features_ds = model_ops.dataset(spec.name, "features")
        if not features_ds.exists() or partition not in features_ds.partition_keys():
            raise dg.Failure(
                f"{spec.name} has no validated features for {partition} (never materialized, or kept "
                f"out by a failed check): materialize {spec.name}/features for {partition} first"
            )
        typed = typed_spec(spec, features_ds)
        version = features_ds.version()
        features = features_ds.read([partition], version=version).sort_values(spec.key_column, kind="stable")
        running = experiments.running(reg.audit(spec.name))  # routes the partition as the live server does
        experiment = Experiment(running.config) if running is not None else None
        versions = {v for v in (manifest.production, manifest.canary, manifest.shadow) if v}
        versions |= {a.version for a in running.config.arms} if running is not None else set()
        models = {v: reg.load_model(f"models:/{spec.name}/{v}") for v in versions}
        records = {v: reg.get(spec.name, v) for v in versions}
        semvers = {v: mv.semver for v, mv in records.items()}
        specs = {v: version_spec(typed, mv.signature) for v, mv in records.items()}
        log = score_partition(
            features.reset_index(drop=True), manifest, models, typed, semvers, scored_at, specs, experiment
        )
        out = model_ops.dataset(spec.name, "predictions")
        # only the batch rows: live rows the server logged into this partition stay
        table = pa.Table.from_pandas(log, preserve_index=False)
        written = replace_batch_rows(out, partition, table, written_by_batch(typed))
        served = log[log["served"]]
        by_arm = (
            log.groupby("arm")
            .agg(rows=("score", "size"), mean_score=("score", "mean"), latency_ms=("latency_ms", "mean"))
            .reset_index()
        )
        meta: dict[str, object] = {
            "dagster/row_count": len(log),
            "served_rows": len(served),
            "delta_version": delta_version(written),
            "table_uri": out.uri,
            "features_version": delta_version(version),
            "serving": manifest.describe(),
            "mean_score": readable(float(served["score"].mean())),
            "latency_ms_p99": readable(float(np.percentile(log["latency_ms"], 99))),
            "by_arm": dg.MetadataValue.md(md_table(by_arm.to_dict("records"))),
            # the live server's rows in this partition, kept beside the batch rows (monitoring reads both)
            "live_rows": int((out.read([partition], version=written, columns=[ORIGIN])[ORIGIN] == Origin.LIVE).sum()),
        }
        for arm, n in log["arm"].value_counts().items():
            meta[f"rows_{arm}"] = int(n)
        return dg.MaterializeResult(metadata=meta)

    return _predictions
