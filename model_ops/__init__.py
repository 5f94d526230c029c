"""model_ops: model versioning and model operations built on Dagster, Delta Lake and a content-addressed store.

The packages below ``defs/`` and ``definitions.py`` never import Dagster: ``model_ops.registry`` and
``model_ops.artifacts`` are usable as a plain library (``from model_ops.registry import Registry``).
Downstream code loads a registered model with ``model_ops.load("models:/NAME@champion")`` (see ``loading.py``).
"""

import os

__version__ = "0.1.0"

# The Delta engine's own allocator keeps what a large write freed resident for the life of the process (half a
# GB per million rows written here), on top of the fit that follows; purge freed pages at once instead. Read when
# the engine loads, so it is set before anything imports it; a value of the user's own is kept.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")

# Imported on first use, so ``import model_ops`` stays cheap (and Dagster-free for library users).
_LAZY = {"load": "model_ops.loading", "LoadedModel": "model_ops.loading"}


def __getattr__(name: str) -> object:
    """``model_ops.ModelComponent`` (what ``type:`` in a ``defs.yaml`` names) without importing Dagster for library
    users: the Dagster layer is imported only when the component is asked for. ``load`` and ``LoadedModel`` are
    imported on first use too."""
    if name == "ModelComponent":
        from model_ops.defs.component import ModelComponent

        return ModelComponent
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model_ops' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "ModelComponent", *_LAZY])
