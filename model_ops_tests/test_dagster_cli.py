"""``dagster asset materialize`` drives the whole lifecycle from the shell, as the README shows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model_ops.data.delta import Dataset
from model_ops.ops import deployment as dep
from model_ops.registry import Registry

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).parents[1]
DAGSTER = str(Path(sys.executable).parent / "dagster")


def materialize(
    env: dict[str, str], select: str, partition: str | None = None, config: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [DAGSTER, "asset", "materialize", "-m", "model_ops.definitions", "--select", select]
    cmd += ["--partition", partition] if partition else []
    cmd += ["--config-json", config] if config else []
    return subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)


def test_lifecycle_from_the_dagster_command_line(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    root = tmp_path / "model_ops"
    env = {**os.environ, "DAGSTER_HOME": str(home), "MODEL_OPS_ROOT": str(root), "MODEL_OPS_PROGRESS": "0"}
    ingest = "flight_delay/flights,flight_delay/weather,flight_delay/features"
    for month in ("2013-01-01", "2013-02-01"):
        out = materialize(env, ingest, month)
        assert out.returncode == 0, out.stderr[-3000:]
    out = materialize(
        env, "flight_delay/training_set,flight_delay/candidate_model,flight_delay/evaluation,flight_delay/deployment"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    out = materialize(env, "flight_delay/predictions", "2013-02-01")
    assert out.returncode == 0, out.stderr[-3000:]

    reg = Registry.open(root)
    assert dep.current(reg, "flight_delay") == dep.Manifest("flight_delay", 1)
    log = Dataset(reg.root.child("datasets", "flight_delay", "predictions"), "predictions").read()
    assert len(log) > 20000 and set(log["arm"]) == {"production"} and set(log["partition"]) == {"2013-02-01"}

    bad = materialize(env, "flight_delay/flights", "2014-05-01")
    assert bad.returncode != 0 and "2014-05-01" in bad.stdout + bad.stderr
    wrong_action = materialize(
        env,
        "flight_delay/deployment",
        config='{"ops": {"flight_delay__deployment": {"config": {"action": "explode"}}}}',
    )
    assert wrong_action.returncode != 0 and "explode" in wrong_action.stdout + wrong_action.stderr
    assert [e.kind for e in reg.audit("flight_delay")].count("deployment") == 1  # nothing written by the refusals
