"""The registry's guarantees with everything in S3: a real S3 HTTP endpoint (moto's server on 127.0.0.1), both the
Delta tables and the artifacts under ``s3://model-ops-test/<unique prefix>``."""

from __future__ import annotations

import multiprocessing
import os
import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from model_ops.artifacts.blobstore import S3BlobStore
from model_ops.errors import IntegrityError, NotFoundError, PolicyError
from model_ops.location import resolve_root, s3_client
from model_ops.registry import Registry
from model_ops_tests import helpers
from model_ops_tests.conftest import S3_BUCKET
from model_ops_tests.helpers import (
    MODEL,
    check_audit,
    check_invariants,
    s3_keys,
    snapshot,
    tiny_model,
    training_data,
    unique_bytes,
    write_file,
)

pytestmark = pytest.mark.s3


def _blob_key(root: str, digest: str) -> str:
    return resolve_root(root).key("artifacts", "sha256", digest[:2], digest[2:])


def _file_blob(reg: Registry, digest: str) -> str:
    (entry,) = reg.artifacts.manifest(digest).files
    return entry.sha256


@pytest.mark.slow
def test_lifecycle_on_s3(s3_root: str, tmp_path: Path) -> None:
    reg = Registry.open(s3_root, actor="alice")
    v = [reg.register(MODEL, write_file(tmp_path / str(i), "model.bin", unique_bytes(f"s3-{i}"))) for i in range(3)]
    assert [mv.version for mv in v] == [1, 2, 3]
    again = reg.register(MODEL, write_file(tmp_path / "again", "model.bin", unique_bytes("s3-1")))
    assert again.version == 2 and again.digest == v[1].digest
    X, _ = training_data()
    model = reg.register_model("clf", tiny_model(9))
    np.testing.assert_array_equal(reg.load_model(model.ref).predict(X), tiny_model(9).predict(X))

    reg.transition(f"{MODEL}/1", "staging", reason="r")
    reg.transition(f"{MODEL}/1", "production", reason="first release")
    after_first_release = reg.audit()[-1].ts
    reg.transition(f"{MODEL}/2", "staging", reason="r")
    reg.transition(f"{MODEL}/2", "production", reason="second release")
    with pytest.raises(PolicyError):
        reg.transition(f"{MODEL}/3", "production", reason="skips staging")
    reg.set_alias(MODEL, "challenger", 3, reason="r")
    back = reg.rollback(MODEL, reason="2 misbehaves")
    assert back.version == 1 and reg.resolve(f"models:/{MODEL}@champion").version == 1
    assert {mv.version: mv.stage for mv in reg.versions(MODEL)} == {1: "production", 2: "archived", 3: "development"}

    events = reg.audit()
    check_audit(events)
    assert [e.kind for e in events].count("rollback") == 1
    then = reg.as_of(after_first_release)[MODEL]
    assert then["production"] == 1 and then["aliases"] == {"champion": 1}
    assert reg.as_of(after_first_release - timedelta(microseconds=1))[MODEL]["production"] is None

    other = Registry.open(s3_root, actor="bob")
    assert snapshot(other) == snapshot(reg)
    check_invariants(other)
    assert other.fsck() == []
    keys = s3_keys(s3_root)
    assert any("/registry/events/_delta_log/" in k for k in keys)
    assert any("/artifacts/sha256/" in k for k in keys)
    assert not Path("s3:").exists()  # nothing went to a local folder by mistake


@pytest.mark.slow
def test_multipart_round_trip_dedup_and_damage(s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    part = 5 << 20  # the smallest part S3 accepts
    monkeypatch.setattr(S3BlobStore, "PART_SIZE", part)
    data = os.urandom(2 * part + 12345)  # three parts, the last one short
    reg = Registry.open(s3_root)
    mv = reg.register("big", write_file(tmp_path / "in", "weights.bin", data))
    blob = _file_blob(reg, mv.digest)
    head = s3_client().head_object(Bucket=S3_BUCKET, Key=_blob_key(s3_root, blob))
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3"), "the upload was not a three-part multipart upload"
    assert list(reg.artifacts.blobs.iter_temporaries()) == []
    got = reg.fetch(mv.ref, tmp_path / "out" / "weights.bin")
    assert got.read_bytes() == data

    before = s3_keys(s3_root, "artifacts")
    twin = reg.register("big-twin", write_file(tmp_path / "in2", "weights.bin", data))
    assert twin.digest == mv.digest and s3_keys(s3_root, "artifacts") == before  # nothing uploaded again
    assert reg.fsck() == []

    # Flip one byte of the stored file (overwriting the object behind the store's back).
    key = _blob_key(s3_root, blob)
    body = bytearray(s3_client().get_object(Bucket=S3_BUCKET, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3_client().put_object(Bucket=S3_BUCKET, Key=key, Body=bytes(body))
    dest = tmp_path / "refused" / "weights.bin"
    with pytest.raises(IntegrityError):
        reg.fetch(mv.ref, dest)
    assert not dest.exists()
    problems = reg.fsck()
    assert any(p.startswith("big v1:") and blob in p for p in problems), problems
    assert any(p.startswith("big-twin v1:") and blob in p for p in problems), problems

    # A damaged or missing manifest.
    small = reg.register("small", write_file(tmp_path / "in3", "model.bin", b"small model"))
    mkey = _blob_key(s3_root, small.digest)
    s3_client().put_object(Bucket=S3_BUCKET, Key=mkey, Body=b"{}" + b" " * 10)
    with pytest.raises(IntegrityError):
        reg.fetch(small.ref, tmp_path / "m1")
    s3_client().delete_object(Bucket=S3_BUCKET, Key=mkey)
    with pytest.raises(NotFoundError):
        reg.fetch(small.ref, tmp_path / "m2")
    assert any(p.startswith("small v1:") for p in reg.fsck())


@pytest.mark.slow
def test_concurrent_writers_on_s3(s3_root: str, tmp_path: Path) -> None:
    """Two processes and two threads (each with its own Registry object) register at once."""
    per_writer, n_procs, n_threads = 5, 2, 2
    ctx = multiprocessing.get_context("spawn")
    mp_barrier, q = ctx.Barrier(n_procs + 1), ctx.Queue()
    procs = [
        ctx.Process(target=helpers.s3_registrar, args=(s3_root, w, per_writer, str(tmp_path), mp_barrier, q))
        for w in range(n_procs)
    ]
    for p in procs:
        p.start()

    th_barrier = threading.Barrier(n_threads + 1)
    got: dict[str, list[tuple[int, str]]] = {}
    errors: list[BaseException] = []

    def thread_writer(t: int) -> None:
        try:
            reg = Registry.open(s3_root, actor=f"thread-{t}")
            paths = [
                write_file(tmp_path / f"th{t}" / str(i), "model.bin", unique_bytes(f"th{t}-{i}", 2048))
                for i in range(per_writer)
            ]
            th_barrier.wait(timeout=120)
            got[f"thread-{t}"] = [(mv.version, mv.digest) for mv in (reg.register(MODEL, p) for p in paths)]
        except BaseException as e:  # reported below
            errors.append(e)
            th_barrier.abort()

    threads = [threading.Thread(target=thread_writer, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    try:
        mp_barrier.wait(timeout=120)  # every process is ready ...
        th_barrier.wait(timeout=120)  # ... and every thread: go
        for _ in range(n_procs):
            item = q.get(timeout=300)
            assert item[0] != "error", item[3]
            got[f"process-{item[2]}"] = item[3]
    finally:
        for t in threads:
            t.join(timeout=300)
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert not errors, errors
    assert [p.exitcode for p in procs] == [0] * n_procs

    total = per_writer * (n_procs + n_threads)
    numbers = sorted(v for vals in got.values() for v, _ in vals)
    assert numbers == list(range(1, total + 1)), got
    reg = Registry.open(s3_root)
    assert [mv.version for mv in reg.versions(MODEL)] == list(range(1, total + 1))
    for vals in got.values():
        for v, digest in vals:
            assert reg.get(MODEL, v).digest == digest
    events = reg.audit()
    check_audit(events)
    assert len(events) == total
    assert reg.fsck() == []
