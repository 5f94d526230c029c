"""Dagster entry point: ``dagster dev -w workspace.yaml`` or ``dagster ... -m model_ops.definitions``.

For now it provides the registry resource that the asset graph builds on; assets, checks, sensors and schedules
are added per domain under ``model_ops/defs/``.
"""

from __future__ import annotations

import dagster as dg

from model_ops.defs.resources import RegistryResource

defs = dg.Definitions(resources={"registry": RegistryResource()})
