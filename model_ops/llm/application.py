"""LLM applications: which base model, adapter, prompt and retrieval configuration answer together, as one
versioned artifact (``application.yaml`` or ``NAME.application.yaml``).

An application is what an LLM service deploys: registering one resolves every reference and checks that the parts
fit each other (the adapter was trained on this base's architecture; the prompt was written for this base or this
adapter), and a version of it is deployed, canaried and rolled back like any model, so "what served at 14:00" is one
application version and the versions of its parts.

Example::

    base_model: models:/tiny_llama/production
    adapter: models:/support_lora/4                # pinned: this exact version, whatever moves
    prompt: prompts:/support_reply/production      # follows the stage: the server uses what is in it now
    retrieval: models:/support_docs/production

A reference by number or semver is **pinned**; one by alias or stage **follows** it: the live server resolves it
again whenever the registry moves (an adapter switch is an alias move), and every response names the exact versions
it used. Registration records what each reference resolved to then, so the lineage of a version names exact parts
either way. Pin everything to make a rollback of the application restore every part exactly. An application that
names only an adapter answers with the base that adapter was trained on when the application was registered, and
keeps it: an adapter alias that moves to an adapter for another architecture is refused, never served.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator

from model_ops.llm import yaml_files

ROLES = ("base_model", "adapter", "prompt", "retrieval")


class Application(BaseModel):
    """One application file, validated: each part as a registry reference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model: str | None = None
    adapter: str | None = None
    prompt: str
    retrieval: str | None = None

    @model_validator(mode="after")
    def _has_a_model(self) -> Application:
        if self.base_model is None and self.adapter is None:
            raise ValueError("name the model that answers: base_model, adapter, or both")
        return self

    @classmethod
    def parse(cls, data: bytes, what: str) -> Application:
        return yaml_files.parse(cls, data, what, kind="application file", documented_in="model_ops.llm.application")

    def parts(self) -> dict[str, str]:
        """``{role: reference}`` for the parts this application names, in :data:`ROLES` order."""
        named = {"base_model": self.base_model, "adapter": self.adapter, "prompt": self.prompt}
        named["retrieval"] = self.retrieval
        return {role: ref for role, ref in named.items() if ref is not None}
