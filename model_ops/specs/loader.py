"""Finding and validating model declarations without Dagster: the project's component folders
(``model_ops/defs/models/*/defs.yaml``, their ``attributes``) and the user's ``MODEL_OPS_SPECS_DIR`` (files holding
the same attributes at top level).

The Dagster layer loads the same files as ``model_ops.ModelComponent`` instances; the command line and the library
read them here, so ``model-ops reproduce`` or the demo never need a code location. An invalid declaration stops
loading with one error naming the file, the field and the problem: a code location that silently drops a model is
harder to debug than one that refuses to load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from model_ops.errors import UsageError
from model_ops.specs.schema import ModelSpec, SchemaMismatch

SPECS_DIR_ENV = "MODEL_OPS_SPECS_DIR"
COMPONENTS_DIR = Path(__file__).resolve().parents[1] / "defs" / "models"
COMPONENT_TYPE = "model_ops.ModelComponent"
EXAMPLE = "model_ops/defs/models/flight_delay/defs.yaml"


class SpecError(UsageError):
    """A model declaration that cannot be used."""


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        if p in ("__root__",) or _union_tag(p):
            continue
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _union_tag(part: object) -> bool:
    """pydantic's labels for the members of a union (``Partitions``, ``literal['none']``, ``function-after[...]``)."""
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part in ("str", "dict"))


def describe_validation(exc: ValidationError) -> list[str]:
    """``field x.y: problem`` for each error, in words a person can act on."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if any(_union_tag(p) for p in loc) and (
            err["type"] in ("string_type", "dict_type", "literal_error") and not isinstance(err.get("input"), str)
        ):
            continue  # the other sides of a union (a template string, `none`): noise next to the real problem
        msg = {
            "extra_forbidden": "unknown field (not part of a model declaration; check its spelling)",
            "missing": "required field is missing",
        }.get(err["type"], err["msg"].removeprefix("Value error, "))
        problems.append(f"field {_field(loc)}: {msg}")
    return problems or [str(exc)]


def validate_spec(data: Any, where: str) -> ModelSpec:
    if not isinstance(data, dict):
        raise SpecError(
            f"model declaration {where} must be a YAML mapping (name:, features:, ...), got {type(data).__name__}"
        )
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(
            f"invalid model declaration {where}: " + "; ".join(describe_validation(exc)),
            hint=f"see {EXAMPLE} for a complete, valid declaration",
        ) from exc


def schema_error(exc: SchemaMismatch, where: str, source: str) -> SpecError:
    return SpecError(
        f"invalid model declaration {where}: " + "; ".join(f"field {f}: {m}" for f, m in exc.problems),
        hint=f"the columns and types come from the source's own schema ({source})",
    )


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"cannot read model declaration {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(
            f"model declaration {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}",
            hint="fix the YAML syntax (indentation, quotes, colons)",
        ) from exc


def spec_attributes(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model attributes in ``path``: a component ``defs.yaml`` (``type`` + ``attributes``) or a plain file."""
    path = Path(path)
    data = _read_yaml(path)
    if isinstance(data, dict) and "type" in data and "attributes" in data:
        if data["type"] != COMPONENT_TYPE:
            raise SpecError(f"{path} declares a {data['type']}, not a {COMPONENT_TYPE}")
        data = data["attributes"]
    return data


def load_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """Read and validate one declaration file."""
    return validate_spec(spec_attributes(path), str(path))


def spec_files() -> list[Path]:
    """The project's component declarations first, then ``$MODEL_OPS_SPECS_DIR/*.yaml|*.yml`` in name order."""
    files = sorted(COMPONENTS_DIR.glob("*/defs.yaml"))
    user = os.environ.get(SPECS_DIR_ENV)
    if user:
        folder = Path(user).expanduser()
        if not folder.is_dir():
            raise SpecError(
                f"{SPECS_DIR_ENV}={user} is not a folder",
                hint=f"point {SPECS_DIR_ENV} at a folder of model declaration YAML files, or unset it",
            )
        files += sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    return files


def load_specs() -> list[ModelSpec]:
    """Every declaration, validated; two files declaring the same model name is an error."""
    specs: list[ModelSpec] = []
    seen: dict[str, Path] = {}
    for path in spec_files():
        spec = load_spec(path)
        if spec.name in seen:
            raise SpecError(
                f"model {spec.name!r} is declared twice: {seen[spec.name]} and {path}",
                hint="give each model a unique name",
            )
        seen[spec.name] = path
        specs.append(spec)
    return specs


def get_spec(name: str) -> ModelSpec:
    specs = load_specs()
    for spec in specs:
        if spec.name == name:
            return spec
    raise SpecError(f"no model declaration named {name!r}", hint="models: " + ", ".join(s.name for s in specs))
