"""When a registry event takes effect in the world it describes (business time), beside when it was written.

An event written by a Dagster run for a partition (or for the window a sensor's decision was taken on) records
that window (``Event.business_window``). A decision taken on a window's evidence governs what comes after it, so
the event takes effect at the window's end, by the model's own partitioning: the canary started on June 2013's
drift serves July's traffic. ``model-ops as-of --window 2013-07`` is therefore the state at the start of July, the
one that served July.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from model_ops.data.partitions import Partitioning
from model_ops.errors import UsageError
from model_ops.registry.inputs import parse_timestamp
from model_ops.specs.schema import ModelSpec


def effective(specs: Mapping[str, ModelSpec]) -> Callable[[str, str], datetime | None]:
    """``effective(model, window)``: the end of ``window`` by the model's declared partitioning. A model not
    declared here (or a window its declaration does not know) takes the window's key as the time, its start;
    a key that is no time at all places nothing (None: the event takes effect with the one before it)."""

    def at(model: str, window: str) -> datetime | None:
        spec = specs.get(model)
        if spec is not None and spec.partitioning is not None:
            try:
                return Partitioning.of(spec).window(window)[1].to_pydatetime()
            except UsageError:
                pass
        try:
            return window_start(window)
        except UsageError:
            return None

    return at


def window_start(text: str) -> datetime:
    """``--window 2013-07`` or ``2013-07-01``: the moment the window starts (UTC midnight of its first day)."""
    value = text.strip()
    if len(value) == 7:  # YYYY-MM
        value += "-01"
    try:
        return parse_timestamp(datetime.fromisoformat(value))
    except ValueError:
        raise UsageError(
            f"cannot read {text!r} as a window", hint="name it by its first day (2013-07-01) or its month (2013-07)"
        ) from None
