"""`dagster dev`'s webserver serves the graph: groups, descriptions, owners, kinds and blocking checks."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from model_ops_tests.ui_tour import webserver

pytestmark = pytest.mark.slow
QUERY = """{ assetNodes { assetKey { path } groupName description kinds isPartitioned
  owners { ... on TeamAssetOwner { team } ... on UserAssetOwner { email } }
  assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }"""


def test_webserver_shows_the_asset_graph(tmp_path: Path) -> None:
    with webserver(tmp_path, tmp_path / "root", tmp_path / "webserver.log", start_s=120) as base:
        request = urllib.request.Request(
            f"{base}/graphql", data=json.dumps({"query": QUERY}).encode(), headers={"Content-Type": "application/json"}
        )
        nodes = json.load(urllib.request.urlopen(request, timeout=60))["data"]["assetNodes"]

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
