"""The model declaration as a Dagster component: discovered by `dg`, scaffolded with every default written out,
checked by `dg check yaml` / `dg check defs`, and built into the model's whole asset group."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from model_ops.specs.loader import spec_attributes, validate_spec

ROOT = Path(__file__).resolve().parents[1]
DG = Path(sys.executable).with_name("dg")


def test_the_scaffolded_declaration_is_valid_and_names_every_section(tmp_path: Path) -> None:
    import dagster as dg

    from model_ops.defs.scaffold import ModelScaffolder

    target = tmp_path / "churn"
    ModelScaffolder().scaffold(
        dg.ScaffoldRequest(
            type_name="model_ops.ModelComponent",
            target_path=target,
            scaffold_format="yaml",
            project_root=None,
            params=None,
        )
    )
    text = (target / "defs.yaml").read_text()
    doc = yaml.safe_load(text)
    assert doc["type"] == "model_ops.ModelComponent"
    spec = validate_spec(spec_attributes(target / "defs.yaml"), "churn/defs.yaml")
    assert spec.name == "churn" and spec.source.kind == "delta" and spec.partitioning is not None
    for section in ("gates", "deployment", "monitoring", "training", "known_after", "trainer", "labels"):
        assert section in text, section


def test_the_component_builds_the_models_asset_group() -> None:
    import model_ops
    from model_ops.definitions import defs

    assert model_ops.ModelComponent.__name__ == "ModelComponent"
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {
        f"flight_delay/{n}"
        for n in (
            "flights",
            "weather",
            "features",
            "training_set",
            "candidate_model",
            "evaluation",
            "deployment",
            "predictions",
            "drift_report",
            "live_performance",
        )
    } <= keys


@pytest.mark.slow
def test_dg_discovers_and_checks_the_project(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_OPS_")}
    env["DAGSTER_HOME"] = str(tmp_path)

    def dg(*args: str) -> str:
        done = subprocess.run([str(DG), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    assert "model_ops.ModelComponent" in dg("list", "components")
    assert "flight_delay/candidate_model" in dg("list", "defs")
    assert "validated successfully" in dg("check", "yaml")
    assert "All definitions loaded successfully" in dg("check", "defs")
    name = f"scaffold_probe_{os.getpid()}"
    folder = ROOT / "model_ops" / "defs" / "models" / name
    try:
        dg("scaffold", "defs", "model_ops.ModelComponent", name)
        assert validate_spec(spec_attributes(folder / "defs.yaml"), name).name == name
        assert "validated successfully" in dg("check", "yaml")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
