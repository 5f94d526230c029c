"""The sensors, evaluated with ``build_sensor_context`` against a real registry and real monitoring tables:
what they request, with which run key and evidence, and that no data or too little data never acts."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression

from model_ops.definitions import build_definitions
from model_ops.defs.automation import sensor_names
from model_ops.defs.monitoring import DRIFT_SCHEMA, performance_schema
from model_ops.defs.resources import ModelOpsResource
from model_ops.ops import deployment as dep
from model_ops.specs import load_specs

SPEC = next(s for s in load_specs() if s.name == "flight_delay")
NAMES = sensor_names(SPEC)


class World:
    """A registry root plus the sensors that watch it."""

    def __init__(self, root: Path) -> None:
        self.resource = ModelOpsResource(root=str(root), actor="tester")
        self.reg = self.resource.get_registry()
        self.defs = build_definitions([SPEC])

    def tick(self, sensor: str, cursor: str | None = None) -> dg.SensorExecutionData:
        context = dg.build_sensor_context(cursor=cursor, resources={"model_ops": self.resource})
        return self.defs.resolve_sensor_def(NAMES[sensor]).evaluate_tick(context)

    def version(self, seed: int, stage: str = "staging") -> int:
        rng = np.random.default_rng(seed)
        x = rng.random((40, 2))
        mv = self.reg.register_model(SPEC.name, LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int)))
        if stage != "development":
            self.reg.transition(mv.ref, stage, reason="test")
        return mv.version

    def measure(self, version: int, window: str, phase: str) -> None:
        scored = datetime.now(timezone.utc).isoformat()  # the window was served now, after every change so far
        self.reg.record(
            SPEC.name,
            "canary_analysis",
            version=version,
            reason=f"{window} {phase}",
            details={
                "window": window,
                "phase": phase,
                "message": phase,
                "scored_at": scored,
                "canary_version": version,
            },
        )

    def drift(self, window: str, version: int, status: str = "drift", share: float | None = 0.6) -> None:
        row = {
            "partition": window,
            "model_version": version,
            "status": status,
            "dataset_drift": status == "drift",
            "drift_share": share,
            "drifted": "temp",
            "prediction_statistic": 0.3,
            "prediction_drift": True,
            "rows": 20000,
            "computed_at": datetime.now(timezone.utc),
            "report": "{}",
        }
        self.resource.dataset(SPEC.name, "drift").replace_partition(
            window, pa.Table.from_pylist([row], schema=DRIFT_SCHEMA)
        )

    def performance(
        self,
        window: str,
        version: int,
        status: str = "ok",
        log_loss: float | None = 0.5,
        roc_auc: float | None = 0.7,
        labelled: int = 20000,
    ) -> None:
        row = {
            "partition": window,
            "arm": "production",
            "model_version": version,
            "served": 20000,
            "labelled": labelled,
            "coverage": labelled / 20000,
            "status": status,
            "reason": "test",
            "scored_at": datetime.now(timezone.utc),
            "roc_auc": roc_auc,
            "log_loss": log_loss,
            "brier": None,
            "accuracy": None,
        }
        self.resource.dataset(SPEC.name, "live_performance").replace_partition(
            window, pa.Table.from_pylist([row], schema=performance_schema(SPEC))
        )


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "root")


def config_of(request: dg.RunRequest) -> dict[str, Any]:
    return request.run_config["ops"]["flight_delay__deployment"]["config"]


def test_an_empty_registry_makes_every_sensor_skip_and_write_nothing(world: World, tmp_path: Path) -> None:
    for sensor in ("deployment", "drift", "guard"):
        data = world.tick(sensor)
        assert not data.run_requests and data.skip_message
    assert world.reg.models() == []


def test_a_staging_version_is_deployed_once_per_state(world: World) -> None:
    v1 = world.version(1)
    first, again = world.tick("deployment"), world.tick("deployment")
    (request,) = first.run_requests
    assert again.run_requests[0].run_key == request.run_key
    assert request.job_name == "flight_delay_deploy" and config_of(request)["action"] == "deploy"
    assert config_of(request)["version"] == v1 and "nothing serves yet" in config_of(request)["reason"]
    dep.apply(world.reg, SPEC, "deploy", version=v1)
    assert not world.tick("deployment").run_requests

    v2 = world.version(2)
    (canary,) = world.tick("deployment").run_requests
    assert config_of(canary)["version"] == v2 and "canary at 10%" in config_of(canary)["reason"]
    assert canary.run_key != request.run_key


def start_canary(world: World) -> tuple[int, int]:
    v1, v2 = world.version(1), world.version(2)
    dep.apply(world.reg, SPEC, "deploy", version=v1)
    dep.apply(world.reg, SPEC, "deploy", version=v2)
    return v1, v2


def test_failures_over_the_limit_request_a_rollback_with_the_counter_in_the_reason(world: World) -> None:
    _, v2 = start_canary(world)
    world.measure(v2, "2013-07-01", "Failed")
    held = world.tick("deployment")
    assert not held.run_requests and "held at 10%" in held.skip_message
    world.measure(v2, "2013-08-01", "Failed")
    (request,) = world.tick("deployment").run_requests
    cfg = config_of(request)
    assert cfg["action"] == "rollback" and cfg["version"] == v2
    assert cfg["reason"].startswith("canary analysis: failed (2) > failure_limit (1)")
    assert request.tags["model_ops/window"] == "2013-08-01"
    dep.apply(world.reg, SPEC, cfg["action"], version=cfg["version"], reason=cfg["reason"])
    assert world.reg.get(SPEC.name, v2).stage == "archived" and dep.current(world.reg, SPEC.name).production == 1


def test_success_advances_then_promotes(world: World) -> None:
    v1, v2 = start_canary(world)
    world.measure(v2, "2013-07-01", "Successful")
    (advance,) = world.tick("deployment").run_requests
    assert config_of(advance)["action"] == "advance"
    dep.apply(world.reg, SPEC, "advance")
    assert not world.tick("deployment").run_requests  # no window at 50% yet: the July success is not reused
    world.measure(v2, "2013-08-01", "Successful")
    (promote,) = world.tick("deployment").run_requests
    assert config_of(promote)["action"] == "promote"
    dep.apply(world.reg, SPEC, "promote")
    assert world.reg.get(SPEC.name, v1).stage == "archived" and world.reg.get(SPEC.name, v2).stage == "production"


@pytest.mark.slow
def test_inconclusive_windows_hold_and_never_roll_back(world: World) -> None:
    _, v2 = start_canary(world)
    for month in range(7, 13):
        world.measure(v2, f"2013-{month:02d}-01", "Inconclusive")
        data = world.tick("deployment")
        assert not data.run_requests and "inconclusive" in data.skip_message
    assert dep.current(world.reg, SPEC.name).canary == v2


def in_production_with_evaluation(world: World, log_loss: float = 0.61) -> int:
    v1 = world.version(1)
    world.reg.record(
        SPEC.name,
        "evaluation",
        version=v1,
        reason="passed every gate",
        details={"metrics": {"log_loss": log_loss, "roc_auc": 0.65}},
    )
    dep.apply(world.reg, SPEC, "deploy", version=v1)
    return v1


def test_persistent_drift_that_hurts_requests_one_retrain_with_evidence(world: World) -> None:
    v1 = in_production_with_evaluation(world)
    world.drift("2013-05-01", v1)
    world.performance("2013-05-01", v1, log_loss=0.51)
    assert not world.tick("drift").run_requests
    world.drift("2013-06-01", v1, share=0.57)
    world.performance("2013-06-01", v1, log_loss=0.72)
    data = world.tick("drift")
    (request,) = data.run_requests
    assert request.job_name == "flight_delay_retrain" and request.run_key == "retrain:v1:2013-06-01"
    assert request.tags["model_ops/drift_windows"] == "2013-05-01,2013-06-01"
    assert request.tags["model_ops/live_log_loss"] == "0.7200"
    assert "dataset drift in 2 consecutive windows" in request.tags["model_ops/reason"]
    again = world.tick("drift", cursor=data.cursor)
    assert [r.run_key for r in again.run_requests] == [request.run_key]  # the daemon launches a run key once
    assert not any(e.kind == "retrain" for e in world.reg.audit(SPEC.name))  # evaluating a sensor records nothing


@pytest.mark.slow
def test_months_served_before_a_rollback_are_not_held_against_the_restored_version(world: World) -> None:
    v1 = in_production_with_evaluation(world)
    world.drift("2013-05-01", v1)
    world.drift("2013-06-01", v1)
    v2 = world.version(2)
    dep.apply(world.reg, SPEC, "deploy", version=v2)
    dep.apply(world.reg, SPEC, "promote")
    world.reg.rollback(SPEC.name, reason="back to v1")
    assert not world.tick("drift").run_requests
    world.drift("2013-07-01", v1)
    assert not world.tick("drift").run_requests  # one window since v1 came back
    world.drift("2013-08-01", v1)
    (request,) = world.tick("drift").run_requests
    assert request.tags["model_ops/drift_windows"] == "2013-07-01,2013-08-01"


def test_drifted_windows_with_a_gap_between_them_are_not_persistent(world: World) -> None:
    v1 = in_production_with_evaluation(world)
    world.drift("2013-05-01", v1)
    world.drift("2013-07-01", v1)
    data = world.tick("drift")
    assert not data.run_requests and "not consecutive" in data.skip_message


@pytest.mark.parametrize("status, share", [("insufficient_data", None), ("no_drift", 0.2)])
def test_too_little_data_or_no_drift_never_retrains(world: World, status: str, share: float | None) -> None:
    v1 = in_production_with_evaluation(world)
    world.drift("2013-05-01", v1)
    world.drift("2013-06-01", v1, status=status, share=share)
    world.performance("2013-06-01", v1, log_loss=0.95)
    assert not world.tick("drift").run_requests
    assert not any(e.kind == "retrain" for e in world.reg.audit(SPEC.name))


def test_no_retrain_while_a_canary_is_rolling_out(world: World) -> None:
    v1, _ = start_canary(world)
    world.drift("2013-05-01", v1)
    world.drift("2013-06-01", v1)
    data = world.tick("drift")
    assert not data.run_requests and "canary" in data.skip_message


@pytest.mark.slow
def test_the_guard_rolls_production_back_after_consecutive_bad_windows(world: World) -> None:
    v1, v2 = start_canary(world)
    dep.apply(world.reg, SPEC, "promote")
    world.performance("2013-09-01", v2, status="below_floor", roc_auc=0.52)
    assert not world.tick("guard").run_requests
    world.performance("2013-10-01", v2, status="inconclusive", roc_auc=None, log_loss=None, labelled=20)
    assert not world.tick("guard").run_requests
    world.performance("2013-11-01", v2, status="below_floor", roc_auc=0.51)
    (request,) = world.tick("guard").run_requests
    cfg = config_of(request)
    assert cfg["action"] == "rollback_production" and cfg["version"] == v1
    assert cfg["reason"].startswith(f"production guard: v{v2} below the floor for 2 consecutive windows")
    dep.apply(world.reg, SPEC, cfg["action"], version=cfg["version"], reason=cfg["reason"])
    assert dep.current(world.reg, SPEC.name).production == v1
    assert not world.tick("guard").run_requests  # v1's own record starts afresh


def test_a_late_deployment_run_does_nothing_when_the_deployment_changed(world: World) -> None:
    v1, v2 = start_canary(world)
    world.measure(v2, "2013-07-01", "Failed")
    world.measure(v2, "2013-08-01", "Failed")
    (request,) = world.tick("deployment").run_requests
    cfg = config_of(request)
    assert cfg["expect_serving"] == f"{v1}:{v2}"
    dep.apply(world.reg, SPEC, "rollback", reason="a person aborted it first")
    late = dep.apply(
        world.reg, SPEC, cfg["action"], version=cfg["version"], reason=cfg["reason"], expect=cfg["expect_serving"]
    )
    assert not late.changed and "nothing changed" in late.message
    assert dep.current(world.reg, SPEC.name).production == v1 and world.reg.get(SPEC.name, v2).stage == "archived"


@pytest.mark.slow
def test_an_older_staging_version_is_not_canaried_against_a_newer_production(world: World) -> None:
    v1 = world.version(1)
    dep.apply(world.reg, SPEC, "deploy", version=v1)
    v2, v3 = world.version(2), world.version(3)
    (request,) = world.tick("deployment").run_requests
    assert config_of(request)["version"] == v3
    dep.apply(world.reg, SPEC, "deploy", version=v3)
    dep.apply(world.reg, SPEC, "promote")
    data = world.tick("deployment")
    assert not data.run_requests and world.reg.get(SPEC.name, v2).stage == "staging"
    world.drift("2013-05-01", v3)
    world.drift("2013-06-01", v3)
    assert world.tick("drift").run_requests  # the passed-over v2 does not block retraining either


def test_windows_before_a_promotion_are_not_held_against_the_new_version(world: World) -> None:
    v1, v2 = start_canary(world)
    world.performance("2013-07-01", v2, status="below_floor", roc_auc=0.5)
    world.performance("2013-08-01", v2, status="below_floor", roc_auc=0.5)
    dep.apply(world.reg, SPEC, "promote")
    assert not world.tick("guard").run_requests
