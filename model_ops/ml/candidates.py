"""A candidate model from a training snapshot: fit, register with full lineage, attach its drift reference.

Shared by the ``candidate_model`` asset and ``model-ops reproduce``, so the model a reproduction rebuilds is made by
exactly the code that made the registered one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from model_ops.artifacts import sklearn_io
from model_ops.data.delta import Dataset
from model_ops.ml import monitoring, training
from model_ops.registry import Registry
from model_ops.registry.registry import ModelVersion
from model_ops.specs.schema import ModelSpec

# A lineage key for candidates whose labels were permuted on purpose (the demo's faulty candidate): the seed of the
# permutation, so a reproduction permutes them identically.
LABEL_PERMUTATION = "label_permutation_seed"


def code_version(spec: ModelSpec) -> str:
    return f"train-{training.RECIPE_VERSION}-{spec.fingerprint('features', 'target', 'estimator', 'seed')}"


@dataclass
class Candidate:
    version: ModelVersion
    trained: training.Trained
    window: list[str]
    holdout: str | None
    snapshot_version: int


def training_rows(snapshot: pd.DataFrame, spec: ModelSpec, permutation_seed: int | None = None) -> pd.DataFrame:
    """The rows a candidate is fitted on (the snapshot's train split), labels permuted when asked to."""
    train = snapshot[snapshot["split"] == "train"]
    if permutation_seed is None:
        return train
    rows = training.labelled(train, spec).copy()
    rng = np.random.default_rng(permutation_seed)
    rows[spec.target.name] = rng.permutation(rows[spec.target.name].to_numpy())
    return rows


def artifact_sha256(model: Any) -> str:
    """SHA-256 of the model's canonical skops bytes (the one file of its registered artifact)."""
    return hashlib.sha256(sklearn_io.dumps(model)).hexdigest()


def train_and_register(reg: Registry, snap: Dataset, spec: ModelSpec, *, run_id: str | None = None,
                       permutation_seed: int | None = None, tags: dict[str, str] | None = None,
                       lineage: dict[str, Any] | None = None, description: str | None = None) -> Candidate:
    version = snap.version()
    df = snap.read(version=version)
    train = training_rows(df, spec, permutation_seed)
    trained = training.fit(train, spec)
    commit = snap.commit_metadata(version)
    holdout = str(df.loc[df["split"] == "holdout", "partition"].iloc[0]) if (df["split"] == "holdout").any() else None
    window = sorted(train["partition"].unique())
    schema = snap.schema_hash(version)
    recorded = {"code_version": code_version(spec), "seed": spec.seed, "estimator": spec.estimator.class_,
                "dagster_run_id": run_id, "schema_hash": schema, "rows": trained.rows,
                "positives": trained.positives, "window": window, "holdout": holdout,
                "source": commit.get("model_ops.source"), "snapshot_fingerprint": commit.get("model_ops.fingerprint"),
                "spec": spec.model_dump(mode="json", by_alias=True), **(lineage or {})}
    if permutation_seed is not None:
        recorded[LABEL_PERMUTATION] = permutation_seed
    mv = reg.register_model(
        spec.name, trained.pipeline, params=trained.params,
        metrics={"train_rows": trained.rows, "train_positive_rate": trained.positives / trained.rows},
        dataset={"uri": snap.uri, "version": version, "schema_hash": schema, "rows": trained.rows},
        signature=trained.signature,
        tags={"estimator": spec.estimator.class_.rsplit(".", 1)[-1], "owner": spec.owner, **(tags or {})},
        lineage=recorded, description=description or spec.description.strip(), run_id=run_id)
    reference = monitoring.reference_profile(train, trained.pipeline, spec)
    reg.attach(spec.name, mv.version, monitoring.PROFILE_LABEL, reference.to_json().encode(), run_id=run_id,
               reason=f"drift reference: {reference.rows} training rows of {', '.join(window)}, "
                      f"{len(reference.columns) - 1} monitored features and the score")
    return Candidate(mv, trained, window, holdout, version)
