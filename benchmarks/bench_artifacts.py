"""model_ops artifact-store costs, on the same work as the peers' artifact_dvc.py.

usage: bench_artifacts.py SIZE_MB [--workdir DIR] [--reps R] [--with-peers] [--jsonl FILE]
Every step runs as its own process under /usr/bin/time -f %M (peak RSS of the step's own process), with os.sync()
(untimed) before each; wall time is taken around the process, so it includes interpreter start-up and imports,
as `dvc add` does. The SIZE_MB file of random bytes is freshly written, so reads come from a warm page cache.
Steps:
  cp, python hashlib sha256  floors (one copy; one SHA-256 pass)
  import                     python -c "import model_ops.artifacts" (start-up floor of every step below)
  put_new                    ArtifactStore.put(src) into an empty store: content-defined chunks (the file is
                             above the chunking threshold of 16 MiB)
  put_new_whole              the same into another empty store with chunking off: one blob (hash + in-kernel
                             copy), the path every file took before chunking; chunked throughput is compared to it
  register_new               `model-ops register` of src into an empty root: the whole command users run
  put_dedup                  the same bytes under another file name: must write no second copy (checked:
                             new_bytes == 0, the only new file in the store is the manifest)
  put_same_path_again        put(src) again, unchanged (compare: `dvc add` of an unchanged path)
  fetch                      ArtifactStore.fetch(digest, dest) of the chunked file: reassembled, every chunk
                             and the whole file verified
  fetch_whole                the same from the one-blob store (copy out, hash the copy)
  edit_1kib                  put of src with 1 KiB changed in its middle: new bytes stored (goal <= 2 MiB)
  tenth_tensors              put of src seen as 80 equal tensors with 8 of them rewritten: new bytes stored
                             (goal <= 15 % of the file)
--with-peers runs the peers' artifact_dvc.py SIZE_MB (peers' venv) after ours in each rep and prints ratios
against `dvc add` (new content) and `dvc add` of the same bytes under a new name. With --reps R > 1 both run
R times, alternating, and medians are reported. Prints one JSON line; tables on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, eprint, git_state, machine, ratio, run_peer, table, verdict, versions_of  # noqa: E402

PY = sys.executable
CLI = os.path.join(os.path.dirname(sys.executable), "model-ops")
ENV = dict(os.environ, MODEL_OPS_PROGRESS="0")
WHOLE = str(2**62)  # a chunking threshold no file reaches
TENSORS, REWRITTEN = 80, 8
HASH_SNIPPET = "import hashlib, sys; print(hashlib.file_digest(open(sys.argv[1], 'rb'), 'sha256').hexdigest())"
IMPORT_SNIPPET = "import model_ops.artifacts"
PUT_SNIPPET = r"""
import json, sys, time
t = time.perf_counter()
from model_ops.artifacts import ArtifactStore
from model_ops.location import resolve_root
store = ArtifactStore(resolve_root(sys.argv[1]), chunk_threshold=int(sys.argv[3]) if len(sys.argv) > 3 else None)
t1 = time.perf_counter()
s = store.put(sys.argv[2])
t2 = time.perf_counter()
print(json.dumps({"digest": s.digest, "file_sha256": s.manifest.files[0].sha256, "new_bytes": s.new_bytes,
                  "chunks": len(s.manifest.files[0].chunks), "import_open_s": t1 - t, "put_s": t2 - t1}))
"""
FETCH_SNIPPET = r"""
import json, sys, time
t = time.perf_counter()
from model_ops.artifacts import ArtifactStore
store = ArtifactStore.open(sys.argv[1])
t1 = time.perf_counter()
p = store.fetch(sys.argv[2], sys.argv[3])
t2 = time.perf_counter()
print(json.dumps({"path": str(p), "import_open_s": t1 - t, "fetch_s": t2 - t1}))
"""


def step(cmd: list[str], cwd: str) -> tuple[dict, bytes]:
    rss_file = os.path.join(cwd, ".rss")
    os.sync()
    t = time.perf_counter()
    p = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", rss_file] + cmd,
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.stderr.write(p.stderr.decode()[-4000:])
        raise SystemExit(f"step failed: {cmd}")
    with open(rss_file) as f:
        rss_kb = int(f.read().split()[-1])
    os.remove(rss_file)
    return {"s": round(wall, 3), "peak_rss_mb": round(rss_kb / 1024, 1)}, p.stdout


def du(path: str) -> tuple[float, int]:
    """(MiB of file data, number of files) under path."""
    total, count = 0, 0
    for d, _, fs in os.walk(path):
        for f in fs:
            total += os.path.getsize(os.path.join(d, f))
            count += 1
    return round(total / 2**20, 3), count


def file_blobs(root: str) -> list[str]:
    base = os.path.join(root, "artifacts", "sha256")
    return [os.path.join(d, f) for d, _, fs in os.walk(base) for f in fs]


def one_rep(size_mb: int, workdir: str | None) -> dict:
    work = tempfile.mkdtemp(prefix="art_model_ops_", dir=workdir)
    try:
        src = os.path.join(work, "src.bin")
        t = time.perf_counter()
        rng = np.random.default_rng(size_mb)
        with open(src, "wb") as f:
            for _ in range(0, size_mb, 16):
                f.write(rng.bytes(16 * 2**20))
        r: dict = {"size_mb": size_mb, "gen_s": round(time.perf_counter() - t, 2)}

        r["cp"], _ = step(["cp", src, "copy.bin"], work)
        os.remove(os.path.join(work, "copy.bin"))
        r["hashlib_sha256"], out = step([PY, "-c", HASH_SNIPPET, src], work)
        src_sha = out.decode().strip()
        r["import"], _ = step([PY, "-c", IMPORT_SNIPPET], work)

        root = os.path.join(work, "store")
        r["put_new"], out = step([PY, "-c", PUT_SNIPPET, root, src], work)
        first = json.loads(out)
        assert first["file_sha256"] == src_sha, "stored digest is not the SHA-256 of the file"
        assert first["new_bytes"] == size_mb * 2**20 and first["chunks"] > 1, first
        r["put_new"]["in_process_put_s"] = round(first["put_s"], 3)
        r["put_new"]["chunks"] = first["chunks"]
        store_mb_1, files_1 = du(os.path.join(root, "artifacts"))

        whole_root = os.path.join(work, "store-whole")
        r["put_new_whole"], out = step([PY, "-c", PUT_SNIPPET, whole_root, src, WHOLE], work)
        whole = json.loads(out)
        assert whole["file_sha256"] == src_sha and whole["chunks"] == 0, whole
        r["put_new_whole"]["in_process_put_s"] = round(whole["put_s"], 3)

        reg_root = os.path.join(work, "registry-root")
        r["register_new"], out = step([CLI, "--root", reg_root, "register", "bench", src, "--json"], work)
        assert json.loads(out)["version"] == 1
        shutil.rmtree(reg_root)

        other = os.path.join(work, "renamed_copy.bin")  # the same bytes under another name (copied untimed)
        shutil.copyfile(src, other)
        r["put_dedup"], out = step([PY, "-c", PUT_SNIPPET, root, other], work)
        second = json.loads(out)
        r["put_dedup"]["in_process_put_s"] = round(second["put_s"], 3)
        store_mb_2, files_2 = du(os.path.join(root, "artifacts"))
        os.remove(other)
        r["dedup_check"] = {
            "new_bytes": second["new_bytes"],
            "same_file_sha256": second["file_sha256"] == first["file_sha256"],
            "store_mb_after_first": store_mb_1,
            "store_mb_after_second": store_mb_2,
            "store_files_after_first": files_1,
            "store_files_after_second": files_2,
            # the manifest lists the file name, so a new name gives a new manifest blob; the chunks are shared
            "ok": second["new_bytes"] == 0 and files_2 == files_1 + 1,
        }

        r["put_same_path_again"], out = step([PY, "-c", PUT_SNIPPET, root, src], work)
        third = json.loads(out)
        assert third["digest"] == first["digest"] and third["new_bytes"] == 0
        r["put_same_path_again"]["in_process_put_s"] = round(third["put_s"], 3)

        for name, store_root, digest in (
            ("fetch", root, first["digest"]),
            ("fetch_whole", whole_root, whole["digest"]),
        ):
            dest = os.path.join(work, "fetched.bin")
            r[name], out = step([PY, "-c", FETCH_SNIPPET, store_root, digest, dest], work)
            r[name]["in_process_fetch_s"] = round(json.loads(out)["fetch_s"], 3)
            with open(dest, "rb") as f:  # untimed independent check of what fetch delivered
                import hashlib

                assert hashlib.file_digest(f, "sha256").hexdigest() == src_sha, "fetched bytes differ"
            os.remove(dest)

        edited = os.path.join(work, "edited.bin")
        shutil.copyfile(src, edited)
        with open(edited, "r+b") as f:
            f.seek(size_mb * 2**20 // 2)
            f.write(rng.bytes(1024))
        r["edit_1kib"], out = step([PY, "-c", PUT_SNIPPET, root, edited], work)
        r["edit_1kib"]["new_bytes"] = json.loads(out)["new_bytes"]
        part = size_mb * 2**20 // TENSORS
        with open(edited, "r+b") as f:  # from the 1 KiB edit on: rewrite every tenth tensor
            for t in range(0, TENSORS, TENSORS // REWRITTEN):
                f.seek(t * part)
                f.write(rng.bytes(part))
        r["tenth_tensors"], out = step([PY, "-c", PUT_SNIPPET, root, edited], work)
        r["tenth_tensors"]["new_bytes"] = json.loads(out)["new_bytes"]
        r["tenth_tensors"]["new_fraction"] = round(r["tenth_tensors"]["new_bytes"] / (size_mb * 2**20), 4)
        os.remove(edited)
        r["store_mb"] = du(os.path.join(root, "artifacts"))[0]
        return r
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _values(reps: list[dict], *path: str) -> list[float]:
    """The numbers found at ``path`` (nested keys) in each repetition's result."""
    vals = []
    for r in reps:
        v = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            vals.append(v)
    return vals


def med(reps: list[dict], *path: str) -> float | None:
    vals = _values(reps, *path)
    return round(statistics.median(vals), 3) if vals else None


def rng_of(reps: list[dict], *path: str) -> str:
    vals = _values(reps, *path)
    return f"{min(vals)}-{max(vals)}" if len(vals) > 1 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("size_mb", type=int)
    ap.add_argument("--workdir", default=None, help="parent of the temporary work dir (default: $TMPDIR or /tmp)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--with-peers", action="store_true", help="also run the peers' artifact_dvc.py SIZE_MB")
    ap.add_argument("--jsonl", help="also append the JSON line to this file")
    args = ap.parse_args()
    git_start = git_state()

    ours_reps, peer_reps = [], []
    for i in range(args.reps):
        eprint(f"[rep {i + 1}/{args.reps}] model_ops, {args.size_mb} MB")
        ours_reps.append(one_rep(args.size_mb, args.workdir))
        if args.with_peers:
            peer_args = [args.size_mb] + ([args.workdir] if args.workdir else [])
            peer_reps.append(run_peer("artifact_dvc.py", *peer_args))

    steps = [
        "cp",
        "hashlib_sha256",
        "import",
        "put_new",
        "put_new_whole",
        "register_new",
        "put_dedup",
        "put_same_path_again",
        "fetch",
        "fetch_whole",
        "edit_1kib",
        "tenth_tensors",
    ]
    ours = {
        s: {
            "s_median": med(ours_reps, s, "s"),
            "s_range": rng_of(ours_reps, s, "s"),
            "peak_rss_mb_max": max(r[s]["peak_rss_mb"] for r in ours_reps),
        }
        for s in steps
    }
    for s, k in (
        ("put_new", "in_process_put_s"),
        ("put_new_whole", "in_process_put_s"),
        ("fetch_whole", "in_process_fetch_s"),
        ("edit_1kib", "new_bytes"),
        ("tenth_tensors", "new_fraction"),
        ("put_dedup", "in_process_put_s"),
        ("put_same_path_again", "in_process_put_s"),
        ("fetch", "in_process_fetch_s"),
    ):
        ours[s][k + "_median"] = med(ours_reps, s, k)
    dedup_ok = all(r["dedup_check"]["ok"] for r in ours_reps)
    out: dict = {
        "bench": "artifact",
        "size_mb": args.size_mb,
        "reps": args.reps,
        "machine": machine(),
        "versions": versions_of("model_ops"),
        "ours": ours,
        "dedup_ok": dedup_ok,
        "ours_runs": ours_reps,
    }

    mbps = lambda s: round(args.size_mb / s, 0) if s else None  # noqa: E731
    rows = [
        [
            s,
            ours[s]["s_median"],
            ours[s]["s_range"],
            mbps(ours[s]["s_median"]) if s not in ("import",) else "",
            ours[s]["peak_rss_mb_max"],
        ]
        for s in steps
    ]
    eprint(
        f"\nmodel_ops artifacts, {args.size_mb} MB, {args.reps} rep(s), each step a fresh process "
        f"(wall includes start-up); dedup ok: {dedup_ok}"
    )
    eprint(table(rows, ["step", "s median", "range", "MB/s", "peak RSS MB (max)"]))
    eprint("dedup check (rep 1): " + json.dumps(ours_reps[0]["dedup_check"]))

    chunked = {
        "chunked_over_whole_store_throughput": ratio(
            ours["put_new_whole"]["in_process_put_s_median"], ours["put_new"]["in_process_put_s_median"]
        ),
        "chunked_over_whole_read_time": ratio(
            ours["fetch"]["in_process_fetch_s_median"], ours["fetch_whole"]["in_process_fetch_s_median"]
        ),
        "edit_1kib_new_mib": round(max(_values(ours_reps, "edit_1kib", "new_bytes")) / 2**20, 3),
        "tenth_tensors_new_fraction": max(_values(ours_reps, "tenth_tensors", "new_fraction")),
    }
    out["chunked"] = chunked
    eprint("chunked vs one blob: " + json.dumps(chunked))
    targets = {
        "store_new_peak_rss_le_200MB": verdict(ours["put_new"]["peak_rss_mb_max"], 200),
        "register_peak_rss_le_200MB": verdict(ours["register_new"]["peak_rss_mb_max"], 200),
        "same_bytes_no_second_blob": "PASS" if dedup_ok else "FAIL",
        "edit_1kib_le_2MiB": verdict(chunked["edit_1kib_new_mib"], 2),
        "tenth_tensors_le_15pct": verdict(chunked["tenth_tensors_new_fraction"], 0.15),
        "chunked_read_le_1.5x_whole": verdict(chunked["chunked_over_whole_read_time"], 1.5),
        "chunked_store_ge_0.8x_whole_throughput": "PASS"
        if (chunked["chunked_over_whole_store_throughput"] or 0) >= 0.8
        else "FAIL",
    }
    if peer_reps:
        peer = {
            k: {
                "s_median": med(peer_reps, k, "s"),
                "s_range": rng_of(peer_reps, k, "s"),
                "peak_rss_mb_max": max(p[k]["peak_rss_mb"] for p in peer_reps),
            }
            for k in (
                "cp",
                "sha256sum",
                "md5sum",
                "hashlib_sha256",
                "dvc_version",
                "dvc_add",
                "dvc_add_dedup",
                "dvc_readd_unchanged",
            )
        }
        peer["dvc_cache_mb"] = [p["dvc_cache_mb"] for p in peer_reps]
        peer["mlflow_log_artifact_s_median"] = med(peer_reps, "mlflow_log_artifact", "s")
        peer["tools"] = peer_reps[0].get("tools")
        r = {
            "put_new_vs_dvc_add": ratio(ours["put_new"]["s_median"], peer["dvc_add"]["s_median"]),
            "register_new_vs_dvc_add": ratio(ours["register_new"]["s_median"], peer["dvc_add"]["s_median"]),
            "put_dedup_vs_dvc_add_dedup": ratio(ours["put_dedup"]["s_median"], peer["dvc_add_dedup"]["s_median"]),
            "put_same_path_vs_dvc_readd_unchanged": ratio(
                ours["put_same_path_again"]["s_median"], peer["dvc_readd_unchanged"]["s_median"]
            ),
            "put_new_rss_vs_dvc_add": ratio(ours["put_new"]["peak_rss_mb_max"], peer["dvc_add"]["peak_rss_mb_max"]),
            "cp_floor_ours_vs_peer_run": ratio(ours["cp"]["s_median"], peer["cp"]["s_median"]),
        }
        targets["store_new_le_0.3x_dvc_add"] = verdict(r["put_new_vs_dvc_add"], 0.3)
        targets["register_le_0.3x_dvc_add"] = verdict(r["register_new_vs_dvc_add"], 0.3)
        targets["same_bytes_le_0.3x_dvc_dedup"] = verdict(r["put_dedup_vs_dvc_add_dedup"], 0.3)
        out["peer"] = peer
        out["peer_runs"] = peer_reps
        out["ratios_ours_over_peer"] = r
        prow = [
            [
                "store new content",
                ours["put_new"]["s_median"],
                "dvc add",
                peer["dvc_add"]["s_median"],
                r["put_new_vs_dvc_add"],
                "<= 0.3",
                targets["store_new_le_0.3x_dvc_add"],
            ],
            [
                "model-ops register",
                ours["register_new"]["s_median"],
                "dvc add",
                peer["dvc_add"]["s_median"],
                r["register_new_vs_dvc_add"],
                "<= 0.3",
                targets["register_le_0.3x_dvc_add"],
            ],
            [
                "same bytes, new name",
                ours["put_dedup"]["s_median"],
                "dvc add (dedup)",
                peer["dvc_add_dedup"]["s_median"],
                r["put_dedup_vs_dvc_add_dedup"],
                "<= 0.3",
                targets["same_bytes_le_0.3x_dvc_dedup"],
            ],
            [
                "same path again",
                ours["put_same_path_again"]["s_median"],
                "dvc add (unchanged)",
                peer["dvc_readd_unchanged"]["s_median"],
                r["put_same_path_vs_dvc_readd_unchanged"],
                "",
                "",
            ],
            [
                "peak RSS MB, store new",
                ours["put_new"]["peak_rss_mb_max"],
                "dvc add",
                peer["dvc_add"]["peak_rss_mb_max"],
                r["put_new_rss_vs_dvc_add"],
                "<= 200 MB",
                targets["store_new_peak_rss_le_200MB"],
            ],
            [
                "cp floor (noise check)",
                ours["cp"]["s_median"],
                "cp",
                peer["cp"]["s_median"],
                r["cp_floor_ours_vs_peer_run"],
                "",
                "",
            ],
        ]
        eprint(
            f"\nvs DVC {peer['tools'].get('dvc') if peer['tools'] else ''} ({len(peer_reps)} run(s)), "
            "medians, ratio ours/theirs:"
        )
        eprint(table(prow, ["what", "ours s", "peer step", "peer s", "ratio", "target", "verdict"]))
    out["targets"] = targets
    eprint("targets: " + json.dumps(targets))
    emit(out, git_start, args.jsonl)


if __name__ == "__main__":
    main()
