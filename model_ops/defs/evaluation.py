"""Evaluation: the candidate against the champion on the same holdout, with blocking promotion gates.

Promotion state lives in the registry, never in "latest materialization": the evaluation asset always
materializes (its metrics are worth plotting even for a rejected model), but only a candidate that passes every
gate is moved to ``staging``, and a failed gate stops the run before ``deployment``.
"""


import dagster as dg

from model_ops.defs.common import common, json_safe, key, md_table
from model_ops.defs.resources import ModelOpsResource
from model_ops.errors import NotFoundError
from model_ops.ml import evaluation as ev, model_card
from model_ops.specs.schema import ModelSpec

EVAL_CODE_VERSION = "evaluate-1"
GATES = {
    "meets_thresholds": "The candidate meets every metric threshold of the spec's gates.thresholds.",
    "no_regression_vs_champion": "The candidate is no worse than the champion beyond gates.max_regression, "
                                 "on the same holdout rows.",
    "latency_within_sla": "Single-row and 1,000-row predict p99 within gates.latency_sla_ms.",
}


class EvaluationConfig(dg.Config):
    """Evaluate a named registry version instead of the newest candidate_model materialization."""

    version: int | None = None


def _candidate_version(context: dg.AssetExecutionContext, spec: ModelSpec, config: EvaluationConfig) -> int:
    if config.version is not None:
        return config.version
    event = context.instance.get_latest_materialization_event(key(spec, "candidate_model"))
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"{spec.name}/candidate_model has never been materialized, so there is nothing to "
                         "evaluate: materialize it first, or pass a registry version in the run config")
    return int(event.asset_materialization.metadata["version"].value)


def evaluation_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    asset_key = key(spec, "evaluation")

    @dg.asset(
        key=asset_key, deps=[key(spec, "candidate_model")], code_version=f"{EVAL_CODE_VERSION}-"
        f"{spec.fingerprint('gates', 'deployment')}", kinds={"scikitlearn"},
        description="The candidate and the current champion scored on the candidate's holdout month: accuracy, "
                    "precision, recall, F1, ROC-AUC, log loss, Brier, calibration error, per-carrier and "
                    "per-origin slices, and single-row / batch latency. Blocking checks gate promotion; when all "
                    "pass the candidate moves to staging in the registry, with the results recorded.",
        check_specs=[dg.AssetCheckSpec(n, asset=asset_key, blocking=True, description=d) for n, d in GATES.items()],
        **common(spec),
    )
    def _evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig,
                    model_ops: ModelOpsResource) -> dg.MaterializeResult:
        reg = model_ops.get_registry()
        number = _candidate_version(context, spec, config)
        candidate_mv = reg.get(spec.name, number)
        dataset = candidate_mv.dataset or {}
        snap = model_ops.dataset(spec.name, "training_set")
        df = snap.read(version=int(dataset["version"])) if "version" in dataset else None
        if df is None:
            raise dg.Failure(f"{candidate_mv.ref} records no training snapshot version; it cannot be evaluated here")
        holdout = df[df["split"] == "holdout"]
        candidate = ev.evaluate(reg.load_model(candidate_mv.ref), holdout, spec)
        try:
            champion_mv = reg.resolve(f"models:/{spec.name}@{reg.policy.production.alias or 'champion'}")
        except NotFoundError:
            champion_mv = None
        champion = None
        if champion_mv is not None:
            champion = candidate if champion_mv.version == number else \
                ev.evaluate(reg.load_model(champion_mv.ref), holdout, spec, measure_latency=False)
        label = f"champion v{champion_mv.version}" if champion_mv else None
        gates = [ev.meets_thresholds(candidate, spec), ev.no_regression(candidate, champion, spec, label),
                 ev.latency_within_sla(candidate, spec)]
        gate_dicts = [{"name": g.name, "passed": g.passed, "message": g.message} for g in gates]
        passed = all(g.passed for g in gates)
        holdout_month = str(holdout["partition"].iloc[0]) if len(holdout) else None
        summary = {"candidate": number, "champion": champion_mv.version if champion_mv else None,
                   "holdout": holdout_month, "metrics": candidate.flat(),
                   "champion_metrics": champion.flat() if champion else None, "gates": gate_dicts}
        moved = None
        if passed and candidate_mv.stage == reg.policy.initial_stage:
            moved = reg.transition(candidate_mv.ref, "staging", run_id=context.run.run_id, reason=(
                "passed every evaluation gate: " + "; ".join(g.message for g in gates)))
        evaluated = moved or candidate_mv
        card = model_card.render(spec, evaluated, candidate.flat(), gate_dicts, candidate.slices)
        reg.record(spec.name, "evaluation", version=number, run_id=context.run.run_id,
                   reason="passed every gate" if passed else "failed: " + "; ".join(
                       g.message for g in gates if not g.passed),
                   details={**summary, "model_card": card})
        if not passed:
            context.log.error(f"{candidate_mv.ref} stays in {candidate_mv.stage}: " + "; ".join(
                g.message for g in gates if not g.passed))
        stage = evaluated.stage
        metadata = {f"candidate_{k}": v for k, v in candidate.flat().items()}
        if champion:
            metadata.update({f"champion_{k}": v for k, v in champion.metrics.items()})
        metadata.update({
            "candidate_version": number, "champion_version": champion_mv.version if champion_mv else -1,
            "holdout": holdout_month or "", "holdout_rows": candidate.rows, "stage_after": stage,
            "promoted_to_staging": moved is not None,
            "slices": dg.MetadataValue.md("\n\n".join(
                f"**by {col}**\n\n" + md_table([{col: v, **m} for v, m in vals.items()])
                for col, vals in candidate.slices.items())),
            "calibration": dg.MetadataValue.md(md_table(candidate.calibration)),
            "model_card": dg.MetadataValue.md(card),
        })
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[dg.AssetCheckResult(asset_key=asset_key, check_name=g.name, passed=g.passed,
                                               description=g.message,
                                               metadata={"message": g.message,
                                                         "details": dg.MetadataValue.json(json_safe(g.details))})
                           for g in gates])

    return _evaluation

