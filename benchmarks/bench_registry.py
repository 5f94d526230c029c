"""model_ops registry costs, on the same work as the peers' registry_mlflow.py (local root on disk).

usage: bench_registry.py N [--budget S] [--with-peers] [--profile FILE] [--jsonl FILE]
  (a) register_model N versions of one model (each a different LogisticRegression(C=1+i*1e-3), fitted untimed
      on the same 200x4 data as registry_mlflow.py; skops serialisation + artifact store + registry commit timed)
  (b) set_alias production -> version N//2; resolve models:/clf@production warm x200 and x2000
  (c) versions("clf") x20 at N versions
  (d) load_model models:/clf@production: cold, then warm x10
  plus: a fresh Registry object in the same process: open + first resolve (folds the whole event log)
--with-peers then runs the peers' registry_mlflow.py N with the peers' venv (after ours, not at the same time)
and prints ratios ours/theirs. Prints one JSON line on stdout (ours, and peers + ratios with --with-peers);
a table on stderr.
"""

from __future__ import annotations

import os
import sys
import time

T0 = time.perf_counter()
import argparse
import shutil
import tempfile
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression

from model_ops.artifacts import sklearn_io
from model_ops.registry import Registry

IMPORT_S = time.perf_counter() - T0
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    emit,
    eprint,
    git_state,
    machine,
    peak_rss_mb,
    ratio,
    run_peer,
    stats,
    table,
    timed,
    verdict,
    versions_of,
)

warnings.filterwarnings("ignore")
NAME = "clf"
ALIAS = "production"  # "champion" is reserved by the default policy for the production stage


def bench_ours(n: int, budget: float, profile: str | None) -> dict:
    tmp = tempfile.mkdtemp(prefix="reg_model_ops_")
    try:
        X = np.random.default_rng(0).standard_normal((200, 4))
        y = (X[:, 0] > 0).astype(int)
        open_s, reg = timed(Registry.open, os.path.join(tmp, "root"), actor="bench")

        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
        reg_times, fit_times = [], []
        deadline = time.perf_counter() + budget
        for i in range(n):
            if time.perf_counter() > deadline:
                break
            c = 1 + i * 1e-3
            fit_s, model = timed(LogisticRegression(C=c).fit, X, y)
            fit_times.append(fit_s)
            if prof:
                prof.enable()
            dt, mv = timed(reg.register_model, NAME, model, params={"C": c}, metrics={"train_acc": 1.0})
            if prof:
                prof.disable()
            reg_times.append(dt)
            assert mv.version == i + 1, (mv.version, i + 1)  # a new version every time (no dedup hit)
        n_versions = len(reg_times)
        if prof:
            prof.dump_stats(profile)

        # skops serialisation alone (part of every register_model call), on 50 of the models
        ser = [timed(sklearn_io.dumps, LogisticRegression(C=1 + i * 1e-3).fit(X, y))[0] for i in range(50)]

        k = max(1, n_versions // 2)
        alias_set_s, _ = timed(reg.set_alias, NAME, ALIAS, k, reason="benchmark")
        uri = f"models:/{NAME}@{ALIAS}"
        assert reg.resolve(uri).version == k  # warm-up (untimed)
        alias200 = []
        for _ in range(200):
            dt, mv = timed(reg.resolve, uri)
            alias200.append(dt)
            assert mv.version == k
        alias2000 = [timed(reg.resolve, uri)[0] for _ in range(2000)]

        listing = []
        for _ in range(20):
            dt, vs = timed(reg.versions, NAME)
            listing.append(dt)
        returned = len(vs)

        cold_s, model = timed(reg.load_model, uri)
        warm = [timed(reg.load_model, uri)[0] for _ in range(10)]
        assert model.predict(X[:5]).shape == (5,)

        # a second Registry object on the same root, in the same process: open + fold the log + first resolve
        def reopen():
            r2 = Registry.open(os.path.join(tmp, "root"), actor="bench")
            return r2.resolve(uri)

        reopen_s, mv2 = timed(reopen)
        assert mv2.version == k

        root = os.path.join(tmp, "root")
        disk_mb = round(sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs) / 2**20, 1)
        return {
            "tool": "model_ops (local root)",
            "n": n,
            "n_done": n_versions,
            "import_s": round(IMPORT_S, 2),
            "open_s": round(open_s, 4),
            "register_model": stats(reg_times, includes="skops dumps + canonicalise + artifact put + Delta commit"),
            "skops_dumps_only": stats(ser),
            "fit_untimed": stats(fit_times),
            "set_alias_ms": round(alias_set_s * 1000, 2),
            "alias_resolve": stats(alias200, alias_version=k, versions=n_versions),
            "alias_resolve_x2000": stats(alias2000),
            "versions_list": stats(listing, returned=returned),
            "load_model": stats(warm, cold_ms=round(cold_s * 1000, 2)),
            "reopen_first_resolve_ms": round(reopen_s * 1000, 2),
            "root_disk_mb": disk_mb,
            "peak_rss_mb": peak_rss_mb(),
            "wall_s": round(time.perf_counter() - T0, 2),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", type=int)
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the register loop (default 480)")
    ap.add_argument("--with-peers", action="store_true", help="also run the peers' registry_mlflow.py N")
    ap.add_argument("--profile", help="cProfile the register loop into this file (adds overhead to (a))")
    ap.add_argument("--jsonl", help="also append the JSON line to this file")
    args = ap.parse_args()
    git_start = git_state()

    ours = bench_ours(args.n, args.budget, args.profile)
    out: dict = {
        "bench": "registry",
        "machine": machine(),
        "versions": versions_of("model_ops", "deltalake", "pyarrow", "scikit-learn", "skops", "numpy"),
        "ours": ours,
    }
    rows = [
        [
            "register_model (a)",
            ours["register_model"]["median_ms"],
            ours["register_model"]["p99_ms"],
            f"{ours['register_model'].get('first10pct_median_ms')} / {ours['register_model'].get('last10pct_median_ms')}",
        ],
        ["  of which skops dumps", ours["skops_dumps_only"]["median_ms"], ours["skops_dumps_only"]["p99_ms"], ""],
        ["resolve @alias x200 (b)", ours["alias_resolve"]["median_ms"], ours["alias_resolve"]["p99_ms"], ""],
        [
            "resolve @alias x2000 (b)",
            ours["alias_resolve_x2000"]["median_ms"],
            ours["alias_resolve_x2000"]["p99_ms"],
            "",
        ],
        ["versions() x20 (c)", ours["versions_list"]["median_ms"], ours["versions_list"]["p99_ms"], ""],
        [
            "load_model warm x10 (d)",
            ours["load_model"]["median_ms"],
            ours["load_model"]["p99_ms"],
            f"cold {ours['load_model']['cold_ms']}",
        ],
        ["reopen + first resolve", ours["reopen_first_resolve_ms"], "", ""],
    ]
    eprint(
        f"\nmodel_ops registry, N={args.n} (done {ours['n_done']}), peak RSS {ours['peak_rss_mb']} MB, "
        f"wall {ours['wall_s']} s"
    )
    eprint(table(rows, ["operation", "median ms", "p99 ms", "first/last 10% ms"]))

    if args.with_peers:
        peer = run_peer("registry_mlflow.py", args.n)
        out["peer"] = peer
        r = {
            "register_vs_mlflow_log_register": ratio(
                ours["register_model"]["median_ms"], peer["log_register"]["median_ms"]
            ),
            "register_p99_vs_mlflow": ratio(ours["register_model"]["p99_ms"], peer["log_register"]["p99_ms"]),
            "register_vs_mlflow_create_version_regonly": ratio(
                ours["register_model"]["median_ms"], peer["create_version_regonly"]["median_ms"]
            ),
            "alias_resolve_median": ratio(ours["alias_resolve"]["median_ms"], peer["alias_resolve"]["median_ms"]),
            "alias_resolve_p99": ratio(ours["alias_resolve"]["p99_ms"], peer["alias_resolve"]["p99_ms"]),
            "list_versions_median": ratio(ours["versions_list"]["median_ms"], peer["search_versions"]["median_ms"]),
            "list_versions_p99": ratio(ours["versions_list"]["p99_ms"], peer["search_versions"]["p99_ms"]),
            "load_model_warm_median": ratio(ours["load_model"]["median_ms"], peer["load_model"]["median_ms"]),
        }
        out["ratios_ours_over_peer"] = r
        out["targets"] = {
            "register_median_le_0.5x_mlflow": verdict(r["register_vs_mlflow_log_register"], 0.5),
            "alias_resolve_p99_le_1ms_warm_x2000": verdict(ours["alias_resolve_x2000"]["p99_ms"], 1.0),
            "alias_resolve_p99_le_1ms_warm_x200": verdict(ours["alias_resolve"]["p99_ms"], 1.0),
            "list_versions_le_one_third_mlflow": verdict(r["list_versions_median"], 1 / 3),
        }
        prow = [
            [
                "register (vs log+register, pip_requirements)",
                ours["register_model"]["median_ms"],
                peer["log_register"]["median_ms"],
                r["register_vs_mlflow_log_register"],
                "<= 0.5",
                out["targets"]["register_median_le_0.5x_mlflow"],
            ],
            [
                "register p99",
                ours["register_model"]["p99_ms"],
                peer["log_register"]["p99_ms"],
                r["register_p99_vs_mlflow"],
                "",
                "",
            ],
            [
                "register vs create_model_version only",
                ours["register_model"]["median_ms"],
                peer["create_version_regonly"]["median_ms"],
                r["register_vs_mlflow_create_version_regonly"],
                "",
                "",
            ],
            [
                "alias resolve median (x200)",
                ours["alias_resolve"]["median_ms"],
                peer["alias_resolve"]["median_ms"],
                r["alias_resolve_median"],
                "",
                "",
            ],
            [
                "alias resolve p99 (x200)",
                ours["alias_resolve"]["p99_ms"],
                peer["alias_resolve"]["p99_ms"],
                r["alias_resolve_p99"],
                "p99 <= 1 ms",
                out["targets"]["alias_resolve_p99_le_1ms_warm_x200"],
            ],
            [
                "alias resolve p99 (ours x2000)",
                ours["alias_resolve_x2000"]["p99_ms"],
                "",
                "",
                "p99 <= 1 ms",
                out["targets"]["alias_resolve_p99_le_1ms_warm_x2000"],
            ],
            [
                "list versions median (x20)",
                ours["versions_list"]["median_ms"],
                peer["search_versions"]["median_ms"],
                r["list_versions_median"],
                "<= 0.333",
                out["targets"]["list_versions_le_one_third_mlflow"],
            ],
            [
                "list versions p99 (x20)",
                ours["versions_list"]["p99_ms"],
                peer["search_versions"]["p99_ms"],
                r["list_versions_p99"],
                "",
                "",
            ],
            [
                "load_model warm median",
                ours["load_model"]["median_ms"],
                peer["load_model"]["median_ms"],
                r["load_model_warm_median"],
                "",
                "",
            ],
        ]
        eprint(
            f"\nvs {peer['tool']} (N={peer['n']}, done {peer['n_done']}, versions "
            f"{peer['alias_resolve'].get('versions')}, peak RSS {peer['peak_rss_mb']} MB, wall {peer['wall_s']} s), "
            "ratios ours/theirs:"
        )
        eprint(table(prow, ["operation", "ours ms", "mlflow ms", "ratio", "target", "verdict"]))

    emit(out, git_start, args.jsonl)


if __name__ == "__main__":
    main()
