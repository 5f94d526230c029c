"""Own models at scale: a 5M-row Delta source to a training snapshot and a HistGradientBoosting fit, and a 1M-row
daily partition through features and contracts (no peer does this work; the targets are absolute).

Targets (issue: own models, "Speed"):
  (1) snapshot: a 5,000,000-row x 21-column Delta source (key, UTC time over 60 days, 16 float features, 2
      category features, a binary target): build the training snapshot and fit HistGradientBoosting on it with
      peak RSS <= 3x the snapshot's Arrow size (``pa.Table.nbytes`` of the table ``snapshot.split`` returns);
  (2) daily: one 1,000,000-row day of a Delta source (four smaller days beside it) through ``SourceTable.read``
      of that day's window, ``features.select`` and ``features.checks`` in <= 5 s (median of warm repetitions).

(1) runs in a fresh process started by GNU time (so its peak RSS is the work's, see "Notes on method"), along the
library path the assets take: the features asset (``SourceTable.read``, ``features.select``, ``features.checks``
and ``Dataset.replace_partition``, per month with ``--partitions monthly``), the training_set asset
(``Dataset.read_arrow``, ``snapshot.split``, ``frame_fingerprint``, ``Dataset.overwrite``) and the candidate_model
asset (``candidates.fit_snapshot``, ``monitoring.reference_profile``). Each phase reports wall and CPU seconds, RSS
at its start and its own peak (VmHWM reset through /proc/self/clear_refs before it). When the ratio is above 3x, a
second fresh process repeats the path on a --diagnose-rows table (memory scales with the rows; --diagnose: at full
size) with the frames' footprints and ``fit_snapshot`` taken apart step by step (the train split read, ``prepare``,
the default preprocessing's ``fit_transform``, the estimator's ``fit``).
(2) runs in this process: 1 warm-up + --repeat timed repetitions; cProfile of one more when the median is above
5 s (or with --profile).

    python benchmarks/bench_own_models.py [--rows 5000000] [--daily-rows 1000000] [--repeat 5]
        [--partitions none|monthly] [--only snapshot|daily] [--diagnose] [--profile] [--workdir DIR] [--jsonl FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, eprint, git_state, machine, run_measured, table, verdict, versions_of  # noqa: E402

GENERATOR_VERSION = "1"  # bump when the generated data change (a --workdir keeps tables between runs)
KEY, TIME, TARGET = "event_id", "event_time", "converted"
NUMERIC = [f"num_{i:02d}" for i in range(16)]
CATEGORIES = {
    "channel": (["web", "app", "email", "partner", "store"], [0.45, 0.3, 0.1, 0.1, 0.05]),
    "region": ([f"region_{i:02d}" for i in range(40)], None),
}
NULLABLE = ("num_03", "num_11")  # 1 % nulls each, declared max_null_fraction 0.02
START = "2024-01-01"  # 60 days from here are exactly January and February 2024
DAILY_DAYS = ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04", "2024-03-05"]
DAILY_DAY = "2024-03-04"  # the 1M-row day; the others hold --daily-rows // 20 each
SNAPSHOT_RSS_LIMIT, DAILY_LIMIT_S = 3.0, 5.0


# ------------------------------------------------------------------------------------------------- data


def frame(rng: np.random.Generator, first_id: int, ids: np.ndarray, micros: np.ndarray):
    """One delivery of rows: the key, the time (UTC, microseconds), 16 floats, 2 categories and the target."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(ids)
    cols: dict[str, object] = {}
    key = pc.utf8_lpad(pa.array(ids + first_id).cast(pa.string()), width=10, padding="0")
    cols[KEY] = pc.binary_join_element_wise("evt-", key, "")
    cols[TIME] = pa.array(micros, type=pa.timestamp("us", tz="UTC"))
    z = rng.standard_normal((n, 6))
    num = {}
    for i in range(6):  # measurements on different scales
        num[NUMERIC[i]] = z[:, i] * (1 + 3 * i) + 10 * i
    for i in range(6, 10):  # amounts
        num[NUMERIC[i]] = np.round(rng.lognormal(3 + 0.3 * (i - 6), 1.0, n), 2)
    for i in range(10, 13):  # counts
        num[NUMERIC[i]] = rng.poisson(2 + 3 * (i - 10), n).astype("float64")
    for i in range(13, 16):  # rates
        num[NUMERIC[i]] = rng.beta(2, 5 + i - 13, n)
    codes = {}
    for name, (levels, p) in CATEGORIES.items():
        if p is None:  # Zipf-like shares
            w = 1 / np.arange(1, len(levels) + 1)
            p = list(w / w.sum())
        codes[name] = rng.choice(len(levels), size=n, p=p).astype("int32")
    effect_channel = np.array([0.0, 0.4, -0.6, 0.8, -0.2])
    effect_region = np.linspace(-0.5, 0.5, len(CATEGORIES["region"][0]))
    logit = (
        0.9 * z[:, 0]
        - 0.6 * z[:, 1]
        + 0.4 * z[:, 2] * z[:, 3]
        + 0.5 * (np.log(num["num_06"]) - 3)
        - 0.15 * num["num_11"]
        + 1.5 * (num["num_13"] - 0.3)
        + effect_channel[codes["channel"]]
        + effect_region[codes["region"]]
        - 1.2
    )
    converted = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    for name in NULLABLE:
        num[name][rng.random(n) < 0.01] = np.nan
    for name in NUMERIC:
        cols[name] = pa.array(num[name], from_pandas=True)  # NaN -> null, as a source table holds it
    for name, (levels, _) in CATEGORIES.items():
        cols[name] = pa.DictionaryArray.from_arrays(pa.array(codes[name]), pa.array(levels)).cast(pa.string())
    cols[TARGET] = pa.array(converted)
    return pa.table(cols)


def write_source(path: Path, days: list[tuple[str, int]], seed: int, days_per_write: int = 10) -> dict:
    """A Delta table of ``days`` (first day, rows), one append per ``days_per_write`` days, in time order; keys
    are unique over the table and not in time order."""
    import pandas as pd
    from deltalake import write_deltalake

    rng = np.random.default_rng(seed)
    total = sum(n for _, n in days)
    ids = rng.permutation(total)
    done, written = 0, 0
    for i in range(0, len(days), days_per_write):
        group = days[i : i + days_per_write]
        micros = np.concatenate(
            [np.sort(rng.integers(0, 86_400_000_000, n)) + pd.Timestamp(d, tz="UTC").value // 1000 for d, n in group]
        )
        n = len(micros)
        t = frame(rng, 0, ids[done : done + n], micros)
        write_deltalake(str(path), t, mode="append")
        written += t.nbytes
        done += n
    return {"rows": total, "arrow_bytes_written": written, "columns": 1 + 1 + len(NUMERIC) + len(CATEGORIES) + 1}


def ensure_source(path: Path, days: list[tuple[str, int]], seed: int) -> dict:
    """The table at ``path``, generated in a separate process unless an identical one is already there."""
    want = {"generator": GENERATOR_VERSION, "days": days, "seed": seed}
    marker = path.with_suffix(".json")
    if marker.exists() and (path / "_delta_log").is_dir():
        have = json.loads(marker.read_text())
        if {k: have.get(k) for k in want} == json.loads(json.dumps(want)):
            return have | {"reused": True}
    shutil.rmtree(path, ignore_errors=True)
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "_generate", json.dumps({"path": str(path), **want})],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout
    info = want | json.loads(out.splitlines()[-1]) | {"generate_s": round(time.perf_counter() - t, 1)}
    marker.write_text(json.dumps(info))
    return info | {"reused": False}


def model_spec(uri: str, partitions: str, start: str):
    """The declaration a team would write for this table (types come from the source's schema)."""
    from model_ops.specs.schema import ModelSpec

    features: list[dict] = []
    for name in NUMERIC:
        f: dict = {"name": name}
        if name in NULLABLE:
            f["max_null_fraction"] = 0.02
        if NUMERIC.index(name) >= 6:
            f["min"] = 0.0
        if NUMERIC.index(name) >= 13:
            f["max"] = 1.0
        features.append(f)
    features += [{"name": n, "allowed": levels} for n, (levels, _) in CATEGORIES.items()]
    return ModelSpec.model_validate(
        {
            "name": "bench_conversion",
            "description": "benchmark: conversion of an event",
            "owner": "team:bench",
            "task": "binary_classification",
            "source": {"kind": "delta", "uri": uri, "time_column": TIME, "key_column": KEY},
            "partitions": "none" if partitions == "none" else {"cadence": partitions, "start": start},
            "features": features,
            "target": {"column": TARGET},
            "estimator": {"class": "sklearn.ensemble.HistGradientBoostingClassifier", "params": {"max_iter": 50}},
        }
    )


# ------------------------------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_mb() -> float:
    return round(_status_kb("VmRSS") / 1024, 1)


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Meter:
    """Wall and CPU seconds, RSS at the start and the phase's own peak RSS for each phase."""

    def __init__(self) -> None:
        self.phases: dict[str, dict] = {}
        self.own_peaks = _reset_peak()

    @contextlib.contextmanager
    def phase(self, name: str):
        start = rss_mb()
        if self.own_peaks:
            _reset_peak()
        t, c = time.perf_counter(), time.process_time()
        yield
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        peak = round(_status_kb("VmHWM") / 1024, 1)
        self.phases[name] = {
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "rss_start_mb": start,
            "rss_end_mb": rss_mb(),
            "peak_mb": peak,
            "peak_above_start_mb": round(peak - start, 1),
        }


def footprint(df) -> dict:
    """What a pandas frame holds, in MB: numeric buffers, object-column pointers, and the distinct Python objects
    they point at (shared strings counted once, unlike ``memory_usage(deep=True)``)."""
    numeric = pointers = payload = 0
    per_column = {}
    for name in df.columns:
        col = df[name]
        values = col.array
        if col.dtype == object:
            arr = col.to_numpy()
            ids = np.fromiter(map(id, arr), dtype=np.int64, count=len(arr))
            _, first = np.unique(ids, return_index=True)
            size = sum(sys.getsizeof(arr[i]) for i in first)
            pointers += arr.nbytes
            payload += size
            per_column[name] = {
                "dtype": "object",
                "mb": round((arr.nbytes + size) / 2**20, 1),
                "distinct_objects": len(first),
            }
        else:
            nbytes = values.nbytes if hasattr(values, "nbytes") else col.memory_usage(index=False)
            numeric += nbytes
            per_column[name] = {"dtype": str(col.dtype), "mb": round(nbytes / 2**20, 1)}
    return {
        "rows": len(df),
        "numeric_mb": round(numeric / 2**20, 1),
        "object_pointers_mb": round(pointers / 2**20, 1),
        "object_payload_mb": round(payload / 2**20, 1),
        "total_mb": round((numeric + pointers + payload + df.index.memory_usage()) / 2**20, 1),
        "columns": per_column,
    }


# ------------------------------------------------------------------------------------------------- (1) snapshot


def snapshot_worker(cfg: dict) -> dict:
    """In a fresh process: the source rows to stored features to a stored snapshot to a fitted model and its
    drift reference, phase by phase, through the library calls the assets make."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import pandas as pd

    from model_ops.data import features as feat
    from model_ops.data import snapshot
    from model_ops.data.arrow import release
    from model_ops.data.delta import Dataset, frame_fingerprint
    from model_ops.data.partitions import STATIC, Partitioning
    from model_ops.data.sources import SourceTable, schema_kinds
    from model_ops.location import resolve_root
    from model_ops.ml import candidates, monitoring, training
    from model_ops.vocab import SourceKind

    diagnose = cfg["diagnose"]
    gc.collect()
    meter = Meter()
    out: dict = {
        "imports_rss_mb": rss_mb(),
        "ru_maxrss_at_start_mb": round(before / 1024, 1),
        "own_phase_peaks": meter.own_peaks,
    }
    sizes: dict[str, dict] = {}
    spec = model_spec(cfg["source"], cfg["partitions"], START)
    table_ = SourceTable(resolve_root(cfg["source"]), SourceKind.DELTA)
    columns = list(dict.fromkeys([spec.key_column, spec.time_column, *spec.feature_names, spec.target.column]))
    parts = Partitioning.of(spec)
    features_ds = Dataset(resolve_root(cfg["snapshot"] + "/features"), "features")
    snap = Dataset(resolve_root(cfg["snapshot"] + "/training_set"), "training_set")

    with meter.phase("schema"):
        typed = spec.with_schema(schema_kinds(table_.schema()))
    keys = [STATIC] if parts.static else parts.keys(until=pd.Timestamp(START).date() + pd.Timedelta(days=60))
    with meter.phase("features"):  # the features asset, one partition at a time
        for k in keys:
            rows = table_.read(spec.time_column, None if parts.static else parts.window(k), columns)
            df = feat.select(rows, typed, k)
            del rows
            if diagnose and "features" not in sizes:
                sizes["features"] = footprint(df)
            failed = [o.message for o in feat.checks(df, typed, k) if not o.passed]
            assert not failed, failed
            features_ds.replace_partition(k, feat.to_arrow_stream(df))
            del df
            release()
    window, holdout = snapshot.choose_window(features_ds.partition_keys(), typed)
    with meter.phase("split"):  # the training_set asset
        table = snapshot.split(features_ds.read_arrow(sorted({*window, holdout})), typed, holdout)
    with meter.phase("fingerprint"):
        fingerprint = frame_fingerprint(table)
    out["snapshot_arrow_bytes"] = table.nbytes
    out["snapshot_rows"] = table.num_rows
    out["snapshot_columns"] = table.num_columns
    out["snapshot_arrow_mb_by_column"] = {n: round(table.column(n).nbytes / 2**20, 1) for n in table.column_names}
    out["snapshot_schema"] = {f.name: str(f.type) for f in table.schema}
    with meter.phase("write"):
        version = snap.overwrite(table, metadata={"model_ops.fingerprint": fingerprint})
        del table
        release()
    if not diagnose:
        with meter.phase("fit"):  # the candidate_model asset: fit, then the drift reference
            fitted = candidates.fit_snapshot(snap, version, typed)
        with meter.phase("reference_profile"):
            reference = monitoring.reference_profile(fitted.prepared, fitted.trained.model, typed)
    else:  # candidates.fit_snapshot taken apart: the same calls in the same order
        with meter.phase("fit.read_train"):
            train = candidates.training_table(snap, version, typed)
        with meter.phase("fit.prepare"):
            prepared = training.prepare(train, typed)
            del train
            release()
        sizes["model_input"] = footprint(prepared.inputs)
        model = training.pipeline(typed)
        pre, est = model.steps[0][1], model.steps[-1][1]
        with meter.phase("fit.preprocessing"):
            Xt = pre.fit_transform(prepared.inputs, prepared.y)
        out["preprocessed"] = {"shape": list(Xt.shape), "dtype": str(Xt.dtype), "mb": round(Xt.nbytes / 2**20, 1)}
        with meter.phase("fit.estimator"):
            est.fit(Xt, prepared.y)
        del Xt
        out["estimator"] = {
            "class": type(est).__name__,
            "n_iter": int(getattr(est, "n_iter_", 0)),
            "early_stopping": bool(getattr(est, "do_early_stopping_", False)),
        }
        with meter.phase("reference_profile"):
            reference = monitoring.reference_profile(prepared, model, typed)
        fitted = candidates.Fitted(training.Trained(model, {}, {}, len(prepared), {}), prepared, window)
        out["frames"] = sizes
    out["fit_rows"] = fitted.trained.rows
    out["reference_rows"] = reference.rows
    out["phases"] = meter.phases
    out["ru_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def run_snapshot(args, work: Path) -> dict:
    source = work / f"source_{args.rows}"
    info = ensure_source(source, _days(args.rows), args.seed)
    eprint(
        f"[snapshot] source {source}: {info['rows']:,} rows, {info['columns']} columns"
        + (" (reused)" if info["reused"] else f" (generated in {info['generate_s']} s)")
    )
    result: dict = {
        "rows": info["rows"],
        "source_columns": info["columns"],
        "partitions": args.partitions,
        "source_generated_s": info.get("generate_s"),
        "runs": [],
    }
    for i in range(args.snapshot_repeat):
        run = _snapshot_process(source, work / f"snapshot_{i}", args.partitions, diagnose=False)
        result["runs"].append(run)
        eprint(
            f"[snapshot] run {i + 1}: peak {run['process_peak_rss_mb']} MB, ratio {run['ratio']}, "
            f"{run['process_wall_s']} s"
        )
    runs = result["runs"]
    result["snapshot_arrow_bytes"] = runs[0]["snapshot_arrow_bytes"]
    result["snapshot_arrow_mb"] = round(runs[0]["snapshot_arrow_bytes"] / 2**20, 1)
    result["peak_rss_mb"] = statistics.median(r["process_peak_rss_mb"] for r in runs)
    result["ratio"] = round(result["peak_rss_mb"] / result["snapshot_arrow_mb"], 2)
    result["ratio_above_imports"] = round(
        statistics.median((r["process_peak_rss_mb"] - r["imports_rss_mb"]) / result["snapshot_arrow_mb"] for r in runs),
        2,
    )
    result["phase_wall_s_median"] = {
        p: round(statistics.median(r["phases"][p]["wall_s"] for r in runs), 2) for p in runs[0]["phases"]
    }
    result["verdict"] = verdict(result["ratio"], SNAPSHOT_RSS_LIMIT)
    if args.diagnose or result["ratio"] > SNAPSHOT_RSS_LIMIT:
        # Memory scales with the rows, so an automatic diagnosis runs on a smaller table (--diagnose: full size).
        rows = args.rows if args.diagnose else min(args.rows, args.diagnose_rows)
        if rows != args.rows:
            source = work / f"source_{rows}"
            ensure_source(source, _days(rows), args.seed)
        eprint(
            f"[snapshot] diagnosing at {rows:,} rows: the same path with frame footprints and training.fit step by step"
        )
        result["diagnosis"] = _snapshot_process(source, work / "snapshot_diag", args.partitions, diagnose=True)
        result["diagnosis"]["rows"] = rows
    return result


def _days(rows: int) -> list[tuple[str, int]]:
    """60 days from START, the rows spread evenly."""
    import pandas as pd

    start = pd.Timestamp(START)
    per_day = np.full(60, rows // 60)
    per_day[: rows - per_day.sum()] += 1
    return [(str((start + pd.Timedelta(days=i)).date()), int(n)) for i, n in enumerate(per_day)]


def _snapshot_process(source: Path, snap: Path, partitions: str, diagnose: bool) -> dict:
    shutil.rmtree(snap, ignore_errors=True)
    cfg = {"source": str(source), "snapshot": str(snap), "partitions": partitions, "diagnose": diagnose}
    stdout, wall, peak = run_measured([sys.executable, __file__, "_snapshot", json.dumps(cfg)])
    run = json.loads(stdout.splitlines()[-1])
    run["process_wall_s"] = round(wall, 1)
    # Resetting VmHWM for each phase also resets what the kernel reports to GNU time at exit (the peak since the
    # last reset), so the process's peak is the highest of the phases' own peaks and what GNU time saw.
    run["gnu_time_peak_rss_mb"] = peak
    run["process_peak_rss_mb"] = max(
        [peak, run.get("ru_maxrss_mb", 0)] + [p["peak_mb"] for p in run["phases"].values()]
    )
    run["ratio"] = round(peak / (run["snapshot_arrow_bytes"] / 2**20), 2)
    shutil.rmtree(snap, ignore_errors=True)
    return run


# ------------------------------------------------------------------------------------------------- (2) daily


def run_daily(args, work: Path) -> dict:
    from model_ops.data import features as feat
    from model_ops.data.partitions import Partitioning
    from model_ops.data.sources import SourceTable, schema_kinds
    from model_ops.location import resolve_root
    from model_ops.vocab import SourceKind

    days = [(d, args.daily_rows if d == DAILY_DAY else max(1, args.daily_rows // 20)) for d in DAILY_DAYS]
    source = work / f"daily_{args.daily_rows}"
    info = ensure_source(source, days, args.seed + 1)
    eprint(
        f"[daily] source {source}: {info['rows']:,} rows over {len(days)} days, {args.daily_rows:,} on "
        f"{DAILY_DAY}" + (" (reused)" if info["reused"] else f" (generated in {info['generate_s']} s)")
    )
    spec = model_spec(str(source), "daily", DAILY_DAYS[0])
    parts = Partitioning.of(spec)
    window = parts.window(DAILY_DAY)
    columns = list(dict.fromkeys([spec.key_column, spec.time_column, *spec.feature_names, spec.target.column]))

    def once() -> tuple[dict, list]:
        t: dict[str, float] = {}
        c0, t0 = time.process_time(), time.perf_counter()
        table_ = SourceTable(resolve_root(str(source)), SourceKind.DELTA)
        typed = spec.with_schema(schema_kinds(table_.schema()))
        origin = f"{table_.uri}@{table_.data_version()}"  # what the features asset records beside the rows
        t["open"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        rows = table_.read(spec.time_column, window, columns)
        t["read"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        df = feat.select(rows, typed, DAILY_DAY)
        t["select"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        outcomes = feat.checks(df, typed, DAILY_DAY)
        t["checks"] = time.perf_counter() - t1
        t["total"] = time.perf_counter() - t0
        t["cpu_total"] = time.process_time() - c0
        assert origin and len(df) == args.daily_rows, (len(df), args.daily_rows)
        return t, outcomes

    once()  # warm-up: imports, first DeltaTable open, page cache
    reps = []
    for _ in range(args.repeat):
        t, outcomes = once()
        reps.append(t)
    failed = [o.message for o in outcomes if not o.passed]
    out: dict = {
        "rows": args.daily_rows,
        "source_rows": info["rows"],
        "day": DAILY_DAY,
        "repeat": args.repeat,
        "checks": {o.name: o.passed for o in outcomes},
        "failed_checks": failed,
    }
    for phase in reps[0]:
        xs = [r[phase] for r in reps]
        out[f"{phase}_s"] = {
            "median": round(statistics.median(xs), 3),
            "min": round(min(xs), 3),
            "max": round(max(xs), 3),
        }
    out["verdict"] = verdict(out["total_s"]["median"], DAILY_LIMIT_S)
    if args.profile or out["total_s"]["median"] > DAILY_LIMIT_S:
        prof = cProfile.Profile()
        prof.enable()
        once()
        prof.disable()
        out["profile"] = profile_summary(prof)
    return out


def profile_summary(prof: cProfile.Profile, top: int = 15) -> dict:
    st = pstats.Stats(prof)
    entries = []
    for (file, line, func), (_cc, nc, tt, ct, _) in st.stats.items():  # type: ignore[attr-defined]
        short = file.split("site-packages/")[-1].split("/work/main/")[-1]
        entries.append(
            {"function": f"{short}:{line}({func})", "calls": nc, "tottime_s": round(tt, 3), "cumtime_s": round(ct, 3)}
        )
    ours = [e for e in entries if e["function"].startswith("model_ops/")]
    return {
        "total_s": round(st.total_tt, 3),  # type: ignore[attr-defined]
        "by_tottime": sorted(entries, key=lambda e: -e["tottime_s"])[:top],
        "model_ops_by_cumtime": sorted(ours, key=lambda e: -e["cumtime_s"])[:top],
    }


# ------------------------------------------------------------------------------------------------- main


def summary(out: dict) -> None:
    snap = out.get("snapshot")
    if snap:
        run = snap["runs"][0]
        eprint(
            f"\n(1) snapshot + fit, {snap['rows']:,} rows, partitions {snap['partitions']}: snapshot Arrow "
            f"{snap['snapshot_arrow_mb']} MB, peak RSS {snap['peak_rss_mb']} MB (median of {len(snap['runs'])}), "
            f"ratio {snap['ratio']} (target <= {SNAPSHOT_RSS_LIMIT}): {snap['verdict']}"
        )
        rows = [
            [p, v["wall_s"], v["cpu_s"], v["rss_start_mb"], v["peak_mb"], v["peak_above_start_mb"]]
            for p, v in run["phases"].items()
        ]
        eprint(table(rows, ["phase (run 1)", "wall s", "cpu s", "rss start MB", "peak MB", "peak - start MB"]))
        diag = snap.get("diagnosis")
        if diag:
            rows = [
                [p, v["wall_s"], v["rss_start_mb"], v["peak_mb"], v["peak_above_start_mb"]]
                for p, v in diag["phases"].items()
            ]
            eprint(
                f"\ndiagnosis at {diag['rows']:,} rows (fresh process, peak {diag['process_peak_rss_mb']} MB, "
                f"ratio {diag['ratio']}; fit taken apart; footprints between phases, untimed):"
            )
            eprint(table(rows, ["phase", "wall s", "rss start MB", "peak MB", "peak - start MB"]))
            rows = [
                [name, f["rows"], f["numeric_mb"], f["object_pointers_mb"], f["object_payload_mb"], f["total_mb"]]
                for name, f in diag["frames"].items()
            ]  # features: the first partition
            eprint(table(rows, ["frame", "rows", "numeric MB", "obj ptr MB", "obj payload MB", "total MB"]))
            eprint(f"preprocessed matrix: {diag['preprocessed']}; estimator: {diag['estimator']}")
    daily = out.get("daily")
    if daily:
        eprint(
            f"\n(2) daily partition, {daily['rows']:,} rows of {daily['source_rows']:,}: total median "
            f"{daily['total_s']['median']} s (range {daily['total_s']['min']}-{daily['total_s']['max']}, "
            f"target <= {DAILY_LIMIT_S} s): {daily['verdict']}; checks passed: "
            f"{all(daily['checks'].values())}"
        )
        rows = [
            [p, daily[f"{p}_s"]["median"], daily[f"{p}_s"]["min"], daily[f"{p}_s"]["max"]]
            for p in ("open", "read", "select", "checks", "total", "cpu_total")
        ]
        eprint(table(rows, ["phase", "median s", "min s", "max s"]))
        if "profile" in daily:
            rows = [
                [e["function"][-70:], e["calls"], e["tottime_s"], e["cumtime_s"]]
                for e in daily["profile"]["by_tottime"][:10]
            ]
            eprint(table(rows, ["cProfile, one more repetition", "calls", "tottime s", "cumtime s"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows of the snapshot source (60 days)")
    parser.add_argument("--daily-rows", type=int, default=1_000_000, help="rows of the measured day")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions of the daily target (+1 warm-up)")
    parser.add_argument("--snapshot-repeat", type=int, default=1, help="fresh processes for the snapshot target")
    parser.add_argument("--partitions", choices=["none", "monthly"], default="none")
    parser.add_argument("--only", choices=["snapshot", "daily"])
    parser.add_argument(
        "--diagnose", action="store_true", help="take the snapshot path apart at full size, even when it passes"
    )
    parser.add_argument(
        "--diagnose-rows", type=int, default=500_000, help="rows of the automatic diagnosis when the ratio is above 3x"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one more daily repetition even when it passes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the generated tables here and reuse them (default: a temporary dir)")
    parser.add_argument("--jsonl")
    args = parser.parse_args()
    git_start = git_state()
    out: dict = {
        "benchmark": "own models at scale",
        "machine": machine(),
        "versions": versions_of("pandas", "pyarrow", "deltalake", "scikit-learn", "numpy"),
    }
    t = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.workdir:
            work = Path(args.workdir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_own_models_")))
        if args.only in (None, "snapshot"):
            out["snapshot"] = run_snapshot(args, work)
        if args.only in (None, "daily"):
            out["daily"] = run_daily(args, work)
    out["wall_s"] = round(time.perf_counter() - t, 1)
    out["machine"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    out["machine"]["model_ops_git"] = git_state()
    summary(out)
    emit(out, git_start, args.jsonl)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_generate":
        cfg = json.loads(sys.argv[2])
        print(json.dumps(write_source(Path(cfg["path"]), [tuple(d) for d in cfg["days"]], cfg["seed"])))
    elif len(sys.argv) == 3 and sys.argv[1] == "_snapshot":
        print(json.dumps(snapshot_worker(json.loads(sys.argv[2]))))
    else:
        main()
