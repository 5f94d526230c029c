"""The candidate model: fit the spec's pipeline on the training snapshot and register it with full lineage."""


import dagster as dg

from model_ops.defs.common import common, key
from model_ops.defs.resources import ModelOpsResource
from model_ops.ml import drift, model_card, monitoring, training
from model_ops.specs.schema import ModelSpec

TRAIN_CODE_VERSION = f"train-{training.RECIPE_VERSION}"


def code_version(spec: ModelSpec) -> str:
    return f"{TRAIN_CODE_VERSION}-{spec.fingerprint('features', 'target', 'estimator', 'seed')}"


def candidate_model_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=key(spec, "candidate_model"), deps=[key(spec, "training_set")], code_version=code_version(spec),
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
        version = snap.version()
        df = snap.read(version=version)
        commit = snap.last_commit_metadata()
        train = df[df["split"] == "train"]
        holdout = str(df.loc[df["split"] == "holdout", "batch"].iloc[0]) if (df["split"] == "holdout").any() else None
        window = sorted(train["batch"].unique())
        trained = training.fit(train, spec)
        registry = model_ops.get_registry()
        schema = snap.schema_hash(version)
        mv = registry.register_model(
            spec.name, trained.pipeline,
            params=trained.params,
            metrics={"train_rows": trained.rows, "train_positive_rate": trained.positives / trained.rows},
            dataset={"uri": snap.uri, "version": version, "schema_hash": schema, "rows": trained.rows},
            signature=trained.signature,
            tags={"estimator": spec.estimator.class_.rsplit(".", 1)[-1], "owner": spec.owner},
            lineage={"code_version": code_version(spec), "seed": spec.seed, "estimator": spec.estimator.class_,
                     "dagster_run_id": context.run.run_id, "schema_hash": schema, "rows": trained.rows,
                     "positives": trained.positives, "window": window, "holdout": holdout,
                     "source": commit.get("model_ops.source"), "spec": spec.model_dump(mode="json", by_alias=True)},
            description=spec.description.strip(),
            run_id=context.run.run_id,
        )
        fitted_rows = training.labelled(train, spec)
        reference = drift.profile(monitoring.drift_table(
            fitted_rows, training.predict_scores(trained.pipeline, fitted_rows, spec), spec))
        registry.attach(spec.name, mv.version, monitoring.PROFILE_LABEL, reference.to_json().encode(),
                        reason=f"drift reference: {reference.rows} training rows of {', '.join(window)}, "
                               f"{len(reference.columns) - 1} monitored features and the score",
                        run_id=context.run.run_id)
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
