"""Reading tabular data given by a path: a Parquet file or folder, or a Delta table (``PATH@VERSION`` pins one).

Local Parquet is read with ``pyarrow.parquet`` alone, one column's record batches at a time: ``pyarrow.dataset``
takes most of a second to import, which would be most of a quick command's time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from model_ops.errors import UsageError
from model_ops.location import Location, resolve_root, s3_endpoint

HINT = "give a Parquet file, a folder of Parquet files or a Delta table (PATH@VERSION pins a Delta version)"


class ParquetFiles:
    """Local Parquet files as one table: schema, row count and record batches of chosen columns."""

    def __init__(self, files: list[Path]) -> None:
        import pyarrow.parquet as pq

        self.paths = files
        opened = [pq.ParquetFile(f) for f in files]
        self.schema = opened[0].schema_arrow
        self.rows = sum(f.metadata.num_rows for f in opened)
        for f, path in zip(opened[1:], files[1:]):
            if f.schema_arrow.names != self.schema.names:
                raise UsageError(f"{path} has other columns than {files[0]}", hint="one table's files only")

    def count_rows(self) -> int:
        return self.rows

    def to_batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """A fresh reader per call: a ParquetFile must not be shared by the threads reading other columns."""
        import pyarrow.parquet as pq

        for path in self.paths:
            with pq.ParquetFile(path) as f:
                yield from f.iter_batches(columns=columns)


def open_arrow(path: str) -> Any:
    """Something with ``schema``, ``count_rows()`` and ``to_batches(columns=)`` over the data at ``path``."""
    base, sep, pinned = path.rpartition("@")
    if not sep:
        base, pinned = path, ""
    if pinned and not pinned.isdigit():
        raise UsageError(f"{path!r}: the part after @ must be a Delta table version", hint=HINT)
    location = resolve_root(base)
    if location.is_s3:
        return _s3(location, pinned)
    local = location.path
    if not local.exists():
        raise UsageError(f"{path} does not exist", hint=HINT)
    if (local / "_delta_log").is_dir():
        return _delta(location, pinned)
    if pinned:
        raise UsageError(f"{base} is not a Delta table, so it has no version {pinned}", hint=HINT)
    files = (
        sorted(p for p in local.rglob("*.parquet") if not p.name.startswith((".", "_"))) if local.is_dir() else [local]
    )
    if not files:
        raise UsageError(f"{path} holds no Parquet files", hint=HINT)
    try:
        return ParquetFiles(files)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UsageError(f"{path} is not readable Parquet: {exc}", hint=HINT) from exc


def _delta(location: Location, pinned: str) -> Any:
    from deltalake import DeltaTable

    uri = location.uri if location.is_s3 else str(location.path)
    try:
        table = DeltaTable(
            uri, version=int(pinned) if pinned else None, storage_options=location.delta_storage_options()
        )
    except Exception as exc:  # noqa: BLE001 - delta-rs raises several kinds for "no such table or version"
        raise UsageError(
            f"cannot read Delta table {uri}"
            + (f" at version {pinned}" if pinned else "")
            + f": {str(exc).splitlines()[0]}",
            hint=HINT,
        ) from exc
    return table.to_pyarrow_dataset()


def _s3(location: Location, pinned: str) -> Any:
    from deltalake import DeltaTable

    if DeltaTable.is_deltatable(location.uri, storage_options=location.delta_storage_options()) or pinned:
        return _delta(location, pinned)
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    endpoint = s3_endpoint()
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint, scheme="http" if endpoint and endpoint.startswith("http:") else "https"
    )
    try:
        return pads.dataset(location.uri[len("s3://") :], format="parquet", filesystem=fs)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UsageError(f"{location.uri} is neither a Delta table nor readable Parquet: {exc}", hint=HINT) from exc
