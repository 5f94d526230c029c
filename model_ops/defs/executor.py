"""Which executor runs a run's steps: chosen by ``MODEL_OPS_EXECUTOR``, never by code edits.

Unset (or ``default``): Dagster's default executor, ``multi_or_in_process_executor``. Each step runs in a process of
its own beside the run's process (on Kubernetes: inside the run's pod), at most
``DAGSTER_MULTIPROCESS_EXECUTOR_MAX_CONCURRENT`` at a time (Dagster's own setting; without it, the CPU count the
process sees, which in a pod is the node's, not the pod's limit). A run's config may still say
``execution: {config: {in_process: {}}}`` (every step in the run's process, as ``model-ops demo`` runs them) or
``execution: {config: {multiprocess: {max_concurrent: N}}}``.

``k8s``: dagster-k8s's ``k8s_job_executor`` (the ``k8s`` extra): each step is a Kubernetes Job of its own, with the
run's image and the code location's environment; its run config is dagster-k8s's
(``execution: {config: {max_concurrent: N, step_k8s_config: {...}}}``). ``model-ops demo`` runs every step in one
process and needs the default.

The code server and every run worker read the variable when they load the definitions, so it belongs in the code
location's environment (deploy/k8s/values.yaml), which the run pods inherit.
"""

from __future__ import annotations

import os

import dagster as dg

from model_ops.errors import UsageError

ENV_VAR = "MODEL_OPS_EXECUTOR"
EXECUTORS = ("default", "k8s")


def selected() -> str:
    """The executor ``MODEL_OPS_EXECUTOR`` names (``default`` when unset); a clear error for an unknown one."""
    raw = os.environ.get(ENV_VAR, "")
    name = raw.strip().lower() or "default"
    if name not in EXECUTORS:
        raise UsageError(
            f"{ENV_VAR}={raw!r} names no executor model_ops knows", hint=f"use one of: {', '.join(EXECUTORS)}"
        )
    return name


def executor() -> dg.ExecutorDefinition | None:
    """The executor of every job (None: Dagster's default, ``multi_or_in_process_executor``)."""
    if selected() == "default":
        return None
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError:
        raise UsageError(
            f"{ENV_VAR}=k8s needs dagster-k8s, which is not installed",
            hint="install model_ops with its k8s extra (pip install 'model_ops[k8s]'), or unset " + ENV_VAR,
        ) from None
    return k8s_job_executor
