"""Dagster resources over the Dagster-free library, chosen by environment, never by code edits.

``MODEL_OPS_ENV=local`` (default): everything under ``MODEL_OPS_ROOT`` (default ``./.model_ops``).
``MODEL_OPS_ENV=s3``: ``MODEL_OPS_ROOT`` must be ``s3://bucket/prefix``; Delta tables and artifacts both live
there, with credentials and endpoint from the standard AWS settings. Every registry change made from a run
carries that run's id into the audit log.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg
from pydantic import Field, PrivateAttr

from model_ops.data.delta import Dataset
from model_ops.errors import UsageError
from model_ops.location import Location, resolve_root
from model_ops.registry import Registry
from model_ops.vocab import RunTag

ENV_VAR = "MODEL_OPS_ENV"
PARTITION_TAG = "dagster/partition"


def run_window(tags: Mapping[str, str]) -> str | None:
    """The window of the world a run acts on, from its tags: the window a sensor's decision was taken on, else
    the run's partition; None for neither (see ``Registry.business_window``)."""
    return tags.get(RunTag.WINDOW.value) or tags.get(PARTITION_TAG) or None


ENVIRONMENTS = ("local", "s3")


class ModelOpsResource(dg.ConfigurableResource):
    """The registry, the artifact store and the Delta datasets of model_ops, all under one root.

    ``actor`` defaults to ``MODEL_OPS_ACTOR`` or the OS user running the code location; set it to the identity
    your policy file grants the run's verbs (for example a ``pipeline`` role allowed to register and stage).
    """

    root: str | None = Field(
        default=None, description="A local path or s3://bucket/prefix; default $MODEL_OPS_ROOT, else ./.model_ops."
    )
    actor: str | None = Field(default=None, description="Who the registry records as acting for this run.")
    policy: str | None = Field(
        default=None,
        description="Path of a policy YAML that narrows the registry's own (it can only take rights away); "
        "default: none, the registry's policy alone.",
    )

    # The window the run acts on (its partition, or the window a sensor's decision was taken on): see
    # ``Registry.business_window``. Set when a run starts; None in sensors and outside runs.
    _window: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.run
        if run is not None:
            self._window = run_window(run.tags)

    def location(self) -> Location:
        return resolve_root(self.root)

    def get_registry(self) -> Registry:
        """The registry, its writes stamped with the window of the run this resource serves (if any)."""
        reg = Registry.open(self.location(), actor=self.actor, policy=self.policy)
        reg.business_window = self._window
        return reg

    def dataset(self, model: str, name: str) -> Dataset:
        """The Delta table of asset ``model/name`` (``<root>/datasets/<model>/<name>``)."""
        return Dataset(self.location().child("datasets", model, name), f"{model}/{name}")


def environment() -> str:
    env = os.environ.get(ENV_VAR, "local").strip().lower() or "local"
    if env not in ENVIRONMENTS:
        raise UsageError(
            f"{ENV_VAR}={env} is not an environment model_ops knows", hint=f"use one of: {', '.join(ENVIRONMENTS)}"
        )
    return env


def environment_root(root: str | None = None) -> Location:
    """The model_ops root (``root``, else ``$MODEL_OPS_ROOT``, else ``./.model_ops``), refused when the environment
    is ``s3`` and the root is not an ``s3://`` URI."""
    location = resolve_root(root)
    if environment() == "s3" and not location.is_s3:
        raise UsageError(
            f"{ENV_VAR}=s3 needs MODEL_OPS_ROOT=s3://bucket/prefix, got {location.uri}",
            hint="set MODEL_OPS_ROOT (or pass --root) to an s3:// URI (and AWS_ENDPOINT_URL for a non-AWS endpoint)",
        )
    return location


def resources() -> dict[str, dg.ConfigurableResource]:
    """The resources for the environment named by ``MODEL_OPS_ENV``."""
    resource = ModelOpsResource()
    environment_root(resource.root)
    return {"model_ops": resource}
