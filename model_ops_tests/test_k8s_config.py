"""deploy/k8s/ checked by loading it: the instance file through Dagster's own validation (the instance schema, then
each configurable section against its class's schema, the K8sRunLauncher's from dagster-k8s), the Helm values
against the chart's value names, and the code location they name loading model_ops' Definitions.

No Helm binary or chart is installed here, so the values are not rendered by ``helm template``. The chart's value
names below were read from the chart's own sources in dagster-io/dagster, under helm/dagster/:
schema/schema/charts/dagster/values.py and subschema/{postgresql,run_launcher,daemon,concurrency,global_}.py,
schema/schema/charts/dagster_user_deployments/subschema/user_deployments.py (the pydantic models its
values.schema.json is generated from), templates/helpers/instance/_concurrency.tpl and _run-coordinator.tpl (how
``concurrency`` and ``dagsterDaemon.runCoordinator`` become the instance's ``concurrency`` and ``run_coordinator``),
templates/configmap-workspace.yaml (a deployment's ``name`` is its location's name and its Service's host) and
charts/dagster-user-deployments/templates/deployment-user.yaml (``codeServerArgs`` follow ``dagster code-server
start -h 0.0.0.0 -p <port>``; every pod gets ``DAGSTER_PG_PASSWORD`` from ``global.postgresqlSecretName``).
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.ref import InstanceRef
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_k8s import K8sRunLauncher

from model_ops.defs.resources import ModelOpsResource, resources
from model_ops_tests.helpers import free_port

PROJECT = Path(__file__).parents[1]
K8S = PROJECT / "deploy" / "k8s"
INSTANCE = K8S / "dagster.k8s.yaml"
VALUES = K8S / "values.yaml"
POSTGRES_INSTANCE = PROJECT / "model_ops" / "defs" / "dagster.postgres.yaml"
PG_ENV = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_DB")


def read_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), path
    return loaded


def values() -> dict[str, Any]:
    return read_yaml(VALUES)


def deployment() -> dict[str, Any]:
    (only,) = values()["dagster-user-deployments"]["deployments"]
    assert isinstance(only, dict)
    return only


# ---------------------------------------------------------------------------------------------- the instance file


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """``$DAGSTER_HOME``, with the connection settings as the pods have them (values.yaml's, the password from
    its Secret)."""
    path = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(path))
    for name in PG_ENV:
        monkeypatch.setenv(name, str(deployment()["env"][name]))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "from-the-secret")
    return path


def load_instance(text: str, home: Path) -> InstanceRef:
    """``text`` as ``$DAGSTER_HOME/dagster.yaml``, validated as Dagster validates an instance's configuration, then
    each configurable section (storage, run coordinator, run launcher) against its own class's schema: what
    ``DagsterInstance`` checks when it builds them, without building any (they would connect to PostgreSQL and a
    cluster). A :class:`dagster.DagsterInvalidConfigError` when any of it is invalid."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(text)
    ref = InstanceRef.from_dir(str(home))  # the instance schema, the storage and concurrency rules
    for data in (ref.storage_data, ref.run_coordinator_data, ref.run_launcher_data):
        assert data is not None
        cls = getattr(importlib.import_module(data.module_name), data.class_name)
        result = process_config(resolve_to_config_type(cls.config_type()), data.config_dict)
        if not result.success:
            raise dg.DagsterInvalidConfigError(f"invalid {data.class_name} configuration", result.errors, data)
    return ref


def test_instance_file_is_a_valid_kubernetes_instance(home: Path) -> None:
    ref = load_instance(INSTANCE.read_text(), home)
    assert ref.storage_data is not None and ref.run_launcher_data is not None and ref.run_coordinator_data
    assert (ref.storage_data.module_name, ref.storage_data.class_name) == ("dagster_postgres", "DagsterPostgresStorage")
    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"
    assert ref.run_launcher_data.class_name == "K8sRunLauncher"
    launcher = process_config(resolve_to_config_type(K8sRunLauncher.config_type()), ref.run_launcher_data.config_dict)
    assert launcher.success and launcher.value is not None
    assert launcher.value["dagster_home"] == str(home)  # from $DAGSTER_HOME, where the file is mounted
    # the same limits, retries and storage settings as the Postgres instance model_ops ships
    shipped = read_yaml(POSTGRES_INSTANCE)
    assert ref.settings["concurrency"] == shipped["concurrency"]
    assert ref.settings["run_retries"] == shipped["run_retries"]
    ours = read_yaml(INSTANCE)["storage"]["postgres"]["postgres_db"]
    assert ours == shipped["storage"]["postgres"]["postgres_db"]


def test_run_launcher_and_coordinator_build_from_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher is built from its validated config as the instance builds it, with the cluster connection
    stubbed (there is no cluster here): its settings are the ones the README's objects are named by."""
    import dagster_k8s.launcher as launcher_module

    monkeypatch.setattr(launcher_module, "load_kubernetes_config", lambda **kwargs: None)
    monkeypatch.setattr(
        launcher_module.DagsterKubernetesClient, "production_client", staticmethod(lambda **kwargs: object())
    )
    ref = load_instance(INSTANCE.read_text(), home)
    launcher = ref.run_launcher
    assert isinstance(launcher, K8sRunLauncher)
    assert launcher.job_namespace == "model-ops" and launcher.service_account_name == "model-ops"
    assert launcher.instance_config_map == "model-ops-instance"
    assert launcher.postgres_password_secret == "model-ops-postgresql"
    assert launcher.env_config_maps == ["model-ops-env"] and launcher.env_secrets == ["model-ops-aws"]
    run_pod: dict[str, Any] = dict(launcher.run_k8s_config)
    assert run_pod["container_config"]["resources"]["requests"]["cpu"] == "2"
    assert isinstance(ref.run_coordinator, QueuedRunCoordinator)


BROKEN = {
    "a misspelled top-level key": ("concurrency:\n", "concurency:\n"),
    "a misspelled launcher key": ("instance_config_map:", "instance_config_mpa:"),
    "a misspelled storage key": ("hostname:", "hostnme:"),
    "a launcher key of the wrong type": ("load_incluster_config: true", "load_incluster_config: sometimes"),
}


@pytest.mark.parametrize("broken", BROKEN, ids=list(BROKEN))
def test_a_broken_instance_file_is_refused(home: Path, broken: str) -> None:
    good, bad = BROKEN[broken]
    text = INSTANCE.read_text()
    assert text.count(good) == 1
    with pytest.raises(dg.DagsterInvalidConfigError) as err:
        load_instance(text.replace(good, bad), home)
    wrong = bad.split(":")[0].strip()
    assert wrong in str(err.value) or "sometimes" in str(err.value)


def test_the_instance_needs_its_connection_settings(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_PG_HOST")
    with pytest.raises(dg.DagsterInvalidConfigError, match="DAGSTER_PG_HOST"):
        load_instance(INSTANCE.read_text(), home)


# --------------------------------------------------------------------------------------------------- Helm values

OPEN = "open"  # a free-form map in the chart (environment, Kubernetes objects, connection parameters)
IMAGE = {"repository": None, "tag": None, "pullPolicy": None}
TAG_LIMIT = {"key": None, "value": None, "limit": None}
# The chart's value names model_ops' values use, as the chart declares them (sources in the module docstring):
# a dict lists the names allowed beneath, a list holds the shape of its items, None is a leaf, OPEN anything.
CHART: dict[str, Any] = {
    "dagster-user-deployments": {
        "enabled": None,
        "enableSubchart": None,
        "imagePullSecrets": OPEN,
        "deployments": [
            {
                "name": None,
                "image": IMAGE,
                "port": None,
                "dagsterApiGrpcArgs": [None],
                "codeServerArgs": [None],
                "includeConfigInLaunchedRuns": {"enabled": None},
                "env": OPEN,
                "envConfigMaps": [{"name": None}],
                "envSecrets": [{"name": None}],
                "resources": OPEN,
                "labels": OPEN,
                "annotations": OPEN,
                "nodeSelector": OPEN,
                "affinity": OPEN,
                "tolerations": OPEN,
                "volumeMounts": OPEN,
                "volumes": OPEN,
            }
        ],
    },
    "postgresql": {
        "enabled": None,
        "image": OPEN,
        "postgresqlHost": None,
        "postgresqlUsername": None,
        "postgresqlPassword": None,
        "postgresqlDatabase": None,
        "postgresqlParams": OPEN,
        "postgresqlScheme": None,
        "service": {"port": None},
    },
    "generatePostgresqlPasswordSecret": None,
    "global": {"postgresqlSecretName": None, "dagsterHome": None, "serviceAccountName": None},
    "runLauncher": {
        "type": None,
        "config": {
            "k8sRunLauncher": {
                "image": IMAGE,
                "imagePullPolicy": None,
                "jobNamespace": None,
                "loadInclusterConfig": None,
                "envConfigMaps": [{"name": None}],
                "envSecrets": [{"name": None}],
                "envVars": [None],
                "resources": OPEN,
                "labels": OPEN,
                "runK8sConfig": {
                    "containerConfig": OPEN,
                    "podSpecConfig": OPEN,
                    "podTemplateSpecMetadata": OPEN,
                    "jobSpecConfig": OPEN,
                    "jobMetadata": OPEN,
                },
            }
        },
    },
    "dagsterDaemon": {
        "enabled": None,
        "runCoordinator": {
            "enabled": None,
            "type": None,
            "config": {
                "queuedRunCoordinator": {
                    "maxConcurrentRuns": None,
                    "tagConcurrencyLimits": [TAG_LIMIT],
                    "dequeueIntervalSeconds": None,
                    "dequeueNumWorkers": None,
                    "dequeueUseThreads": None,
                }
            },
        },
        "runRetries": {"enabled": None, "maxRetries": None},
        "runMonitoring": OPEN,
        "env": OPEN,
        "envConfigMaps": [{"name": None}],
        "envSecrets": [{"name": None}],
    },
    "concurrency": {
        "enabled": None,
        "pools": {"defaultLimit": None, "granularity": None, "opGranularityRunBuffer": None},
        "runs": {"maxConcurrentRuns": None, "tagConcurrencyLimits": [TAG_LIMIT]},
    },
    "telemetry": {"enabled": None},
}


def unknown_names(given: Any, allowed: Any, path: str = "") -> Iterator[str]:
    """Every name in ``given`` the chart does not declare where it stands, as a dotted path."""
    if allowed is OPEN:
        return
    if isinstance(allowed, dict):
        if not isinstance(given, dict):
            yield f"{path} (expected a map)"
            return
        for name, value in given.items():
            where = f"{path}.{name}" if path else str(name)
            if name not in allowed:
                yield where
            else:
                yield from unknown_names(value, allowed[name], where)
    elif isinstance(allowed, list):
        if not isinstance(given, list):
            yield f"{path} (expected a list)"
            return
        for i, item in enumerate(given):
            yield from unknown_names(item, allowed[0], f"{path}[{i}]")
    elif isinstance(given, (dict, list)):
        yield f"{path} (expected a single value)"


def test_values_use_only_names_the_chart_declares() -> None:
    assert list(unknown_names(values(), CHART)) == []


def test_a_misspelled_value_name_is_caught() -> None:
    broken = VALUES.read_text().replace("    maxConcurrentRuns: 8", "    maxConcurentRuns: 8")
    assert broken != VALUES.read_text()
    assert list(unknown_names(yaml.safe_load(broken), CHART)) == ["concurrency.runs.maxConcurentRuns"]
    nested = yaml.safe_load(VALUES.read_text().replace("codeServerArgs:", "codeServerArg:"))
    assert list(unknown_names(nested, CHART)) == ["dagster-user-deployments.deployments[0].codeServerArg"]


def snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def test_values_give_the_instance_model_ops_ships() -> None:
    v = values()
    instance = read_yaml(INSTANCE)
    shipped = read_yaml(POSTGRES_INSTANCE)
    # Concurrency: the chart writes the block under snake_case names (_concurrency.tpl).
    assert v["concurrency"]["enabled"] is True
    rendered = {
        section: {snake(k): val for k, val in v["concurrency"][section].items()} for section in ("pools", "runs")
    }
    assert rendered == shipped["concurrency"] == instance["concurrency"]
    # The queue is the daemon's, and leaves the limits to `concurrency` (the chart fails on both at once).
    coordinator = v["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] is True and coordinator["type"] == "QueuedRunCoordinator"
    queued = coordinator.get("config", {}).get("queuedRunCoordinator", {})
    assert queued.get("maxConcurrentRuns") is None and not queued.get("tagConcurrencyLimits")
    assert {snake(k): val for k, val in v["dagsterDaemon"]["runRetries"].items()} == shipped["run_retries"]
    assert v["telemetry"] == shipped["telemetry"] == instance["telemetry"]
    assert v["runLauncher"]["type"] == "K8sRunLauncher"
    run_pod = instance["run_launcher"]["config"]["run_k8s_config"]["container_config"]["resources"]
    assert v["runLauncher"]["config"]["k8sRunLauncher"]["resources"] == run_pod


def test_values_database_is_the_one_the_pods_are_told() -> None:
    v = values()
    pg = v["postgresql"]
    env = deployment()["env"]
    shipped = read_yaml(POSTGRES_INSTANCE)["storage"]["postgres"]["postgres_db"]
    assert pg["enabled"] is False  # an existing server; the chart's bundled one is for a trial
    assert env["DAGSTER_PG_HOST"] == pg["postgresqlHost"]
    assert env["DAGSTER_PG_PORT"] == str(pg["service"]["port"])
    assert env["DAGSTER_PG_USERNAME"] == pg["postgresqlUsername"]
    assert env["DAGSTER_PG_DB"] == pg["postgresqlDatabase"]
    assert "DAGSTER_PG_PASSWORD" not in env  # the chart sets it from the Secret
    assert v["generatePostgresqlPasswordSecret"] is False and v["global"]["postgresqlSecretName"]
    assert pg["postgresqlScheme"] == shipped["scheme"] and pg["postgresqlParams"] == shipped["params"]
    # every value the chart copies into an environment or a ConfigMap is a string
    assert all(isinstance(value, str) for value in env.values())


def code_server_args() -> list[str]:
    return [str(arg) for arg in deployment()["codeServerArgs"]]


def option(args: list[str], name: str) -> str:
    assert args.count(name) == 1, (name, args)
    return args[args.index(name) + 1]


def test_values_code_location_is_model_ops_definitions(monkeypatch: pytest.MonkeyPatch) -> None:
    d = deployment()
    module = option(code_server_args(), "-m")
    pyproject = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    workspace = read_yaml(PROJECT / "workspace.yaml")
    assert module == pyproject["tool"]["dagster"]["module_name"]
    assert module == workspace["load_from"][0]["python_module"]["module_name"]
    # the location is named as the chart's workspace names it (the deployment's name, a Kubernetes name)
    assert option(code_server_args(), "--location-name") == d["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["name"])
    assert d["includeConfigInLaunchedRuns"]["enabled"] is True  # the run pods get this environment
    # the image's own command serves the same module the same way
    cmd = re.search(r"^CMD (\[.*\])$", (K8S / "Dockerfile").read_text(), re.M)
    assert cmd is not None and yaml.safe_load(cmd.group(1))[-len(code_server_args()) :] == code_server_args()
    assert f'"-p", "{d["port"]}"' in cmd.group(1)

    loaded = importlib.import_module(module)
    assert isinstance(loaded.defs, dg.Definitions)
    assert {"flight_delay_monthly", "flight_delay_retrain"} <= {j.name for j in loaded.defs.resolve_all_job_defs()}

    # under the pods' environment model_ops keeps its registry on S3 at the root the values name
    env = d["env"]
    assert env["MODEL_OPS_ENV"] == "s3" and env["MODEL_OPS_ROOT"].startswith("s3://")
    for name in ("MODEL_OPS_ENV", "MODEL_OPS_ROOT"):
        monkeypatch.setenv(name, env[name])
    resource = resources()["model_ops"]
    assert isinstance(resource, ModelOpsResource) and resource.location().uri == env["MODEL_OPS_ROOT"]
    # the executor switch is documented there, off: Dagster's default, processes in the run pod
    assert "MODEL_OPS_EXECUTOR" not in env and "# MODEL_OPS_EXECUTOR: k8s" in VALUES.read_text()
    assert int(env["DAGSTER_MULTIPROCESS_EXECUTOR_MAX_CONCURRENT"]) >= 1


@pytest.mark.slow
@pytest.mark.s3
def test_the_code_server_the_chart_starts_serves_model_ops(s3_root: str, tmp_path: Path) -> None:
    """The command the chart runs in the code-location pod (``dagster code-server start -h 0.0.0.0 -p PORT`` and
    values.yaml's codeServerArgs), with values.yaml's environment (the root on the S3 test endpoint), loaded over
    gRPC as the chart's webserver and daemon load it (its workspace's ``grpc_server`` entry)."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import GrpcServerTarget

    d = deployment()
    port = free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env: Mapping[str, str] = {
        **os.environ,
        **{name: str(value) for name, value in d["env"].items()},
        "MODEL_OPS_ROOT": s3_root,
        "DAGSTER_HOME": str(home),
    }
    dagster = str(Path(sys.executable).parent / "dagster")
    cmd = [dagster, "code-server", "start", "-h", "127.0.0.1", "-p", str(port), *code_server_args()]
    log = (tmp_path / "code-server.log").open("w")
    server = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        target = GrpcServerTarget(host="127.0.0.1", port=port, socket=None, location_name=d["name"])
        deadline = time.monotonic() + 120
        while True:  # the server's port first (a workspace that cannot connect yet warns at length)
            assert server.poll() is None, (tmp_path / "code-server.log").read_text()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "code-server.log").read_text()[-3000:]
                time.sleep(0.2)
        while True:
            assert server.poll() is None, (tmp_path / "code-server.log").read_text()[-3000:]
            with dg.instance_for_test() as instance, WorkspaceProcessContext(instance, target) as context:
                (entry,) = context.create_request_context().get_code_location_entries().values()
                if entry.code_location is not None:
                    (repository,) = entry.code_location.get_repositories().values()
                    jobs = {job.name for job in repository.get_all_jobs()}
                    break
                error = entry.load_error.to_string() if entry.load_error else ""
            assert time.monotonic() < deadline, error or (tmp_path / "code-server.log").read_text()[-3000:]
            time.sleep(1)
        assert {"flight_delay_monthly", "flight_delay_retrain", "flight_delay_deploy"} <= jobs
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the gRPC process it started, its own group
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(server.pid, signal.SIGKILL)  # whatever of that group is still there
        except ProcessLookupError:
            pass
        server.wait(timeout=15)
        log.close()
