"""model_ops search, and reads at organisation scale: MODELS models x PER_MODEL versions (default 2,000 x 50).

usage: bench_search.py [--models M] [--per-model V] [--reps R] [--cold-runs C] [--no-mlflow] [--keep DIR]
                       [--jsonl FILE]

1. build: each model's versions by one Registry.register_many call (its own small file per version, tags, a metric,
   params, the model's run id), then every 10th model's version 40 promoted (staging, production: the policy's
   alias "champion" follows it); then `model-ops maintain` writes the snapshot. Data: benchmarks/_search_data.py.
2. Registry.search in one process, the first page (100) of each query, R times after a first call:
   a. answered from the current snapshot (what a fresh Registry.open does while nothing was written since);
   b. answered from the in-memory index, after a write made the snapshot stale: the first search's cost (fold
      resumed from the snapshot, index built) is reported apart, then R repetitions, then the cost of the search
      that follows one more write (the index updated from what changed).
3. fresh processes (C runs, median): `model-ops search` of two queries, and the table of the issue: `models`,
   `versions NAME`, `resolve models:/NAME@champion`, each wall and peak RSS (GNU time).
4. MLflow (peers' venv; peer_search_mlflow.py): the same registry, the queries MLflow's filter language has,
   through MlflowClient.search_model_versions; ratios of our p95 to theirs.
Prints one JSON line; tables on stderr.
"""

from __future__ import annotations

import os
import sys
import time

T0 = time.perf_counter()
import argparse
import json
import shutil
import statistics
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _search_data as data  # noqa: E402
from _common import PEERS_PYTHON, ensure_bytecode, eprint, git_state, machine, peak_rss_mb, ratio, run_measured, table  # noqa: E402

from model_ops.registry import Registry  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def build(root: str, models: int, per_model: int) -> dict:
    reg = Registry.open(root, actor="bench")
    files = tempfile.mkdtemp(prefix="search_files_", dir=os.path.dirname(root))
    t = time.perf_counter()
    for i in range(models):
        name = data.model_name(i)
        entries = []
        for v in range(1, per_model + 1):
            path = os.path.join(files, f"{name}-{v}.bin")
            with open(path, "wb") as f:
                f.write(f"{name} version {v}".encode())
            entries.append(
                {
                    "path": path,
                    "metrics": {"roc_auc": data.roc_auc(i, v)},
                    "params": {"C": 1 + v / 100, "solver": "lbfgs"},
                    "tags": data.tags(i, v),
                }
            )
        reg.register_many(name, entries, run_id=data.run_id(i))
        if (i + 1) % 250 == 0:
            eprint(f"[build] {i + 1} models, {time.perf_counter() - t:.0f} s")
    register_s = time.perf_counter() - t
    shutil.rmtree(files, ignore_errors=True)
    t = time.perf_counter()
    promoted = 0
    for i in range(0, models, data.PRODUCTION_EVERY):
        ref = f"models:/{data.model_name(i)}/{data.PRODUCTION_VERSION}"
        reg.transition(ref, "staging", reason="bench")
        reg.transition(ref, "production", reason="bench")
        promoted += 1
    promote_s = time.perf_counter() - t
    t = time.perf_counter()
    report = reg.maintain()
    assert not report["problems"], report["problems"]
    return {
        "versions": models * per_model,
        "register_many_s": round(register_s, 1),
        "promoted": promoted,
        "promote_s": round(promote_s, 1),
        "maintain_s": round(time.perf_counter() - t, 2),
        "snapshot_mb": round(report["snapshot"]["bytes"] / 1e6, 1)
        if (report.get("snapshot") or {}).get("bytes")
        else None,
    }


def time_queries(reg: Registry, models: int, reps: int) -> dict:
    out = {}
    for label, query, _ in data.queries(models):
        order = "metrics.roc_auc desc" if "ordered" in label else None
        t = time.perf_counter()
        page = reg.search(query, order_by=order)
        first = (time.perf_counter() - t) * 1000
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            reg.search(query, order_by=order)
            times.append((time.perf_counter() - t) * 1000)
        out[label] = {
            "query": query,
            "hits_first_page": len(page.versions),
            "first_ms": round(first, 2),
            "p50_ms": round(pct(times, 50), 2),
            "p95_ms": round(pct(times, 95), 2),
        }
    return out


def fresh(root: str, args: list[str], runs: int) -> dict:
    """Median wall time and peak RSS of ``model-ops --root ROOT ARGS`` in fresh processes; with no ``root``, of
    this interpreter running ``ARGS`` (the floor every command pays before model_ops runs a line)."""
    cli = os.path.join(os.path.dirname(sys.executable), "model-ops")
    command = [cli, "--root", root, *args] if root else [sys.executable, *args]
    walls, rss = [], []
    for _ in range(runs):
        _, wall, mb = run_measured(command)
        walls.append(wall * 1000)
        rss.append(mb)
    return {"wall_ms": round(statistics.median(walls), 1), "peak_rss_mb": round(statistics.median(rss), 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", type=int, default=2000)
    p.add_argument("--per-model", type=int, default=50)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--cold-runs", type=int, default=5)
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--keep", help="build the registry here and leave it (default: a temporary directory)")
    p.add_argument("--jsonl")
    args = p.parse_args()
    git_start = git_state()
    ensure_bytecode()
    base = args.keep or tempfile.mkdtemp(prefix="bench_search_")
    os.makedirs(base, exist_ok=True)
    root = os.path.join(base, "root")
    out: dict = {"bench": "search", "machine": machine(), "models": args.models, "per_model": args.per_model}
    try:
        if os.path.exists(os.path.join(root, "registry")):
            out["build"] = {"reused": root}
            Registry.open(root).maintain()
        else:
            out["build"] = build(root, args.models, args.per_model)
        eprint(f"[build] {out['build']}")

        snap = Registry.open(root)
        out["snapshot_path"] = time_queries(snap, args.models, args.reps)
        assert snap._state is None, "the snapshot did not answer"

        probe = data.model_name(min(40, (args.models - 1) // data.PRODUCTION_EVERY * data.PRODUCTION_EVERY))
        queries = data.queries(args.models)
        out["fresh_process"] = {
            "the interpreter alone (python -c pass)": fresh("", ["-c", "pass"], args.cold_runs),
            "search: " + queries[0][0]: fresh(root, ["search", queries[0][1], "--json"], args.cold_runs),
            "search: " + queries[5][0]: fresh(root, ["search", queries[5][1], "--json"], args.cold_runs),
            "models (lists all)": fresh(root, ["models", "--json"], args.cold_runs),
            f"versions {probe}": fresh(root, ["versions", probe, "--json"], args.cold_runs),
            f"resolve models:/{probe}@champion": fresh(root, ["resolve", f"models:/{probe}@champion"], args.cold_runs),
        }

        writer = Registry.open(root, actor="bench")
        scratch = os.path.join(base, "one-more.bin")
        with open(scratch, "w") as f:
            f.write(f"one more {time.time_ns()}")  # new bytes: a re-run on a kept registry must write too
        writer.register(probe, scratch, metrics={"roc_auc": 0.5}, tags={"team": "fraud"})
        fold = Registry.open(root)
        assert fold._direct() is None, "the write left the snapshot current"
        t = time.perf_counter()
        fold.search(queries[0][1])
        first_s = time.perf_counter() - t
        out["index_path"] = time_queries(fold, args.models, args.reps)
        with open(scratch, "w") as f:
            f.write(f"and another {time.time_ns()}")
        writer.register(probe, scratch, metrics={"roc_auc": 0.51}, tags={"team": "fraud"})
        t = time.perf_counter()
        fold.search(queries[0][1])
        out["index_first_search_s"] = round(first_s, 2)
        out["index_after_a_write_ms"] = round((time.perf_counter() - t) * 1000, 1)

        if not args.no_mlflow and os.path.exists(PEERS_PYTHON):
            cmd = [PEERS_PYTHON, os.path.join(HERE, "peer_search_mlflow.py"), str(args.models), str(args.per_model)]
            stdout, wall, rss = run_measured([*cmd, str(args.reps)])
            out["mlflow"] = json.loads(stdout.strip().splitlines()[-1])
            out["mlflow"]["_process_peak_rss_mb"] = rss
        elif not args.no_mlflow:
            eprint(f"[mlflow] peers' venv not found at {PEERS_PYTHON}: run ../shared/bench-peers/setup.sh")

        rows = []
        for label, _query, _ in queries:
            theirs = (out.get("mlflow") or {}).get("queries", {}).get(label)
            s, i = out["snapshot_path"][label], out["index_path"][label]
            rows.append(
                [
                    label,
                    s["hits_first_page"],
                    s["p95_ms"],
                    i["p95_ms"],
                    theirs and theirs["p95_ms"],
                    theirs and ratio(s["p95_ms"], theirs["p95_ms"]),
                    theirs and ratio(i["p95_ms"], theirs["p95_ms"]),
                ]
            )
            if theirs:
                s["vs_mlflow_p95"] = ratio(s["p95_ms"], theirs["p95_ms"])
                i["vs_mlflow_p95"] = ratio(i["p95_ms"], theirs["p95_ms"])
        eprint(
            table(
                rows,
                [
                    "query (first page of 100)",
                    "hits",
                    "snapshot p95 ms",
                    "index p95 ms",
                    "MLflow p95 ms",
                    "ratio",
                    "ratio",
                ],
            )
        )
        floor = out["fresh_process"]["the interpreter alone (python -c pass)"]["wall_ms"]
        eprint(
            table(
                [
                    [k, v["wall_ms"], round(v["wall_ms"] - floor, 1), v["peak_rss_mb"]]
                    for k, v in out["fresh_process"].items()
                ],
                ["fresh process", "wall ms", "beyond the interpreter ms", "RSS MB"],
            )
        )
        eprint(
            f"first search without a current snapshot: {out['index_first_search_s']} s; after a write: {out['index_after_a_write_ms']} ms"
        )
        if out.get("mlflow"):
            eprint(
                table(
                    [[k, v["p50_ms"], v["p95_ms"]] for k, v in out["mlflow"]["reads"].items()],
                    ["MLflow read", "p50 ms", "p95 ms"],
                )
            )
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    out["peak_rss_mb"] = peak_rss_mb()
    out["wall_s"] = round(time.perf_counter() - T0, 1)
    out["model_ops_git_at_start"] = git_start
    line = json.dumps(out)
    print(line, flush=True)
    if args.jsonl:
        with open(args.jsonl, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
