"""`model-ops demo` on the embedded SQLite Dagster instance and on one on PostgreSQL, in the same run.

Issue 15 (a shared deployment) asks for the demo's wall time on SQLite vs Postgres. Each run is the whole command a
user runs (`model-ops --root R demo --dagster-home H`, a fresh process, fresh root and instance), the PostgreSQL
server a fresh cluster on loopback started for the benchmark (``model_ops_tests.postgres``: the installed PostgreSQL's
``initdb`` and ``pg_ctl``, as the ``postgres`` user under root). The runs alternate between the two instances,
``--rounds`` of each, so a change in the machine's load falls on both; every run must exit 0 (the demo exits 1
when its story did not happen). Prints one JSON document: each run's seconds, the medians and their ratio.

    python benchmarks/bench_instance.py [--rounds 1] [--until 2013-12]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import eprint, machine  # noqa: E402

from model_ops_tests.postgres import missing, postgres_server  # noqa: E402


def demo(work: Path, label: str, env: dict[str, str], until: str | None) -> float:
    root, home = work / f"{label}-root", work / f"{label}-home"
    command = [sys.executable, "-m", "model_ops.cli", "--root", str(root), "demo", "--dagster-home", str(home)]
    if until:
        command += ["--until", until]
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"[{label}] the demo exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--until", default=None, help="last month replayed (default: the whole year)")
    args = p.parse_args()
    if missing() is not None:
        raise SystemExit(f"cannot start PostgreSQL here ({missing()}): nothing to compare")
    base = {**os.environ, "MODEL_OPS_PROGRESS": "0"}
    base.pop("MODEL_OPS_INSTANCE", None)
    runs: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    with tempfile.TemporaryDirectory(prefix="bench_instance_") as tmp, postgres_server() as pg:
        for r in range(args.rounds):
            for label in ("sqlite", "postgres"):
                env = dict(base)
                if label == "postgres":
                    db = f"dagster_{r}"
                    pg.query_autocommit(f'create database "{db}"')
                    env.update({**pg.env, "DAGSTER_PG_DB": db, "MODEL_OPS_INSTANCE": "postgres"})
                seconds = demo(Path(tmp) / str(r), label, env, args.until)
                runs[label].append(round(seconds, 1))
                eprint(f"[round {r + 1}] {label}: {seconds:.1f} s")
    medians = {k: float(np.median(v)) for k, v in runs.items()}
    out = {
        "machine": machine(),
        "args": vars(args),
        "runs_s": runs,
        "median_s": medians,
        "postgres_over_sqlite": round(medians["postgres"] / medians["sqlite"], 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
