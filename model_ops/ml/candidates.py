"""A candidate model's life before deployment: fit it from a training snapshot, register it with full lineage and
its drift reference, then evaluate it against the champion on the same holdout and stage it when every gate passes.

Shared by the Dagster assets, ``model-ops reproduce`` and the command line, so the model a reproduction rebuilds
is made by exactly the code that made the registered one, and promotion after evaluation has one implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from model_ops.data.arrow import release
from model_ops.data.delta import PARTITION, Dataset
from model_ops.data.snapshot import HOLDOUT, SPLIT, TRAIN
from model_ops.errors import NotFoundError, PolicyError, UsageError
from model_ops.jsonable import json_safe
from model_ops.ml import evaluation as ev
from model_ops.ml import flavors, model_card, monitoring, training
from model_ops.ops.deployment import staging_stage
from model_ops.registry import Registry
from model_ops.registry.registry import ModelVersion
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import RecordKind

# A lineage key for candidates whose labels were permuted on purpose (the demo's faulty candidate): the seed of the
# permutation, so a reproduction permutes them identically.
LABEL_PERMUTATION = "label_permutation_seed"


def code_version(spec: ModelSpec) -> str:
    return (
        f"train-{training.RECIPE_VERSION}-"
        f"{spec.fingerprint('task', 'features', 'target', 'estimator', 'trainer', 'seed')}"
    )


@dataclass
class Candidate:
    version: ModelVersion
    trained: training.Trained
    window: list[str]
    holdout: str | None
    snapshot_version: int


def training_table(snap: Dataset, version: int, spec: ModelSpec) -> pa.Table:
    """The train split of snapshot ``version``: the columns a fit reads (every column for a team's own trainer,
    which may read any of them), without the holdout's rows."""
    names = snap.arrow_schema(version).names
    if spec.trainer is None:
        wanted = [PARTITION, spec.key_column, spec.label, *spec.feature_names]
        columns: list[str] | None = [c for c in dict.fromkeys(wanted) if c in names]
    else:
        columns = None
    return snap.read_arrow(version=version, columns=columns, where=[(SPLIT, "=", TRAIN)])


def holdout_of(snap: Dataset, version: int) -> str | None:
    hold = snap.read_arrow(version=version, columns=[PARTITION], where=[(SPLIT, "=", HOLDOUT)])
    return str(hold.column(PARTITION)[0].as_py()) if hold.num_rows else None


@dataclass
class Fitted:
    """A model fitted on a snapshot's train split, with what the fit was prepared from and the window it saw."""

    trained: training.Trained
    prepared: training.Prepared
    window: list[str]


def fit_snapshot(snap: Dataset, version: int, spec: ModelSpec, permutation_seed: int | None = None) -> Fitted:
    """Fit ``spec`` on the train split of snapshot ``version``: the one path registration and ``reproduce`` take.

    The rows are read as Arrow, turned into the model's input and let go of before the fit starts, so a fit
    holds the input and what the estimator builds from it, not the rows beside them."""
    table = training_table(snap, version, spec)
    window = sorted(str(k) for k in pc.unique(table.column(PARTITION)).to_pylist())
    prepared = training.prepare(table, spec, permutation_seed)
    del table
    release()
    prepared.keep_inputs = False
    trained = training.fit(prepared, spec)
    if prepared.inputs is None:  # let go of during the fit: read again for the drift reference
        table = training_table(snap, version, spec)
        prepared.inputs = training.table_input(table, spec, training.canonical_order(table, spec))
        del table
        release()
    return Fitted(trained, prepared, window)


def train_and_register(
    reg: Registry,
    snap: Dataset,
    spec: ModelSpec,
    *,
    run_id: str | None = None,
    permutation_seed: int | None = None,
    tags: dict[str, str] | None = None,
    lineage: dict[str, Any] | None = None,
    description: str | None = None,
) -> Candidate:
    version = snap.version()
    fitted = fit_snapshot(snap, version, spec, permutation_seed)
    trained, window = fitted.trained, fitted.window
    refused = flavors.untrusted_types(trained.model)
    if refused:
        raise PolicyError(
            f"{spec.name}: the fitted model holds types that loading would refuse: "
            f"{', '.join(refused)}; nothing was registered",
            hint="use scikit-learn's own transformers, or trust these types by name with "
            f"MODEL_OPS_TRUSTED_TYPES={','.join(refused)} if you trust their code",
        )
    commit = snap.commit_metadata(version)
    holdout = holdout_of(snap, version)
    schema = snap.schema_hash(version)
    recorded = {
        "code_version": code_version(spec),
        "seed": spec.seed,
        "task": str(spec.task),
        "estimator": spec.estimator.class_ if spec.estimator else None,
        "trainer": trained.trainer,
        "dagster_run_id": run_id,
        "schema_hash": schema,
        "rows": trained.rows,
        **trained.summary,
        "window": window,
        "holdout": holdout,
        "source": commit.get("model_ops.source"),
        "snapshot_fingerprint": commit.get("model_ops.fingerprint"),
        "spec": spec.model_dump(mode="json", by_alias=True),
        **(lineage or {}),
    }
    if permutation_seed is not None:
        recorded[LABEL_PERMUTATION] = permutation_seed
    kind = spec.estimator.class_.rsplit(".", 1)[-1] if spec.estimator else spec.trainer or "trainer"
    metrics: dict[str, float] = {"train_rows": trained.rows}
    if "positive_rate" in trained.summary:
        metrics["train_positive_rate"] = trained.summary["positive_rate"]
    if "target_mean" in trained.summary:
        metrics["train_target_mean"] = trained.summary["target_mean"]
    mv = reg.register_model(
        spec.name,
        trained.model,
        params=trained.params,
        metrics=metrics,
        dataset={"uri": snap.uri, "version": version, "schema_hash": schema, "rows": trained.rows},
        signature=trained.signature,
        tags={"estimator": kind, "owner": spec.owner, "task": str(spec.task), **(tags or {})},
        lineage=recorded,
        description=description or spec.description.strip(),
        run_id=run_id,
    )
    reference = monitoring.reference_profile(fitted.prepared, trained.model, spec)
    reg.attach(
        spec.name,
        mv.version,
        monitoring.PROFILE_LABEL,
        reference.to_json().encode(),
        run_id=run_id,
        reason=f"drift reference: {reference.rows} training rows of {', '.join(window)}, "
        f"{len(reference.columns) - 1} monitored columns and the model's output",
    )
    return Candidate(mv, trained, window, holdout, version)


@dataclass
class Evaluated:
    """What evaluating a candidate found and did (the Dagster asset turns it into metadata and checks)."""

    candidate: ModelVersion
    evaluation: ev.Evaluation
    champion: ModelVersion | None
    champion_evaluation: ev.Evaluation | None
    gates: list[ev.GateResult]
    holdout: str | None
    staged: ModelVersion | None
    card: str
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def stage(self) -> str:
        return (self.staged or self.candidate).stage


def champion_of(reg: Registry, name: str) -> ModelVersion | None:
    try:
        return reg.resolve(f"models:/{name}@{reg.policy.production.alias or 'champion'}")
    except NotFoundError:
        return None


def evaluate_and_stage(
    reg: Registry,
    snap: Dataset,
    spec: ModelSpec,
    number: int,
    *,
    run_id: str | None = None,
    candidate_stage: str | None = None,
) -> Evaluated:
    """The candidate and the current champion on the candidate's holdout; every gate; the candidate moved from
    the policy's initial stage to ``candidate_stage`` (default: the stage candidates wait in before deployment,
    :func:`model_ops.ops.deployment.staging_stage`) when all pass; an ``evaluation`` record with the model card."""
    candidate_stage = candidate_stage or staging_stage(reg)
    candidate_mv = reg.get(spec.name, number)
    dataset = candidate_mv.dataset or {}
    if "version" not in dataset:
        raise UsageError(
            f"{candidate_mv.ref} records no training snapshot version; it cannot be evaluated here",
            hint="evaluate versions registered by the candidate_model asset",
        )
    holdout = snap.read(version=int(dataset["version"]), where=[(SPLIT, "=", HOLDOUT)])
    candidate = ev.evaluate(reg.load_model(candidate_mv.ref), holdout, spec)
    champion_mv = champion_of(reg, spec.name)
    champion, incomparable = None, None
    if champion_mv is not None and champion_mv.version == number:
        champion = candidate
    elif champion_mv is not None:
        own = training.version_spec(spec, champion_mv.signature)
        missing = [c for c in own.feature_names if c not in holdout.columns or holdout[c].isna().all()]
        if missing:
            incomparable = ev.GateResult(
                "no_regression_vs_champion",
                False,
                f"cannot compare with champion v{champion_mv.version}: it needs input column(s) "
                f"{', '.join(missing)} that the candidate's holdout no longer has; review the change and promote "
                f"by hand with `model-ops transition {candidate_mv.ref} {candidate_stage}` (and --breaking for "
                f"{reg.policy.production.stage})",
                {"missing": missing},
            )
        else:
            champion = ev.evaluate(reg.load_model(champion_mv.ref), holdout, own, measure_latency=False)
    label = f"champion v{champion_mv.version}" if champion_mv else None
    gates = [
        ev.meets_thresholds(candidate, spec),
        incomparable or ev.no_regression(candidate, champion, spec, label),
        ev.latency_within_sla(candidate, spec),
    ]
    gate_dicts = [{"name": g.name, "passed": g.passed, "message": g.message} for g in gates]
    passed = all(g.passed for g in gates)
    holdout_key = str(holdout[PARTITION].iloc[0]) if len(holdout) else None
    summary = {
        "candidate": number,
        "champion": champion_mv.version if champion_mv else None,
        "holdout": holdout_key,
        "metrics": candidate.flat(),
        "champion_metrics": champion.flat() if champion else None,
        "gates": gate_dicts,
    }
    staged = None
    if passed and candidate_mv.stage == reg.policy.initial_stage:
        staged = reg.transition(
            candidate_mv.ref,
            candidate_stage,
            run_id=run_id,
            reason=("passed every evaluation gate: " + "; ".join(g.message for g in gates)),
        )
    card = model_card.render(spec, staged or candidate_mv, candidate.flat(), gate_dicts, candidate.slices)
    reg.record(
        spec.name,
        RecordKind.EVALUATION,
        version=number,
        run_id=run_id,
        reason="passed every gate" if passed else "failed: " + "; ".join(g.message for g in gates if not g.passed),
        details=json_safe({**summary, "model_card": card}),
    )
    return Evaluated(candidate_mv, candidate, champion_mv, champion, gates, holdout_key, staged, card, summary)
