"""Garbage collection beside a registration of the same bytes: an acknowledged version never loses a blob,
whichever order the two interleave in."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from model_ops.registry import Registry, maintenance


def weights(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / "files" / name
    path.mkdir(parents=True)
    (path / "weights.dat").write_bytes(content)
    (path / "config.json").write_text('{"layers": 2}')
    return path


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def roots(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Registry, Registry, Path]:
    """A registry with one version and the blobs of an artifact nobody references (left by a failed
    registration), seen by two processes: one collects garbage, the other registers; on disk and on S3."""
    monkeypatch.delenv("MODEL_OPS_POLICY", raising=False)
    root = tmp_path / "root" if request.param == "local" else request.getfixturevalue("s3_root")
    collector = Registry.open(root, actor="alice")
    collector.register("m", weights(tmp_path, "v1", b"first" * 1000))
    garbage = weights(tmp_path, "v2", b"second" * 1000)
    collector.artifacts.put(garbage)  # stored, never committed
    return collector, Registry.open(root, actor="bob"), garbage


def intact(reg: Registry, tmp_path: Path) -> None:
    assert maintenance.fsck(reg) == []
    out = reg.fetch("models:/m/2", tmp_path / "fetched")
    assert (out / "weights.dat").read_bytes() == b"second" * 1000


@pytest.mark.slow
def test_a_registration_committed_after_gc_chose_its_blobs_keeps_them(
    roots: tuple[Registry, Registry, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector, writer, garbage = roots
    store = collector.artifacts.blobs
    real = type(store).quarantine
    calls = {"n": 0}

    def register_first(self, digest: str) -> bool:  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:  # gc has decided; the writer reuses the blobs in place and commits
            assert writer.register("m", garbage).version == 2
        return real(self, digest)

    monkeypatch.setattr(type(store), "quarantine", register_first)
    report = maintenance.gc(collector, apply=True, grace=timedelta(0))
    assert len(report["unreferenced"]) == 2 and report["restored"] == 2  # manifest and weights (config is v1's)
    intact(collector, tmp_path)


@pytest.mark.slow
def test_a_registration_that_found_its_blobs_before_gc_took_them_stores_them_again(
    roots: tuple[Registry, Registry, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector, writer, garbage = roots
    real_put = writer.artifacts.put
    calls = {"n": 0}

    def collect_after_put(path, flavor=None):  # type: ignore[no-untyped-def]
        stored = real_put(path, flavor)
        calls["n"] += 1
        if calls["n"] == 1:  # the blobs were there when the writer looked; gc takes them before it commits
            report = maintenance.gc(collector, apply=True, grace=timedelta(0))
            assert len(report["unreferenced"]) == 2 and report["restored"] == 0
        return stored

    monkeypatch.setattr(writer.artifacts, "put", collect_after_put)
    assert writer.register("m", garbage).version == 2  # acknowledged only once its blobs are back
    intact(collector, tmp_path)


@pytest.mark.slow
def test_gc_finishes_what_an_interrupted_collection_left_in_quarantine(
    roots: tuple[Registry, Registry, Path], tmp_path: Path
) -> None:
    collector, writer, garbage = roots
    store = collector.artifacts.blobs
    chosen = [b.digest for b in maintenance.gc(collector)["unreferenced"]]
    for digest in chosen:  # a collection killed between its two phases
        assert store.quarantine(digest)
    writer.register("m", garbage)  # finds them missing and stores them again
    maintenance.gc(collector, apply=True, grace=timedelta(0))
    assert list(store.iter_quarantined()) == []
    intact(collector, tmp_path)
    assert maintenance.gc(collector, apply=True, grace=timedelta(0))["unreferenced"] == []
