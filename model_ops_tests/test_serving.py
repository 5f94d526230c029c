"""``model-ops serve``: the live server answers the Open Inference Protocol v2 and MLflow's scoring format with the
batch path's routing and outputs, never serves the shadow, follows the registry (blue-green switch and switch back,
a rollback under concurrent load with every response's version checked), keeps serving when the registry is out of
reach, refuses bad input with a 4xx in the protocol's format, and writes every served row to the Delta prediction
log, SIGTERM included.

The registry is built in the test: scikit-learn's bundled breast-cancer data, a declared binary model, two versions
fitted by the training code (``model_ops.ml.training.pipeline``) with different regularisation, so their outputs
differ. Servers run on loopback ports chosen free and are stopped in teardown.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from model_ops.data.delta import PARTITION
from model_ops.data.partitions import Partitioning
from model_ops.location import resolve_root
from model_ops.ml import training
from model_ops.ops import deployment as dep
from model_ops.registry import Registry
from model_ops.serving import ServeConfig, create_app
from model_ops.serving.app import GC_THRESHOLDS
from model_ops.serving.fleet import Fleet
from model_ops.serving.predlog import PredictionLog, predictions_dataset
from model_ops.specs import ModelSpec, load_spec

NAME = "cancer"
FEATURES = ["mean_radius", "mean_texture", "worst_area", "worst_smoothness"]


# ---------------------------------------------------------------------------------------------------- fixtures


def rows() -> pd.DataFrame:
    """The bundled breast-cancer data with a key, a time in January 2024 and a categorical site."""
    from sklearn import datasets

    frame = datasets.load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame["record_id"] = [f"r{i:04d}" for i in range(len(frame))]
    frame["seen_at"] = pd.Timestamp("2024-01-07", tz="UTC") + pd.to_timedelta(np.arange(len(frame)) % 28, unit="D")
    frame["site"] = np.where(np.arange(len(frame)) % 3 == 0, "north", "south")
    return frame


def declaration(tmp_path: Path) -> dict[str, Any]:
    return {
        "name": NAME,
        "description": "breast-cancer diagnosis, served live",
        "owner": "team:data-science",
        "task": "binary_classification",
        "source": {
            "kind": "delta",
            "uri": str(tmp_path / "tables" / NAME),
            "time_column": "seen_at",
            "key_column": "record_id",
        },
        "partitions": {"cadence": "weekly", "start": "2024-01-07"},
        "features": [{"name": f, "type": "float"} for f in FEATURES] + [{"name": "site", "type": "category"}],
        "target": {"column": "target"},
        "estimator": {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}},
        "deployment": {"canary_steps": [0.5]},
    }


def fit(spec: ModelSpec, c: float) -> Any:
    data = rows()
    model = training.pipeline(spec)
    model.set_params(model__C=c)
    return model.fit(training.model_input(data, spec), training.target(data, spec))


@pytest.fixture
def spec(tmp_path: Path) -> ModelSpec:
    path = tmp_path / "specs" / f"{NAME}.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(declaration(tmp_path)))
    return load_spec(path)


@pytest.fixture
def two_versions(root: Path, spec: ModelSpec) -> Registry:
    """v1 in production, v2 in staging: fitted with C=1 and C=0.001, so they disagree on some rows."""
    reg = Registry.open(root, actor="tester")
    for c in (1.0, 0.001):
        model = fit(spec, c)
        mv = reg.register_model(NAME, model, signature=training.signature(spec, model.classes_.tolist()))
        reg.transition(mv.ref, "staging", reason="evaluated")
    reg.transition(f"models:/{NAME}/1", "production", reason="first")
    return reg


def free_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serving(
    root: Path, spec: ModelSpec, open_registry: Any = None, **config: Any
) -> Iterator[tuple[httpx.Client, Any]]:
    """An in-process server on a free loopback port (uvicorn in a thread), stopped on exit."""
    import uvicorn

    cfg = ServeConfig(root=str(root), names=[NAME], poll_seconds=0.05, log_flush_seconds=0.1, **config)
    app = create_app(cfg, specs={spec.name: spec}, open_registry=open_registry)
    sock = free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield client, app.state.server
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "the condition") -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout``."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - t0


def oip_columns(frame: pd.DataFrame, columns: list[str]) -> dict[str, Any]:
    """An OIP request with one tensor per column, as a KServe / Triton client sends it."""
    inputs = []
    for c in columns:
        timed = isinstance(frame[c].dtype, pd.DatetimeTZDtype)
        values = [t.isoformat() for t in frame[c]] if timed else frame[c].tolist()
        kind = "BYTES" if frame[c].dtype == object or timed else "FP64"
        inputs.append({"name": c, "shape": [len(values)], "datatype": kind, "data": values})
    return {"inputs": inputs}


def logged(root: Path) -> pd.DataFrame:
    ds = predictions_dataset(resolve_root(str(root)), NAME)
    return ds.read() if ds.exists() else pd.DataFrame()


def batch_log(reg: Registry, spec: ModelSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """What the batch path logs for these rows under the manifest in force (``score_partition`` itself)."""
    from model_ops.defs.predictions import score_partition

    manifest = dep.current(reg, NAME)
    versions = [v for v in (manifest.production, manifest.canary, manifest.shadow) if v]
    models = {v: reg.load_model(f"models:/{NAME}/{v}") for v in versions}
    semvers = {v: reg.get(NAME, v).semver for v in versions}
    features = frame.copy()
    features[PARTITION] = Partitioning.of(spec).key_of(features[spec.time_column])
    return score_partition(features.reset_index(drop=True), manifest, models, spec, semvers)


# ---------------------------------------------------------------------------------------------------- protocols


def test_oip_and_mlflow_answers_match_the_batch_path_row_for_row(
    two_versions: Registry, root: Path, spec: ModelSpec
) -> None:
    reg = two_versions
    dep.apply(reg, spec, "deploy", reason="canary at 50 %")  # v2 canary at 0.5
    frame = rows().head(120)
    batch = batch_log(reg, spec, frame)
    served = batch[batch["served"]].set_index("record_id")
    assert set(served["arm"]) == {"production", "canary"}  # both arms present: the comparison means something
    with serving(root, spec) as (client, _):
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").status_code == 200
        meta = client.get(f"/v2/models/{NAME}").json()
        assert meta["name"] == NAME and [i["name"] for i in meta["inputs"]] == [*FEATURES, "site"]
        assert [i["datatype"] for i in meta["inputs"]] == ["FP64"] * 4 + ["BYTES"]
        assert meta["outputs"] == [
            {"name": "prediction", "datatype": "INT64", "shape": [-1]},
            {"name": "score", "datatype": "FP64", "shape": [-1]},
        ]

        oip = client.post(
            f"/v2/models/{NAME}/infer", json=oip_columns(frame, ["record_id", "seen_at", *FEATURES, "site"])
        )
        assert oip.status_code == 200, oip.text
        body = oip.json()
        outputs = {o["name"]: o["data"] for o in body["outputs"]}
        assert body["model_name"] == NAME and body["parameters"]["arm"] == "mixed"
        assert "X-Model-Arm" not in oip.headers  # rows went to two arms: the body says which, per row
        want = served.loc[frame["record_id"]]
        assert body["parameters"]["arms"] == want["arm"].tolist()
        assert body["parameters"]["model_versions"] == want["model_version"].tolist()
        assert outputs["prediction"] == want["prediction"].tolist()
        np.testing.assert_allclose(outputs["score"], want["score"].to_numpy(), rtol=0, atol=1e-12)

        split = {
            "dataframe_split": {"columns": list(frame.columns), "data": json.loads(frame.to_json(orient="values"))}
        }
        for path in (f"/v2/models/{NAME}/invocations", "/invocations"):
            mlflow = client.post(path, json=split)
            assert mlflow.status_code == 200, mlflow.text
            assert mlflow.json()["predictions"] == want["prediction"].tolist()
            assert mlflow.json()["arms"] == want["arm"].tolist()
        records = json.loads(frame.drop(columns=["seen_at"]).to_json(orient="records"))
        one = client.post("/invocations", json={"dataframe_records": records[:1]})
        row = want.iloc[0]
        assert one.json()["predictions"] == [row["prediction"]]
        assert one.headers["X-Model-Version"] == str(row["model_version"]) == one.json()["model_version"]
        assert one.headers["X-Model-Arm"] == row["arm"] == one.json()["arm"]
        assert one.headers["X-Model-Semver"] == row["model_semver"]

        # the request's id is echoed and logged; ``outputs`` picks what comes back, and an unknown one is refused
        picked = {**oip_columns(frame.head(1), ["record_id", *FEATURES, "site"]), "id": "req-7"}
        r = client.post(f"/v2/models/{NAME}/infer", json={**picked, "outputs": [{"name": "score"}]})
        assert r.json()["id"] == "req-7" == r.headers["X-Request-Id"]
        assert [o["name"] for o in r.json()["outputs"]] == ["score"]
        r = client.post(f"/v2/models/{NAME}/infer", json={**picked, "id": "req-8", "outputs": [{"name": "proba"}]})
        assert r.status_code == 400 and "unknown output(s) proba" in r.json()["error"]

        # a single 2-D tensor of the features in signature order, routed by the X-Routing-Key header
        numbers = frame[FEATURES].head(4)
        key = str(frame["record_id"].iloc[0])
        two_d = {
            "inputs": [
                {"name": "x", "shape": [4, 4], "datatype": "FP64", "data": numbers.to_numpy().tolist()},
                {"name": "site", "shape": [4], "datatype": "BYTES", "data": frame["site"].head(4).tolist()},
            ]
        }
        r = client.post(f"/v2/models/{NAME}/infer", json=two_d, headers={"X-Routing-Key": key})
        assert r.status_code == 200, r.text
        assert r.headers["X-Model-Arm"] == served.loc[key, "arm"]  # every row keyed by the header: one arm
        assert r.json()["outputs"][0]["data"][0] == served.loc[key, "prediction"]
        wait_for(lambda: len(logged(root)) >= 120 + 240 + 1 + 1 + 4, what="the prediction log catching up")
    log = logged(root)
    assert set(batch.columns) <= set(log.columns)  # the batch path's columns, every one
    assert (log["request_id"] == "req-7").sum() == 1 and not (log["request_id"] == "req-8").any()
    live = log[log["request_id"] == oip.json()["id"] + "/0"].iloc[0]
    first = served.loc[frame["record_id"].iloc[0]]
    assert (live["model_version"], live["arm"], live["prediction"]) == (
        first["model_version"],
        first["arm"],
        first["prediction"],
    )
    assert live[PARTITION] == first[PARTITION]  # the row's own time decides its partition, as in the batch
    assert live["ts"] == frame["seen_at"].iloc[0]
    untimed = log[log["request_id"].str.startswith(r.json()["id"])]  # the 2-D request carried no time: now
    assert len(untimed) == 4 and (untimed["ts"] == untimed["scored_at"]).all()
    assert (untimed[PARTITION] == Partitioning.of(spec).key_of(untimed["scored_at"])).all()
    assert (untimed["record_id"] == key).all()  # the routing key stands in for the missing key column


def test_the_shadow_is_scored_and_logged_but_never_served(two_versions: Registry, root: Path, spec: ModelSpec) -> None:
    reg = two_versions
    dep.apply(reg, spec, "shadow_on", version=2, reason="watch v2")
    frame = rows().head(60)
    batch = batch_log(reg, spec, frame)
    shadow = batch[batch["arm"] == "shadow"].set_index("record_id")
    production = batch[batch["arm"] == "production"].set_index("record_id")
    assert (shadow["prediction"] != production.loc[shadow.index, "prediction"]).any()  # they do disagree
    with serving(root, spec) as (client, server):
        records = json.loads(frame.to_json(orient="records", date_format="iso"))
        for i in range(0, 60, 20):
            r = client.post(f"/v2/models/{NAME}/invocations", json={"dataframe_records": records[i : i + 20]})
            assert r.status_code == 200, r.text
            assert set(r.json()["arms"]) == {"production"} and r.headers["X-Model-Version"] == "1"
            assert r.json()["predictions"] == production.loc[frame["record_id"].iloc[i : i + 20], "prediction"].tolist()
        wait_for(lambda: len(logged(root)) >= 120, what="the shadow rows reaching the log")
        metrics = client.get("/metrics").text
    log = logged(root)
    shadow_log = log[log["arm"] == "shadow"].set_index("record_id")
    assert len(shadow_log) == 60 and not shadow_log["served"].any() and (shadow_log["model_version"] == 2).all()
    assert shadow_log.loc[shadow.index, "prediction"].tolist() == shadow["prediction"].tolist()
    assert log[log["served"]]["model_version"].eq(1).all()
    differ = int((shadow["prediction"] != production.loc[shadow.index, "prediction"]).sum())
    assert f'model_ops_serving_shadow_disagreements_total{{model="{NAME}",version="2"}} {float(differ)}' in metrics
    assert f'model_ops_serving_shadow_rows_total{{model="{NAME}",version="2"}} 60.0' in metrics


BAD_OIP: list[tuple[str, Any, int, str]] = [
    ("malformed JSON", b'{"inputs": [', 400, "malformed JSON"),
    ("not an object", b"[1, 2]", 400, "JSON object"),
    ("no inputs", b'{"inputs": []}', 400, "non-empty list"),
    (
        "shape and data disagree",
        {"inputs": [{"name": "mean_radius", "shape": [3], "datatype": "FP64", "data": [1.0, 2.0]}]},
        400,
        "shape [3] (3 values) but its data holds 2",
    ),
    (
        "a 3-D tensor",
        {"inputs": [{"name": "x", "shape": [1, 1, 5], "datatype": "FP64", "data": [1, 2, 3, 4, 5]}]},
        400,
        "[rows] or [rows, columns]",
    ),
    (
        "a 2-D tensor of the wrong width",
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]},
        400,
        "needs shape [rows, 5]",
    ),
    (
        "unknown datatype",
        {"inputs": [{"name": "mean_radius", "shape": [1], "datatype": "FLOAT", "data": [1.0]}]},
        400,
        "datatype 'FLOAT'",
    ),
    (
        "text in an FP64 tensor",
        {"inputs": [{"name": "mean_radius", "shape": [1], "datatype": "FP64", "data": ["big"]}]},
        400,
        "holds 'big'",
    ),
]


def _one(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"record_id": "r0001", "mean_radius": 14.0, "mean_texture": 19.0, "worst_area": 880.0}
    row.update({"worst_smoothness": 0.13, "site": "north"}, **changes)
    return {k: v for k, v in row.items() if v is not ...}


BAD_MLFLOW: list[tuple[str, Any, int, str]] = [
    ("neither format", {"instances": [[1, 2]]}, 400, "exactly one of dataframe_split, dataframe_records"),
    ("a missing column", {"dataframe_records": [_one(worst_area=...)]}, 422, "missing column(s) worst_area"),
    ("text in a number column", {"dataframe_records": [_one(mean_radius="big")]}, 422, "'mean_radius' holds text"),
    ("a number in a text column", {"dataframe_records": [_one(site=3)]}, 422, "'site' is int64, expected category"),
    (
        "NaN where none is allowed",
        b'{"dataframe_records": [' + json.dumps(_one()).replace("14.0", "NaN").encode() + b"]}",
        422,
        "missing values",
    ),
    (
        "null where none is allowed",
        {"dataframe_records": [_one(worst_smoothness=None)]},
        422,
        "'worst_smoothness' has missing",
    ),
    (
        "a ragged split",
        {"dataframe_split": {"columns": ["mean_radius", "site"], "data": [[1.0]]}},
        400,
        "has 1 values for 2 columns",
    ),
    (
        "a time that is not a time",
        {"dataframe_records": [_one(seen_at="yesterday")]},
        422,
        "'seen_at' holds 'yesterday'",
    ),
    (
        "a time the log cannot hold",
        {"dataframe_records": [_one(seen_at="9999-12-31T00:00:00Z")]},
        422,
        "between the years 1677 and 2262",
    ),
    ("no rows", {"dataframe_records": []}, 400, "no rows"),
]


def test_bad_input_is_a_4xx_in_the_protocols_format_and_logs_nothing(
    two_versions: Registry, root: Path, spec: ModelSpec
) -> None:
    with serving(root, spec) as (client, server):
        for what, payload, status, words in BAD_OIP:
            content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            r = client.post(f"/v2/models/{NAME}/infer", content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (what, r.text)
            assert words in r.json()["error"], (what, r.json())
        for what, payload, status, words in BAD_MLFLOW:
            content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            r = client.post("/invocations", content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (what, r.text)
            assert r.json()["error_code"] == "BAD_REQUEST" and words in r.json()["message"], (what, r.json())
        r = client.post("/v2/models/nosuch/infer", json={"inputs": []})
        assert r.status_code == 404 and "'nosuch' is not served" in r.json()["error"] and NAME in r.json()["error"]
        r = client.post("/v2/models/nosuch/invocations", json={"dataframe_records": [_one()]})
        assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        big = b'{"dataframe_records": [' + b" " * (10 * 1024 * 1024) + b"]}"
        r = client.post("/invocations", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "limit" in r.json()["message"]  # refused by its Content-Length

        def chunks() -> Iterator[bytes]:  # no Content-Length: refused while it streams in
            yield b'{"dataframe_records": ['
            for _ in range(11):
                yield b" " * (1024 * 1024)
            yield b"]}"

        r = client.post("/invocations", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "over the limit" in r.json()["message"]
        r = client.post("/invocations", json={"dataframe_records": [_one()]})
        assert r.status_code == 200  # still serving after all of that
        metrics = client.get("/metrics").text
        wait_for(lambda: server.predlog.written_rows >= 1, what="the good row reaching the log")
    assert len(logged(root)) == 1  # the refused requests logged nothing
    # refusals of routed rows name the version and arm; those refused before routing leave them empty
    assert 'errors_total{arm="production",model="cancer",protocol="mlflow",status="422",version="1"} 5.0' in metrics
    assert f'errors_total{{arm="",model="cancer",protocol="oip",status="400",version=""}} {len(BAD_OIP)}.0' in metrics
    assert 'status="500"' not in metrics


# ---------------------------------------------------------------------------------------------------- following


def _served_version(client: httpx.Client) -> int:
    r = client.post("/invocations", json={"dataframe_records": [_one()]})
    assert r.status_code == 200, r.text
    assert r.headers["X-Model-Version"] == r.json()["model_version"]
    return int(r.json()["model_version"])


def test_blue_green_switch_and_instant_switch_back(two_versions: Registry, root: Path, spec: ModelSpec) -> None:
    reg = two_versions
    collector = gc.get_threshold(), gc.get_freeze_count()
    with serving(root, spec, standby=False) as (client, server):
        # an application embedded in another process (this test's) leaves its garbage collector alone
        assert (gc.get_threshold(), gc.get_freeze_count()) == collector
        blue = server.fleet.slots[NAME].production
        assert blue.number == 1 and _served_version(client) == 1
        reg.transition(f"models:/{NAME}/2", "production", reason="green")
        wait_for(lambda: _served_version(client) == 2, what="the switch to v2")
        green = server.fleet.slots[NAME].production
        assert green.number == 2
        assert (NAME, 1) in server.fleet.loaded_versions()  # blue stays loaded for the drain time
        reg.rollback(NAME, reason="back to blue")
        wait_for(lambda: _served_version(client) == 1, what="the switch back to v1")
        assert server.fleet.slots[NAME].production is blue  # the same loaded version: nothing was loaded again
        assert client.get(f"/v2/models/{NAME}").json()["parameters"]["manifest"]["production"] == 1


def test_a_replaced_version_is_unloaded_after_the_drain_time(
    two_versions: Registry, root: Path, spec: ModelSpec
) -> None:
    reg = two_versions
    with serving(root, spec, standby=False, drain_seconds=0.2) as (client, server):
        reg.transition(f"models:/{NAME}/2", "production", reason="green")
        wait_for(lambda: _served_version(client) == 2, what="the switch to v2")
        wait_for(lambda: (NAME, 1) not in server.fleet.loaded_versions(), what="v1 being unloaded")


def test_the_rollback_target_is_kept_warm(two_versions: Registry, root: Path, spec: ModelSpec) -> None:
    reg = two_versions
    reg.transition(f"models:/{NAME}/2", "production", reason="v2")
    with serving(root, spec, drain_seconds=0.0) as (client, server):
        assert _served_version(client) == 2
        assert (NAME, 1) in server.fleet.loaded_versions()  # never served here, loaded as the standby
        standby = server.fleet._loaded[(NAME, 1)]
        reg.rollback(NAME, reason="v2 is bad")
        wait_for(lambda: _served_version(client) == 1, what="the rollback")
        assert server.fleet.slots[NAME].production is standby


def test_a_server_that_cannot_reach_the_registry_keeps_serving(
    two_versions: Registry, root: Path, spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_ops.serving import fleet as fleet_module

    with serving(root, spec) as (client, server):
        assert _served_version(client) == 1

        def unreachable(reg: Registry) -> int:
            raise OSError("connection refused")

        monkeypatch.setattr(fleet_module, "registry_log_version", unreachable)
        wait_for(lambda: server.fleet.registry_errors >= 3, what="failed polls")
        assert _served_version(client) == 1
        assert client.get("/v2/health/ready").status_code == 200
        assert "model_ops_serving_registry_errors_total" in client.get("/metrics").text
        monkeypatch.undo()
        reg = Registry.open(root, actor="tester")
        reg.transition(f"models:/{NAME}/2", "production", reason="reachable again")
        wait_for(lambda: _served_version(client) == 2, what="following again")


def test_a_server_with_nothing_to_serve_is_live_but_not_ready(root: Path, spec: ModelSpec) -> None:
    def unreachable() -> Registry:
        raise OSError("no route to host")

    with serving(root, spec, open_registry=unreachable) as (client, server):
        fleet: Fleet = server.fleet
        wait_for(lambda: fleet.registry_errors >= 2, what="failed polls")
        assert not fleet.ready and "no route to host" in str(fleet.last_registry_error)
        assert client.get("/v2/health/live").status_code == 200
        r = client.get("/v2/health/ready")
        assert r.status_code == 503 and r.json()["ready"] is False
        r = client.post(f"/v2/models/{NAME}/infer", json={"inputs": []})
        assert r.status_code == 404 and "nothing is served yet" in r.json()["error"]


@pytest.mark.slow
def test_hot_rollback_under_concurrent_load_answers_every_request_with_the_version_in_force(
    two_versions: Registry, root: Path, spec: ModelSpec
) -> None:
    """Clients hammer the server while production moves v1 -> v2 -> v1: no request fails, every answer is the
    production version before or after each move (never anything else), once a client sees a move it never sees
    the version before it again, and each move is in effect within a generous bound."""
    reg = two_versions
    responses: list[tuple[int, float, float, int, int, str]] = []  # client, sent, answered, status, version, body
    stop = threading.Event()
    lock = threading.Lock()

    def hammer(client: httpx.Client, seed: int) -> None:
        i = 0
        while not stop.is_set():
            t0 = time.monotonic()
            r = client.post("/invocations", json={"dataframe_records": [_one(record_id=f"k{seed}-{i}")]})
            t1 = time.monotonic()
            ok = r.status_code == 200
            version = int(r.headers.get("X-Model-Version", "0")) if ok else 0
            body = str(r.json().get("model_version")) if ok else r.text
            with lock:
                responses.append((seed, t0, t1, r.status_code, version, body))
            i += 1

    with serving(root, spec) as (client, _):
        base = str(client.base_url)
        clients = [httpx.Client(base_url=base, timeout=30) for _ in range(4)]
        threads = [threading.Thread(target=hammer, args=(c, n)) for n, c in enumerate(clients)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            moves = []  # (target, started, in effect: a response showed it)
            for target in (2, 1):
                t_start = time.monotonic()
                if target == 2:
                    reg.transition(f"models:/{NAME}/2", "production", reason="promote under load")
                else:
                    reg.rollback(NAME, reason="rollback under load")
                wait_for(lambda tv=target: _served_version(client) == tv, timeout=10, what=f"v{target} in effect")
                moves.append((target, t_start, time.monotonic()))
                time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
            for c in clients:
                c.close()
    assert len(responses) > 50
    failed = [r for r in responses if r[3] != 200]
    assert not failed, failed[:5]
    assert all(str(r[4]) == r[5] for r in responses)  # header and body agree
    (_, promote_start, promote_seen), (_, rollback_start, rollback_seen) = moves
    for _, t0, t1, _, version, _ in responses:
        if t1 < promote_start:
            assert version == 1, "answered before the promotion started, yet not by v1"
        if promote_seen < t0 and t1 < rollback_start:
            assert version == 2, "sent after v2 was seen in force and answered before the rollback, yet not by v2"
        if rollback_seen < t0:
            assert version == 1, "sent after the rollback was seen in force, yet not answered by v1"
    for seed in range(4):  # each client's answers go 1 ... 2 ... 1: a swap is never undone, never half-done
        mine = [r[4] for r in sorted(responses, key=lambda r: r[1]) if r[0] == seed]
        runs = [v for i, v in enumerate(mine) if i == 0 or mine[i - 1] != v]
        assert runs == [1, 2, 1][: len(runs)], runs


# ---------------------------------------------------------------------------------------------------- the log


def test_the_log_queue_never_blocks_and_counts_overflow(root: Path) -> None:
    from model_ops.serving.metrics import Metrics

    log = PredictionLog(resolve_root(str(root)), capacity=2)  # no writer running: the queue fills up
    columns = {"request_id": ["a"], PARTITION: ["2024-01-07"], "score": [0.5]}
    t0 = time.monotonic()
    assert log.offer(NAME, columns, 1) and log.offer(NAME, columns, 1)
    assert not log.offer(NAME, columns, 1)  # full: dropped and counted, at once
    assert time.monotonic() - t0 < 5 and log.overflow_rows == 1 and log.depth == 2

    class NoFleet:
        ready, reloads, registry_errors = True, 0, 0

    text = Metrics().render(log, NoFleet()).decode()
    assert "model_ops_prediction_log_overflow_rows_total 1.0" in text
    assert "model_ops_prediction_log_queue_depth 2.0" in text
    log.close()  # writes what was queued
    assert log.written_rows == 2 and len(logged(root)) == 2


@pytest.mark.slow
def test_sigterm_drains_the_prediction_log(two_versions: Registry, root: Path, spec: ModelSpec, tmp_path: Path) -> None:
    """A real ``model-ops serve`` process, stopped by SIGTERM right after the last answer, with rows still queued
    (the log gathers for 30 s): every served row is in the Delta log afterwards."""
    with free_socket() as probe:
        port = probe.getsockname()[1]
    env = {**os.environ, "MODEL_OPS_SPECS_DIR": str(tmp_path / "specs"), "MODEL_OPS_ACTOR": "tester"}
    out = (tmp_path / "serve.log").open("w")
    command = [sys.executable, "-m", "model_ops.cli", "--root", str(root), "serve", NAME, "--port", str(port)]
    proc = subprocess.Popen([*command, "--log-flush", "30"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            def up() -> bool:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    return client.get("/v2/health/ready").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(up, timeout=120, what="the server starting")
            ids = []
            records = json.loads(rows().head(3).to_json(orient="records", date_format="iso"))
            for _ in range(40):
                r = client.post(f"/v2/models/{NAME}/invocations", json={"dataframe_records": records})
                assert r.status_code == 200, r.text
                ids.append(r.json()["id"])
            status = client.get("/status").json()
            assert status["prediction_log"]["written_rows"] == 0  # all still queued
            # the server process keeps its startup objects (modules, models) out of the collector's full passes
            collector = status["garbage_collector"]
            assert collector["frozen_objects"] > 10_000 and collector["thresholds"] == list(GC_THRESHOLDS)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    log = logged(root)
    assert len(log) == 120
    assert set(log["request_id"]) == {f"{rid}/{j}" for rid in ids for j in range(3)}


def test_concurrent_requests_are_scored_together_and_a_bad_one_fails_alone() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from model_ops.serving.scoring import Batcher, RequestError

    sizes: list[int] = []

    def score(frame: pd.DataFrame) -> tuple[dict[str, np.ndarray], float]:
        sizes.append(len(frame))
        time.sleep(0.05)  # long enough for the other requests to queue up behind the first
        if (frame["x"] < 0).any():
            raise RequestError("negative x", 422)
        return {"prediction": frame["x"].to_numpy() * 2}, 1.0

    batcher = Batcher(score)
    frames = [pd.DataFrame({"x": [float(i), float(i) + 0.5]}) for i in range(12)]
    frames[7] = pd.DataFrame({"x": [-1.0, 3.0]})

    def one(frame: pd.DataFrame) -> Any:
        try:
            return batcher.score(frame)[0]["prediction"].tolist()
        except RequestError as exc:
            return exc.message

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, frames))
    for i, (frame, answer) in enumerate(zip(frames, answers)):
        assert answer == ("negative x" if i == 7 else (frame["x"] * 2).tolist())
    assert max(sizes) > 2  # some call scored more than one request's rows


def test_rows_of_mixed_key_types_are_all_written(root: Path) -> None:
    log = PredictionLog(resolve_root(str(root)))
    log.start()
    ts = np.array([np.datetime64("2024-01-08T10:00:00", "us")])
    for key in (17, "k-18"):
        keys = np.empty(1, dtype=object)
        keys[:] = [key]
        assert log.offer(NAME, {"request_id": [f"r{key}"], "ts": ts, PARTITION: ["2024-01-07"], "record_id": keys}, 1)
    log.close()
    written = logged(root).sort_values("request_id")
    assert log.written_rows == 2 and log.failed_rows == 0
    assert written["record_id"].tolist() == ["17", "k-18"]
    assert written["ts"].tolist() == [pd.Timestamp("2024-01-08T10:00:00", tz="UTC")] * 2


def test_a_version_that_cannot_be_warmed_never_takes_traffic(root: Path, spec: ModelSpec) -> None:
    reg = Registry.open(root, actor="tester")
    good = fit(spec, 1.0)
    mv = reg.register_model(NAME, good, signature=training.signature(spec, good.classes_.tolist()))
    reg.transition(mv.ref, "staging", reason="ok")
    reg.transition(mv.ref, "production", reason="ok")
    # v2 claims an input the fitted model never saw: its warm-up scoring fails
    broken = training.signature(spec, good.classes_.tolist())
    broken["inputs"][0] = {"name": "ghost", "type": "float"}
    mv2 = reg.register_model(NAME, fit(spec, 0.5), signature=broken)
    with serving(root, spec) as (client, server):
        reg.transition(mv2.ref, "staging", reason="looks fine")
        reg.transition(mv2.ref, "production", reason="looks fine", breaking=True)
        wait_for(lambda: NAME in server.fleet.problems, what="the failed build being reported")
        assert "cannot serve production v2" in server.fleet.problems[NAME]
        assert _served_version(client) == 1  # the slot in force keeps answering
        assert client.get("/v2/health/ready").status_code == 200
        assert NAME in client.get("/status").json()["problems"]


def test_serve_refuses_bad_options_before_starting(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model_ops.cli import main

    assert main(["--root", str(root), "serve", NAME, "--workers", "0"]) == 2
    assert "--workers must be 1 or more" in capsys.readouterr().err
    assert main(["--root", str(root), "serve", "--poll", "0"]) == 2
    assert "--poll, --log-flush and --stats-interval more than zero" in capsys.readouterr().err
    assert main(["--root", str(root), "serve", "--stats-interval", "-1"]) == 2
    assert "--stats-interval more than zero" in capsys.readouterr().err
    assert main(["--root", str(root), "serve", "--batch-delay", "-1"]) == 2
    assert "--batch-delay is milliseconds from 0 to 1000" in capsys.readouterr().err


@pytest.mark.slow
def test_requests_served_together_answer_as_if_alone(two_versions: Registry, root: Path, spec: ModelSpec) -> None:
    """Concurrent requests for one model are routed, checked and scored in one pass; each answer (rows, versions,
    arms, the log) is the one it would get alone, requests of other column sets are kept apart, and a refused
    request fails alone."""
    from concurrent.futures import ThreadPoolExecutor

    from model_ops.serving.app import _coalescer

    reg = two_versions
    dep.apply(reg, spec, "deploy", reason="canary at 50 %")  # routing splits rows between two versions
    frame = rows().head(96)
    batch = batch_log(reg, spec, frame)
    expected = batch[batch["served"]].set_index("record_id")
    cols = ["record_id", *FEATURES, "site"]
    bodies: list[dict[str, Any]] = []
    for i in range(24):
        part = frame[cols].iloc[i * 4 : (i + 1) * 4]
        if i % 3 == 1:  # another column set: without the key, so routed by the request's routing key
            part = part.drop(columns=["record_id"])
        bodies.append({"dataframe_records": part.to_dict(orient="records")})
    bodies[5] = {"dataframe_records": [{**bodies[5]["dataframe_records"][0], "site": None, "mean_radius": "x"}]}
    with serving(root, spec) as (client, server):
        slot = server.fleet.slots[NAME]

        def send(i: int) -> httpx.Response:
            return client.post("/invocations", json=bodies[i], headers={"X-Routing-Key": f"user-{i}"})

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(send, range(len(bodies))))
        assert _coalescer(slot).combined > 0  # some requests really were served together
        bad = client.post(
            "/invocations", content=b'{"dataframe_records": [', headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and "malformed JSON" in bad.json()["message"]
        c = _coalescer(slot)  # nothing is left counted as on its way, or a later call would wait for it
        assert c._arriving == 0 and c._parsing == 0 and c._in_server == 0
        for i, r in enumerate(answers):
            if i == 5:
                assert r.status_code in (400, 422) and "mean_radius" in r.json()["message"]
                continue
            assert r.status_code == 200, r.text
            doc = r.json()
            sent = pd.DataFrame(bodies[i]["dataframe_records"])
            if "record_id" in sent:
                want = expected.loc[sent["record_id"]]
                assert doc["model_versions"] == want["model_version"].tolist()
                assert np.allclose(doc["scores"], want["score"].to_numpy())
            else:  # one routing key for the whole request: one version answers every row
                assert len(set(doc["model_versions"])) == 1
                alone = client.post("/invocations", json=bodies[i], headers={"X-Routing-Key": f"user-{i}"}).json()
                assert alone["model_versions"] == doc["model_versions"]
                assert np.allclose(alone["scores"], doc["scores"])
            assert len(doc["predictions"]) == len(sent)
        again = sum(1 for i in range(len(bodies)) if i % 3 == 1)
        total = (len(bodies) - 1 + again) * 4  # every answered request's 4 rows; the keyless ones sent twice
        wait_for(lambda: server.predlog.written_rows >= total, what="the log flush")
    log = logged(root)
    live = log[log["served"]]
    assert len(live) == total
    assert live["request_id"].nunique() == len(live)  # each row its own request id (request/row)


def test_a_coalescer_waits_briefly_for_announced_callers_and_never_for_a_refused_one() -> None:
    from model_ops.serving.scoring import PEAK_SECONDS, Coalescer

    calls: list[list[int]] = []
    coalescer: Coalescer[int, int] = Coalescer(
        lambda x: calls.append([x]) or x * 10,  # type: ignore[func-returns-value]
        lambda xs: calls.append(list(xs)) or [x * 10 for x in xs],  # type: ignore[func-returns-value]
        linger=5.0,  # long: the test must not depend on the machine's speed
    )
    results: dict[int, int] = {}
    late_announced = threading.Event()

    def late() -> None:
        with coalescer.arriving() as arrival:
            late_announced.set()
            time.sleep(0.2)  # still reading its body when the first caller is ready
            results[2] = coalescer.run(2, 1, arrival)

    with coalescer.arriving() as arrival:
        thread = threading.Thread(target=late)
        thread.start()
        assert late_announced.wait(10)
        t0 = time.monotonic()
        results[1] = coalescer.run(1, 1, arrival)
        waited = time.monotonic() - t0
    thread.join(10)
    assert results == {1: 10, 2: 20} and calls == [[1, 2]]  # one call for both
    assert waited < 5.0  # it waited for the late caller, not for the whole linger
    with coalescer.arriving():  # announced, then refused (a bad body): never reaches run
        pass
    assert coalescer._arriving == 0 and coalescer._in_server == 0
    time.sleep(PEAK_SECONDS + 0.2)  # the burst of two is over
    t0 = time.monotonic()
    assert coalescer.run(3, 1) == 30 and time.monotonic() - t0 < 5.0  # nobody on the way: no wait
    assert calls[-1] == [3]


def test_a_coalescer_waits_longer_for_a_body_being_parsed_than_for_one_being_sent() -> None:
    """A request whose body is in is waited for up to PARSING_WAIT delays (it is certain to come: on a busy
    machine parsing took longer than the delay, and calls left half empty); one whose client is still sending is
    waited for no longer than the delay."""
    from model_ops.serving.scoring import PARSING_WAIT, Coalescer

    linger = 0.5
    late_by = linger * (1 + PARSING_WAIT) / 2  # after the delay, well before PARSING_WAIT delays

    def trial(body_in: bool, refused: bool = False) -> tuple[list[list[int]], float]:
        calls: list[list[int]] = []
        coalescer: Coalescer[int, int] = Coalescer(
            lambda x: calls.append([x]) or x,  # type: ignore[func-returns-value]
            lambda xs: calls.append(list(xs)) or list(xs),  # type: ignore[func-returns-value]
            linger=linger,
        )
        announced = threading.Event()

        def late() -> None:
            with coalescer.arriving() as arrival:
                if body_in:
                    coalescer.parsing(arrival)
                announced.set()
                if refused:  # a malformed body: refused while being parsed, never queued
                    time.sleep(linger / 5)
                    return
                time.sleep(late_by)
                coalescer.run(2, 1, arrival)

        with coalescer.arriving() as arrival:
            thread = threading.Thread(target=late)
            thread.start()
            assert announced.wait(10)
            t0 = time.monotonic()
            coalescer.run(1, 1, arrival)
            waited = time.monotonic() - t0
        thread.join(10)
        assert coalescer._parsing == 0 and coalescer._arriving == 0 and coalescer._in_server == 0
        return calls, waited

    assert trial(body_in=True)[0] == [[1, 2]]
    assert trial(body_in=False)[0] == [[1], [2]]
    calls, waited = trial(body_in=True, refused=True)  # refused: the call waits no longer than the plain delay
    assert calls == [[1]] and waited < linger * (1 + PARSING_WAIT) / 2


def test_every_caller_gets_its_own_result_when_queued_rows_exceed_a_call() -> None:
    """A call takes at most ``max_rows`` rows; a caller whose item did not fit leads the next call itself, never
    returning without its result (concurrent large requests once got None, and a 500)."""
    from concurrent.futures import ThreadPoolExecutor

    from model_ops.serving.scoring import Coalescer, _Pending

    coalescer: Coalescer[int, int] = Coalescer(lambda x: x * 10, lambda xs: [x * 10 for x in xs], max_rows=10)
    waiting: _Pending[int, int] = _Pending(7, 9)  # another caller's item at the head of the queue, not yet taken
    coalescer._queue.append(waiting)
    assert coalescer.run(1, 5) == 10  # its own item is in its call, though the head of the queue is not
    assert [p.item for p in coalescer._queue] == [7] and not waiting.done
    coalescer._queue.clear()

    def one(i: int) -> int:
        time.sleep(0.001 * (i % 5))
        return coalescer.run(i, 4 + i % 4)  # 4-7 rows each: no more than two fit in a call of 10

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(200))) == [i * 10 for i in range(200)]


def test_a_slot_out_of_service_is_freed_with_its_coalescer() -> None:
    import gc
    import weakref

    from model_ops.ops.deployment import Manifest
    from model_ops.serving.app import _COALESCERS, _coalescer
    from model_ops.serving.fleet import Slot

    refs = []
    for i in range(3):
        slot = Slot(NAME, Manifest(NAME, 1), {}, spec=None, log_version=i)  # type: ignore[arg-type]
        _coalescer(slot)
        refs.append(weakref.ref(slot))
        del slot
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    assert not any(s.model == NAME and s.log_version in (0, 1, 2) for s in list(_COALESCERS.keys()))


def test_overlapping_registry_reads_restore_the_process_switch_interval() -> None:
    """Several followers in one process lower the interpreter's switch interval while they read; the last to
    finish restores it (one that restored its own saved value could leave the process switching every 0.2 ms)."""
    from model_ops.serving.fleet import _prompt_switching

    before = sys.getswitchinterval()

    def polls() -> None:
        for _ in range(2000):
            with _prompt_switching():
                time.sleep(0)

    threads = [threading.Thread(target=polls) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sys.getswitchinterval() == before


def test_a_loaded_version_is_freed_as_soon_as_nothing_holds_it(two_versions: Registry, spec: ModelSpec) -> None:
    """No reference cycle through its batcher: once a server has frozen its startup objects (gc.freeze), a
    version in a cycle replaced by a reload would never be freed, model and all."""
    import weakref

    from model_ops.loading import load
    from model_ops.serving.scoring import Version

    version = Version.build(load(f"models:/{NAME}/1", registry=two_versions), spec)
    version.score(version.check(rows().head(3)))  # the batcher has been used
    gc.disable()
    try:
        gone = weakref.ref(version)
        del version
        assert gone() is None  # freed by its reference count alone, without a collection
    finally:
        gc.enable()
