"""End to end on the real 2013 data: the replay through Dagster, January to October.

Drift in May and June (worse log loss in June) retrains; the new version goes through canary and is promoted;
the deliberately faulty candidate fails two canary windows and is rolled back. The audit log tells the same story
as the timeline, the Dagster instance holds the runs, and ticking the sensors again on the final state requests
nothing new.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from model_ops.cli import main as cli
from model_ops.defs.replay import run_demo
from model_ops_tests import ui_tour

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("replay")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(base / "home"))
        mp.setenv("MODEL_OPS_ROOT", str(base / "root"))
        for var in ("MODEL_OPS_SPECS_DIR", "MODEL_OPS_ENV", "MODEL_OPS_ACTOR", "MODEL_OPS_POLICY"):
            mp.delenv(var, raising=False)
        lines: list[str] = []
        result = run_demo(
            root=str(base / "root"), dagster_home=str(base / "home"), until="2013-10", progress=lines.append
        )
        yield {"result": result, "lines": lines, "base": base}


def kinds(result: dict) -> list[tuple[str, str, int | None]]:
    return [(t["month"], t["kind"], t["model_version"]) for t in result["timeline"]]


def test_drift_retrains_and_the_new_version_is_promoted_through_canary(replay: dict) -> None:
    document = json.loads(json.dumps(replay["result"]))  # what --json prints: plain JSON, no fallbacks needed
    assert set(document) == {"timeline", "summary"}
    assert {"month", "kind", "model_version", "reason"} <= set(document["timeline"][0])
    events = kinds(replay["result"])
    assert ("2013-04", "deployed", 1) in events
    assert ("2013-06", "retrain", 1) in events
    retrain = next(t for t in replay["result"]["timeline"] if t["kind"] == "retrain")
    assert retrain["evidence"]["windows"] == ["2013-05-01", "2013-06-01"]
    assert retrain["evidence"]["worse_by"] > 0.05
    assert ("2013-06", "canary_started", 2) in events
    assert ("2013-07", "canary_advanced", 2) in events
    assert ("2013-08", "promoted", 2) in events
    order = [k for _, k, v in events if v == 2]
    assert order.index("canary_started") < order.index("canary_advanced") < order.index("promoted")
    # the printed timeline's columns line up under its heading, the demo's own lines included
    heading = next(line for line in replay["lines"] if line.lstrip().startswith("month"))
    rows = [line for line in replay["lines"] if line.startswith("  2013-")]
    assert any("(demo)" in line for line in rows)
    for name in ("event", "ver", "evidence"):
        at = heading.index(name)
        assert all(line[at - 1] == " " and line[at] != " " for line in rows), name


def test_the_faulty_candidate_is_caught_by_canary_analysis_and_rolled_back(replay: dict) -> None:
    timeline = replay["result"]["timeline"]
    faulty = next(t for t in timeline if t["kind"] == "faulty_candidate")
    v = faulty["model_version"]
    analyses = [t for t in timeline if t["kind"] == "canary_analysis" and t["model_version"] == v]
    assert [a["phase"] for a in analyses] == ["Failed", "Failed"]
    rollback = next(t for t in timeline if t["kind"] == "rollback")
    assert rollback["model_version"] == v and "failed (2) > failure_limit (1)" in rollback["reason"]
    summary = replay["result"]["summary"]
    assert summary["production"] == 2 and summary["fsck_problems"] == []
    stages = {x["version"]: x["stage"] for x in summary["versions"]}
    assert stages == {1: "archived", 2: "production", v: "archived"}
    assert any("deliberately faulty" in line for line in replay["lines"])


def test_the_audit_log_and_the_dagster_instance_hold_the_same_history(replay: dict, capsys) -> None:  # type: ignore[no-untyped-def]
    root = str(replay["base"] / "root")
    assert cli(["--root", root, "audit", "flight_delay", "--json"]) == 0
    audit = json.loads(capsys.readouterr().out)
    audit = audit if isinstance(audit, list) else audit["events"]
    deployments = [e for e in audit if e["kind"] == "deployment"]
    timeline_deploys = [
        t
        for t in replay["result"]["timeline"]
        if t["kind"] in ("deployed", "canary_started", "canary_advanced", "promoted", "rollback")
    ]
    assert [e["version"] for e in deployments] == [t["model_version"] for t in timeline_deploys]
    assert sum(e["kind"] == "canary_analysis" for e in audit) == 4
    with dg.DagsterInstance.from_config(str(replay["base"] / "home")) as instance:
        runs = instance.get_runs()
        by_sensor = [r for r in runs if r.tags.get("dagster/sensor_name")]
        assert {r.job_name for r in by_sensor} == {"flight_delay_deploy", "flight_delay_retrain"}
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        monthly = {r.tags.get("dagster/partition") for r in runs if r.job_name == "flight_delay_monthly"}
        assert monthly == {f"2013-{m:02d}-01" for m in range(5, 11)}
        # runs of the workspace's code location (each job's Runs tab and the timeline list them), decided by
        # sensor ticks stored as the daemon stores them, skip reasons and cursors included
        assert all(r.remote_job_origin is not None for r in runs)
        labelled = dg.RunsFilter(tags={".dagster/repository": "__repository__@model_ops"})
        assert instance.get_runs_count(labelled) == len(runs)
        ticks = {
            state.instigator_name: instance.get_ticks(state.instigator_origin_id, state.selector_id)
            for state in instance.all_instigator_state()
        }
        for name in ("drift_sensor", "deployment_sensor", "production_guard", "registry_sensor"):
            found = ticks[f"flight_delay_{name}"]
            assert len(found) >= 7 and any(t.skip_reason for t in found), name
        launched = {run_id for t in ticks["flight_delay_deployment_sensor"] for run_id in t.run_ids}
        assert launched == {r.run_id for r in by_sensor if r.tags["dagster/sensor_name"].endswith("deployment_sensor")}


def test_the_registry_asset_shows_every_version_with_its_stage_and_each_move_with_its_reason(replay: dict) -> None:
    from model_ops.registry import Registry

    reg = Registry.open(replay["base"] / "root", actor="reader")
    stages = {v.version: v.stage for v in reg.versions("flight_delay")}
    asset = dg.AssetKey(["flight_delay", "registry"])
    with dg.DagsterInstance.from_config(str(replay["base"] / "home")) as instance:
        seen = instance.fetch_observations(asset, limit=1000).records
    observed = [r.asset_observation for r in seen if r.asset_observation is not None]
    latest = next(o for o in observed if "versions" in o.metadata)  # newest first
    table = latest.metadata["versions"]
    assert isinstance(table, dg.TableMetadataValue)
    assert {r.data["version"]: r.data["stage"] for r in table.records} == stages
    moves = [o for o in observed if "event" in o.metadata]
    rollback = [o for o in moves if o.metadata["event"].value == "deployment" and "rollback" in o.description]
    assert rollback and all(o.metadata["reason"].value for o in rollback)
    assert any(
        o.metadata["event"].value == "stage_changed" and o.metadata["change"].value.endswith("production")
        for o in moves
    )


def test_the_dagster_ui_shows_the_registry_the_deployments_and_the_sensor_history(replay: dict, tmp_path: Path) -> None:
    """In headless Chromium, as a user reads it: the registry table, the versions plotted, every deployment with
    its version and reason, a sensor's history with its one retrain; no page logs a console error."""
    from model_ops.registry import Registry

    if not shutil.which(ui_tour.CHROMIUM) and not Path(ui_tour.CHROMIUM).exists():
        message = f"no Chromium at {ui_tour.CHROMIUM}: install the system's (apt-get install chromium)"
        if os.environ.get("MODEL_OPS_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    base = replay["base"]
    reg = Registry.open(base / "root", actor="reader")
    log = tmp_path / "webserver.log"
    with ui_tour.webserver(base / "home", base / "root", log) as url:
        seen = ui_tour.walk(url, tmp_path / "shots")
    late = [f"{name} (waited for {page.stop.wait_for!r})" for name, page in seen.items() if not page.arrived]
    assert not late, f"pages that did not show their data: {late}; webserver log: {log}"
    assert {name: page.console_errors for name, page in seen.items() if page.console_errors} == {}

    table = seen["registry"].text
    for v in reg.versions("flight_delay"):
        assert f"{v.version}\t{v.semver}\t{v.stage}" in table, (v.version, v.stage)
    assert "champion" in table
    plots = seen["versions"].text
    assert "roc_auc" in plots and "log_loss" in plots  # a chart per metric (drawn on canvases: titles are text)
    assert "When graphing values by partition" in plots  # by version, the partition view's own note
    assert "Asset plots are automatically generated" not in plots  # the UI's "nothing to plot"

    deployments = [e for e in reg.audit("flight_delay") if e.kind == "deployment"]
    shown = seen["deployment"].events
    assert len(shown) == len(deployments) >= 4
    for text in shown:  # each event's metadata: a key, a tab, its value
        assert re.search(r"\nversion\n\t\n\d+\n", text) and re.search(r"\nreason\n\t\n\S", text), text[:2000]
    windowed = sum(1 for e in deployments if e.business_window)  # all but a first deploy, which acts on none
    assert sum(bool(re.search(r"\nwindow\n\t\n2013-\d\d-01\n", text)) for text in shown) == windowed >= 3
    assert any("failed (2) > failure_limit (1)" in text for text in shown)  # the rollback says why
    assert "0 runs requested" in seen["drift_sensor"].text  # its skipped ticks are there too
    assert seen["registry_sensor"].text.count("0 runs requested") >= 5  # a tick after every month's runs
    for page in seen.values():
        assert page.screenshot is not None and page.screenshot.stat().st_size > 10_000


def test_each_version_is_a_partition_of_the_versions_asset_with_its_evaluation_metrics(replay: dict) -> None:
    from model_ops.registry import Registry

    reg = Registry.open(replay["base"] / "root", actor="reader")
    versions = reg.versions("flight_delay")
    asset = dg.AssetKey(["flight_delay", "versions"])
    with dg.DagsterInstance.from_config(str(replay["base"] / "home")) as instance:
        assert instance.get_dynamic_partitions("flight_delay_versions") == [f"v{v.version}" for v in versions]
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, asset_partitions=["v1", "v2"]), limit=100
        ).records
    newest = {}  # partition -> its newest record's metadata
    for r in sorted(records, key=lambda r: r.storage_id):
        newest[r.partition_key] = r.asset_materialization.metadata  # type: ignore[union-attr]
    for v in versions[:2]:  # the two the evaluation gates judged
        meta = newest[f"v{v.version}"]
        assert meta["stage"].value == v.stage and meta["semver"].value == v.semver
        assert 0.5 < meta["roc_auc"].value < 1 and meta["log_loss"].value > 0


def test_as_of_a_window_answers_what_served_that_month(replay: dict, capsys) -> None:  # type: ignore[no-untyped-def]
    """Business time: the production version ``as-of --window`` names for each replayed month is the one that
    scored that month's production traffic in the prediction log; on the wall clock 2013 is before the registry."""
    from model_ops.defs.resources import ModelOpsResource

    root = str(replay["base"] / "root")
    log = ModelOpsResource(root=root).dataset("flight_delay", "predictions")
    for month in range(5, 11):
        key = f"2013-{month:02d}-01"
        rows = log.read([key])
        served = set(rows.loc[rows["served"] & (rows["arm"] == "production"), "model_version"])
        assert cli(["--root", root, "as-of", "--window", key[:7], "flight_delay", "--json"]) == 0
        state = json.loads(capsys.readouterr().out)
        assert state["clock"] == "business" and {state["models"]["flight_delay"]["production"]} == served, key
    assert cli(["--root", root, "as-of", "2013-07-15T00:00:00Z", "flight_delay"]) == 1  # wall clock: nothing yet
    assert "on the wall clock" in capsys.readouterr().err
    assert cli(["--root", root, "as-of", "2013-07-15T00:00:00Z", "flight_delay", "--business"]) == 0
    assert "business time" in capsys.readouterr().out
    assert cli(["--root", root, "as-of", "--window", "July", "flight_delay"]) == 2
    assert "cannot read 'July' as a window" in capsys.readouterr().err
    events = json.loads(_audit_json(root, capsys))
    months = {f"2013-{m:02d}-01" for m in range(1, 13)}
    assert {e["window"] for e in events} - {None} <= months  # the replay's writes carry the month they act on
    judged = [e for e in events if e["kind"] in ("canary_analysis", "retrain")]  # decisions on a month's evidence
    assert judged and all(e["window"] in months for e in judged)


def _audit_json(root: str, capsys) -> str:  # type: ignore[no-untyped-def]
    assert cli(["--root", root, "audit", "flight_delay", "--json"]) == 0
    return str(capsys.readouterr().out)


def test_the_retrain_runs_materializations_carry_the_month_they_stand_for(replay: dict) -> None:
    with dg.DagsterInstance.from_config(str(replay["base"] / "home")) as instance:
        for name in ("training_set", "candidate_model", "evaluation"):
            found = instance.fetch_materializations(dg.AssetKey(["flight_delay", name]), limit=10).records
            months = [r.asset_materialization.metadata.get("business_window") for r in found if r.asset_materialization]
            shown = sorted(m.value for m in months if m is not None)
            assert shown == ["2013-06-01"], name  # the drift window the retrain was decided on; none for the first


def test_sensors_ticked_again_on_the_final_state_request_nothing_new(replay: dict) -> None:
    from model_ops.definitions import build_definitions
    from model_ops.defs.automation import sensor_names
    from model_ops.defs.resources import ModelOpsResource
    from model_ops.specs import load_specs

    spec = next(s for s in load_specs() if s.name == "flight_delay")
    defs = build_definitions([spec])
    resource = ModelOpsResource(root=str(replay["base"] / "root"))
    with dg.DagsterInstance.from_config(str(replay["base"] / "home")) as instance:
        for name in sensor_names(spec).values():
            data = defs.resolve_sensor_def(name).evaluate_tick(
                dg.build_sensor_context(instance=instance, resources={"model_ops": resource})
            )
            for request in data.run_requests or []:
                assert instance.get_runs_count(dg.RunsFilter(tags={"dagster/run_key": request.run_key})) == 1, (
                    f"{name} asks for a new run on a settled state: {request.run_key}"
                )


def test_a_second_replay_into_the_same_root_is_refused_with_exit_2(replay: dict, capsys) -> None:  # type: ignore[no-untyped-def]
    root = str(replay["base"] / "root")
    assert cli(["--root", root, "demo", "--dagster-home", str(replay["base"] / "other")]) == 2
    assert "already holds flight_delay" in capsys.readouterr().err


def test_a_month_outside_the_replay_is_refused_with_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert cli(["--root", str(tmp_path / "root"), "demo", "--until", "2013-02"]) == 2
    assert "--until 2013-02" in capsys.readouterr().err
    assert not (tmp_path / "root").exists() and not (tmp_path / "home").exists()


def test_every_version_the_replay_created_is_reproduced_byte_for_byte(replay: dict, capsys) -> None:  # type: ignore[no-untyped-def]
    root = str(replay["base"] / "root")
    versions = [v["version"] for v in replay["result"]["summary"]["versions"]]
    assert len(versions) == 3  # v1, the retrained v2 and the faulty candidate (its label permutation is recorded)
    for number in versions:
        assert cli(["--root", root, "reproduce", f"models:/flight_delay/{number}"]) == 0, capsys.readouterr().out
        assert "rebuilt byte for byte" in capsys.readouterr().out


def test_the_replayed_model_is_served_live_and_follows_a_rollback(replay: dict, capsys) -> None:  # type: ignore[no-untyped-def]
    """What the README shows after ``model-ops demo``: serve flight_delay, send a request, ``model-ops rollback``,
    and the next answer comes from the version rolled back to. Runs last: it changes what is in production."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from model_ops.serving import ServeConfig, create_app
    from model_ops.specs import load_specs

    root = str(replay["base"] / "root")
    spec = next(s for s in load_specs() if s.name == "flight_delay")
    features = pd.read_parquet(replay["base"] / "root" / "datasets" / "flight_delay" / "features")
    sent = features[[spec.key_column, spec.time_column, *spec.feature_names]].head(3).copy()
    sent[spec.time_column] = sent[spec.time_column].map(lambda t: t.isoformat())
    body = {"dataframe_records": sent.to_dict(orient="records")}
    app = create_app(ServeConfig(root=root, names=["flight_delay"], poll_seconds=0.05), specs={spec.name: spec})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=30) as client:
            first = client.post("/invocations", json=body)
            assert first.status_code == 200, first.text
            assert first.headers["X-Model-Version"] == "2" and first.json()["arm"] == "production"
            assert len(first.json()["predictions"]) == 3
            assert cli(["--root", root, "rollback", "flight_delay", "--reason", "v2 misbehaves live"]) == 0
            assert "rolled back from v2 to v1" in capsys.readouterr().out
            deadline = time.monotonic() + 30
            while (answer := client.post("/invocations", json=body)).headers.get("X-Model-Version") != "1":
                assert answer.status_code == 200 and time.monotonic() < deadline, "the rollback never took effect"
                time.sleep(0.05)
            assert answer.json()["model_semver"] == "1.0.0"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
