"""The training snapshot: which partitions a model trains on, which one it is judged on, and the rows of both.

With partitions, the holdout is a whole partition (the newest validated one unless told otherwise) and the training
window the partitions before it; nothing after the holdout is trained on unless a ``window_end`` says so on
purpose. A static model (``partitions: none``) holds out its newest ``training.holdout_fraction`` of rows by the
time column instead. The split is a column (``split``: train / holdout) of one Delta snapshot, so the rows a
version was fitted and evaluated on are one ``uri@version``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from model_ops.data.delta import PARTITION
from model_ops.data.partitions import Partitioning
from model_ops.errors import UsageError
from model_ops.specs.schema import ModelSpec

SPLIT = "split"
TRAIN, HOLDOUT = "train", "holdout"


def choose_window(keys: list[str], spec: ModelSpec, holdout: str | None = None, window_start: str | None = None,
                  window_end: str | None = None) -> tuple[list[str], str]:
    """Training partitions and the holdout partition (pure: tested directly)."""
    parts = Partitioning.of(spec)
    if parts.static:
        if holdout or window_start or window_end:
            raise UsageError(f"{spec.name} has no partitions, so holdout and window bounds do not apply",
                             hint="its holdout is the newest training.holdout_fraction of rows by time")
        return list(keys), keys[0] if keys else ""
    for k in (holdout, window_start, window_end):
        if k is not None:
            parts.parse(k)
    if len(keys) < 2:
        raise UsageError(f"{spec.name} needs at least two partitions of validated features (one to train on, the "
                         f"newest held out), found {len(keys)}: {', '.join(keys) or 'none'}",
                         hint="materialize features for more partitions")
    chosen = holdout or keys[-1]
    if chosen not in keys:
        raise UsageError(f"holdout partition {chosen} has no validated features",
                         hint="partitions available: " + ", ".join(keys))
    if window_end is None:
        window = [k for k in keys if k < chosen and (window_start is None or k >= window_start)]
    else:
        window = [k for k in keys if k != chosen and (window_start is None or k >= window_start)
                  and k <= window_end]
    if spec.training.window and window_start is None:
        window = window[-spec.training.window:]
    if not window:
        raise UsageError(f"the training window of {spec.name} is empty (holdout {chosen}, window "
                         f"{window_start or 'start'} .. {window_end or 'end'})",
                         hint="partitions available: " + ", ".join(keys))
    return window, chosen


def split(df: pd.DataFrame, spec: ModelSpec, holdout: str) -> pd.DataFrame:
    """The snapshot rows with their ``split``, in canonical order (partition, time, key)."""
    df = df.sort_values([PARTITION, spec.time_column, spec.key_column], kind="stable").reset_index(drop=True)
    if Partitioning.of(spec).static:
        n_hold = int(np.ceil(len(df) * spec.training.holdout_fraction))
        order = df.sort_values([spec.time_column, spec.key_column], kind="stable").index
        is_hold = np.zeros(len(df), dtype=bool)
        is_hold[order[len(df) - n_hold:]] = True
        df[SPLIT] = np.where(is_hold, HOLDOUT, TRAIN)
    else:
        df[SPLIT] = np.where(df[PARTITION] == holdout, HOLDOUT, TRAIN)
    return df
