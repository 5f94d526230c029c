"""A model's Dagster partitions, from its declaration: daily / weekly / monthly windows from ``start`` (open-ended
unless ``end``), or none. Keys match :class:`model_ops.data.partitions.Partitioning` exactly (a test holds them
together), so the library and the UI always mean the same rows by a partition."""

import dagster as dg

from model_ops.specs.schema import ModelSpec
from model_ops.vocab import Cadence


def partitions_def(spec: ModelSpec) -> dg.TimeWindowPartitionsDefinition | None:
    p = spec.partitioning
    if p is None:
        return None
    start, end = p.start, p.end
    if p.cadence is Cadence.MONTHLY:
        return dg.MonthlyPartitionsDefinition(start_date=start, end_date=end)
    if p.cadence is Cadence.WEEKLY:
        return dg.WeeklyPartitionsDefinition(start_date=start, end_date=end)
    return dg.DailyPartitionsDefinition(start_date=start, end_date=end)
