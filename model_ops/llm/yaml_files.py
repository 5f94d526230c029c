"""The YAML files LLM artifacts are declared in (prompts, retrieval configurations): read safely, validated by a
pydantic model, and refused with one line naming the file and the field.
"""

from __future__ import annotations

from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from model_ops.errors import UsageError

MAX_BYTES = 1 << 20
Model = TypeVar("Model", bound=BaseModel)


class _NoAliases(yaml.SafeLoader):
    """A YAML loader that refuses anchors and aliases: a few hundred bytes of nested aliases expand to millions of
    nodes, and these files have no use for them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise UsageError("YAML aliases (*name) are not allowed in this file", hint="write the value out")
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise UsageError("YAML anchors (&name) are not allowed in this file", hint="write the value out")
        return super().compose_node(parent, index)


def safe_yaml(data: bytes, what: str) -> Any:
    try:
        return yaml.load(data, Loader=_NoAliases)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise UsageError(f"{what} is not valid YAML: {e}", hint="fix the file") from None
    except UsageError as e:
        raise UsageError(f"{what}: {e.message}", hint=e.hint) from None


def parse(model: type[Model], data: bytes, what: str, *, kind: str, documented_in: str) -> Model:
    """``data`` (the file ``what``, a ``kind``) as an instance of ``model``."""
    if len(data) > MAX_BYTES:
        raise UsageError(f"{what} is larger than a {kind} can be ({MAX_BYTES >> 20} MiB)")
    doc = safe_yaml(data, what)
    if not isinstance(doc, dict):
        raise UsageError(f"{what} must be a YAML mapping", hint=f"see `{documented_in}` for the fields")
    try:
        return model.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise UsageError(f"{what}: {where}: {first['msg']}", hint=f"see `{documented_in}` for the fields") from None
