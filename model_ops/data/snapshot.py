"""The training snapshot: which partitions a model trains on, which one it is judged on, and the rows of both.

With partitions, the holdout is a whole partition (the newest validated one unless told otherwise) and the training
window the partitions before it; nothing after the holdout is trained on unless a ``window_end`` says so on
purpose. A static model (``partitions: none``) holds out its newest ``training.holdout_fraction`` of rows by the
time column instead. The split is a column (``split``: train / holdout) of one Delta snapshot, so the rows a
version was fitted and evaluated on are one ``uri@version``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model_ops.data.arrow import pool
from model_ops.data.delta import PARTITION
from model_ops.data.partitions import Partitioning
from model_ops.errors import UsageError
from model_ops.specs.schema import ModelSpec

SPLIT = "split"
TRAIN, HOLDOUT = "train", "holdout"


def choose_window(
    keys: list[str],
    spec: ModelSpec,
    holdout: str | None = None,
    window_start: str | None = None,
    window_end: str | None = None,
) -> tuple[list[str], str]:
    """Training partitions and the holdout partition (pure: tested directly)."""
    parts = Partitioning.of(spec)
    if parts.static:
        if holdout or window_start or window_end:
            raise UsageError(
                f"{spec.name} has no partitions, so holdout and window bounds do not apply",
                hint="its holdout is the newest training.holdout_fraction of rows by time",
            )
        return list(keys), keys[0] if keys else ""
    for k in (holdout, window_start, window_end):
        if k is not None:
            parts.parse(k)
    if len(keys) < 2:
        raise UsageError(
            f"{spec.name} needs at least two partitions of validated features (one to train on, the "
            f"newest held out), found {len(keys)}: {', '.join(keys) or 'none'}",
            hint="materialize features for more partitions",
        )
    chosen = holdout or keys[-1]
    if chosen not in keys:
        raise UsageError(
            f"holdout partition {chosen} has no validated features", hint="partitions available: " + ", ".join(keys)
        )
    if window_end is None:
        window = [k for k in keys if k < chosen and (window_start is None or k >= window_start)]
    else:
        window = [k for k in keys if k != chosen and (window_start is None or k >= window_start) and k <= window_end]
    if spec.training.window and window_start is None:
        window = window[-spec.training.window :]
    if not window:
        raise UsageError(
            f"the training window of {spec.name} is empty (holdout {chosen}, window "
            f"{window_start or 'start'} .. {window_end or 'end'})",
            hint="partitions available: " + ", ".join(keys),
        )
    return window, chosen


def split(table: pa.Table, spec: ModelSpec, holdout: str) -> pa.Table:
    """The snapshot rows with their ``split``, in canonical order (partition, time, key).

    Arrow throughout: the rows are reordered once (a stable sort of three columns, then one gather), never held
    as two frames of Python objects."""
    order = pc.sort_indices(
        table, sort_keys=[(PARTITION, "ascending"), (spec.time_column, "ascending"), (spec.key_column, "ascending")]
    )
    table = pc.take(table, order, memory_pool=pool())
    del order
    if Partitioning.of(spec).static:
        # one partition: the canonical order is already by (time, key), so the newest rows are the last ones
        n_hold = int(np.ceil(table.num_rows * spec.training.holdout_fraction))
        is_hold = pa.array(np.arange(table.num_rows) >= table.num_rows - n_hold)
    else:
        is_hold = pc.equal(table.column(PARTITION), pa.scalar(holdout, table.schema.field(PARTITION).type))
    return table.append_column(SPLIT, pc.if_else(is_hold, HOLDOUT, TRAIN))


def rows_of(table: pa.Table, which: str) -> pa.Table:
    """The rows of one split (``TRAIN`` or ``HOLDOUT``) of a snapshot table."""
    return table.filter(pc.equal(table.column(SPLIT), which))
