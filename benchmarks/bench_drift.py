"""`model-ops drift` next to the numpy PSI+KS script and Evidently's DataDriftPreset, on the peers' own data.

Targets (issue: closing the loop): on 1M rows x 20 numeric features, the whole command (process start, reading
both Parquet files, profiling, verdicts) ≤ 1/3 of the numpy script's PSI+KS time; at 100k rows ≤ 1/20 of
Evidently's; verdicts exactly the shifted half of the features; peak memory well under Evidently's.

The data are the peers' draws (seed 0: reference N(0,1); current N(0,1) with +0.5 on the first half of the
features), written to Parquet first. The peers time their drift computation only (data already in memory), we
time the whole command, so the ratios are in the peers' favour.

    python benchmarks/bench_drift.py [--rows 1000000 100000] [--features 20] [--repeat 3] [--no-evidently]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PEERS_PYTHON, eprint, machine, ratio, run_measured, run_peer  # noqa: E402

MODEL_OPS = str(Path(sys.executable).parent / "model-ops")


def write_frames(folder: Path, rows: int, feats: int, seed: int = 0) -> tuple[str, str, list[str]]:
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((rows, feats))
    cur = rng.standard_normal((rows, feats))
    cur[:, : feats // 2] += 0.5
    names = [f"f{i}" for i in range(feats)]
    paths = []
    for name, data in (("reference", ref), ("current", cur)):
        path = folder / f"{name}_{rows}.parquet"
        pq.write_table(pa.table({n: data[:, i] for i, n in enumerate(names)}), path)
        paths.append(str(path))
    return paths[0], paths[1], names[: feats // 2]


def ours(reference: str, current: str, repeat: int) -> dict:
    walls, rss, doc = [], [], {}
    for _ in range(repeat):
        out, wall, peak = run_measured(
            [MODEL_OPS, "drift", "--reference", reference, "--current", current, "--json"], ok=(0, 1)
        )
        walls.append(wall)
        rss.append(peak)
        doc = json.loads(out)
    return {
        "wall_s": round(statistics.median(walls), 3),
        "runs_s": [round(w, 3) for w in walls],
        "peak_rss_mb": max(rss),
        "flagged": [f["feature"] for f in doc["features"] if f["drift"]],
        "methods": sorted({f["method"] for f in doc["features"]}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 100_000])
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-evidently", action="store_true")
    args = parser.parse_args()
    numpy_python = PEERS_PYTHON if os.path.exists(PEERS_PYTHON) else sys.executable
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_drift_") as tmp:
        for rows in args.rows:
            reference, current, shifted = write_frames(Path(tmp), rows, args.features)
            row: dict = {"rows": rows, "features": args.features, "shifted": shifted}
            row["model_ops"] = ours(reference, current, args.repeat)
            row["model_ops"]["correct"] = row["model_ops"]["flagged"] == shifted
            runs = [run_peer("drift_numpy.py", rows, args.features, python=numpy_python) for _ in range(args.repeat)]
            row["numpy"] = {
                "drift_s": statistics.median(r["drift_s"] for r in runs),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "correct": runs[0]["correct"],
                "python": numpy_python,
            }
            row["ratio_vs_numpy"] = ratio(row["model_ops"]["wall_s"], row["numpy"]["drift_s"])
            if not args.no_evidently and rows <= 100_000 and os.path.exists(PEERS_PYTHON):
                ev = [run_peer("drift_evidently.py", rows, args.features) for _ in range(max(1, args.repeat - 1))]
                row["evidently"] = {
                    "drift_s": statistics.median(r["drift_s"] for r in ev),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in ev),
                    "correct": ev[0].get("correct"),
                }
                row["ratio_vs_evidently"] = ratio(row["model_ops"]["wall_s"], row["evidently"]["drift_s"])
            eprint(json.dumps(row))
            results.append(row)
    print(json.dumps({"benchmark": "drift", "machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
