"""The demo's jobs and sensors on a Dagster instance on PostgreSQL (``MODEL_OPS_INSTANCE=postgres``), against a
real server started on loopback for the test: every run, its events and every sensor tick land in Postgres, and the
story is the one the embedded instance tells."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from model_ops.defs import instance as inst
from model_ops.errors import InstanceUnavailableError, UsageError
from model_ops_tests.postgres import missing, postgres_server

pytestmark = pytest.mark.slow


def test_postgres_is_selected_by_the_environment_and_refused_without_its_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in inst.POSTGRES_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(inst.ENV, "postgres")
    with pytest.raises(UsageError, match="missing: DAGSTER_PG_HOST, DAGSTER_PG_PORT"):
        inst.prepare_home(str(tmp_path / "home"))
    assert not (tmp_path / "home").exists()  # nothing half set up
    env = {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": "54x2", "DAGSTER_PG_USERNAME": "dagster"}
    for name, value in {**env, "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": "dagster"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UsageError, match="DAGSTER_PG_PORT='54x2' is not a port number"):
        inst.prepare_home(str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_PG_PORT", "5432")
    postgres_home = inst.prepare_home(str(tmp_path / "pg"))
    assert inst.kind_of(yaml.safe_load((postgres_home / "dagster.yaml").read_text())) == "postgres"
    monkeypatch.delenv("DAGSTER_PG_HOST")  # an existing Postgres home still needs its connection
    with pytest.raises(UsageError, match="missing: DAGSTER_PG_HOST"):
        inst.prepare_home(str(postgres_home))
    monkeypatch.setenv(inst.ENV, "mysql")
    with pytest.raises(UsageError, match="names no Dagster instance"):
        inst.prepare_home(str(tmp_path / "home"))
    monkeypatch.delenv(inst.ENV)
    sqlite_home = inst.prepare_home(str(tmp_path / "home"))
    assert "storage" not in yaml.safe_load((sqlite_home / "dagster.yaml").read_text())
    monkeypatch.setenv(inst.ENV, "postgres")  # asking for another kind than an existing home's is refused
    with pytest.raises(UsageError, match="MODEL_OPS_INSTANCE=postgres but .* configures a sqlite instance"):
        inst.prepare_home(str(sqlite_home))
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "dagster.yaml").write_text("telemetry: {enabled: false}\n# the team's own\n")
    monkeypatch.setenv(inst.ENV, "sqlite")  # an existing instance configuration is used as it is
    assert "the team's own" in (inst.prepare_home(str(tmp_path / "own")) / "dagster.yaml").read_text()


def test_a_bad_instance_configuration_is_a_usage_error(tmp_path: Path) -> None:
    from model_ops.defs.workspace import synchronous_instance

    (tmp_path / "dagster.yaml").write_text("storage:\n  postgres:\n    postgres_db: {hostname: h, port: nope}\n")
    with pytest.raises(UsageError, match="dagster.yaml is invalid"):
        synchronous_instance(tmp_path)


def test_an_unreachable_postgres_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from model_ops.defs.workspace import synchronous_instance
    from model_ops_tests.helpers import free_port

    env = {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(free_port()), "DAGSTER_PG_USERNAME": "dagster"}
    for name, value in {**env, "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": "dagster", inst.ENV: "postgres"}.items():
        monkeypatch.setenv(name, value)
    home = inst.prepare_home(str(tmp_path / "home"))
    with pytest.raises(InstanceUnavailableError, match=r"cannot reach the Dagster instance's database") as e:
        synchronous_instance(home)
    assert f"127.0.0.1:{env['DAGSTER_PG_PORT']}/dagster" in e.value.message and e.value.exit_code == 1


def test_an_unreachable_postgres_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    from model_ops_tests.helpers import free_port

    env = {**os.environ, inst.ENV: "postgres", "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(free_port())}
    env.update({"DAGSTER_PG_USERNAME": "dagster", "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": "dagster"})
    command = ["--root", str(tmp_path / "root"), "demo", "--dagster-home", str(tmp_path / "home")]
    done = subprocess.run([sys.executable, "-m", "model_ops.cli", *command], env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: cannot reach the Dagster instance's database"), lines
    assert lines[1].startswith("  hint: ")


@pytest.mark.skipif(missing() is not None, reason=missing() or "")
def test_the_demo_runs_its_jobs_and_sensors_on_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster as dg
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    from model_ops.defs.replay import run_demo
    from model_ops.defs.workspace import synchronous_instance

    with postgres_server() as pg:
        for name, value in pg.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv(inst.ENV, "postgres")
        home = tmp_path / "home"
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        lines: list[str] = []
        result = run_demo(root=str(tmp_path / "root"), dagster_home=str(home), until="2013-05", progress=lines.append)
        kinds = [t["kind"] for t in result["timeline"]]
        assert "deployed" in kinds, "\n".join(lines)

        instance = synchronous_instance(home)
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        runs = instance.get_runs()
        assert any(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        # what Dagster reads back is what is in the database, not in a file beside it
        assert pg.query("select count(*) from runs")[0][0] == len(runs)
        materialized = "select count(*) from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION'"
        assert pg.query(materialized)[0][0] > 0
        states = instance.all_instigator_state()
        ticks = sum(len(instance.get_ticks(s.instigator_origin_id, s.selector_id)) for s in states)
        assert ticks > 0 and pg.query("select count(*) from job_ticks")[0][0] == ticks
        assert not list(home.glob("**/*.db")), "no SQLite storage beside the Postgres one"
        # the training step ran in its pool, which holds one slot: one model fitted at a time across all runs
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert instance.event_log_storage.get_concurrency_info("training").slot_count == 1
        instance.dispose()
