"""Arrow tables in bounded memory: where large reads allocate, and how they become pandas frames.

Large tables (a source partition, a training snapshot) are read with :func:`pool`: pyarrow's default allocator
keeps freed memory for reuse, so a process that reads a few GB once keeps that much resident for the rest of its
life, on top of whatever it does next (the fit). :func:`release` hands freed memory back to the system between
phases."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa


@functools.cache
def pool() -> pa.MemoryPool:
    """jemalloc with immediate purging where pyarrow has it, else the system allocator."""
    try:
        jemalloc = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
        return jemalloc
    except NotImplementedError:
        return pa.system_memory_pool()


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release() -> None:
    """Return memory freed by Arrow and by the C heap (pandas and NumPy buffers) to the system."""
    pool().release_unused()
    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None:  # glibc: without this, freed heap pages stay resident
        libc.malloc_trim(0)


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """An Arrow table as a frame without holding both at once: columns are converted one at a time and freed as
    they go (the table must not be used afterwards), one block per column.

    A column that converted without a copy is a read-only view of Arrow's memory; it is copied, one column at a
    time, so the frame behaves like any other (code of a team's own may assign into it)."""
    df = table.to_pandas(split_blocks=True, self_destruct=True, memory_pool=pool())
    del table
    for i in range(df.shape[1]):
        values = df.iloc[:, i].array
        raw = getattr(values, "_ndarray", None)
        if raw is None and isinstance(values, pd.arrays.NumpyExtensionArray):
            raw = values.to_numpy()
        if isinstance(raw, np.ndarray) and not raw.flags.writeable:
            df.isetitem(i, df.iloc[:, i].copy())
    release()
    return df
