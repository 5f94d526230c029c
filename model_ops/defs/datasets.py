"""Datasets of a model, all Delta tables under ``<root>/datasets/<model>/``: the source (the built-in raw flights
and weather, or an observed external table, or the user's own upstream asset), the partitioned features with their
contracts, and the training set snapshot."""

import json

import dagster as dg
import pandas as pd
from pydantic import Field

from model_ops.data import contracts, nycflights13, snapshot
from model_ops.data import features as feat
from model_ops.data.delta import frame_fingerprint
from model_ops.data.partitions import Partitioning
from model_ops.data.sources import SourceTable, read_labels, resolve_uri, schema_kinds, source_table
from model_ops.defs.common import (
    EVIDENCE_TAG,
    REASON_TAG,
    TRIGGER_TAG,
    attribution,
    business_window,
    column_schema,
    delta_version,
    key,
    partition_key,
)
from model_ops.defs.partitions import partitions_def
from model_ops.defs.resources import ModelOpsResource
from model_ops.errors import ModelOpsError
from model_ops.jsonable import json_safe
from model_ops.ml.monitoring import join_labels
from model_ops.specs.schema import ModelSpec, SchemaMismatch
from model_ops.vocab import RecordKind, RunTag, SourceKind, Task

INGEST_CODE_VERSION = "ingest-2"
FEATURES_CODE_VERSION = "features-2"
TRAINING_SET_CODE_VERSION = "training-set-2"
SOURCE_URI_KEYS = ("dagster/uri", "table_uri", "uri", "path")


def _check(
    spec: ModelSpec, asset: str, outcome: contracts.CheckOutcome, name: str | None = None
) -> dg.AssetCheckResult:
    meta = {"message": outcome.message}
    if outcome.details:
        meta["details"] = dg.MetadataValue.json(json_safe(outcome.details))
    return dg.AssetCheckResult(
        asset_key=key(spec, asset),
        check_name=name or outcome.name,
        passed=outcome.passed,
        description=outcome.message,
        metadata=meta,
    )


def raw_asset(spec: ModelSpec, table: str) -> dg.AssetsDefinition:
    """The built-in source's raw tables (flights, weather), one month a partition."""
    asset_key = key(spec, table)

    @dg.asset(
        key=asset_key,
        partitions_def=partitions_def(spec),
        code_version=INGEST_CODE_VERSION,
        kinds={"deltalake", "pandas"},
        description=f"The real 2013 NYC {table} (nycflights13) of one month, stored as a Delta table partitioned "
        f"by month. Re-materializing a month replaces that month only. A month that breaks the source "
        f"contract is not stored (and any earlier copy of it is removed), so nothing downstream uses it.",
        check_specs=[
            dg.AssetCheckSpec(
                "source_contract",
                asset=asset_key,
                blocking=True,
                description="Columns, types, keys and month of the delivered rows.",
            )
        ],
        **attribution(spec),
    )
    def _raw(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.MaterializeResult:
        month = context.partition_key
        ds = model_ops.dataset(spec.name, table)
        df = nycflights13.with_timestamps(nycflights13.load_month(table, month))
        outcomes = nycflights13.raw_contract(table, df, month)
        check = _check(spec, table, fold_outcomes(outcomes), "source_contract")
        if not check.passed:
            version = ds.delete_partition(month)
            context.log.error(f"{table} {month} rejected: {contracts.summary(outcomes)}")
            meta: dict[str, object] = {
                "status": "rejected",
                "reason": contracts.summary(outcomes),
                "dagster/row_count": 0,
                "table_uri": ds.uri,
            }
            if version is not None:
                meta["delta_version"] = delta_version(version)
            return dg.MaterializeResult(metadata=meta, check_results=[check])
        data = nycflights13.conform(table, df, month)
        version = ds.replace_partition(month, data)
        return dg.MaterializeResult(
            metadata={
                "status": "stored",
                "dagster/row_count": data.num_rows,
                "delta_version": delta_version(version),
                "table_uri": ds.uri,
                "dagster/column_schema": column_schema(data.to_pandas().head(0)),
            },
            check_results=[check],
        )

    return _raw


def source_asset(spec: ModelSpec) -> dg.SourceAsset:
    """An external Delta table or Parquet dataset, observed: its data version is the Delta version (or a digest of
    the Parquet files), so a new delivery marks the features stale in the UI."""

    @dg.observable_source_asset(
        key=key(spec, "source"),
        group_name=spec.name,
        kinds={"deltalake" if spec.source.kind is SourceKind.DELTA else "parquet"},
        description=f"The source table of {spec.name}: {spec.source.uri} ({spec.source.kind}), read by time window on "
        f"`{spec.time_column}`, rows identified by `{spec.key_column}`. Observing it records its "
        "version; a new version marks the features stale.",
    )
    def _source(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.ObserveResult:
        table = source_table(spec, model_ops.location())
        schema = table.schema()
        return dg.ObserveResult(
            data_version=dg.DataVersion(table.data_version()),
            metadata={
                "uri": table.uri,
                "dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in schema]),
            },
        )

    return _source


def labels_asset(spec: ModelSpec) -> dg.SourceAsset:
    """The declared labels table, observed like the source: outcomes that arrive later change its version, so the
    features partitions they belong to show as stale until they are materialized again (which joins them)."""
    assert spec.labels is not None
    labels = spec.labels

    @dg.observable_source_asset(
        key=key(spec, "labels"),
        group_name=spec.name,
        kinds={"deltalake" if labels.kind is SourceKind.DELTA else "parquet"},
        description=f"Outcomes of {spec.name} that arrive after scoring: {labels.uri} ({labels.kind}), "
        f"`{labels.column}` by `{labels.key_column}`. Joined to the features when a partition is materialized and "
        "to the prediction log by live performance; observing it records its version, and a new version marks the "
        "features stale.",
    )
    def _labels(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.ObserveResult:
        table = SourceTable(resolve_uri(labels.uri, model_ops.location()), labels.kind)
        if not table.exists():
            return dg.ObserveResult(
                data_version=dg.DataVersion("absent"),
                metadata={"uri": table.uri, "status": "no outcomes delivered yet"},
            )
        return dg.ObserveResult(data_version=dg.DataVersion(table.data_version()), metadata={"uri": table.uri})

    return _labels


def source_deps(spec: ModelSpec) -> list[dg.AssetKey]:
    labels = [key(spec, "labels")] if spec.labels is not None else []
    if spec.source.kind is SourceKind.NYCFLIGHTS13:
        return [key(spec, "flights"), key(spec, "weather"), *labels]
    if spec.source.kind is SourceKind.ASSET:
        return [dg.AssetKey(str(spec.source.asset).split("/")), *labels]
    return [key(spec, "source"), *labels]


def _upstream_uri(context: dg.AssetExecutionContext, spec: ModelSpec) -> str | None:
    """An asset source's table: ``source.uri``, else what the upstream's newest materialization reported."""
    if spec.source.uri:
        return spec.source.uri
    event = context.instance.get_latest_materialization_event(dg.AssetKey(str(spec.source.asset).split("/")))
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    for name in SOURCE_URI_KEYS:
        if name in meta:
            return str(meta[name].value)
    raise dg.Failure(
        f"{spec.source.asset} has not reported where its Delta table is: give {spec.name}'s "
        f"source.uri, or add `dagster/uri` to {spec.source.asset}'s materialization metadata"
        + ("" if event else f" (and materialize {spec.source.asset} first)")
    )


def source_rows(
    context: dg.AssetExecutionContext, model_ops: ModelOpsResource, spec: ModelSpec, partition: str
) -> tuple[pd.DataFrame, dict[str, str], str]:
    """The source rows of one partition, the source's column kinds, and where they came from."""
    if spec.source.kind is SourceKind.NYCFLIGHTS13:
        stored = [model_ops.dataset(spec.name, t) for t in nycflights13.TABLES]
        missing = [d.name for d in stored if not d.exists() or partition not in d.partition_keys()]
        if missing:
            raise _NoRows(
                f"no stored {' and '.join(missing)} rows for this month (never ingested, or rejected by "
                f"the source contract): materialize {' and '.join(missing)} for {partition} first"
            )
        rows = nycflights13.joined(stored[0].read([partition]), stored[1].read([partition]))
        return rows, dict(nycflights13.SCHEMA), f"{stored[0].uri} + {stored[1].uri}"
    uri = _upstream_uri(context, spec) if spec.source.kind is SourceKind.ASSET else None
    table = source_table(spec, model_ops.location(), uri)
    parts = Partitioning.of(spec)
    columns = list(dict.fromkeys([spec.key_column, spec.time_column, *spec.feature_names, spec.target.column]))
    try:
        kinds = schema_kinds(table.schema())
        rows = table.read(spec.time_column, None if parts.static else parts.window(partition), columns)
        origin = f"{table.uri}@{table.data_version()}"
    except ModelOpsError as exc:  # unreadable now: fail the run and keep what is stored, never delete it
        raise dg.Failure(
            f"{spec.name} features {partition}: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")
        ) from exc
    return rows, kinds, origin


class _NoRows(Exception):
    """The built-in source's raw rows of the partition were rejected or never ingested; the message says why
    (becomes every check's message, and the partition is kept out of the features)."""


def fold_outcomes(outcomes: list[contracts.CheckOutcome]) -> contracts.CheckOutcome:
    """Several contract outcomes folded into one check result."""
    failed = [o for o in outcomes if not o.passed]
    if failed:
        return contracts.CheckOutcome(
            "source_contract", False, contracts.summary(outcomes), {o.name: o.message for o in failed}
        )
    return contracts.CheckOutcome("source_contract", True, "; ".join(o.message for o in outcomes))


def features_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    asset_key = key(spec, "features")
    label_text = (
        f"the label ({spec.label} = {spec.target.column} {spec.target.op} {spec.target.threshold:g})"
        if spec.target.derived
        else f"the label ({spec.label})"
    )

    @dg.asset(
        key=asset_key,
        partitions_def=partitions_def(spec),
        deps=source_deps(spec),
        code_version=f"{FEATURES_CODE_VERSION}-{spec.fingerprint('source', 'features', 'target', 'known_after', 'training')}",
        kinds={"deltalake", "pandas"},
        description=f"One row per {spec.key_column} of the partition (cut on {spec.time_column}): the declared "
        f"features ({', '.join(spec.feature_names)}) and {label_text}. A partition that fails any "
        "contract check is kept out of this table, and so out of training and scoring; the check says "
        "which columns and rows are at fault.",
        check_specs=[
            dg.AssetCheckSpec(n, asset=asset_key, blocking=True, description=d) for n, d in feat.FEATURE_CHECKS.items()
        ],
        **attribution(spec),
    )
    def _features(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.MaterializeResult:
        partition = partition_key(context)
        ds = model_ops.dataset(spec.name, "features")
        what = f"{spec.name} features {partition}"
        df, origin = pd.DataFrame(), ""
        try:
            rows, kinds, origin = source_rows(context, model_ops, spec, partition)
            typed = spec if spec.typed and spec.source.kind is SourceKind.NYCFLIGHTS13 else spec.with_schema(kinds)
            df = feat.select(rows, typed, partition)
            del rows  # the features share the source's columns where they can; the rest is not needed again
            if typed.labels is not None:  # outcomes that have arrived so far, from the labels table
                known = read_labels(typed, df[typed.key_column], model_ops.location())
                df[typed.label] = join_labels(df[typed.key_column], known).to_numpy()
            outcomes = feat.checks(df, typed, partition)
        except _NoRows as exc:
            outcomes = [contracts.CheckOutcome(n, False, f"{what}: {exc}") for n in feat.FEATURE_CHECKS]
        except SchemaMismatch as exc:
            outcomes = [
                contracts.CheckOutcome(n, False, f"{what}: the declaration does not match the source's schema: {exc}")
                for n in feat.FEATURE_CHECKS
            ]
        failed = [o for o in outcomes if not o.passed]
        results = [_check(spec, "features", o) for o in outcomes]
        if failed:
            version = ds.delete_partition(partition)
            context.log.error(f"features {partition} kept out: {contracts.summary(outcomes)}")
            meta: dict[str, object] = {
                "status": "rejected",
                "reason": contracts.summary(outcomes),
                "dagster/row_count": len(df),
                "table_uri": ds.uri,
            }
            if version is not None:
                meta["delta_version"] = delta_version(version)
            return dg.MaterializeResult(metadata=meta, check_results=results)
        meta = {
            "status": "stored",
            "dagster/row_count": len(df),
            "table_uri": ds.uri,
            "source": origin,
            "labelled_rows": int(df[spec.label].notna().sum()),
            "dagster/column_schema": column_schema(df),
            **label_metadata(df, spec),
        }
        meta["delta_version"] = delta_version(ds.replace_partition(partition, feat.to_arrow_stream(df)))
        return dg.MaterializeResult(metadata=meta, check_results=results)

    return _features


def label_metadata(df: pd.DataFrame, spec: ModelSpec, prefix: str = "") -> dict[str, object]:
    """What the UI plots about the label: the positive rate, the class shares, or the target's mean."""
    y = df[spec.label].dropna()
    if y.empty:
        return {}
    if spec.task is Task.REGRESSION:
        return {
            f"{prefix}target_mean": float(y.astype(float).mean()),
            f"{prefix}target_std": float(y.astype(float).std()),
        }
    if spec.task is Task.BINARY:
        return {f"{prefix}positive_rate": float((y.astype(str) == str(sorted(y.unique())[-1])).mean())}
    return {f"{prefix}class_share_{c}": float(v) for c, v in y.astype(str).value_counts(normalize=True).items()}


class TrainingSetConfig(dg.Config):
    """Which partitions to train on and which to hold out; defaults come from the model's declaration."""

    holdout: str | None = Field(
        default=None,
        description="Partition held out for evaluation, e.g. 2013-05-01; "
        "default: the newest partition with validated features.",
    )
    window_start: str | None = Field(
        default=None,
        description="First training partition; default: the first "
        "available (or training.window partitions before the holdout).",
    )
    window_end: str | None = Field(
        default=None,
        description="Last training partition; default: the one before "
        "the holdout. Set it past the holdout only on purpose: it trains on the future.",
    )


def record_retrain_trigger(context: dg.AssetExecutionContext, model_ops: ModelOpsResource, spec: ModelSpec) -> None:
    """A retrain requested by the drift sensor writes its evidence to the audit log from inside the run, so the
    record exists exactly when the run does (a sensor preview or a failed submission records nothing)."""
    tags = context.run.tags
    if tags.get(TRIGGER_TAG) != "drift_sensor":
        return
    evidence = json.loads(tags.get(EVIDENCE_TAG) or "{}")
    version = tags.get(RunTag.PRODUCTION_VERSION.value)
    # a retrain requested before RunTag.WINDOW named its window carries the older RunTag.DRIFT_WINDOW
    window = tags.get(RunTag.WINDOW.value, tags.get(RunTag.DRIFT_WINDOW.value))
    model_ops.get_registry().record(
        spec.name,
        RecordKind.RETRAIN,
        version=int(version) if version and version.isdigit() else None,
        reason=tags.get(REASON_TAG),
        run_id=context.run.run_id,
        details={
            "window": window,
            "evidence": evidence,
            "run_key": tags.get("dagster/run_key"),
            "sensor": tags.get("dagster/sensor_name"),
        },
    )


def training_set_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    static = spec.partitioning is None
    how = (
        f"the newest {spec.training.holdout_fraction:.0%} of rows by {spec.time_column} held out"
        if static
        else "the training window (every validated partition before the holdout, by default) plus the holdout "
        "partition (the newest, by default)"
    )

    @dg.asset(
        key=key(spec, "training_set"),
        deps=[key(spec, "features")],
        code_version=f"{TRAINING_SET_CODE_VERSION}-{spec.fingerprint('training')}",
        kinds={"deltalake", "pandas"},
        description=f"The rows {spec.name} is trained and evaluated on: {how}, read from features at one pinned "
        "Delta version and stored as a snapshot. Its data version is `<snapshot Delta version>:<schema "
        "hash>`; an identical snapshot is not written again.",
        **attribution(spec),
    )
    def _training_set(
        context: dg.AssetExecutionContext, config: TrainingSetConfig, model_ops: ModelOpsResource
    ) -> dg.MaterializeResult:
        record_retrain_trigger(context, model_ops, spec)
        features_ds = model_ops.dataset(spec.name, "features")
        source_version = features_ds.version()
        window, holdout = snapshot.choose_window(
            features_ds.partition_keys(source_version), spec, config.holdout, config.window_start, config.window_end
        )
        table = snapshot.split(
            features_ds.read_arrow(sorted({*window, holdout}), version=source_version), spec, holdout
        )
        fingerprint = frame_fingerprint(table)
        snap = model_ops.dataset(spec.name, "training_set")
        last = snap.last_commit_metadata()
        if last.get("model_ops.fingerprint") == fingerprint:
            version, written = snap.version(), False
        else:
            version = snap.overwrite(
                table,
                metadata={
                    "model_ops.fingerprint": fingerprint,
                    "model_ops.source": f"{features_ds.uri}@{source_version}",
                    "model_ops.window": ",".join(window),
                    "model_ops.holdout": holdout,
                },
            )
            written = True
        schema = snap.schema_hash(version)
        labels = (
            table.select([snapshot.SPLIT, spec.label]).to_pandas()
            if spec.label in table.column_names
            else pd.DataFrame({snapshot.SPLIT: table.column(snapshot.SPLIT).to_pandas(), spec.label: None})
        )
        columns = column_schema(table.schema.empty_table().to_pandas())
        rows = table.num_rows
        del table
        train, hold = (
            labels[labels[snapshot.SPLIT] == snapshot.TRAIN],
            labels[labels[snapshot.SPLIT] == snapshot.HOLDOUT],
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(f"{version}:{schema}"),
            metadata={
                "delta_version": delta_version(version),
                "schema_hash": schema,
                "table_uri": snap.uri,
                "source": f"{features_ds.uri}@{source_version}",
                **business_window(context),
                "window": ", ".join(window),
                "holdout": holdout,
                "new_snapshot": written,
                "dagster/row_count": rows,
                "train_rows": len(train),
                "holdout_rows": len(hold),
                **label_metadata(train, spec, "train_"),
                **label_metadata(hold, spec, "holdout_"),
                "dagster/column_schema": columns,
            },
        )

    return _training_set
