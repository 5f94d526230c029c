"""Large files stored as content-defined chunks: identical bytes back, small edits store little, damage is found,
and garbage collection treats chunks as it treats any blob."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from model_ops.artifacts import chunking
from model_ops.artifacts.manifest import FileEntry, Manifest
from model_ops.artifacts.store import ArtifactStore
from model_ops.errors import IntegrityError, UsageError
from model_ops.location import Location
from model_ops.registry import Registry, maintenance

THRESHOLD = 1 << 20  # small files chunked in these tests, so each stays fast


def checkpoint(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "np"})
    return path


def random_tensors(count: int, elements: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layers.{i}.weight": rng.standard_normal(elements, dtype=np.float32) for i in range(count)}


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(Location(str(tmp_path / "root")), chunk_threshold=THRESHOLD)


def blob_files(store: ArtifactStore) -> set[str]:
    return {b.digest for b in store.blobs.iter_blobs()}


def test_a_large_file_is_stored_as_chunks_and_comes_back_byte_for_byte(store: ArtifactStore, tmp_path: Path) -> None:
    source = checkpoint(tmp_path / "ckpt" / "model.safetensors", random_tensors(8, 250_000))
    stored = store.put(source)
    (entry,) = stored.manifest.files
    assert entry.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert entry.size == source.stat().st_size
    assert len(entry.chunks) >= 8 and sum(c.size for c in entry.chunks) == entry.size
    assert all(chunking.MINIMUM <= c.size <= chunking.MAXIMUM for c in entry.chunks[:-1])
    assert stored.new_bytes == entry.size  # a fresh store: every chunk is new (random tensors share nothing)

    assert store.read_file(stored.digest) == source.read_bytes()
    out = store.fetch(stored.digest, tmp_path / "fetched.safetensors")
    assert out.read_bytes() == source.read_bytes()
    assert store.check(stored.digest) == []
    assert store.missing(stored.digest) == []
    assert set(entry.blobs) | {stored.digest} == store.reachable([stored.digest]) == blob_files(store)

    again = store.put(source)
    assert again.digest == stored.digest and again.new_bytes == 0


def test_a_small_file_stays_one_blob_and_its_manifest_keeps_the_format_it_always_had(
    store: ArtifactStore, tmp_path: Path
) -> None:
    source = tmp_path / "small.bin"
    source.write_bytes(b"x" * 1000)
    stored = store.put(source)
    assert stored.manifest.files[0].chunks == ()
    assert b"chunks" not in store.blobs.read_bytes(stored.digest)
    # The digest a manifest of one small file has always had: registrations before chunking still dedupe.
    old = Manifest("file", "files", (FileEntry("small.bin", hashlib.sha256(b"x" * 1000).hexdigest(), 1000),))
    assert stored.digest == hashlib.sha256(old.to_bytes()).hexdigest()


def test_a_one_kib_edit_inside_a_large_file_stores_a_few_chunks(store: ArtifactStore, tmp_path: Path) -> None:
    source = checkpoint(tmp_path / "a" / "model.safetensors", random_tensors(16, 250_000))  # 16 MB
    first = store.put(source)
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 1024] = os.urandom(1024)
    edited = tmp_path / "b" / "model.safetensors"
    edited.parent.mkdir()
    edited.write_bytes(bytes(data))
    second = store.put(edited)
    assert second.digest != first.digest
    assert 0 < second.new_bytes <= 2 * chunking.MAXIMUM
    shared = set(first.manifest.files[0].blobs) & set(second.manifest.files[0].blobs)
    assert len(shared) >= len(first.manifest.files[0].chunks) - 3
    assert store.read_file(second.digest) == bytes(data)


def test_a_checkpoint_with_a_tenth_of_its_tensors_retrained_stores_about_a_tenth(
    store: ArtifactStore, tmp_path: Path
) -> None:
    tensors = random_tensors(10, 1_000_000)  # 10 tensors of 4 MB
    store.put(checkpoint(tmp_path / "step1" / "model.safetensors", tensors))
    tensors["layers.3.weight"] = np.random.default_rng(1).standard_normal(1_000_000, dtype=np.float32)
    second = store.put(checkpoint(tmp_path / "step2" / "model.safetensors", tensors))
    total = second.manifest.files[0].size
    changed = tensors["layers.3.weight"].nbytes
    # What changed, plus at most the chunk on either side of it that the edit's edges fall into.
    assert changed <= second.new_bytes <= changed + 2 * chunking.MAXIMUM
    assert second.new_bytes <= 0.15 * total, second.new_bytes / total


def test_a_damaged_or_missing_chunk_is_found_and_nothing_damaged_is_handed_over(
    store: ArtifactStore, tmp_path: Path
) -> None:
    source = checkpoint(tmp_path / "ckpt" / "model.safetensors", random_tensors(4, 250_000))
    stored = store.put(source)
    chunks = stored.manifest.files[0].chunks
    damaged = store.blobs._path(chunks[1].sha256)  # type: ignore[attr-defined]
    os.chmod(damaged, 0o644)
    raw = bytearray(damaged.read_bytes())
    raw[100] ^= 0xFF
    damaged.write_bytes(bytes(raw))

    problems = store.check(stored.digest)
    assert len(problems) == 1 and f"chunk 2 of {len(chunks)} ({chunks[1].sha256})" in problems[0]
    with pytest.raises(IntegrityError, match=chunks[1].sha256):
        store.fetch(stored.digest, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    with pytest.raises(IntegrityError):
        store.read_file(stored.digest)

    store.blobs.delete(chunks[2].sha256)
    assert store.missing(stored.digest) == [chunks[2].sha256]
    assert any(f"chunk 3 of {len(chunks)}" in p and p.endswith("is missing") for p in store.check(stored.digest))

    store.put(source)  # storing the same file again puts back what is missing (an altered chunk is fsck's to name)
    assert store.missing(stored.digest) == []
    assert len(store.check(stored.digest)) == 1


def test_a_manifest_whose_chunks_do_not_add_up_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    source = checkpoint(tmp_path / "ckpt" / "model.safetensors", random_tensors(2, 250_000))
    doc = store.put(source).manifest.to_dict()
    doc["files"][0]["chunks"].pop()
    import json

    with pytest.raises(IntegrityError, match="add up to"):
        Manifest.from_bytes(json.dumps(doc).encode())


def test_a_file_that_grows_while_it_is_stored_is_refused(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = checkpoint(tmp_path / "ckpt" / "model.safetensors", random_tensors(2, 250_000))
    real_put = type(store.blobs).put_chunk
    grown = []

    def put_then_append(self, digest, data):  # type: ignore[no-untyped-def]
        if not grown:
            with open(source, "ab") as f:
                f.write(b"more")
            grown.append(True)
        return real_put(self, digest, data)

    monkeypatch.setattr(type(store.blobs), "put_chunk", put_then_append)
    with pytest.raises(UsageError, match="changed while it was being stored"):
        store.put(source)


def test_a_file_cut_window_by_window_gives_the_chunks_of_the_whole(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = checkpoint(tmp_path / "ckpt" / "model.safetensors", random_tensors(6, 250_000))
    at_once = chunking.cut_points(memoryview(source.read_bytes()))
    monkeypatch.setattr(chunking, "WINDOW", 2 * chunking.MAXIMUM)  # a dozen windows
    entry = store.put(source).manifest.files[0]
    assert [c.size for c in entry.chunks] == [n for _, n in at_once]


# ---------------------------------------------------------------------------- registry: load, fsck, gc


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.delenv("MODEL_OPS_POLICY", raising=False)
    monkeypatch.setattr(chunking, "CHUNK_THRESHOLD", THRESHOLD)
    return Registry.open(tmp_path / "root", actor="alice")


def test_fsck_names_a_damaged_chunk_of_a_registered_version(registry: Registry, tmp_path: Path) -> None:
    source = checkpoint(tmp_path / "ckpt" / "model.safetensors", random_tensors(4, 250_000))
    mv = registry.register("llm", source.parent)
    assert maintenance.fsck(registry) == []
    (entry,) = registry.artifacts.manifest(mv.digest).files
    registry.artifacts.blobs.delete(entry.chunks[0].sha256)
    found = maintenance.fsck(registry)
    assert any(entry.chunks[0].sha256 in problem for problem in found), found


def test_gc_collects_only_the_chunks_no_version_references(registry: Registry, tmp_path: Path) -> None:
    tensors = random_tensors(8, 250_000)
    kept = registry.register("llm", checkpoint(tmp_path / "v1" / "model.safetensors", tensors).parent)
    tensors["layers.0.weight"] = np.zeros(250_000, dtype=np.float32)
    orphan = registry.artifacts.put(checkpoint(tmp_path / "v2" / "model.safetensors", tensors).parent)
    kept_blobs = registry.artifacts.reachable([kept.digest])
    only_orphan = registry.artifacts.reachable([orphan.digest]) - kept_blobs
    assert only_orphan and orphan.new_bytes < orphan.manifest.total_size / 4  # most chunks are shared

    report = maintenance.gc(registry, apply=True, grace=timedelta(0))
    assert {b["digest"] for b in report["unreferenced"]} == only_orphan
    assert maintenance.fsck(registry) == []
    assert (
        registry.fetch("models:/llm/1", tmp_path / "back").joinpath("model.safetensors").read_bytes()
        == (tmp_path / "v1" / "model.safetensors").read_bytes()
    )


def test_a_registration_whose_chunks_gc_took_before_it_committed_stores_them_again(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register("llm", checkpoint(tmp_path / "v1" / "model.safetensors", random_tensors(2, 250_000)).parent)
    garbage = checkpoint(tmp_path / "v2" / "model.safetensors", random_tensors(4, 250_000, seed=7)).parent
    registry.artifacts.put(garbage)  # stored by a registration that failed: every chunk unreferenced
    writer = Registry.open(tmp_path / "root", actor="bob")
    real_put = writer.artifacts.put
    taken = {}

    def collect_after_put(path, flavor=None):  # type: ignore[no-untyped-def]
        stored = real_put(path, flavor)
        if not taken:  # the chunks were there when the writer looked; gc takes them before it commits
            taken["report"] = maintenance.gc(registry, apply=True, grace=timedelta(0))
        return stored

    monkeypatch.setattr(writer.artifacts, "put", collect_after_put)
    mv = writer.register("llm", garbage)
    assert len(taken["report"]["unreferenced"]) == len(writer.artifacts.reachable([mv.digest]))
    assert maintenance.fsck(registry) == []
    assert (
        registry.fetch(f"models:/llm/{mv.version}", tmp_path / "back").joinpath("model.safetensors").read_bytes()
        == (garbage / "model.safetensors").read_bytes()
    )


@pytest.mark.s3
def test_chunks_on_s3_come_back_byte_for_byte_and_are_shared(s3_root: str, tmp_path: Path) -> None:
    store = ArtifactStore.open(s3_root)
    store.chunk_threshold = THRESHOLD
    tensors = random_tensors(4, 250_000)
    source = checkpoint(tmp_path / "a" / "model.safetensors", tensors)
    first = store.put(source)
    assert len(first.manifest.files[0].chunks) > 1 and first.new_bytes == source.stat().st_size
    tensors["layers.2.weight"] = np.ones(250_000, dtype=np.float32)
    second = store.put(checkpoint(tmp_path / "b" / "model.safetensors", tensors))
    assert 1_000_000 <= second.new_bytes <= 1_000_000 + 2 * chunking.MAXIMUM
    assert store.fetch(first.digest, tmp_path / "back.safetensors").read_bytes() == source.read_bytes()
    assert store.check(second.digest) == []


def test_a_failing_chunk_write_surfaces_as_itself_and_leaves_no_mapping_behind(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    source = checkpoint(tmp_path / "ckpt" / "model.safetensors", random_tensors(8, 250_000))
    monkeypatch.setattr(chunking, "WINDOW", 2 * chunking.MAXIMUM)
    real_put = type(store.blobs).put_chunk
    calls = {"n": 0}

    def full_disk(self, digest, data):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(self, digest, data)

    monkeypatch.setattr(type(store.blobs), "put_chunk", full_disk)
    with pytest.raises(OSError) as caught:
        store.put(source)
    assert caught.value.errno == errno.ENOSPC and not isinstance(caught.value, BufferError)
    monkeypatch.setattr(type(store.blobs), "put_chunk", real_put)
    stored = store.put(source)  # what the failure left is only unreferenced chunks
    assert store.read_file(stored.digest) == source.read_bytes()


@pytest.mark.parametrize("step", [4096, 65_536, 1 << 20])
def test_a_local_fetch_hashes_behind_the_copy_over_many_steps(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    monkeypatch.setattr(chunking, "HASH_STEP", step)  # the hasher wakes many times during the copy
    source = checkpoint(tmp_path / "ckpt" / "model.safetensors", random_tensors(6, 300_000, seed=step))
    stored = store.put(source)
    out = store.fetch(stored.digest, tmp_path / f"fetched-{step}.safetensors")
    assert out.read_bytes() == source.read_bytes()


def test_a_failing_hasher_or_copy_surfaces_as_itself_and_publishes_nothing(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = checkpoint(tmp_path / "ckpt" / "model.safetensors", random_tensors(6, 300_000))
    stored = store.put(source)
    real_preadv = os.preadv

    def failing_preadv(*args: object) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(chunking.os, "preadv", failing_preadv)
    with pytest.raises(OSError, match="Input/output error"):
        store.fetch(stored.digest, tmp_path / "a.safetensors")
    monkeypatch.setattr(chunking.os, "preadv", real_preadv)
    assert not (tmp_path / "a.safetensors").exists()

    calls = {"n": 0}
    real_copy_out = store.blobs.copy_out  # type: ignore[attr-defined]

    def copy_then_fail(digest: str, size: int, out: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real_copy_out(digest, size, out)

    monkeypatch.setattr(store.blobs, "copy_out", copy_then_fail)
    with pytest.raises(OSError, match="No space left"):
        store.fetch(stored.digest, tmp_path / "b.safetensors")
    assert not (tmp_path / "b.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "root"]  # no temporary left behind
