"""The candidate model: fit the spec's pipeline on the training snapshot and register it with full lineage."""


import dagster as dg

from model_ops.defs.common import common, key
from model_ops.defs.resources import ModelOpsResource
from model_ops.ml import candidates, model_card
from model_ops.specs.schema import ModelSpec


def candidate_model_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=key(spec, "candidate_model"), deps=[key(spec, "training_set")], code_version=candidates.code_version(spec),
        kinds={"scikitlearn", "skops"}, tags={"model_ops/stage": "train"}, pool="training",
        description=f"Fits {spec.estimator.class_} on the training window of the newest training snapshot and "
                    "registers it as a version in the model registry, with its lineage (dataset URI and Delta "
                    "version, schema hash, rows, params, seed, code version, git commit, environment, run id) "
                    "and the drift reference profile of its training rows (monitoring never rereads them). "
                    "Identical inputs give identical bytes, hence the same registry version. The data version is "
                    "the artifact's SHA-256.",
        **common(spec),
    )
    def _candidate(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.MaterializeResult:
        snap = model_ops.dataset(spec.name, "training_set")
        registry = model_ops.get_registry()
        made = candidates.train_and_register(registry, snap, spec, run_id=context.run.run_id)
        mv, trained, window, version = made.version, made.trained, made.window, made.snapshot_version
        card = model_card.render(spec, mv)
        context.log.info(f"{spec.name}: {mv.ref} ({mv.semver}, {mv.stage}) sha256:{mv.digest[:12]}")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(mv.digest),
            metadata={"version": mv.version, "semver": mv.semver, "ref": mv.ref, "stage": mv.stage,
                      "digest": mv.digest, "dataset": f"{snap.uri}@{version}", "train_rows": trained.rows,
                      "window": ", ".join(window), "bump": f"{mv.bump.get('level')}: {mv.bump.get('reason')}",
                      "new_version": mv.run_id == context.run.run_id,
                      "model_card": dg.MetadataValue.md(card)})

    return _candidate
