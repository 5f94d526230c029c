"""One ``Bound`` for every "this metric must stay within" rule: policy gates, evaluation thresholds and the
production floor all check and describe a bound the same way, so a message reads the same wherever it is raised."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, model_validator


class Bound(BaseModel):
    """``min`` and/or ``max`` for one metric (both inclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Bound:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def describe(self) -> str:
        """``>= 0.6``, ``<= 0.75`` or ``>= 0.1 and <= 0.9``."""
        parts = [f">= {self.min:g}" if self.min is not None else "", f"<= {self.max:g}" if self.max is not None else ""]
        return " and ".join(p for p in parts if p) or "any value"

    def violation(self, metric: str, value: float | None) -> str | None:
        """Why ``value`` breaks the bound (a missing or NaN value does), or None when it is within."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return f"{metric} is not available, needs {self.describe()}"
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            return f"{metric} = {value:.4f}, needs {self.describe()}"
        return None
