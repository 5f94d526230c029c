"""Model specs: the YAML declaration of a model (features, target, estimator, gates, deployment, monitoring)."""

from model_ops.specs.loader import SpecError, get_spec, load_spec, load_specs
from model_ops.specs.schema import ModelSpec

__all__ = ["ModelSpec", "SpecError", "get_spec", "load_spec", "load_specs"]
