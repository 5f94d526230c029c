"""A model's source table, whatever it is: its schema (column kinds, from the Delta log or the Parquet footer), its
data version (a new delivery is a new version), and its rows in one partition's time window.

A relative ``uri`` is taken relative to the model_ops root (``$MODEL_OPS_ROOT``, default ``./.model_ops``), so a
project's declarations work unchanged on a laptop and on S3. Rows are filtered on the time column in Arrow before
pandas sees them, so a partition of a large table costs only its own rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa

from model_ops.data.arrow import pool, to_pandas
from model_ops.errors import ModelOpsError, NotFoundError, UsageError
from model_ops.location import Location, resolve_root, s3_endpoint
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import SourceKind


class UnreachableError(ModelOpsError):
    """A source that exists, as far as anyone knows, but cannot be read now (network, credentials)."""


def arrow_kind(t: pa.DataType) -> str:
    """The kind a column can be declared as: int, float, bool, category, timestamp, date, or its Arrow type."""
    if pa.types.is_dictionary(t):
        return "category"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "category"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_date(t):
        return "date"
    return str(t)


def schema_kinds(schema: pa.Schema) -> dict[str, str]:
    return {f.name: arrow_kind(f.type) for f in schema}


@dataclass(frozen=True)
class SourceTable:
    """A Delta table or Parquet dataset at ``location``."""

    location: Location
    kind: SourceKind

    @property
    def uri(self) -> str:
        return self.location.uri if self.location.is_s3 else str(self.location.path)

    def delta_table(self, version: int | None = None) -> Any:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.uri, version=version, storage_options=self.location.delta_storage_options())
        except TableNotFoundError as exc:
            raise NotFoundError(
                f"source table {self.uri} does not exist (yet)",
                hint="write the table, or point source.uri at an existing Delta table",
            ) from exc
        except OSError as exc:  # delta-rs: an endpoint that cannot be reached, refused credentials
            raise UnreachableError(
                f"cannot read the Delta table {self.uri}: {str(exc).splitlines()[0]}",
                hint="check the URI, the network and the AWS settings",
            ) from exc

    def dataset(self, version: int | None = None) -> Any:
        """A pyarrow dataset over the source (at a Delta ``version`` when given)."""
        if self.kind is not SourceKind.PARQUET:
            return self.delta_table(version).to_pyarrow_dataset()
        import pyarrow.dataset as pads

        if self.location.is_s3:
            import pyarrow.fs as pafs

            endpoint = s3_endpoint()
            fs = pafs.S3FileSystem(
                endpoint_override=endpoint, scheme="http" if endpoint and endpoint.startswith("http:") else "https"
            )
            path = self.location.uri[len("s3://") :]
        else:
            fs, path = None, str(self.location.path)
            if not self.location.path.exists():
                raise NotFoundError(
                    f"source Parquet {path} does not exist (yet)",
                    hint="write the files, or point source.uri at a Parquet file or folder",
                )
        try:
            return pads.dataset(path, format="parquet", filesystem=fs, exclude_invalid_files=True)
        except (OSError, pa.ArrowInvalid) as exc:
            raise UsageError(f"{self.uri} is not readable Parquet: {exc}") from exc

    def exists(self) -> bool:
        try:
            self.schema()
        except NotFoundError:
            return False
        return True

    def schema(self) -> pa.Schema:
        return (
            self.dataset().schema
            if self.kind is SourceKind.PARQUET
            else pa.schema(self.delta_table().schema().to_arrow())
        )

    def data_version(self) -> str:
        """The Delta table version, or a digest of the Parquet files' names and footers. A footer holds every row
        group's size and per-column statistics, so rewriting a file with other values changes it, without reading
        the data pages of a large dataset."""
        if self.kind is not SourceKind.PARQUET:
            return f"delta:{self.delta_table().version()}"
        ds = self.dataset()
        h = hashlib.sha256()
        for frag in sorted(ds.get_fragments(), key=lambda f: f.path):
            h.update(frag.path.encode())
            h.update(frag.metadata.to_dict().__repr__().encode())
        return f"parquet:{h.hexdigest()[:16]}"

    def read(
        self, time_column: str, window: tuple[pd.Timestamp, pd.Timestamp] | None, columns: list[str] | None = None
    ) -> pd.DataFrame:
        """Rows whose ``time_column`` falls in [start, end) (all rows when ``window`` is None)."""
        import pyarrow.dataset as pads

        ds = self.dataset()
        present = [c for c in (columns or ds.schema.names) if c in ds.schema.names]
        expr = None
        if window is not None:
            field_type = ds.schema.field(time_column).type
            lo, hi = (_scalar(t, field_type) for t in window)
            col = pads.field(time_column)
            expr = (col >= lo) & (col < hi)
        rows = ds.count_rows(filter=expr)  # the footers alone without a window; the time column with one
        if rows <= COLUMNWISE_ROWS or len(present) == 1:
            return to_pandas(ds.to_table(columns=present, filter=expr, memory_pool=pool()))
        # A large read, one column at a time: each is converted and its Arrow memory freed before the next is
        # read, so the rows are never held twice (as Arrow and as a frame). Every scan applies the same filter
        # to the same files in the same order, so the columns line up row for row. A Delta table is pinned to one
        # version for the whole read; Parquet files rewritten in place between the scans are caught by their
        # footers.
        before = self.data_version() if self.kind is SourceKind.PARQUET else None
        arrays: dict[str, Any] = {}
        for name in present:
            arrays[name] = to_pandas(ds.to_table(columns=[name], filter=expr, memory_pool=pool()))[name].array
            if len(arrays[name]) != rows:
                raise ModelOpsError(
                    f"{self.uri} changed while it was being read ({rows} rows, then {len(arrays[name])})",
                    hint="run again",
                )
        if before is not None and self.data_version() != before:
            raise ModelOpsError(
                f"{self.uri} changed while it was being read (its Parquet files were rewritten)",
                hint="run again once the delivery is complete",
            )
        return pd.DataFrame(arrays, index=pd.RangeIndex(rows), copy=False)


# Above this many rows a read converts one column at a time (see SourceTable.read).
COLUMNWISE_ROWS = 1_000_000


def _scalar(ts: pd.Timestamp, field_type: pa.DataType) -> pa.Scalar:
    """``ts`` (UTC) as a scalar comparable with a column of ``field_type`` (naive timestamps are taken as UTC)."""
    if pa.types.is_timestamp(field_type):
        value = ts if field_type.tz else ts.tz_convert("UTC").tz_localize(None)
        return pa.scalar(value.to_pydatetime(), type=field_type)
    if pa.types.is_date(field_type):
        return pa.scalar(ts.date(), type=field_type)
    raise UsageError(f"the time column is {field_type}, not a timestamp or date")


def source_table(spec: ModelSpec, root: str | Location | None = None, uri: str | None = None) -> SourceTable:
    """The table a delta / parquet / asset source reads (``uri`` overrides, e.g. from an upstream asset's
    materialization)."""
    target = uri or spec.source.uri
    if not target:
        raise UsageError(
            f"{spec.name}: the source has no uri to read",
            hint="give source.uri, or have the upstream asset report `dagster/uri` or `table_uri` "
            "in its materialization metadata",
        )
    kind = SourceKind.DELTA if spec.source.kind is SourceKind.ASSET else spec.source.kind
    return SourceTable(resolve_uri(target, root), kind)


def resolve_uri(uri: str, root: str | Location | None = None) -> Location:
    """An absolute path or ``s3://`` URI as given; a relative one under the model_ops root."""
    if uri.startswith("s3://") or uri.startswith("/") or uri.startswith("file://"):
        return resolve_root(uri.removeprefix("file://"))
    base = root if isinstance(root, Location) else resolve_root(root)
    return base.child(*[p for p in uri.split("/") if p and p != "."])


def read_labels(spec: ModelSpec, keys: pd.Series, root: str | Location | None = None) -> pd.Series:
    """The known outcome of each of ``keys`` from the declared labels table (outcomes that arrive after scoring),
    labelled by the target's rule and indexed by key; keys without an outcome yet are absent."""
    from model_ops.data.features import label

    assert spec.labels is not None
    table = SourceTable(resolve_uri(spec.labels.uri, root), spec.labels.kind)
    key, column = spec.labels.key_column, spec.labels.column
    try:
        import pyarrow.dataset as pads

        ds = table.dataset()
        missing = [c for c in (key, column) if c not in ds.schema.names]
        if missing:
            raise UsageError(
                f"the labels table {table.uri} of {spec.name} has no column(s) {', '.join(missing)}",
                hint="fix labels.key_column / labels.column in the declaration",
            )
        wanted = keys.dropna().unique()
        key_type = ds.schema.field(key).type
        try:
            wanted_arrow = pa.array(wanted).cast(key_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            wanted_arrow = pa.array([str(k) for k in wanted]).cast(key_type, safe=False)
        rows = ds.to_table(columns=[key, column], filter=pads.field(key).isin(wanted_arrow)).to_pandas()
    except NotFoundError:
        return pd.Series(dtype=object)
    rows = rows.drop_duplicates(key, keep="last")
    return pd.Series(label(rows[column], spec).to_numpy(), index=rows[key].to_numpy())
