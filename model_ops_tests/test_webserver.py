"""`dagster dev`'s webserver serves the graph: groups, descriptions, owners, kinds and blocking checks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).parents[1]
QUERY = """{ assetNodes { assetKey { path } groupName description kinds isPartitioned
  owners { ... on TeamAssetOwner { team } ... on UserAssetOwner { email } }
  assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }"""


def test_webserver_shows_the_asset_graph(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "MODEL_OPS_ROOT": str(tmp_path / "root")}
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the webserver did not start"
                time.sleep(0.5)
        request = urllib.request.Request(
            f"{base}/graphql", data=json.dumps({"query": QUERY}).encode(), headers={"Content-Type": "application/json"}
        )
        nodes = json.load(urllib.request.urlopen(request, timeout=60))["data"]["assetNodes"]
    finally:
        server.terminate()
        server.wait(timeout=30)

    by_name = {n["assetKey"]["path"][1]: n for n in nodes if n["assetKey"]["path"][0] == "flight_delay"}
    assert set(by_name) == {
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
        "serving_health",
        "registry",
        "versions",
    }
    for name, node in by_name.items():
        assert node["groupName"] == "flight_delay" and len(node["description"]) > 80, name
        assert node["owners"] == [{"team": "ml-platform"}] and node["kinds"], name
    assert {n for n, node in by_name.items() if node["isPartitioned"]} == {
        "flights",
        "weather",
        "features",
        "predictions",
        "drift_report",
        "live_performance",
        "serving_health",
        "versions",
    }
    checks = {
        name: {c["name"]: c["blocking"] for c in node["assetChecksOrError"]["checks"]} for name, node in by_name.items()
    }
    assert checks["features"] == {
        "schema_contract": True,
        "no_unexpected_nulls": True,
        "values_in_range": True,
        "row_count": True,
        "keys_unique": True,
    }
    assert checks["evaluation"] == {
        "meets_thresholds": True,
        "no_regression_vs_champion": True,
        "latency_within_sla": True,
    }
    assert checks["drift_report"] == {"no_dataset_drift": False}  # monitoring warns, it never blocks
    assert checks["live_performance"] == {"production_within_floor": False, "canary_analysis": False}
