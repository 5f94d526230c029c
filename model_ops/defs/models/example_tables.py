"""The example models' source tables, as the upstream assets a team would have: each writes a Delta table under
``<root>/sources/`` from data a PyPI package ships (no network), and reports where it wrote it (``dagster/uri``).

``seattle_weather`` reads its table through its upstream asset (source kind ``asset``); ``flight_duration`` reads
``sources/nyc_flight_durations`` as an external Delta table (source kind ``delta``) that this asset happens to
write. Re-materializing writes nothing when the rows are unchanged, so the tables' versions only move with data.
"""

import dagster as dg

from model_ops.data import examples
from model_ops.data.delta import frame_fingerprint
from model_ops.data.sources import SourceTable
from model_ops.defs.common import delta_version
from model_ops.defs.resources import ModelOpsResource
from model_ops.errors import NotFoundError
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import SourceKind

TABLES = {"seattle_weather": "seattle_weather", "nyc_flight_durations": "flight_duration"}


def example_table(table: str, example: str) -> dg.AssetsDefinition:
    meta = examples.EXAMPLES[example]

    @dg.asset(
        key=["examples", table],
        group_name="examples",
        owners=["team:ml-platform"],
        kinds={"deltalake"},
        code_version="example-table-1",
        description=f"The example table `{table}`: {meta.source}. Key `{meta.key_column}`, time "
        f"`{meta.time_column}`, target `{meta.target}`. Written to <root>/sources/{table}.",
    )
    def _table(context: dg.AssetExecutionContext, model_ops: ModelOpsResource) -> dg.MaterializeResult:
        location = model_ops.location().child("sources", table)
        frame = meta.load()
        fingerprint = frame_fingerprint(frame)
        target = SourceTable(location, SourceKind.DELTA)
        try:
            history = target.delta_table().history(1)
            current = (history[0] if history else {}).get("model_ops.fingerprint")
        except NotFoundError:
            current = None
        if current == fingerprint:
            version, written = target.delta_table().version(), False
        else:
            version = examples.write_delta(
                frame,
                location.uri if location.is_s3 else str(location.path),
                metadata={"model_ops.example": example, "model_ops.fingerprint": fingerprint},
            )
            written = True
        context.log.info(f"{table}: {'wrote' if written else 'unchanged at'} Delta version {version}")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(fingerprint),
            metadata={
                "dagster/uri": location.uri if location.is_s3 else str(location.path),
                "dagster/row_count": len(frame),
                "delta_version": delta_version(version),
                "written": written,
                **examples.describe(frame, meta),
            },
        )

    return _table


defs = dg.Definitions(assets=[example_table(t, e) for t, e in TABLES.items()])


def feeding(spec: ModelSpec) -> dg.AssetKey | None:
    """The example table asset a model reads (as its upstream asset, or as the Delta table it writes)."""
    if spec.source.kind is SourceKind.ASSET:
        return dg.AssetKey(str(spec.source.asset).split("/"))
    for table in TABLES:
        if spec.source.uri == f"sources/{table}":
            return dg.AssetKey(["examples", table])
    return None
