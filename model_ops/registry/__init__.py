"""The model registry (no Dagster imports): ``from model_ops.registry import Registry``."""

from model_ops.registry.events import Event
from model_ops.registry.refs import Ref, parse_ref
from model_ops.registry.registry import ModelVersion, Registry, parse_timestamp

__all__ = ["Event", "ModelVersion", "Ref", "Registry", "parse_ref", "parse_timestamp"]
