"""Dagster resources over the Dagster-free library.

The root is chosen by environment, never by code edits: ``MODEL_OPS_ROOT`` (a path or ``s3://bucket/prefix``),
default ``./.model_ops``. Every registry change made from a run carries that run's id into the audit log.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from model_ops.location import resolve_root
from model_ops.registry import Registry


class RegistryResource(dg.ConfigurableResource):
    """The model registry and artifact store at ``root``.

    ``actor`` defaults to ``MODEL_OPS_ACTOR`` or the OS user running the code location; set it to the identity
    your policy file grants the run's verbs (for example a ``pipeline`` role allowed to register and stage).
    """

    root: str | None = Field(default=None, description="Registry root: a local path or s3://bucket/prefix; "
                             "default $MODEL_OPS_ROOT, else ./.model_ops.")
    actor: str | None = Field(default=None, description="Who the registry records as acting for this run.")
    policy: str | None = Field(default=None, description="Path of a policy YAML; default: the registry's own.")

    def get_registry(self) -> Registry:
        return Registry.open(resolve_root(self.root), actor=self.actor, policy=self.policy)
