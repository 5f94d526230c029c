"""Retrieval configurations as versioned artifacts: which embedding model, how documents are chunked, how many
passages come back, and which exact version of the index's Delta table they come from.

A retrieval configuration changes answers as much as a prompt does, and an index built with one embedding model
is meaningless to another, so it is registered and compared like any version (``retrieval.yaml`` or
``NAME.retrieval.yaml``)::

    embedding_model: models:/text_embedder/production
    chunking: {strategy: recursive, size: 512, overlap: 64}
    top_k: 5
    index: /lake/support_docs_index@12          # URI@VERSION of a Delta table
    parameters: {score_threshold: 0.3}

At registration the embedding model is resolved to its exact version and the index table is opened at its version
(it must exist), so a registered configuration names nothing that moves.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model_ops.errors import UsageError
from model_ops.llm import yaml_files


class Chunking(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    strategy: Literal["fixed", "recursive", "sentence", "markdown"]
    size: int = Field(gt=0, le=1_000_000)
    overlap: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Chunking:
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class Retrieval(BaseModel):
    """One retrieval configuration file, validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_model: str
    chunking: Chunking
    top_k: int = Field(gt=0, le=10_000)
    index: str  # URI@VERSION of the Delta table the index lives in
    parameters: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes, what: str) -> Retrieval:
        return yaml_files.parse(
            cls, data, what, kind="retrieval configuration", documented_in="model_ops.llm.retrieval"
        )

    def index_ref(self) -> tuple[str, int]:
        uri, sep, version = self.index.rpartition("@")
        if not sep or not uri or not version.isdigit():
            raise UsageError(
                f"index {self.index!r} must be URI@VERSION of a Delta table", hint="e.g. /lake/support_docs_index@12"
            )
        return uri, int(version)

    def summary(self) -> dict[str, Any]:
        return {
            "chunking": self.chunking.model_dump(),
            "top_k": self.top_k,
            "parameters": dict(sorted(self.parameters.items())),
        }
