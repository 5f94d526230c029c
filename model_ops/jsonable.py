"""Values made storable as strict JSON (audit records, UI metadata): NaN and infinities become null, anything
unknown its string form. Metrics are NaN where they are undefined (a class absent from a window), and a record
must still be written."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (``np.int64(1)`` -> 1), anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of ``values`` as floats; the rest (null for an undefined metric, text, booleans) left
    out, so a missing number is absent rather than zero."""
    return {str(k): float(x) for k, x in values.items() if isinstance(x, (int, float)) and not isinstance(x, bool)}


def readable(value: Any) -> Any:
    """A float as a person reads it in the UI: four significant digits (0.6453, 12.15, 16.41 ms), whole digits
    never dropped (133603 rows stay 133603); NaN and infinities kept; anything else unchanged. The registry and
    the audit log keep full precision."""
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and value != 0:
        x = float(value)
        return round(x, max(0, 3 - math.floor(math.log10(abs(x)))))
    return plain(value)


def json_safe(value: Any) -> Any:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.loads(json.dumps(clean(value), default=str))
