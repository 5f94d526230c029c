"""The project's code location, loaded in this process: runs launched as the UI launches them, sensors ticked as
the daemon ticks them.

``model-ops demo`` replays a year in minutes. Its runs must still be the runs a user sees in the Dagster UI: runs
of the workspace's ``model_ops`` location (so each job's Runs tab, the Overview timeline and each sensor's history
list them), decided by the sensors' own ticks (stored with their skip reasons and cursors), not by a parallel
path. This module does that without a daemon or a code server:

- the location is the one ``workspace.yaml`` and ``[tool.dagster]`` name, loaded in-process;
- a run is created from the location's job snapshot with its remote origin, as the UI's launch does, and executed
  synchronously in this process (:class:`InProcessRunLauncher`: one process for every step, which keeps a
  replay's hundred runs to seconds each);
- a sensor tick goes through the sensor daemon's own tick code, once, now (the replay decides when a month is
  over, not the sensor's minimum interval): it evaluates the sensor, stores the tick, moves the cursor, honours
  run keys and submits the runs requested, which run before the tick returns.

The tick and run-creation entry points are Dagster internals (``dagster._daemon.sensor``,
``dagster._core``); the Dagster family is pinned to 1.13.* for them, and the replay's tests exercise every one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import dagster as dg
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.execution.api import execute_run
from dagster._core.instance.ref import InstanceRef
from dagster._core.launcher import LaunchRunContext, RunLauncher
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    InstigatorType,
    SensorInstigatorData,
    TickStatus,
)
from dagster._core.storage.tags import PARTITION_NAME_TAG
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon import sensor as sensor_daemon
from dagster._record import copy
from dagster._serdes import ConfigurableClass
from dagster._serdes.config_class import ConfigurableClassData
from dagster._time import get_current_timestamp
from dagster._utils.error import SerializableErrorInfo
from dagster._utils.hosted_user_process import recon_job_from_origin

from model_ops.errors import UsageError

LOCATION = "model_ops"  # workspace.yaml's location_name and [tool.dagster] code_location_name
MODULE = "model_ops.definitions"
PROJECT_DIR = Path(__file__).resolve().parents[2]
IN_PROCESS = {"in_process": {}}
QUIET = {"console": {"config": {"log_level": "WARNING"}}}
ASSET_JOB = "__ASSET_JOB"  # the job the UI's Materialize button launches

log = logging.getLogger("model_ops.demo")


class InProcessRunLauncher(RunLauncher, ConfigurableClass):
    """Runs a launched run to its end in this process, every step in this process too (the job's default
    executor would start a process per step). The run's stored config stays as it was created."""

    def __init__(self, inst_data: ConfigurableClassData | None = None) -> None:
        self._inst_data = inst_data
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> InProcessRunLauncher:
        return cls(inst_data=inst_data)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        config = dict(run.run_config or {})
        config.setdefault("execution", {"config": IN_PROCESS})
        config.setdefault("loggers", QUIET)
        assert context.job_code_origin is not None
        execute_run(recon_job_from_origin(context.job_code_origin), copy(run, run_config=config), self._instance)

    def terminate(self, run_id: str) -> bool:
        return False


# In memory only: the instance's dagster.yaml (which the webserver reads too) is left as it is.
_SYNCHRONOUS = {
    "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
    "run_launcher": {"module": __name__, "class": InProcessRunLauncher.__name__},
}


def synchronous_instance(home: str | Path) -> dg.DagsterInstance:
    """The instance at ``home`` with runs submitted straight to :class:`InProcessRunLauncher`; an
    :class:`~model_ops.defs.instance.InstanceUnavailableError` when its database cannot be reached."""
    from model_ops.defs.instance import unavailable

    # dagster-postgres reports each connection retry through the root logger; the error below says it once
    logging.disable(logging.WARNING)
    try:
        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home), overrides=_SYNCHRONOUS))
    except dg.DagsterInvalidConfigError as exc:
        raise UsageError(
            f"the Dagster instance configuration {Path(home) / 'dagster.yaml'} is invalid: {exc}",
            hint="fix it (or the environment variables it reads), or use a new --dagster-home",
        ) from None
    except Exception as exc:
        error = unavailable(home, exc)
        if error is None:
            raise
        raise error from None
    finally:
        logging.disable(logging.NOTSET)


@dataclass(frozen=True)
class Outcome:
    run_id: str
    status: dg.DagsterRunStatus
    failed_checks: list[str]  # blocking checks that failed: "name: description"

    @property
    def success(self) -> bool:
        return self.status == dg.DagsterRunStatus.SUCCESS


@dataclass(frozen=True)
class Tick:
    status: TickStatus
    skip_reason: str | None
    cursor: str | None
    run_ids: list[str]


class CodeLocation:
    """The ``model_ops`` location, loaded in this process against ``instance`` (see the module docstring)."""

    def __init__(self, context: WorkspaceProcessContext) -> None:
        self._context = context
        self.instance = context.instance

    @classmethod
    @contextmanager
    def load(cls, instance: dg.DagsterInstance) -> Iterator[CodeLocation]:
        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(
                executable_path=sys.executable, module_name=MODULE, working_directory=str(PROJECT_DIR)
            ),
            location_name=LOCATION,
        )
        with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context:
            location = context.create_request_context().get_code_location(LOCATION)  # raises what failed to load
            del location
            yield cls(context)

    def _location(self) -> Any:
        return self._context.create_request_context().get_code_location(LOCATION)

    def run(
        self,
        job: str,
        *,
        partition: str | None = None,
        run_config: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        assets: Sequence[dg.AssetKey] | None = None,
    ) -> Outcome:
        """Create a run of ``job`` (or of ``assets``) as the UI's launch does, run it to its end, and say how it
        ended."""
        request = self._context.create_request_context()
        location = request.get_code_location(LOCATION)
        (repository,) = location.get_repositories()
        remote = location.get_job(
            JobSubsetSelector(
                location_name=LOCATION,
                repository_name=repository,
                job_name=ASSET_JOB if assets else job,
                op_selection=None,
                asset_selection=list(assets) if assets else None,
            )
        )
        config = dict(run_config or {})
        plan = location.get_execution_plan(
            remote, config, step_keys_to_execute=None, known_state=None, instance=self.instance
        )
        created = self.instance.create_run(
            job_name=remote.name,
            run_id=None,
            run_config=config,
            resolved_op_selection=None,
            step_keys_to_execute=None,
            op_selection=None,
            status=dg.DagsterRunStatus.NOT_STARTED,
            root_run_id=None,
            parent_run_id=None,
            tags={**remote.tags, **(tags or {}), **({PARTITION_NAME_TAG: partition} if partition else {})},
            job_snapshot=remote.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=remote.parent_job_snapshot,
            asset_selection=frozenset(assets) if assets else None,
            asset_check_selection=None,
            remote_job_origin=remote.get_remote_origin(),
            job_code_origin=remote.get_python_origin(),
            asset_graph=request.asset_graph,
        )
        self.instance.submit_run(created.run_id, request)
        return self.outcome(created.run_id)

    def outcome(self, run_id: str) -> Outcome:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None
        failed = []
        records = self.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        for record in records.records:
            event = record.event_log_entry.dagster_event
            check = event.asset_check_evaluation_data if event is not None else None
            if check is not None and not check.passed and check.severity == dg.AssetCheckSeverity.ERROR:
                failed.append(f"{check.check_name}: {check.description}")
        return Outcome(run_id, run.status, failed)

    def tick(self, sensor: str) -> Tick:
        """One tick of ``sensor`` through the sensor daemon's own code, now, whatever its minimum interval."""
        location = self._location()
        (repository,) = location.get_repositories().values()
        remote = repository.get_sensor(sensor)
        origin_id, selector_id = remote.get_remote_origin_id(), remote.selector_id
        state = self.instance.get_instigator_state(origin_id, selector_id)
        if state is None:  # what the daemon records for a sensor whose default status is RUNNING
            state = InstigatorState(
                remote.get_remote_origin(),
                InstigatorType.SENSOR,
                InstigatorStatus.DECLARED_IN_CODE,
                SensorInstigatorData(
                    min_interval=remote.min_interval_seconds,
                    last_sensor_start_timestamp=get_current_timestamp(),
                    sensor_type=remote.sensor_type,
                ),
            )
            self.instance.add_instigator_state(state)
        retention = self.instance.get_tick_retention_settings(InstigatorType.SENSOR)
        with mock.patch.object(sensor_daemon, "is_under_min_interval", return_value=False):
            for item in sensor_daemon._process_tick_generator(self._context, log, remote, state, None, retention, None):
                if isinstance(item, SerializableErrorInfo):
                    raise RuntimeError(f"sensor {sensor} failed to tick: {item.to_string()}")
        stored = self.instance.get_ticks(origin_id, selector_id, limit=1)[0]
        return Tick(stored.status, stored.skip_reason, stored.cursor, list(stored.run_ids))
