"""Running a model's asset graph in-process, as the tests need it."""

from __future__ import annotations

from typing import Any

import dagster as dg

from model_ops.definitions import build_definitions
from model_ops.defs.resources import ModelOpsResource
from model_ops.specs import ModelSpec

INGEST = ("flights", "weather", "features")
TRAIN_TO_DEPLOY = ("training_set", "candidate_model", "evaluation", "deployment")


class Graph:
    """The assets of ``specs`` against one root and one Dagster instance."""

    def __init__(self, instance: dg.DagsterInstance, root: str, specs: list[ModelSpec] | None = None) -> None:
        self.instance = instance
        self.root = root
        self.defs = build_definitions(specs)
        self.assets = list(self.defs.assets or [])
        self.resource = ModelOpsResource(root=root, actor="pipeline")

    def run(
        self,
        model: str,
        names: tuple[str, ...],
        partition: str | None = None,
        config: dict[str, Any] | None = None,
        raise_on_error: bool = False,
    ) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            self.assets,
            instance=self.instance,
            resources={"model_ops": self.resource},
            selection=[dg.AssetKey([model, n]) for n in names],
            partition_key=partition,
            run_config=dg.RunConfig(ops={f"{model}__{k}": {"config": v} for k, v in (config or {}).items()}),
            raise_on_error=raise_on_error,
        )

    def ingest(self, model: str, *months: str) -> None:
        for month in months:
            result = self.run(model, INGEST, partition=month)
            assert result.success, f"ingesting {month} failed"

    def metadata(self, model: str, name: str, partition: str | None = None) -> dict[str, Any]:
        event = self.instance.get_latest_materialization_event(dg.AssetKey([model, name]))
        if partition is not None:
            records = self.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey([model, name]), asset_partitions=[partition]), limit=1
            )
            event = records.records[0].event_log_entry
        assert event is not None and event.asset_materialization is not None
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    def registry(self):  # type: ignore[no-untyped-def]
        return self.resource.get_registry()


def checks(result: dg.ExecuteInProcessResult) -> dict[str, tuple[bool, str]]:
    """``asset.check`` → (passed, message) for every check evaluated in the run."""
    return {
        f"{e.asset_key.path[-1]}.{e.check_name}": (e.passed, e.description or "")
        for e in result.get_asset_check_evaluations()
    }


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
