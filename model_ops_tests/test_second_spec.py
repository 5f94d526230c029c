"""A new model is a new YAML file: a spec in MODEL_OPS_SPECS_DIR gets its own working asset group."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from model_ops.definitions import build_definitions
from model_ops_tests.graph_helpers import INGEST, TRAIN_TO_DEPLOY, Graph

pytestmark = pytest.mark.slow

SPEC = {
    "name": "late_departure",
    "description": "Will the flight leave more than 30 minutes late? Schedule and weather only.",
    "owner": "ops-analytics@example.com",
    "features": [
        {"name": "sched_dep_hour", "type": "int", "min": 0, "max": 23},
        {"name": "carrier", "type": "category"},
        {"name": "origin", "type": "category"},
        {"name": "visib", "type": "float", "min": 0, "max": 10, "max_null_fraction": 0.05},
        {"name": "precip", "type": "float", "min": 0, "max": 10, "max_null_fraction": 0.05},
    ],
    "known_after": ["arr_delay", "dep_delay"],
    "target": {"name": "late", "column": "dep_delay", "op": ">", "threshold": 30},
    "estimator": {
        "class": "sklearn.ensemble.HistGradientBoostingClassifier",
        "params": {"max_iter": 40, "learning_rate": 0.1},
    },
    "seed": 7,
    "gates": {"thresholds": {"roc_auc": {"min": 0.6}}},
    "deployment": {"canary_steps": [0.25]},
}


def test_second_spec_gets_its_own_working_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "late_departure.yaml").write_text(yaml.safe_dump(SPEC))
    monkeypatch.setenv("MODEL_OPS_SPECS_DIR", str(specs))

    graph = build_definitions().resolve_asset_graph()
    groups: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())
    assert groups["late_departure"] == {
        f"late_departure/{n}"
        for n in (
            *INGEST,
            *TRAIN_TO_DEPLOY,
            "predictions",
            "drift_report",
            "live_performance",
            "serving_health",
            "registry",
            "versions",
        )
    }
    assert len(groups["flight_delay"]) == 13
    assert graph.get(dg.AssetKey(["late_departure", "candidate_model"])).owners == ["ops-analytics@example.com"]

    with dg.instance_for_test() as instance:
        g = Graph(instance, str(tmp_path / "root"))
        g.ingest("late_departure", "2013-06-01", "2013-07-01")
        assert g.run("late_departure", TRAIN_TO_DEPLOY).success
        assert g.run("late_departure", ("predictions",), partition="2013-07-01").success
        reg = g.registry()
        assert reg.models() == ["late_departure"]
        mv = reg.resolve("models:/late_departure@champion")
        assert mv.stage == "production" and mv.lineage["estimator"].endswith("HistGradientBoostingClassifier")
        assert [i["name"] for i in mv.signature["inputs"]] == ["sched_dep_hour", "carrier", "origin", "visib", "precip"]
        log = g.resource.dataset("late_departure", "predictions").read()
        assert len(log) > 20000 and set(log["model_version"]) == {1}
