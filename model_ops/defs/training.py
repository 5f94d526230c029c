"""The candidate model: fit the declared estimator (or the team's trainer) on the training snapshot and register it
with full lineage."""

import dagster as dg

from model_ops.defs.common import attribution, business_window, key, typed_spec
from model_ops.defs.resources import ModelOpsResource
from model_ops.ml import candidates, model_card
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import RunTag


def candidate_model_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    what = spec.estimator.class_ if spec.estimator else f"the trainer {spec.trainer}"
    kinds = {"scikitlearn"}
    if spec.estimator and spec.estimator.class_.split(".")[0] in ("xgboost", "lightgbm"):
        kinds = {spec.estimator.class_.split(".")[0]}

    @dg.asset(
        key=key(spec, "candidate_model"),
        deps=[key(spec, "training_set")],
        code_version=candidates.code_version(spec),
        kinds=kinds,
        tags={RunTag.STAGE.value: "train"},
        pool="training",
        description=f"Fits {what} on the training window of the newest training snapshot ({spec.task}) and "
        "registers it as a version in the model registry, with its lineage (dataset URI and Delta "
        "version, schema hash, rows, params, seed, code version, git commit, environment, run id) "
        "and the drift reference profile of its training rows (monitoring never rereads them). "
        "Identical inputs give identical bytes, hence the same registry version. The data version is "
        "the artifact's SHA-256.",
        **attribution(spec),
    )
    def _candidate(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.MaterializeResult:
        snap = model_ops.dataset(spec.name, "training_set")
        registry = model_ops.get_registry()
        made = candidates.train_and_register(
            registry,
            snap,
            typed_spec(spec, snap),
            run_id=context.run.run_id,
            lineage={"dagster_job": context.run.job_name},  # the builder of the version's provenance
        )
        mv, trained, window, version = made.version, made.trained, made.window, made.snapshot_version
        card = model_card.render(typed_spec(spec, snap), mv)
        context.log.info(f"{spec.name}: {mv.ref} ({mv.semver}, {mv.stage}) sha256:{mv.digest[:12]}")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(mv.digest),
            metadata={
                "version": mv.version,
                "semver": mv.semver,
                "ref": mv.ref,
                # the stage when this run registered it: the registry asset shows the stage now
                "stage_when_registered": mv.stage,
                "digest": mv.digest,
                "flavor": mv.flavor,
                "dataset": f"{snap.uri}@{version}",
                "train_rows": trained.rows,
                "window": ", ".join(window),
                **business_window(context),
                "bump": f"{mv.bump.get('level')}: {mv.bump.get('reason')}",
                "new_version": mv.run_id == context.run.run_id,
                "model_card": dg.MetadataValue.md(card),
            },
        )

    return _candidate
