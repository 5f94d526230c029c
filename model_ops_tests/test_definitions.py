"""The Dagster entry point loads, validates from the command line, and hands out a working registry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from model_ops.definitions import defs
from model_ops.defs.resources import ModelOpsResource

PROJECT = Path(__file__).parents[1]


def test_registry_resource_opens_the_configured_root(tmp_path: Path) -> None:
    resource = ModelOpsResource(root=str(tmp_path / "root"), actor="pipeline")
    reg = resource.get_registry()
    assert reg.actor == "pipeline"
    assert str(reg.root) == str((tmp_path / "root").resolve())

    @dg.asset
    def registered(model_ops: ModelOpsResource) -> int:
        src = tmp_path / "model.bin"
        src.write_bytes(b"weights")
        return model_ops.get_registry().register("m", src).version

    result = dg.materialize([registered], resources={"model_ops": resource})
    assert result.success and result.output_for_node("registered") == 1


def test_definitions_resolve() -> None:
    assert isinstance(defs.resources["model_ops"], ModelOpsResource)
    defs.resolve_all_job_defs()


@pytest.mark.slow
def test_dagster_validates_the_code_location(tmp_path: Path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    dagster = Path(sys.executable).parent / "dagster"
    out = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All code locations passed validation" in out.stdout + out.stderr
