"""model_ops: model versioning and model operations built on Dagster, Delta Lake and a content-addressed store.

The packages below ``defs/`` and ``definitions.py`` never import Dagster: ``model_ops.registry`` and
``model_ops.artifacts`` are usable as a plain library (``from model_ops.registry import Registry``).
"""

__version__ = "0.1.0"
