"""Evaluation: the candidate against the champion on the same holdout, with blocking promotion gates.

Promotion state lives in the registry, never in "latest materialization": the evaluation asset always
materializes (its metrics are worth plotting even for a rejected model), but only a candidate that passes every
gate is moved to ``staging``, and a failed gate stops the run before ``deployment``.
"""

import dagster as dg

from model_ops.defs.common import attribution, business_window, key, md_table, typed_spec
from model_ops.defs.resources import ModelOpsResource
from model_ops.errors import UsageError
from model_ops.jsonable import json_safe, readable
from model_ops.ml import candidates
from model_ops.specs.schema import METRICS, ModelSpec

EVAL_CODE_VERSION = "evaluate-1"
GATES = {
    "meets_thresholds": "The candidate meets every metric threshold of the spec's gates.thresholds.",
    "no_regression_vs_champion": "The candidate is no worse than the champion beyond gates.max_regression, "
    "on the same holdout rows.",
    "latency_within_sla": "Single-row and 1,000-row predict p99 (CPU time, re-measured before failing) within "
    "gates.latency_sla_ms.",
}


class EvaluationConfig(dg.Config):
    """Evaluate a named registry version instead of the newest candidate_model materialization."""

    version: int | None = None


def _candidate_version(context: dg.AssetExecutionContext, spec: ModelSpec, config: EvaluationConfig) -> int:
    if config.version is not None:
        return config.version
    event = context.instance.get_latest_materialization_event(key(spec, "candidate_model"))
    if event is None or event.asset_materialization is None:
        raise dg.Failure(
            f"{spec.name}/candidate_model has never been materialized, so there is nothing to "
            "evaluate: materialize it first, or pass a registry version in the run config"
        )
    return int(event.asset_materialization.metadata["version"].value)


def evaluation_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    asset_key = key(spec, "evaluation")
    metrics = ", ".join(sorted(METRICS[spec.task]))

    @dg.asset(
        key=asset_key,
        deps=[key(spec, "candidate_model")],
        code_version=f"{EVAL_CODE_VERSION}-{spec.fingerprint('gates', 'deployment')}",
        kinds={"scikitlearn"},
        description=f"The candidate and the current champion scored on the candidate's holdout: {metrics}, "
        "slices by each categorical feature, and single-row / 1,000-row prediction latency (CPU time "
        "of the model's own work, robust to a busy machine). Blocking checks gate promotion; when all "
        "pass the candidate moves to staging in the registry, with the results recorded.",
        check_specs=[dg.AssetCheckSpec(n, asset=asset_key, blocking=True, description=d) for n, d in GATES.items()],
        **attribution(spec),
    )
    def _evaluation(
        context: dg.AssetExecutionContext, config: EvaluationConfig, model_ops: ModelOpsResource
    ) -> dg.MaterializeResult:
        reg = model_ops.get_registry()
        snap = model_ops.dataset(spec.name, "training_set")
        number = _candidate_version(context, spec, config)
        try:
            done = candidates.evaluate_and_stage(reg, snap, typed_spec(spec, snap), number, run_id=context.run.run_id)
        except UsageError as exc:
            raise dg.Failure(exc.message) from exc
        if not done.passed:
            context.log.error(
                f"{done.candidate.ref} stays in {done.stage}: "
                + "; ".join(g.message for g in done.gates if not g.passed)
            )
        metadata: dict[str, object] = {f"candidate_{k}": readable(v) for k, v in done.evaluation.flat().items()}
        if done.champion_evaluation:
            metadata.update({f"champion_{k}": readable(v) for k, v in done.champion_evaluation.metrics.items()})
        metadata.update(
            {
                "candidate_version": number,
                "holdout": done.holdout or "",
                "holdout_rows": done.evaluation.rows,
                "stage_after": done.stage,
                "promoted_to_staging": done.staged is not None,
                "slices": dg.MetadataValue.md(
                    "\n\n".join(
                        f"**by {col}**\n\n" + md_table([{col: v, **m} for v, m in vals.items()])
                        for col, vals in done.evaluation.slices.items()
                    )
                    or "_no categorical feature to slice by_"
                ),
                "model_card": dg.MetadataValue.md(done.card),
            }
        )
        metadata.update(business_window(context))
        if done.champion:
            metadata["champion_version"] = done.champion.version
        if done.evaluation.calibration:
            metadata["calibration"] = dg.MetadataValue.md(md_table(done.evaluation.calibration))
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    asset_key=asset_key,
                    check_name=g.name,
                    passed=g.passed,
                    description=g.message,
                    metadata={"message": g.message, "details": dg.MetadataValue.json(json_safe(g.details))},
                )
                for g in done.gates
            ],
        )

    return _evaluation
