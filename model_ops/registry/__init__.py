"""The model registry (no Dagster imports): ``from model_ops.registry import Registry``.

The names below are imported on first use: a command answered from the state snapshot (``snapshot.py``) imports
``model_ops.registry.snapshot`` without pulling in Arrow and the Delta engine that ``Registry`` needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model_ops.registry.events import Event
    from model_ops.registry.refs import Ref, parse_ref
    from model_ops.registry.registry import Registry, parse_timestamp
    from model_ops.registry.version import ModelVersion

__all__ = ["Event", "ModelVersion", "Ref", "Registry", "parse_ref", "parse_timestamp"]

_HOME = {
    "Event": "model_ops.registry.events",
    "ModelVersion": "model_ops.registry.version",
    "Ref": "model_ops.registry.refs",
    "parse_ref": "model_ops.registry.refs",
    "Registry": "model_ops.registry.registry",
    "parse_timestamp": "model_ops.registry.registry",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'model_ops.registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
