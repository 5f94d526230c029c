"""Coercion of what callers hand the registry into what it stores.

Everything the registry writes goes into an append-only log that is never rewritten, so a value is checked and
normalised here, before any event is built: a metric that is not a finite number, a tag that is not a scalar, a
record that does not survive a JSON round trip would otherwise be in the audit trail for good. Each function raises
:class:`UsageError` naming the field, and returns the value in the one form the log keeps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from model_ops.errors import UsageError
from model_ops.registry import events as ev
from model_ops.registry.refs import Ref, parse_ref

# The keyword arguments of Registry.register, which is also what one entry of register_many may hold.
REGISTRATION_FIELDS = frozenset(
    {"path", "params", "metrics", "dataset", "signature", "tags", "lineage", "parent", "description", "flavor", "base"}
)


def as_ref(value: str | Ref) -> Ref:
    """A reference given as a string (``models:/NAME/3`` …) or already parsed."""
    return value if isinstance(value, Ref) else parse_ref(value)


def parse_timestamp(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        return ev.utc(value)
    text = str(value).strip()
    try:
        return ev.utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise UsageError(
            f"cannot read {value!r} as a time",
            hint="use ISO 8601, e.g. 2013-07-14T14:00:00Z (a time without a zone is taken as UTC)",
        ) from None


def require_reason(reason: str | None, what: str) -> str:
    """The reason a change needs: changes of stage and alias are explained in the audit log, never left blank."""
    if reason is None or not str(reason).strip():
        raise UsageError(f"{what} needs a reason", hint="say why with --reason TEXT (it goes into the audit log)")
    return str(reason).strip()


def json_obj(value: Any, what: str) -> dict:
    """A mapping as it will read back from the log: the JSON round trip is done now, so what the caller is given
    back and what a later reader folds are the same values (and NaN, which JSON cannot hold, is refused)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UsageError(f"{what} must be a JSON object (a mapping of names to values), got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise UsageError(f"{what} cannot be stored as JSON: {e}") from None


def metrics(value: Any) -> dict[str, float]:
    """Finite floats only: gates compare them with bounds, and a bool or a string would compare wrongly or not at all."""
    out = json_obj(value, "metrics")
    bad = [k for k, v in out.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise UsageError(f"metrics must be finite numbers; not: {', '.join(bad)}")
    return {k: float(v) for k, v in out.items()}


def tags(value: Any) -> dict[str, str]:
    """Tags are stored as strings (the event's ``to_value``), so only scalars are taken, written as strings."""
    out = json_obj(value, "tags")
    for k, v in out.items():
        if not isinstance(v, (str, int, float, bool)):
            raise UsageError(f"tag {k!r} must be a string, number or boolean")
        if not k or len(k) > 250:
            raise UsageError(f"tag key {k!r} must be 1 to 250 characters")
        if k != k.strip() or any(not c.isprintable() for c in k):
            raise UsageError(
                f"tag key {k!r} has surrounding whitespace or control characters",
                hint="a key that prints like another must not be another: use visible characters only",
            )
    return {k: str(v) for k, v in out.items()}


def parse_dataset(value: Any) -> dict | None:
    """A dataset reference: ``URI@VERSION`` or a mapping with at least ``uri``."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        uri, sep, version = value.rpartition("@")
        if not sep or not uri:
            raise UsageError(f"dataset {value!r} must be URI@VERSION", hint="e.g. s3://lake/features@42")
        return {"uri": uri, "version": int(version) if version.isdigit() else version}
    ds = json_obj(value, "dataset")
    if "uri" not in ds:
        raise UsageError("dataset must name its 'uri'", hint='e.g. {"uri": "...", "version": 42, "schema_hash": "..."}')
    return ds


def signature(value: Any) -> dict | None:
    """A model signature; its inputs must name their columns, because semver bumps and ``breaking_changes``
    compare signatures column by column."""
    if value is None:
        return None
    sig = json_obj(value, "signature")
    inputs = sig.get("inputs")
    if inputs is not None and (
        not isinstance(inputs, list) or not all(isinstance(i, dict) and "name" in i for i in inputs)
    ):
        raise UsageError('signature.inputs must be a list of {"name": ..., "dtype": ...}')
    return sig


def registration(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of ``register_many``, every field coerced. A batch is checked whole before any artifact of it is
    stored, so a bad last entry leaves no stored blobs behind for the first."""
    unknown = set(entry) - REGISTRATION_FIELDS
    if unknown:
        raise UsageError(f"unknown registration field(s): {', '.join(sorted(unknown))}")
    if "path" not in entry:
        raise UsageError("a registration needs the path of its artifact")
    return {
        "path": entry["path"],
        "flavor": entry.get("flavor"),
        "params": json_obj(entry.get("params"), "params"),
        "metrics": metrics(entry.get("metrics")),
        "dataset": parse_dataset(entry.get("dataset")),
        "signature": signature(entry.get("signature")),
        "tags": tags(entry.get("tags")),
        "lineage": _own_lineage(json_obj(entry.get("lineage"), "lineage")),
        "parent": entry.get("parent"),
        "description": entry.get("description"),
        "base": _base_ref(entry.get("base")),
    }


# Lineage the registry reads from the files themselves (model_ops.registry.relations): a caller cannot set it.
READ_FROM_FILES = frozenset(
    {"base_model", "written_for", "embedding_model", "architecture", "adapter", "prompt", "retrieval"}
)


def _own_lineage(lineage: dict[str, Any]) -> dict[str, Any]:
    given = sorted(READ_FROM_FILES & set(lineage))
    if given:
        raise UsageError(
            f"lineage may not set {', '.join(given)}: the registry reads them from the artifact's files",
            hint="for an adapter's base pass base= (--base); a prompt or retrieval configuration names its models itself",
        )
    return lineage


def _base_ref(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise UsageError(f"base must be a model reference such as models:/NAME@ALIAS, not {type(value).__name__}")
