"""Monthly partitions: one per month of the built-in data, keyed by the first day (2013-01-01 … 2013-12-01)."""

import dagster as dg

from model_ops.data.sources import FIRST_MONTH

monthly = dg.MonthlyPartitionsDefinition(start_date=FIRST_MONTH, end_date="2014-01-01")
