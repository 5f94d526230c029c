"""A dedup hit never reuses a blob that is known to be damaged, and on S3 it renews the age that gc's grace
period reads, so a concurrent gc cannot remove a blob a registration is about to reference again."""

from __future__ import annotations

import os
import time
from pathlib import Path

import boto3
import pytest

from model_ops.artifacts import blobstore
from model_ops.artifacts.blobstore import LocalBlobStore, S3BlobStore
from model_ops.location import resolve_root
from model_ops_tests.conftest import S3_BUCKET


def test_local_truncated_blob_is_replaced_on_the_next_put(tmp_path: Path) -> None:
    store = LocalBlobStore(resolve_root(tmp_path / "root").child("artifacts"))
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(4096))
    blob = store.put_file(src)
    path = store._path(blob.digest)
    os.chmod(path, 0o644)
    path.write_bytes(src.read_bytes()[:100])  # truncated by a failing disk or a careless hand
    assert store.verify(blob.digest) is not None
    again = store.put_file(src)
    assert again.digest == blob.digest and not again.existed
    assert store.verify(blob.digest) is None
    assert store.read_bytes(blob.digest) == src.read_bytes()


def test_local_damaged_manifest_sized_blob_is_replaced_by_put_bytes(tmp_path: Path) -> None:
    store = LocalBlobStore(resolve_root(tmp_path / "root").child("artifacts"))
    data = b'{"manifest": 1}'
    blob = store.put_bytes(data)
    path = store._path(blob.digest)
    os.chmod(path, 0o644)
    path.write_bytes(b'{"manifest": 2}')  # same size, different bytes: only a full check sees it
    assert not store.put_bytes(data).existed
    assert store.read_bytes(blob.digest) == data


@pytest.mark.slow
@pytest.mark.s3
def test_s3_damaged_blob_is_replaced_and_old_blob_is_touched(
    s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = S3BlobStore(resolve_root(s3_root).child("artifacts"))
    client = boto3.client("s3")
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(5000))
    blob = store.put_file(src)
    key = store._key(blob.digest)
    client.put_object(Bucket=S3_BUCKET, Key=key, Body=b"short")  # damaged in place
    again = store.put_file(src)
    assert not again.existed and store.verify(blob.digest) is None

    first = client.head_object(Bucket=S3_BUCKET, Key=key)["LastModified"]
    time.sleep(1.1)  # S3 timestamps have one-second resolution
    assert store.put_file(src).existed
    assert client.head_object(Bucket=S3_BUCKET, Key=key)["LastModified"] == first  # young: left alone
    monkeypatch.setattr(blobstore, "TOUCH_AFTER_SECONDS", 0)
    assert store.put_file(src).existed
    assert client.head_object(Bucket=S3_BUCKET, Key=key)["LastModified"] > first
    assert store.read_bytes(blob.digest) == src.read_bytes()
