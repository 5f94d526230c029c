"""Dagster entry point: ``dagster dev -w workspace.yaml``, ``dg dev`` or ``dagster ... -m model_ops.definitions``.

The project's defs folder (``model_ops/defs/models/``: one ``model_ops.ModelComponent`` per model, the built-in
``flight_delay`` among them) plus one component per YAML file in ``MODEL_OPS_SPECS_DIR`` (the same attributes),
with the resources of the environment named by ``MODEL_OPS_ENV``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dagster as dg

import model_ops.defs.models
from model_ops.defs.component import ModelComponent, checked, model_defs
from model_ops.defs.executor import executor
from model_ops.defs.resources import resources
from model_ops.defs.upkeep import upkeep_defs
from model_ops.errors import UsageError
from model_ops.specs import ModelSpec
from model_ops.specs.loader import COMPONENTS_DIR, SPECS_DIR_ENV, spec_attributes, spec_files, validate_spec

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def user_defs() -> list[dg.Definitions]:
    """One model per file of ``MODEL_OPS_SPECS_DIR`` (validated like a component, named in errors)."""
    out = []
    for path in spec_files():
        if path.is_relative_to(COMPONENTS_DIR):
            continue
        spec = validate_spec(spec_attributes(path), str(path))
        out.append(model_defs(checked(spec, str(path))))
    return out


def project_defs() -> dg.Definitions:
    """The defs folder, found through ``[tool.dg]`` in pyproject.toml as ``dg`` finds it; an installed package
    without its pyproject loads the same folder as a module."""
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return dg.load_from_defs_folder(path_within_project=PROJECT_ROOT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return dg.load_defs(model_ops.defs.models, project_root=PROJECT_ROOT)


def build_definitions(specs: list[ModelSpec] | None = None) -> dg.Definitions:
    """Assets, jobs, sensors and schedules of every model, with the environment's resources and executor
    (``MODEL_OPS_EXECUTOR``, see :mod:`model_ops.defs.executor`). ``specs`` builds exactly those models instead
    (tests and the replay)."""
    if specs is not None:
        parts = [model_defs(checked(s, s.name)) for s in specs]
    else:
        parts = [project_defs(), *user_defs()]
    return dg.Definitions.merge(*parts, upkeep_defs(), dg.Definitions(resources=resources(), executor=executor()))


try:
    defs = build_definitions()
except UsageError as exc:  # a bad declaration: one readable line in the UI and the CLI, not a traceback
    raise dg.DagsterInvalidDefinitionError(str(exc)) from None

__all__ = ["ModelComponent", "SPECS_DIR_ENV", "build_definitions", "defs"]
