"""What a reader gets back for one version, whether the answer came from the folded log or from a snapshot.

Kept apart from ``registry.py`` (and free of Arrow and the Delta engine) so that a command answered from the
state snapshot never imports them: see ``snapshot.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as the registry sees it now (stage, aliases and tags change; the rest never does)."""

    name: str
    version: int
    semver: str
    stage: str
    aliases: tuple[str, ...]
    digest: str
    created_at: datetime
    created_by: str
    run_id: str | None
    tags: Mapping[str, str]
    record: Mapping[str, Any]

    @property
    def ref(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def params(self) -> dict:
        return dict(self.record.get("params") or {})

    @property
    def metrics(self) -> dict:
        return dict(self.record.get("metrics") or {})

    @property
    def dataset(self) -> dict | None:
        return self.record.get("dataset")

    @property
    def signature(self) -> dict | None:
        return self.record.get("signature")

    @property
    def lineage(self) -> dict:
        return dict(self.record.get("lineage") or {})

    @property
    def parent(self) -> int | None:
        return self.record.get("parent")

    @property
    def bump(self) -> dict:
        return dict(self.record.get("bump") or {})

    @property
    def flavor(self) -> str:
        return str(self.record.get("flavor", ""))

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "semver": self.semver,
            "stage": self.stage,
            "aliases": list(self.aliases),
            "digest": self.digest,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }

    def to_dict(self) -> dict[str, Any]:
        out = self.summary()
        out.update({"ref": self.ref, "run_id": self.run_id, "tags": dict(self.tags)})
        out.update({k: v for k, v in self.record.items() if k not in ("tags", "stage")})
        return out


class VersionReader(Protocol):
    """The reads both a :class:`~model_ops.registry.Registry` and a current snapshot answer (the command line's
    ``resolve``, ``versions``, ``show``, ``models`` and ``search`` take either)."""

    def resolve(self, ref: Any) -> ModelVersion: ...

    def versions(self, name: str) -> list[ModelVersion]: ...

    def models(self) -> list[str]: ...

    def model_summaries(self) -> list[dict[str, Any]]: ...

    def search(self, query: str, *, order_by: str | None = ..., limit: int = ..., cursor: str | None = ...) -> Any: ...
