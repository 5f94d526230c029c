"""model_ops registry at scale: one model with SIZE versions (default 100,000).

usage: bench_registry_scale.py [SIZE] [--incremental K] [--tail T] [--batch B] [--build-budget S] [--no-fill]
                               [--cold-runs R]
                               [--parallel P --parallel-each M] [--profile-bulk FILE] [--profile-open FILE]
                               [--jsonl FILE]

Building SIZE versions one register_model() call at a time costs tens of ms per call (more as versions pile up),
hours at 100k. The script does four things and reports each separately:

 1. incremental: K real register_model() calls, one at a time, into a fresh registry. Per-call cost by chunk, a
    linear fit cost(n) = a + b*n of the chunk means, and a cold open of that registry next to a cold open of a
    registry of the same size built with register_many (does the way it was built change the open cost?).
 2. parallel probe (P > 0): P processes each making M register_model() calls at once into one fresh registry
    (the event log commits by compare-and-swap), against one process's throughput for the same count.
 3. build of the SIZE registry through the library's public bulk API: version 1 by register_model(), then
    Registry.register_many() with B entries per call (one atomic commit each) up to SIZE-T versions. Every
    entry is its own file and its own artifact: a valid skops archive of one fitted model, made unique by a
    per-version zip comment (serialising 100k models would take longer than the budget), with its own params.
    If --build-budget runs out first (it did before model_ops 0739a9f, when each register_many entry scanned
    every semver of the model: 40k versions in 240 s), the registry is topped up to SIZE-T by copying the newest
    registration row the library wrote (new seq, version, semver, params, parent and a real artifact of its own),
    appended through the registry's event log 1000 rows per commit; the JSON says how many versions were made
    which way (--no-fill: measure at the size reached instead). Then T more real register_model() calls on top: the per-call cost at SIZE.
 4. on the SIZE registry: cold open in R fresh processes (import, Registry.open, first resolve; page cache warm),
    warm resolve x2000 (median, p99), versions() x5, load_model warm x10, an in-process reopen.
The time to build SIZE one call at a time is estimated from (1) alone and from (1) plus the tail of (3).
Prints one JSON line; tables on stderr.
"""

from __future__ import annotations

import os
import sys
import time

T0 = time.perf_counter()
import argparse
import copy
import json
import shutil
import struct
import subprocess
import tempfile
import warnings
from datetime import timedelta

import numpy as np
from sklearn.linear_model import LogisticRegression

from model_ops.artifacts import sklearn_io
from model_ops.artifacts.manifest import FLAVOR_SKOPS
from model_ops.registry import Registry

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    emit,
    ensure_bytecode,
    eprint,
    git_state,
    machine,
    peak_rss_mb,
    run_measured,
    stats,
    table,
    timed,
    versions_of,
)

warnings.filterwarnings("ignore")
NAME = "clf"
ALIAS = "production"
PY = sys.executable

COLD_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
from model_ops.registry import Registry
t1 = time.perf_counter()
reg = Registry.open(sys.argv[1], actor="bench")
t2 = time.perf_counter()
mv = reg.resolve(sys.argv[2])
t3 = time.perf_counter()
ts = []
for _ in range(200):
    a = time.perf_counter(); reg.resolve(sys.argv[2]); ts.append(time.perf_counter() - a)
ts.sort()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "first_resolve_s": t3 - t2, "open_plus_resolve_s": t3 - t1,
                  "version": mv.version, "warm_median_ms": ts[100] * 1000, "warm_p99_ms": ts[197] * 1000}))
"""

PARALLEL_SNIPPET = r"""
import copy, json, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np
from sklearn.linear_model import LogisticRegression
from model_ops.registry import Registry
root, worker, m, start_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
X = np.random.default_rng(0).standard_normal((200, 4))
base = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
reg = Registry.open(root, actor=f"w{worker}")
reg.resolve  # noqa
while time.time() < start_at:
    time.sleep(0.001)
ts = []
t0 = time.perf_counter()
for i in range(m):
    model = copy.deepcopy(base); model.C = 1 + worker * 1e-1 + i * 1e-6
    t = time.perf_counter(); reg.register_model("clf", model, params={"C": model.C}); ts.append(time.perf_counter() - t)
print(json.dumps({"worker": worker, "wall_s": time.perf_counter() - t0, "times": ts}))
"""


def cold_open(root: str, uri: str, runs: int, expect: int) -> dict:
    """Registry.open + first resolve in `runs` fresh processes (page cache warm); medians."""
    cold = []
    for _ in range(runs):
        os.sync()
        stdout, wall, rss = run_measured([PY, "-c", COLD_SNIPPET, root, uri])
        r = json.loads(stdout.strip().splitlines()[-1])
        assert r["version"] == expect, (r["version"], expect)
        r["process_wall_s"], r["peak_rss_mb"] = wall, rss  # GNU time's %M: this process's own peak
        cold.append(r)
    med = lambda key: round(float(np.median([c[key] for c in cold])), 3)  # noqa: E731
    return {
        "runs": runs,
        **{
            key: med(key)
            for key in (
                "import_s",
                "open_s",
                "first_resolve_s",
                "open_plus_resolve_s",
                "process_wall_s",
                "peak_rss_mb",
                "warm_median_ms",
                "warm_p99_ms",
            )
        },
        "open_plus_resolve_s_all": [round(c["open_plus_resolve_s"], 3) for c in cold],
    }


def cli_reads(root: str, uri: str, k: int, size: int, runs: int) -> dict:
    """`model-ops resolve`, `show` and `versions --json` as a user runs them: fresh processes, medians of wall time
    and peak RSS (the command's own, from GNU time)."""
    cli = os.path.join(os.path.dirname(PY), "model-ops")
    out = {}
    for label, args, check in (
        ("resolve", ["resolve", uri], lambda text: text.strip() == str(k)),
        ("show", ["show", f"models:/{NAME}/{k}"], lambda text: f"models:/{NAME}/{k}" in text),
        ("versions", ["versions", NAME, "--json"], lambda text: len(json.loads(text)) == size),
    ):
        walls, rss = [], []
        for _ in range(runs):
            stdout, wall, peak = run_measured([cli, "--root", root, *args])
            assert check(stdout), (label, stdout[:200])
            walls.append(wall)
            rss.append(peak)
        out[label] = {
            "wall_s": round(float(np.median(walls)), 3),
            "peak_rss_mb": float(np.median(rss)),
            "all_s": [round(w, 3) for w in walls],
        }
    return out


def snapshot_phase(root: str, uri: str, k: int, size: int, runs: int) -> dict:
    """The state snapshot: what `model-ops maintain` costs at this size, reads from a fresh process while it is
    current (the CLI, and Registry.open + resolve), and a cold open resumed from it once the log moved on."""
    before = cli_reads(root, uri, k, size, runs)
    reg = Registry.open(root, actor="bench")
    maintain_s, report = timed(reg.maintain)
    assert report["problems"] == [] and report["snapshot"], report
    current_cli = cli_reads(root, uri, k, size, runs)
    current_open = cold_open(root, uri, runs, k)
    reg.set_tag(f"models:/{NAME}/1", "touched", "after the snapshot")  # the log moves on: resume, not answer
    resumed_open = cold_open(root, uri, runs, k)
    return {
        "maintain_s": round(maintain_s, 2),
        "maintain_steps_s": report["seconds"],
        "snapshot_mb": round(report["snapshot"]["bytes"] / 2**20, 1),
        "cli_without_snapshot": before,
        "cli_with_current_snapshot": current_cli,
        "cold_open_current_snapshot": current_open,
        "cold_open_resumed_from_snapshot": resumed_open,
    }


def model_factory():
    X = np.random.default_rng(0).standard_normal((200, 4))
    base = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))

    def make(c: float) -> LogisticRegression:
        # A fitted estimator with its own hyper-parameter value: distinct skops bytes without refitting each time.
        m = copy.deepcopy(base)
        m.C = c
        return m

    return make, X


def chunk_table(times: list[float], start_version: int, chunks: int = 10) -> list[dict]:
    out = []
    n = len(times)
    step = max(1, n // chunks)
    for s in range(0, n, step):
        part = np.asarray(times[s : s + step]) * 1000
        if len(part) == 0:
            continue
        out.append(
            {
                "versions_from": start_version + s,
                "versions_to": start_version + s + len(part) - 1,
                "median_ms": round(float(np.median(part)), 2),
                "mean_ms": round(float(part.mean()), 2),
                "p99_ms": round(float(np.percentile(part, 99)), 2),
            }
        )
    return out


def phase_incremental(k: int, make, cold_runs: int, batch: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="scale_incr_")
    try:
        reg = Registry.open(os.path.join(tmp, "root"), actor="bench")
        times = []
        t0 = time.perf_counter()
        for i in range(k):
            model = make(1 + i * 1e-6)
            dt, mv = timed(reg.register_model, NAME, model, params={"C": model.C}, metrics={"train_acc": 1.0})
            times.append(dt)
            assert mv.version == i + 1
        wall = time.perf_counter() - t0
        chunks = chunk_table(times, 1)
        fit_on = chunks[1:] if len(chunks) > 2 else chunks  # the first chunk holds the table-creating first call
        xs = np.array([(c["versions_from"] + c["versions_to"]) / 2 for c in fit_on])
        ys = np.array([c["mean_ms"] for c in fit_on])
        b, a = np.polyfit(xs, ys, 1) if len(fit_on) > 1 else (0.0, float(ys[0]))
        # Does a bulk-built registry open like one built by single commits? Same size, both ways.
        uri = f"models:/{NAME}@{ALIAS}"
        reg.set_alias(NAME, ALIAS, k // 2, reason="benchmark")
        open_incr = cold_open(os.path.join(tmp, "root"), uri, cold_runs, k // 2)
        bulk_root = os.path.join(tmp, "bulk_root")
        bulk_build(bulk_root, k, 0, batch, make)
        Registry.open(bulk_root, actor="bench").set_alias(NAME, ALIAS, k // 2, reason="benchmark")
        open_bulk = cold_open(bulk_root, uri, cold_runs, k // 2)
        files = lambda r: sum(len(fs) for _, _, fs in os.walk(os.path.join(r, "registry")))  # noqa: E731
        return {
            "k": k,
            "wall_s": round(wall, 2),
            "per_call": stats(times),
            "chunks": chunks,
            "fit_ms": {"a": round(float(a), 3), "b_per_version": round(float(b), 6)},
            "_times": times,
            "cold_open_built_one_at_a_time": open_incr,
            "cold_open_bulk_built_same_size": open_bulk,
            "registry_files_one_at_a_time": files(os.path.join(tmp, "root")),
            "registry_files_bulk": files(bulk_root),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def phase_parallel(p: int, m: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="scale_par_")
    try:
        root = os.path.join(tmp, "root")
        make, _ = model_factory()
        Registry.open(root, actor="bench").register_model(NAME, make(0.5))  # create the tables first
        start_at = time.time() + 8.0  # every worker has imported and opened by then
        procs = [
            subprocess.Popen(
                [PY, "-c", PARALLEL_SNIPPET, root, str(w), str(m), str(start_at)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for w in range(p)
        ]
        results = []
        for pr in procs:
            out, err = pr.communicate()
            if pr.returncode != 0:
                sys.stderr.write(err[-3000:])
                raise SystemExit("parallel worker failed")
            results.append(json.loads(out.strip().splitlines()[-1]))
        wall = max(r["wall_s"] for r in results)
        all_times = [t for r in results for t in r["times"]]
        reg = Registry.open(root, actor="bench")
        n_versions = len(reg.versions(NAME))
        assert n_versions == 1 + p * m, (n_versions, p, m)
        return {
            "processes": p,
            "each": m,
            "versions_written": p * m,
            "wall_s": round(wall, 2),
            "versions_per_s": round(p * m / wall, 2),
            "per_call": stats(all_times),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def skops_variants(make):
    """Unique, valid skops archives of one fitted model: the canonical bytes with a per-version zip comment.
    About 10 us each, against ~1.2 ms for serialising a model, so 100k distinct artifacts fit in the time."""
    base = sklearn_io.dumps(make(1.0))
    assert base[-22:-18] == b"PK\x05\x06" and base[-2:] == b"\x00\x00", "expected a zip without a comment"

    def variant(i: int) -> bytes:
        comment = f"model_ops benchmark version {i}".encode()
        return base[:-2] + struct.pack("<H", len(comment)) + comment

    return variant


def bulk_build(
    root: str, size: int, tail: int, batch: int, make, budget_s: float = float("inf"), profile: str | None = None
) -> dict:
    """Versions 1..size-tail: version 1 by register_model, the rest by the public bulk API register_many
    (one atomic commit per batch of `batch` entries), each entry its own valid skops file."""
    reg = Registry.open(root, actor="bench")
    reg.register_model(NAME, make(1.0), params={"C": 1.0}, metrics={"train_acc": 1.0})
    variant = skops_variants(make)
    target = size - tail
    done, batches, t_files = 1, [], 0.0
    files_dir = tempfile.mkdtemp(prefix="bulk_files_", dir=os.path.dirname(root))
    deadline = time.perf_counter() + budget_s
    try:
        while done < target and time.perf_counter() < deadline:
            k = min(batch, target - done)
            a = time.perf_counter()
            entries = []
            for j in range(done + 1, done + 1 + k):
                path = os.path.join(files_dir, f"model-{j}.skops")
                with open(path, "wb") as f:
                    f.write(variant(j))
                entries.append(
                    {"path": path, "params": {"C": 1 + j * 1e-6}, "metrics": {"train_acc": 1.0}, "flavor": FLAVOR_SKOPS}
                )
            t_files += time.perf_counter() - a
            predicted = batches[-1]["s"] * 1.3 if batches else 0.0
            last = done + k >= target or time.perf_counter() + predicted > deadline
            prof = None
            if profile and last:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            dt, mvs = timed(reg.register_many, NAME, entries)
            if prof:
                prof.disable()
                prof.dump_stats(profile)
            assert [m.version for m in mvs] == list(range(done + 1, done + 1 + k))
            batches.append({"versions_before": done, "entries": k, "s": round(dt, 3)})
            for e in entries:
                os.remove(e["path"])
            done += k
    finally:
        shutil.rmtree(files_dir, ignore_errors=True)
    secs = [b["s"] for b in batches]
    return {
        "versions_built": done,
        "target": target,
        "batch": batch,
        "register_many_calls": len(batches),
        "register_many_s_total": round(sum(secs), 2),
        "write_files_s": round(t_files, 2),
        "complete": done >= target,
        "batch_s_first_last": [secs[0], secs[-1]] if secs else None,
        "batches_sampled": [
            b for i, b in enumerate(batches) if i % max(1, len(batches) // 10) == 0 or i == len(batches) - 1
        ],
    }


def fill_by_copy(root: str, target: int, batch: int, make) -> dict:
    """Top the registry up to `target` versions when the register_many budget ran out, by copying the library's
    own newest registration row: new seq/ts/version/semver, params.C, parent and bump.from in its record, and a
    real artifact of its own (a unique valid skops file stored with ArtifactStore.put). Rows are appended through
    the registry's event log (the same compare-and-swap append register_many ends in), `batch` rows per commit.
    What this skips is only the per-entry work of register_many (validation, semver.bump's scan of every semver)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    reg = Registry.open(root, actor="bench")
    state = reg._sync()
    table = reg._log.read()
    regs = table.filter(pc.field("kind") == "registered").sort_by([("seq", "descending")])
    template = regs.slice(0, 1).to_pylist()[0]
    have = int(template["version"])
    last_seq = int(pc.max(table.column("seq")).as_py())
    assert last_seq == state.last_seq and have == len(state.models[NAME].versions)
    # A chain of minor bumps from the newest registration's semver (register_model's version 1 records an output
    # signature that register_many's entries do not carry, so version 2 is a MAJOR bump: 2.0.0, 2.1.0, ...).
    major, minor, patch = (int(x) for x in template["to_value"].split("."))
    assert patch == 0 and minor <= have, template["to_value"]

    def semver_of(number: int) -> str:
        return f"{major}.{minor + number - have}.0"

    record = json.loads(template["payload"])
    ts = pc.max(table.column("ts")).as_py()
    variant = skops_variants(make)
    files_dir = tempfile.mkdtemp(prefix="fill_files_", dir=os.path.dirname(root))
    t_art = t_rows = t_commit = 0.0
    commits = 0
    try:
        number, seq = have, last_seq
        while number < target:
            rows = []
            for _ in range(min(batch, target - number)):
                number += 1
                seq += 1
                a = time.perf_counter()
                path = os.path.join(files_dir, "model.skops")
                with open(path, "wb") as f:
                    f.write(variant(number))
                digest = reg.artifacts.put(path, FLAVOR_SKOPS).digest
                os.remove(path)
                b = time.perf_counter()
                t_art += b - a
                record["params"] = {**record["params"], "C": 1 + number * 1e-6}
                record["parent"] = number - 1
                record["bump"] = {**record["bump"], "from": semver_of(number - 1), "level": "minor"}
                ts = ts + timedelta(microseconds=1)
                rows.append(
                    {
                        **template,
                        "seq": seq,
                        "ts": ts,
                        "version": number,
                        "to_value": semver_of(number),
                        "digest": digest,
                        "payload": json.dumps(record, sort_keys=True),
                    }
                )
                t_rows += time.perf_counter() - b
            a = time.perf_counter()
            ok = reg._log.try_append(pa.Table.from_pylist(rows, schema=table.schema))
            assert ok, "the fill lost a compare-and-swap race (is another writer using this root?)"
            t_commit += time.perf_counter() - a
            commits += 1
    finally:
        shutil.rmtree(files_dir, ignore_errors=True)
    return {
        "versions_copied": target - have,
        "commits": commits,
        "artifacts_s": round(t_art, 2),
        "rows_s": round(t_rows, 2),
        "commit_s": round(t_commit, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("size", type=int, nargs="?", default=100_000)
    ap.add_argument("--incremental", type=int, default=2000, help="K one-at-a-time registrations (phase 1)")
    ap.add_argument("--tail", type=int, default=50, help="T real registrations on top of the bulk build")
    ap.add_argument("--batch", type=int, default=1000, help="entries per register_many call in the bulk build")
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=2, help="P processes in the parallel probe (0: skip)")
    ap.add_argument("--parallel-each", type=int, default=150)
    ap.add_argument(
        "--build-budget",
        type=float,
        default=240.0,
        help="seconds for the register_many build (default 240); past it, top up by copying rows",
    )
    ap.add_argument(
        "--no-fill",
        dest="fill",
        action="store_false",
        help="when the build budget runs out, measure at the size reached instead of topping up to SIZE "
        "by copying registration rows",
    )
    ap.add_argument("--profile-bulk", help="cProfile the last register_many call of the bulk build into this file")
    ap.add_argument("--profile-open", help="cProfile an in-process open + first resolve into this file")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--jsonl")
    args = ap.parse_args()
    git_start = git_state()
    ensure_bytecode()
    assert args.size > args.tail + 1

    make, X = model_factory()
    out: dict = {
        "bench": "registry_scale",
        "size": args.size,
        "machine": machine(),
        "versions": versions_of("model_ops", "deltalake", "pyarrow"),
    }

    eprint(f"[1] incremental: {args.incremental} register_model calls one at a time")
    inc = phase_incremental(args.incremental, make, args.cold_runs, args.batch) if args.incremental else None
    if inc:
        inc_times = inc.pop("_times")
        out["incremental"] = inc
        eprint(
            table(
                [
                    [f"{c['versions_from']}-{c['versions_to']}", c["median_ms"], c["mean_ms"], c["p99_ms"]]
                    for c in inc["chunks"]
                ],
                ["versions", "median ms", "mean ms", "p99 ms"],
            )
        )
        eprint(
            f"fit: cost(n) = {inc['fit_ms']['a']} ms + {inc['fit_ms']['b_per_version'] * 1000:.3f} us * n; "
            f"wall {inc['wall_s']} s"
        )
        eprint(
            f"cold open at {args.incremental} versions (fresh process, open + first resolve, median): built one at "
            f"a time {inc['cold_open_built_one_at_a_time']['open_plus_resolve_s']} s "
            f"({inc['registry_files_one_at_a_time']} files), bulk-built "
            f"{inc['cold_open_bulk_built_same_size']['open_plus_resolve_s']} s ({inc['registry_files_bulk']} files)"
        )

    if args.parallel:
        eprint(f"[2] parallel probe: {args.parallel} processes x {args.parallel_each} register_model calls")
        par = phase_parallel(args.parallel, args.parallel_each)
        out["parallel"] = par
        single = None
        if inc:
            n1 = min(len(inc_times), args.parallel * args.parallel_each)
            single = round(n1 / sum(inc_times[:n1]), 2)
        par["single_process_versions_per_s_same_count"] = single
        eprint(
            f"  {par['versions_per_s']} versions/s with {args.parallel} processes (per call median "
            f"{par['per_call']['median_ms']} ms, p99 {par['per_call']['p99_ms']} ms); one process: {single}/s"
        )

    work = tempfile.mkdtemp(prefix="scale_bulk_", dir=args.workdir)
    try:
        root = os.path.join(work, "root")
        eprint(
            f"[3] bulk build to {args.size - args.tail} versions with register_many ({args.batch} per call, "
            f"budget {args.build_budget} s), then {args.tail} real register_model calls"
        )
        bt, bulk = timed(bulk_build, root, args.size, args.tail, args.batch, make, args.build_budget, args.profile_bulk)
        bulk["wall_s"] = round(bt, 2)
        bulk["versions_by_register_many"] = bulk["versions_built"]
        eprint(
            f"  register_many: {bulk['versions_built']} versions in {bulk['wall_s']} s, {bulk['register_many_calls']} "
            f"calls, {bulk['register_many_s_total']} s in them (first / last call {bulk['batch_s_first_last']} s), "
            f"writing the files {bulk['write_files_s']} s" + ("" if bulk["complete"] else "  [budget ran out]")
        )
        eprint(
            table(
                [[b["versions_before"], b["entries"], b["s"]] for b in bulk["batches_sampled"]],
                ["versions before", "entries", "register_many s"],
            )
        )
        if not bulk["complete"] and args.fill:
            ft, fill = timed(fill_by_copy, root, args.size - args.tail, args.batch, make)
            fill["wall_s"] = round(ft, 2)
            bulk["fill_by_copy"] = fill
            eprint(
                f"  topped up from {bulk['versions_built']} to {args.size - args.tail} versions by copying the "
                f"newest registration row: {fill['wall_s']} s (artifacts {fill['artifacts_s']} s, "
                f"{fill['commits']} commits {fill['commit_s']} s)"
            )
            bulk["versions_built"] = args.size - args.tail
        size = bulk["versions_built"] + args.tail  # smaller than SIZE only when the budget ran out and --no-fill
        out["size_reached"] = size
        reg = Registry.open(root, actor="bench")
        fold_s, _ = timed(reg.resolve, f"models:/{NAME}@latest")  # fold the log first: not part of a register
        tail = []
        start = bulk["versions_built"] + 1
        for i in range(args.tail):
            model = make(2 + i * 1e-6)
            dt, mv = timed(reg.register_model, NAME, model, params={"C": model.C}, metrics={"train_acc": 1.0})
            tail.append(dt)
            assert mv.version == start + i, (mv.version, start + i)
        bulk["tail"] = stats(tail, at_versions=f"{start}-{size}", fold_before_s=round(fold_s, 3))
        out["build"] = bulk
        eprint(
            f"  then register_model one at a time at ~{size} versions: median {bulk['tail']['median_ms']} ms, mean "
            f"{round(bulk['tail']['total_s'] / len(tail) * 1000, 1)} ms, p99 {bulk['tail']['p99_ms']} ms"
        )

        if inc:
            a, b = inc["fit_ms"]["a"], inc["fit_ms"]["b_per_version"]
            n = args.size  # the estimate is for the requested SIZE
            est_fit = (a * n + b * n * n / 2) / 1000
            # the line through the last incremental chunk mean and the tail mean (measured on the bulk-built registry)
            last = inc["chunks"][-1]
            x0, y0 = (last["versions_from"] + last["versions_to"]) / 2, last["mean_ms"]
            x1, y1 = size - len(tail) / 2, bulk["tail"]["total_s"] / len(tail) * 1000
            y_n = y0 + (y1 - y0) / (x1 - x0) * (n - x0)  # the line through both points, at n = SIZE
            est_tail = sum(inc_times) + (y0 + y_n) / 2 * (n - x0) / 1000
            out["estimated_build_one_at_a_time_s"] = {
                "linear_fit_of_incremental": round(est_fit, 0),
                "incremental_then_interpolated_to_tail": round(est_tail, 0),
            }
            eprint(
                f"  estimated time to build {n} versions one call at a time: {est_fit / 3600:.2f} h (linear fit "
                f"of phase 1), {est_tail / 3600:.2f} h (phase 1 then linear to the tail's cost)"
            )

        du_mb = round(sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs) / 2**20, 1)
        n_files = sum(len(fs) for _, _, fs in os.walk(os.path.join(root, "registry")))
        out["root_disk_mb"], out["registry_files"] = du_mb, n_files

        k = size // 2
        reg.set_alias(NAME, ALIAS, k, reason="benchmark")
        uri = f"models:/{NAME}@{ALIAS}"

        eprint(f"[4] measurements at {size} versions")
        out["cold_open"] = cold_open(root, uri, args.cold_runs, k)  # no snapshot yet: the whole log is folded
        out["snapshot"] = snapshot_phase(root, uri, k, size, args.cold_runs)

        if args.profile_open:
            import cProfile

            pr = cProfile.Profile()
            pr.enable()
            Registry.open(root, actor="bench").resolve(uri)
            pr.disable()
            pr.dump_stats(args.profile_open)

        reopen_s, reg = timed(lambda: (lambda r: (r.resolve(uri), r)[1])(Registry.open(root, actor="bench")))
        assert reg.resolve(uri).version == k
        warm = [timed(reg.resolve, uri)[0] for _ in range(2000)]
        listing = []
        for _ in range(5):
            dt, vs = timed(reg.versions, NAME)
            listing.append(dt)
        assert len(vs) == size
        reg.load_model(uri)
        loads = [timed(reg.load_model, uri)[0] for _ in range(10)]
        out["in_process"] = {
            "reopen_first_resolve_s": round(reopen_s, 3),
            "resolve_warm_x2000": stats(warm),
            "versions_list_x5": stats(listing, returned=len(vs)),
            "load_model_warm_x10": stats(loads),
        }
        out["peak_rss_mb"] = peak_rss_mb()
        out["wall_s"] = round(time.perf_counter() - T0, 1)

        co, ip = out["cold_open"], out["in_process"]
        eprint(f"\nmodel_ops registry with {size} versions of one model:")
        eprint(
            table(
                [
                    [
                        "cold open: fresh process, Registry.open + first resolve (median)",
                        f"{co['open_plus_resolve_s']} s",
                        f"all: {co['open_plus_resolve_s_all']}",
                    ],
                    ["  import model_ops.registry (in that process)", f"{co['import_s']} s", ""],
                    ["  peak RSS of that process", f"{co['peak_rss_mb']} MB", ""],
                    [
                        "warm resolve @alias x2000 median / p99",
                        f"{ip['resolve_warm_x2000']['median_ms']} ms",
                        f"p99 {ip['resolve_warm_x2000']['p99_ms']} ms",
                    ],
                    [
                        "versions() x5 median / max",
                        f"{ip['versions_list_x5']['median_ms']} ms",
                        f"max {ip['versions_list_x5']['max_ms']} ms",
                    ],
                    ["load_model warm x10 median", f"{ip['load_model_warm_x10']['median_ms']} ms", ""],
                    [
                        "register_model at this size (tail) median / p99",
                        f"{out['build']['tail']['median_ms']} ms",
                        f"p99 {out['build']['tail']['p99_ms']} ms",
                    ],
                    ["registry files on disk / root MB", str(n_files), f"{du_mb} MB"],
                    [
                        "model-ops maintain (writes the snapshot)",
                        f"{out['snapshot']['maintain_s']} s",
                        f"{out['snapshot']['snapshot_mb']} MB snapshot",
                    ],
                    *[
                        [
                            f"fresh `model-ops {cmd}`: no snapshot / current snapshot (wall, RSS)",
                            f"{out['snapshot']['cli_without_snapshot'][cmd]['wall_s']} s / {out['snapshot']['cli_with_current_snapshot'][cmd]['wall_s']} s",
                            f"{out['snapshot']['cli_without_snapshot'][cmd]['peak_rss_mb']} / {out['snapshot']['cli_with_current_snapshot'][cmd]['peak_rss_mb']} MB",
                        ]
                        for cmd in ("resolve", "show", "versions")
                    ],
                    [
                        "cold open + resolve: current snapshot / resumed from it (RSS)",
                        f"{out['snapshot']['cold_open_current_snapshot']['open_plus_resolve_s']} s / {out['snapshot']['cold_open_resumed_from_snapshot']['open_plus_resolve_s']} s",
                        f"{out['snapshot']['cold_open_current_snapshot']['peak_rss_mb']} / {out['snapshot']['cold_open_resumed_from_snapshot']['peak_rss_mb']} MB",
                    ],
                ],
                ["what", "figure", ""],
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    emit(out, git_start, args.jsonl)


if __name__ == "__main__":
    main()
