"""Small helpers shared by the reliability tests, and the entry points of the worker processes they start.

Deliberately free of pytest imports: spawned and ``python -c`` children import this module, and it should cost
them as little start-up time as possible.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "m"


def free_port() -> int:
    """A loopback port nothing listens on now, for a server a test starts (or a receiver it wants absent)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------------------------------------------- bytes and files


def unique_bytes(tag: str, size: int = 64) -> bytes:
    """``size`` deterministic pseudo-random bytes; different tags give different bytes."""
    out = bytearray()
    block = hashlib.sha256(tag.encode()).digest()
    while len(out) < size:
        out += block
        block = hashlib.sha256(block).digest()
    return bytes(out[:size])


def write_file(directory: str | os.PathLike[str], name: str, data: bytes) -> Path:
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_tree(directory: str | os.PathLike[str], files: dict[str, bytes]) -> Path:
    """A directory holding ``files`` (relative posix name -> bytes)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_file(directory, name, data)
    return directory


def read_tree(directory: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every regular file below ``directory`` as relative posix name -> bytes."""
    directory = Path(directory)
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------- models


def double_it(x: Any) -> Any:
    """A module-level function, so a FunctionTransformer using it holds a type skops does not trust by default."""
    return np.asarray(x) * 2.0


def training_data(seed: int = 0, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    y[:2] = [0, 1]  # both classes, whatever the seed
    return X, y


def tiny_model(seed: int = 0) -> Any:
    """A fitted scikit-learn model whose bytes differ for every seed."""
    from sklearn.linear_model import LogisticRegression

    X, y = training_data(seed)
    return LogisticRegression(C=1.0 + seed / 1000.0, max_iter=200).fit(X, y)


def pipeline_with_custom_function() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = training_data(7)
    return make_pipeline(FunctionTransformer(double_it), LogisticRegression(max_iter=200)).fit(X, y)


DOUBLE_IT_TYPE = f"{__name__}.double_it"


def skops_calling(module: str, name: str, args: list[str]) -> bytes:
    """A skops archive whose top-level object is built by calling ``module.name(*args)`` at load time.

    That is how skops restores objects that reduce to a constructor call (``ConstructorFromReduceNode``); an archive
    written by anyone can name any callable there, so the loader must refuse callables nobody trusted.
    """
    import io
    import zipfile

    import skops

    schema = {
        "__class__": name,
        "__module__": module,
        "__loader__": "ConstructorFromReduceNode",
        "content": {
            "__class__": "tuple",
            "__module__": "builtins",
            "__loader__": "TupleNode",
            "content": [
                {
                    "__class__": "str",
                    "__module__": "builtins",
                    "__loader__": "JsonNode",
                    "content": json.dumps(a),
                    "is_json": True,
                }
                for a in args
            ],
        },
        "protocol": 2,
        "_skops_version": skops.__version__,
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("schema.json", json.dumps(schema))
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------- blobs


def s3_keys(root: str, under: str = "") -> dict[str, int]:
    """Every object below ``root`` (or below ``root/under``) in the test bucket: full key -> size."""
    from model_ops.location import resolve_root, s3_client

    location = resolve_root(root)
    prefix = location.key(under) if under else location.key_prefix
    out = {}
    for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix + "/"):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


def blob_path(root: str | os.PathLike[str], digest: str) -> Path:
    """Where the local blob store keeps ``digest`` under a registry root."""
    return Path(root) / "artifacts" / "sha256" / digest[:2] / digest[2:]


def local_blobs(root: str | os.PathLike[str]) -> set[str]:
    base = Path(root) / "artifacts" / "sha256"
    if not base.is_dir():
        return set()
    return {p.parent.name + p.name for p in base.glob("*/*") if p.is_file()}


def local_temporaries(root: str | os.PathLike[str]) -> list[Path]:
    tmp = Path(root) / "artifacts" / "tmp"
    return sorted(tmp.iterdir()) if tmp.is_dir() else []


def _writable(path: Path) -> None:
    os.chmod(path, 0o644)  # blobs are published read-only


def flip_byte(path: str | os.PathLike[str], offset: int | None = None) -> None:
    path = Path(path)
    _writable(path)
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))
    os.chmod(path, 0o444)


def truncate(path: str | os.PathLike[str], keep: int | None = None) -> None:
    path = Path(path)
    _writable(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])
    os.chmod(path, 0o444)


def delete(path: str | os.PathLike[str]) -> None:
    path = Path(path)
    _writable(path)
    path.unlink()


# ---------------------------------------------------------------------------------------------------- registry views


def snapshot(reg: Any) -> dict[str, dict]:
    """What every reader must agree on: per model, (version, stage, digest, semver), aliases and tags."""
    out = {}
    for name in reg.models():
        versions = reg.versions(name)
        out[name] = {
            "versions": [(v.version, v.stage, v.digest, v.semver) for v in versions],
            "aliases": {a: v.version for v in versions for a in v.aliases},
            "tags": {v.version: dict(v.tags) for v in versions},
        }
    return out


def check_audit(events: list[Any]) -> None:
    """seq is 1..N without gaps or repeats; timestamps never go backwards."""
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1)), f"audit seqs are not 1..{len(events)}: {seqs}"
    for a, b in zip(events, events[1:]):
        assert a.ts <= b.ts, f"event {b.seq} ({b.ts}) is dated before event {a.seq} ({a.ts})"


def check_invariants(reg: Any) -> None:
    """Rules that hold for every model of every registry at every moment."""
    for name in reg.models():
        versions = reg.versions(name)
        assert [v.version for v in versions] == list(range(1, len(versions) + 1)), f"{name}: version gap"
        prod = [v.version for v in versions if v.stage == "production"]
        assert len(prod) <= 1, f"{name}: several versions in production: {prod}"
        champion = [v.version for v in versions if "champion" in v.aliases]
        assert champion == prod, f"{name}: champion alias on {champion}, production is {prod}"
        semvers = [v.semver for v in versions]
        assert len(set(semvers)) == len(semvers), f"{name}: repeated semver in {semvers}"


# ---------------------------------------------------------------------------------------------------- workers


def _report_errors(queue: Any, role: str, wid: int) -> Any:
    def wrap(fn: Any) -> Any:
        try:
            fn()
        except BaseException:
            queue.put(("error", role, wid, traceback.format_exc()))
            raise

    return wrap


def _rounds(total: int, rounds: int) -> list[int]:
    """How many of ``total`` operations to do in each round."""
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def registrar(
    root: str, wid: int, count: int, workdir: str, barrier: Any, first: Any, queue: Any, rounds: int = 1
) -> None:
    """Register ``count`` distinct artifacts as versions of MODEL; report (version, digest) for each.

    Work is split into ``rounds``; every worker starts each round at ``barrier``, so the different kinds of
    writers overlap all along instead of one kind finishing first."""

    def run() -> None:
        from model_ops.registry import Registry

        reg = Registry.open(root, actor=f"registrar-{wid}")
        paths = [
            write_file(Path(workdir) / f"w{wid}" / f"{i}", "model.bin", unique_bytes(f"w{wid}-{i}", 4096))
            for i in range(count)
        ]
        got = []
        for n in _rounds(count, rounds):
            barrier.wait(timeout=120)
            for path in paths[len(got) : len(got) + n]:
                mv = reg.register(MODEL, path, params={"worker": wid})
                got.append((mv.version, mv.digest))
                first.set()
        queue.put(("registrar", "registrar", wid, got))

    _report_errors(queue, "registrar", wid)(run)


def _in_rounds(total: int, rounds: int, barrier: Any, first: Any, step: Any) -> None:
    """Call ``step(i)`` for i in 0..total-1, ``rounds`` rounds each started at ``barrier``; wait for the first
    registration before the first step."""
    i = 0
    for r, n in enumerate(_rounds(total, rounds)):
        barrier.wait(timeout=120)
        if r == 0:
            assert first.wait(timeout=120), "no version was registered"
        for _ in range(n):
            step(i)
            i += 1


def alias_mover(root: str, wid: int, moves: int, barrier: Any, first: Any, queue: Any, rounds: int = 1) -> None:
    """Move alias ``challenger`` back and forth between version 1 and the newest version; count the moves made.

    Only this process touches ``challenger``, so it knows exactly which calls change it (each such call is one
    alias_set event) and which are no-ops.
    """

    def run() -> None:
        from model_ops.registry import Registry

        reg = Registry.open(root, actor="mover")
        state = {"current": None, "writes": 0}

        def step(i: int) -> None:
            target = reg.resolve(f"models:/{MODEL}@latest").version if i % 2 == 0 else 1
            mv = reg.set_alias(MODEL, "challenger", target, reason=f"move {i}")
            assert mv.version == target and "challenger" in mv.aliases
            if target != state["current"]:
                state["writes"] += 1
                state["current"] = target

        _in_rounds(moves, rounds, barrier, first, step)
        reg.remove_alias(MODEL, "challenger", reason="done")
        queue.put(("mover", "mover", wid, state["writes"] + 1))

    _report_errors(queue, "mover", wid)(run)


def transitioner(root: str, wid: int, steps: int, barrier: Any, first: Any, queue: Any, rounds: int = 1) -> None:
    """Walk the newest versions through staging into production and back; count the events that must result.

    The only process changing stages, so it knows every version's stage: each call is a valid move, and the number
    of events it writes is exact (promotion: stage + champion, plus retiring the previous production version;
    leaving production: stage + champion removed; anything else: one stage change).
    """

    def run() -> None:
        from model_ops.registry import Registry

        reg = Registry.open(root, actor="transitioner")
        stages: dict[int, str] = {}
        state: dict[str, Any] = {"prod": None, "events": 0}

        def step(i: int) -> None:
            v = reg.resolve(f"models:/{MODEL}@latest").version  # never archived: only newer versions retire it
            prod = state["prod"]
            stage = stages.get(v, "development")
            if stage == "development":
                target, n = "staging", 1
            elif stage == "staging":
                target, n = "production", (3 if prod not in (None, v) else 2)
                if prod not in (None, v):
                    stages[prod] = "archived"
                state["prod"] = v
            else:  # production
                target, n = "staging", 2
                state["prod"] = None
            mv = reg.transition(f"models:/{MODEL}/{v}", target, reason=f"step {i}")
            assert mv.stage == target, (v, target, mv.stage)
            stages[v] = target
            state["events"] += n

        _in_rounds(steps, rounds, barrier, first, step)
        queue.put(("transitioner", "transitioner", wid, state["events"]))

    _report_errors(queue, "transitioner", wid)(run)


def crash_worker(root: str, start: int, workdir: str, limit: int = 0) -> None:
    """Register artifact ``start``, ``start + 1``, ... in a loop, announcing each call on stdout (``go I`` before
    it starts, ``done I VERSION DIGEST SECONDS`` after it returns), so a parent can SIGKILL it at a chosen point.

    Artifact K always has the same content (a single file for even K, a directory of three files for odd K), so
    a new worker started at the K a killed one was working on retries that registration, as a user would."""
    from model_ops.registry import Registry

    reg = Registry.open(root, actor=f"crash-{os.getpid()}")
    work = Path(workdir) / str(os.getpid())
    i = 0
    while not limit or i < limit:
        k = start + i
        if k % 2:
            path = write_tree(work / str(k), {f"part{j}.bin": unique_bytes(f"{k}-{j}", 2 << 20) for j in range(3)})
        else:
            path = write_file(work / str(k), "model.bin", unique_bytes(str(k), 6 << 20))
        sys.stdout.write(f"go {i}\n")
        sys.stdout.flush()
        t0 = time.perf_counter()
        mv = reg.register(MODEL, path)
        dt = time.perf_counter() - t0
        sys.stdout.write(f"done {i} {mv.version} {mv.digest} {dt:.6f}\n")
        sys.stdout.flush()
        shutil.rmtree(work / str(k))  # the store has its own copy
        i += 1


def s3_registrar(root: str, wid: int, count: int, workdir: str, barrier: Any, queue: Any) -> None:
    """Like :func:`registrar`, for S3 roots (the environment carries the endpoint and credentials)."""

    def run() -> None:
        from model_ops.registry import Registry

        reg = Registry.open(root, actor=f"s3-{wid}")
        paths = [
            write_file(Path(workdir) / f"s3w{wid}" / f"{i}", "model.bin", unique_bytes(f"s3w{wid}-{i}", 2048))
            for i in range(count)
        ]
        barrier.wait(timeout=120)
        got = [(mv.version, mv.digest) for mv in (reg.register(MODEL, p) for p in paths)]
        queue.put(("registrar", "registrar", wid, got))

    _report_errors(queue, "s3-registrar", wid)(run)
