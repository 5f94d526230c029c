"""`model-ops serve` next to `mlflow models serve` on the same scikit-learn model, over loopback, in the same run.

Targets (issue 12, live serving): >= 2x MLflow's throughput at <= 0.5x its p99; prediction logging costs <= 10 % of
throughput; rollback-to-effect p99 <= 1 s under ~200 requests/s with 0 errors and 0 wrongly versioned answers.

The model: scikit-learn's bundled breast-cancer data, four numeric features and one categorical, fitted by
model_ops' own training pipeline (ColumnTransformer + LogisticRegression), registered and put in production. MLflow
serves the very same fitted object (the version's skops file, through ../shared/bench-peers/serve_mlflow.py in the
peers' venv from ../shared/bench-peers/setup.sh); when that venv is missing the script says so and measures
model_ops alone.

Load: a lean asyncio HTTP/1.1 client (``_loadgen.py``, ``--concurrency`` keep-alive connections) sends MLflow-format requests
(``dataframe_records``, 1 row and 100 rows) to ``/invocations`` of each server for ``--seconds``; every answer must
be a 200. All servers run at once and the runs are interleaved (``--rounds`` of each), so a change in the machine's
load (it is shared) falls on all of them alike; medians over the rounds are reported. Figures: p50/p99 latency
and throughput per server and request size, ours with and without the prediction log. Then the rollback: under a
paced ~200 requests/s, production is moved between two versions ``--switches`` times, each move timed from the
registry write returning to the server's switch and to the first answer by the new version, and every answer to a
request sent after the switch is checked to come from the new version. Last, one server with ``--models`` (50)
models in production: its resident memory once ready (goal: under 1 GB).

    python benchmarks/bench_serving.py [--seconds 5] [--rounds 3] [--concurrency 8] [--switches 20] [--rate 200]
        [--models 50] [--no-mlflow]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _loadgen  # noqa: E402
from _common import PEERS_DIR, PEERS_PYTHON, eprint, machine  # noqa: E402

from model_ops_tests.helpers import free_port  # noqa: E402

NAME = "cancer"
IN_FLIGHT = 32  # requests outstanding at most during the rollback measurement
FEATURES = ["mean_radius", "mean_texture", "worst_area", "worst_smoothness"]


def data() -> Any:
    import pandas as pd
    from sklearn import datasets

    frame = datasets.load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame["record_id"] = [f"r{i:04d}" for i in range(len(frame))]
    frame["seen_at"] = pd.Timestamp("2024-01-07", tz="UTC")
    frame["site"] = np.where(np.arange(len(frame)) % 3 == 0, "north", "south")
    return frame


def build(work: Path) -> tuple[Path, Path, Path]:
    """A registry with two versions (v2 in production, v1 its rollback target), the declaration, and the
    production version's skops file for MLflow."""
    from model_ops.ml import training
    from model_ops.registry import Registry
    from model_ops.specs import load_spec

    declaration = {
        "name": NAME,
        "description": "breast-cancer diagnosis, served live (benchmark)",
        "owner": "team:bench",
        "task": "binary_classification",
        "source": {"kind": "delta", "uri": str(work / "table"), "time_column": "seen_at", "key_column": "record_id"},
        "partitions": {"cadence": "weekly", "start": "2024-01-07"},
        "features": [{"name": f, "type": "float"} for f in FEATURES] + [{"name": "site", "type": "category"}],
        "target": {"column": "target"},
        "estimator": {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}},
    }
    specs = work / "specs"
    specs.mkdir()
    (specs / f"{NAME}.yaml").write_text(yaml.safe_dump(declaration))
    spec = load_spec(specs / f"{NAME}.yaml")
    root = work / "root"
    reg = Registry.open(root, actor="bench")
    frame = data()
    for c in (0.01, 1.0):
        model = training.pipeline(spec).set_params(model__C=c)
        model.fit(training.model_input(frame, spec), training.target(frame, spec))
        mv = reg.register_model(NAME, model, signature=training.signature(spec, model.classes_.tolist()))
        reg.transition(mv.ref, "staging", reason="bench")
        reg.transition(mv.ref, "production", reason="bench")
    dest = reg.fetch(f"models:/{NAME}/2", work / "fetched")
    skops = next(p for p in Path(dest).rglob("*.skops"))
    return root, specs, skops


def many_models(work: Path, count: int) -> dict[str, Any]:
    """``count`` models (the same pipeline fitted on bootstrap samples, each declared and in production) served by
    one ``model-ops serve``: its resident memory once it is ready, and one answer from each."""
    from model_ops.ml import training
    from model_ops.registry import Registry
    from model_ops.specs import load_spec

    root, specs = work / "many_root", work / "many_specs"
    specs.mkdir()
    reg = Registry.open(root, actor="bench")
    frame = data()
    base = yaml.safe_load((work / "specs" / f"{NAME}.yaml").read_text())
    rng = np.random.default_rng(0)
    for i in range(count):
        name = f"{NAME}_{i:02d}"
        (specs / f"{name}.yaml").write_text(yaml.safe_dump({**base, "name": name}))
        spec = load_spec(specs / f"{name}.yaml")
        sample = frame.iloc[rng.integers(0, len(frame), len(frame))]
        model = training.pipeline(spec).fit(training.model_input(sample, spec), training.target(sample, spec))
        mv = reg.register_model(name, model, signature=training.signature(spec, model.classes_.tolist()))
        reg.transition(mv.ref, "staging", reason="bench")
        reg.transition(mv.ref, "production", reason="bench")
    port = free_port()
    env = {**os.environ, "MODEL_OPS_SPECS_DIR": str(specs), "MODEL_OPS_ACTOR": "bench"}
    env["MODEL_OPS_CACHE"] = str(work / "cache")
    cmd = [sys.executable, "-m", "model_ops.cli", "--root", str(root), "serve", "--port", str(port)]
    log = (work / "many.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_up(f"http://127.0.0.1:{port}/v2/health/ready", proc, "model_ops (many models)", timeout=600)
        body = payload(frame, 1)
        served = sum(
            httpx.post(f"http://127.0.0.1:{port}/v2/models/{NAME}_{i:02d}/invocations", content=body).status_code == 200
            for i in range(count)
        )
        with open(f"/proc/{proc.pid}/status") as f:
            rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    finally:
        stop(proc)
        log.close()
    return {"models": count, "answered": served, "rss_mb": round(rss_kb / 1024, 1)}


def payload(frame: Any, rows: int) -> bytes:
    cols = ["record_id", *FEATURES, "site"]
    return json.dumps({"dataframe_records": frame[cols].head(rows).to_dict(orient="records")}).encode()


def wait_up(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} was not ready within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


async def load(url: str, body: bytes, seconds: float, concurrency: int) -> dict[str, Any]:
    """``concurrency`` connections sending ``body`` back to back for ``seconds``; latency of each answer
    (the lean client of ``_loadgen.py``, so the client's own cost does not cap every server alike)."""
    return await _loadgen.closed_loop(url, body, seconds, concurrency)


async def rollback_to_effect(url: str, root: Path, body: bytes, switches: int, rate: float) -> dict[str, Any]:
    """Under ~``rate`` requests/s, move production between v2 and v1 ``switches`` times (``Registry.rollback``, as
    ``model-ops rollback`` does). Per move: the time from the registry write returning to the server's switch (the
    new slot's ``built_at`` in /status: from then on every request is answered by the new version) and to the first
    answer by the new version seen by a client; errors; and answers by the old version to requests sent after the
    switch (wrongly versioned). At most ``IN_FLIGHT`` requests are outstanding: when the server cannot keep up
    with ``rate``, the rate sent drops (and is reported) instead of a queue growing without bound, which would make
    every answer, the first one by the new version included, wait behind it."""
    from model_ops.registry import Registry

    reg = Registry.open(root, actor="bench")
    answers: list[tuple[float, int, int, float]] = []  # sent (wall clock), status, version, answered
    stop_at = asyncio.Event()
    base = url.rsplit("/", 1)[0]
    raw = _loadgen.request_bytes(url, body)
    idle: asyncio.Queue[_loadgen.Connection] = asyncio.Queue()
    for _ in range(IN_FLIGHT):  # at most IN_FLIGHT requests outstanding: one per keep-alive connection
        idle.put_nowait(_loadgen.Connection.to(url))
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=8), timeout=30) as client:

        async def one(conn: _loadgen.Connection) -> None:
            sent = time.time()
            try:
                answer = await conn.send(raw)
            except (OSError, asyncio.IncompleteReadError):
                answers.append((sent, 0, 0, time.time()))
                await conn.close()
                return
            finally:
                idle.put_nowait(conn)
            version = int(answer.version or "0") if answer.status == 200 else 0
            answers.append((sent, answer.status, version, time.time()))

        async def paced() -> None:
            tasks: set[asyncio.Task[None]] = set()
            interval = 1.0 / rate
            next_at = time.perf_counter()
            while not stop_at.is_set():
                conn = await idle.get()  # a server slower than the rate is not buried under a queue
                task = asyncio.create_task(one(conn))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await asyncio.gather(*tasks)
            while not idle.empty():
                await idle.get_nowait().close()

        pacer = asyncio.create_task(paced())
        await asyncio.sleep(1.0)
        switch_s, seen_s, switched_at, writes = [], [], [], []
        refreshes: list[dict[str, Any]] = []  # the server's own timing of each reload (registry read, rebuild)
        for i in range(switches):
            target = 1 if i % 2 == 0 else 2
            writes.append(time.time())
            await asyncio.to_thread(reg.rollback, NAME, to=target, reason="bench rollback")
            done = time.time()
            while True:
                status = (await client.get(f"{base}/status")).json()
                model = status["models"].get(NAME, {})
                if model.get("manifest", {}).get("production") == target:
                    break
                await asyncio.sleep(0.02)  # the switch time comes from the server (built_at), not this poll
            refreshes.append(status.get("last_refresh") or {})
            switch_s.append(model["built_at"] - done)
            switched_at.append((model["built_at"], target))
            while not any(a[2] == target and a[3] > done for a in answers[-4 * IN_FLIGHT :]):
                await asyncio.sleep(0.002)
            seen_s.append(min(a[3] for a in answers if a[2] == target and a[3] > done) - done)
            await asyncio.sleep(0.5)
        stop_at.set()
        await pacer
    wrong = 0
    for j, (at, target) in enumerate(switched_at):
        # up to a second before the next move is written: a request sent later may be answered after it
        until = writes[j + 1] - 1.0 if j + 1 < len(writes) else float("inf")
        wrong += sum(1 for sent, status, v, _ in answers if at < sent < until and status == 200 and v != target)
    span = max(a[0] for a in answers) - min(a[0] for a in answers) if answers else 1.0
    switch_ms, seen_ms = np.asarray(switch_s) * 1000, np.asarray(seen_s) * 1000
    return {
        "switches": switches,
        "offered_rps": rate,
        "sent_rps": round(len(answers) / span, 1),
        "requests": len(answers),
        "errors": sum(1 for a in answers if a[1] != 200),
        "wrongly_versioned": wrong,
        "switch_p50_ms": round(float(np.percentile(switch_ms, 50)), 1),
        "switch_p99_ms": round(float(np.percentile(switch_ms, 99)), 1),
        "switch_max_ms": round(float(switch_ms.max()), 1),
        "server_read_p50_ms": round(float(np.median([r.get("read_ms", np.nan) for r in refreshes])), 1),
        "server_rebuild_p50_ms": round(float(np.median([r.get("rebuild_ms", np.nan) for r in refreshes])), 1),
        "first_answer_p50_ms": round(float(np.percentile(seen_ms, 50)), 1),
        "first_answer_p99_ms": round(float(np.percentile(seen_ms, 99)), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="length of one load run")
    p.add_argument("--rounds", type=int, default=3, help="runs per server and size, interleaved (medians reported)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--switches", type=int, default=20)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--models", type=int, default=50, help="models served by one server for its memory (0: skip)")
    args = p.parse_args()
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp:
        work = Path(tmp)
        root, specs, skops = build(work)
        frame = data()
        bodies = {1: payload(frame, 1), 100: payload(frame, 100)}
        env = {**os.environ, "MODEL_OPS_SPECS_DIR": str(specs), "MODEL_OPS_ACTOR": "bench"}
        env["MODEL_OPS_CACHE"] = str(work / "cache")
        servers: dict[str, tuple[list[str], str]] = {}
        cli = [sys.executable, "-m", "model_ops.cli", "--root", str(root), "serve", NAME, "--poll", "0.1"]
        servers["model_ops"] = (cli, "/v2/health/ready")
        servers["model_ops_no_log"] = ([*cli, "--no-log"], "/v2/health/ready")
        mlflow_ok = not args.no_mlflow and os.path.exists(PEERS_PYTHON)
        if not args.no_mlflow and not mlflow_ok:
            eprint(
                f"[mlflow] peers' venv not found at {PEERS_PYTHON} (run ../shared/bench-peers/setup.sh with PyPI "
                "reachable): measuring model_ops alone"
            )
        if mlflow_ok:
            servers["mlflow"] = ([PEERS_PYTHON, os.path.join(PEERS_DIR, "serve_mlflow.py"), str(skops)], "/ping")
        procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        try:
            for label, (command, _) in servers.items():  # all up at once: the rounds interleave them
                port = free_port()
                cmd = [*command, str(port)] if label == "mlflow" else [*command, "--port", str(port)]
                log = (work / f"{label}.log").open("wb")
                procs[label] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), port)
                log.close()
            for label, (proc, port) in procs.items():
                wait_up(f"http://127.0.0.1:{port}{servers[label][1]}", proc, label)
            rounds: dict[str, list[dict[str, Any]]] = {}
            for r in range(args.rounds):
                for rows, body in bodies.items():
                    for label, (_, port) in procs.items():
                        url = f"http://127.0.0.1:{port}/invocations"
                        figures = asyncio.run(load(url, body, args.seconds, args.concurrency))
                        rounds.setdefault(f"{label}/{rows}row", []).append(figures)
                        eprint(f"[round {r + 1}] {label} {rows:>3} row(s): {figures}")
            throughput = {
                key: {
                    "rounds": len(runs),
                    "errors": sum(f["errors"] for f in runs),
                    **{m: float(np.median([f[m] for f in runs])) for m in ("rps", "p50_ms", "p99_ms")},
                }
                for key, runs in rounds.items()
            }
            results["throughput"] = throughput
            for rows in bodies if args.rounds else ():
                ours, bare = throughput[f"model_ops/{rows}row"], throughput[f"model_ops_no_log/{rows}row"]
                results[f"logging_cost_{rows}row"] = round(1 - ours["rps"] / bare["rps"], 3)
                if mlflow_ok:
                    theirs = throughput[f"mlflow/{rows}row"]
                    results[f"vs_mlflow_{rows}row"] = {
                        "throughput_x": round(ours["rps"] / theirs["rps"], 2),
                        "p99_x": round(ours["p99_ms"] / theirs["p99_ms"], 2),
                    }
            for label in [lb for lb in procs if lb != "model_ops"]:  # the rollback runs on ours alone
                stop(procs.pop(label)[0])
            port = procs["model_ops"][1]
            if args.switches:
                rollback = asyncio.run(
                    rollback_to_effect(
                        f"http://127.0.0.1:{port}/invocations", root, bodies[1], args.switches, args.rate
                    )
                )
                results["rollback"] = rollback
                eprint(f"[model_ops] rollback to effect: {rollback}")
        finally:
            for proc, _ in procs.values():
                stop(proc)
        if args.models:
            results["many_models"] = many_models(work, args.models)
            eprint(f"[model_ops] {args.models} models: {results['many_models']}")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
