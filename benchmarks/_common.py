"""Helpers shared by the benchmark scripts (timing statistics, peak RSS, tables on stderr)."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

import numpy as np

PEERS_DIR = os.environ.get(
    "BENCH_PEERS_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench-peers")
)
PEERS_PYTHON = os.environ.get("BENCH_PEERS_PYTHON", "/tmp/peers-venv/bin/python")


def stats(xs_s, **extra) -> dict:
    """Same fields as the peers' scripts: n, median_ms, p99_ms, total_s, first/last 10% medians (n >= 20)."""
    ms = np.asarray(xs_s, dtype=float) * 1000
    out = {
        "n": len(ms),
        "median_ms": round(float(np.median(ms)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "total_s": round(float(ms.sum()) / 1000, 3),
    }
    if len(ms) >= 20:
        k = len(ms) // 10
        out["first10pct_median_ms"] = round(float(np.median(ms[:k])), 3)
        out["last10pct_median_ms"] = round(float(np.median(ms[-k:])), 3)
    out.update(extra)
    return out


def ensure_bytecode() -> None:
    """Compile model_ops to bytecode before fresh processes are timed: an installed package has its .pyc files
    (pip writes them), while a checkout run with PYTHONDONTWRITEBYTECODE=1 would compile every module it imports
    in every process (40-80 ms of a `model-ops resolve` here), which is not the cost a user pays."""
    import compileall

    compileall.compile_dir(
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model_ops"), quiet=1
    )


def timed(fn, *a, **kw):
    t = time.perf_counter()
    r = fn(*a, **kw)
    return time.perf_counter() - t, r


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "model_ops_git": git_state(),
    }


def git_state() -> str | None:
    """HEAD of the model_ops checkout, with "+dirty" when model_ops/ differs from it (the code measured)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "model_ops"], cwd=repo, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions_of(*packages: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def run_measured(
    cmd: list[str], timeout: float | None = None, env: dict | None = None, ok: tuple[int, ...] = (0,)
) -> tuple[str, float, float]:
    """Run cmd under /usr/bin/time -f %M; return (stdout, wall s, peak RSS MB of the command itself).

    The command is forked by GNU time, a tiny process. Started straight from this (large) Python process, its own
    ru_maxrss would include the pages it was forked with: Linux carries the pre-exec high-water mark over exec."""
    fd, rss_file = tempfile.mkstemp(prefix="bench_rss_")
    os.close(fd)
    try:
        t = time.perf_counter()
        p = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", rss_file, *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            env=env,
        )
        wall = time.perf_counter() - t
        if p.returncode not in ok:
            sys.stderr.write(p.stderr[-4000:])
            raise SystemExit(f"command failed with exit code {p.returncode}: {' '.join(cmd)}")
        with open(rss_file) as f:
            rss_mb = int(f.read().split()[-1]) / 1024
        return p.stdout, wall, round(rss_mb, 1)
    finally:
        os.remove(rss_file)


def run_peer(script: str, *args: str, timeout: float | None = None, python: str | None = None) -> dict:
    """Run one of the peers' scripts with the peers' venv; return its JSON line (the last line of stdout).
    Adds _invocation_wall_s and _process_peak_rss_mb (GNU time). The script's own peak_rss_mb (ru_maxrss) is
    clean too, because GNU time, not this process, forks it."""
    cmd = [python or PEERS_PYTHON, os.path.join(PEERS_DIR, script), *map(str, args)]
    if not os.path.exists(cmd[0]):
        raise SystemExit(f"peer venv not found at {PEERS_PYTHON}; run: VENV=/tmp/peers-venv bash {PEERS_DIR}/setup.sh")
    eprint(f"[peers] running: {' '.join(cmd)}")
    stdout, wall, rss = run_measured(cmd, timeout=timeout)
    line = [l for l in stdout.splitlines() if l.strip().startswith("{")][-1]
    out = json.loads(line)
    out["_invocation_wall_s"] = round(wall, 2)
    out["_process_peak_rss_mb"] = rss
    return out


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return round(ours / theirs, 4)


def eprint(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def table(rows: list[list], header: list[str]) -> str:
    cells = [[("" if c is None else str(c)) for c in r] for r in [header] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "n/a"
    return "PASS" if value <= limit else "FAIL"


def emit(out: dict, git_start: str | None, jsonl: str | None) -> None:
    """Print the run's one JSON line (and append it to ``jsonl``), warning if model_ops changed mid-run."""
    out["model_ops_git_at_start"] = git_start
    if out["machine"]["model_ops_git"] != git_start:
        eprint(f"WARNING: model_ops changed during the run ({git_start} -> {out['machine']['model_ops_git']})")
    line = json.dumps(out)
    print(line, flush=True)
    if jsonl:
        with open(jsonl, "a") as f:
            f.write(line + "\n")
