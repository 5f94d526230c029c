"""The executor of model_ops' jobs, chosen by configuration (``MODEL_OPS_EXECUTOR``, Dagster's
``DAGSTER_MULTIPROCESS_EXECUTOR_MAX_CONCURRENT``), never by code: by default Dagster's multi-or-in-process executor,
whose run config the demo's in-process runs rely on; with ``MODEL_OPS_EXECUTOR=k8s``, dagster-k8s's
``k8s_job_executor``."""

from __future__ import annotations

import sys

import dagster as dg
import pytest
from dagster._core.definitions.executor_definition import multi_or_in_process_executor
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.executor.init import InitExecutorContext
from dagster._core.executor.multiprocess import MultiprocessExecutor
from dagster_k8s import k8s_job_executor

from model_ops.definitions import build_definitions
from model_ops.defs.executor import ENV_VAR
from model_ops.defs.workspace import IN_PROCESS
from model_ops.errors import UsageError
from model_ops.specs import get_spec

SPEC = get_spec("flight_delay")
# Jobs that need no op config: the partition's, the retrain's, the retention's and the UI's Materialize job.
JOBS = ("flight_delay_monthly", "flight_delay_retrain", "flight_delay_retention", "__ASSET_JOB")


def job_defs(defs: dg.Definitions) -> list[dg.JobDefinition]:
    return list(defs.resolve_all_job_defs())


def test_jobs_use_dagsters_default_executor_that_the_demo_configures_in_process() -> None:
    defs = build_definitions([SPEC])
    assert {j.executor_def for j in job_defs(defs)} == {multi_or_in_process_executor}
    for name in JOBS:
        job = defs.resolve_job_def(name)
        # the demo's runs (model_ops.defs.workspace.InProcessRunLauncher) and a run config asking for processes
        dg.validate_run_config(job, {"execution": {"config": IN_PROCESS}})
        dg.validate_run_config(job, {"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}})


def _multiprocess_executor(job: dg.JobDefinition) -> MultiprocessExecutor:
    """The executor a run of ``job`` gets with no execution config (the one a deployed run uses)."""
    resolved = dg.validate_run_config(job, {})["execution"][job.executor_def.name]
    assert "multiprocess" in resolved  # processes unless a run asks for in_process
    creation = job.executor_def.executor_creation_fn
    assert creation is not None
    with dg.instance_for_test() as instance:
        executor = creation(InitExecutorContext(InMemoryJob(job), job.executor_def, resolved, instance))
    assert isinstance(executor, MultiprocessExecutor)
    return executor


def test_step_processes_per_run_come_from_dagsters_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default runs steps in processes, as many at once as DAGSTER_MULTIPROCESS_EXECUTOR_MAX_CONCURRENT says
    (deploy/k8s/values.yaml sets it to the run pod's CPUs)."""
    job = build_definitions([SPEC]).resolve_job_def("flight_delay_retrain")
    monkeypatch.setenv("DAGSTER_MULTIPROCESS_EXECUTOR_MAX_CONCURRENT", "3")
    assert _multiprocess_executor(job)._max_concurrent == 3
    monkeypatch.setenv("DAGSTER_MULTIPROCESS_EXECUTOR_MAX_CONCURRENT", "2")
    assert _multiprocess_executor(job)._max_concurrent == 2


def test_k8s_selects_the_kubernetes_job_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "K8s ")
    defs = build_definitions([SPEC])
    assert {j.executor_def for j in job_defs(defs)} == {k8s_job_executor}
    for name in JOBS:
        job = defs.resolve_job_def(name)
        dg.validate_run_config(job, {})  # every k8s executor setting is optional
        steps = {"container_config": {"resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}}
        dg.validate_run_config(job, {"execution": {"config": {"max_concurrent": 4, "step_k8s_config": steps}}})
        # the in-process run config is the default executor's alone: the demo needs MODEL_OPS_EXECUTOR unset
        with pytest.raises(dg.DagsterInvalidConfigError):
            dg.validate_run_config(job, {"execution": {"config": IN_PROCESS}})


@pytest.mark.parametrize("value", ["", "  ", "default", "DEFAULT"])
def test_unset_or_default_is_dagsters_default(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    job = build_definitions([SPEC]).resolve_job_def("flight_delay_retrain")
    assert job.executor_def is multi_or_in_process_executor


def test_an_unknown_executor_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "celery")
    with pytest.raises(UsageError, match="MODEL_OPS_EXECUTOR='celery'") as err:
        build_definitions([SPEC])
    assert err.value.hint is not None and "default, k8s" in err.value.hint


def test_k8s_without_dagster_k8s_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "k8s")
    monkeypatch.setitem(sys.modules, "dagster_k8s", None)  # an import of it now fails as if not installed
    with pytest.raises(UsageError, match="needs dagster-k8s") as err:
        build_definitions([SPEC])
    assert err.value.hint is not None and "model_ops[k8s]" in err.value.hint
