"""Finding and validating model specs: the built-in ones shipped in this package, then the user's folder.

An invalid spec stops loading with one error that names the file, the field and the problem, because a code
location that silently drops a model is harder to debug than one that refuses to load.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from model_ops.errors import UsageError
from model_ops.specs.schema import ModelSpec

SPECS_DIR_ENV = "MODEL_OPS_SPECS_DIR"
BUILTIN_DIR = Path(__file__).parent


class SpecError(UsageError):
    """A model spec file that cannot be used."""


def _field(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if p not in ("__root__",)) or "(top level)"


def load_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """Read and validate one spec file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"cannot read model spec {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"model spec {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}",
                        hint="fix the YAML syntax (indentation, quotes, colons)") from exc
    if not isinstance(data, dict):
        raise SpecError(f"model spec {path} must be a YAML mapping (name:, features:, ...), "
                        f"got {type(data).__name__}")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = {"extra_forbidden": "unknown field (not part of a model spec; check its spelling)",
                   "missing": "required field is missing"}.get(err["type"], err["msg"].removeprefix("Value error, "))
            problems.append(f"field {_field(err['loc'])}: {msg}")
        raise SpecError(f"invalid model spec {path}: " + "; ".join(problems),
                        hint="see model_ops/specs/flight_delay.yaml for a complete, valid spec") from exc


def spec_files() -> list[Path]:
    """Built-in specs first, then ``$MODEL_OPS_SPECS_DIR/*.yaml|*.yml`` in name order."""
    files = sorted(BUILTIN_DIR.glob("*.yaml"))
    user = os.environ.get(SPECS_DIR_ENV)
    if user:
        folder = Path(user).expanduser()
        if not folder.is_dir():
            raise SpecError(f"{SPECS_DIR_ENV}={user} is not a folder",
                            hint=f"point {SPECS_DIR_ENV} at a folder of model spec YAML files, or unset it")
        files += sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    return files


def load_specs() -> list[ModelSpec]:
    """Every spec, validated; two files declaring the same model name is an error."""
    specs: list[ModelSpec] = []
    seen: dict[str, Path] = {}
    for path in spec_files():
        spec = load_spec(path)
        if spec.name in seen:
            raise SpecError(f"model {spec.name!r} is declared twice: {seen[spec.name]} and {path}",
                            hint="give each model spec a unique name")
        seen[spec.name] = path
        specs.append(spec)
    return specs


def get_spec(name: str) -> ModelSpec:
    for spec in load_specs():
        if spec.name == name:
            return spec
    raise SpecError(f"no model spec named {name!r}", hint="specs: " + ", ".join(s.name for s in load_specs()))
