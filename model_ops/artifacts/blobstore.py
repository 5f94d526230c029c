"""Content-addressed blob storage: ``sha256/ab/cdef…`` on a local disk or in S3.

Rules every backend keeps:
- a blob's name is the SHA-256 of its bytes, so storing the same bytes twice stores nothing new;
- a blob is published atomically (fully written under a temporary name, then made visible) and never overwritten;
- every read re-hashes what it returns and fails with :class:`IntegrityError` on a mismatch, never a silent load;
- memory stays bounded by a few chunk buffers whatever the size of the blob.

On S3, a request that fails transiently is retried by the client (see :mod:`model_ops.location`); a body cut off
mid-stream is resumed here with a ranged GET, still hashed end to end; a multipart upload that fails is aborted, and
one a killed process left behind is listed by :meth:`BlobStore.iter_multipart` for ``gc`` to abort.

Hashing uses windowed ``mmap`` (the kernel hands pages straight to OpenSSL's SHA-256, no ``read()`` copy), and
a local publish uses ``copy_file_range`` (an in-kernel copy), the two cheapest ways to do each on Linux.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import mmap
import os
import re
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from model_ops.artifacts.progress import Progress
from model_ops.errors import IntegrityError, NotFoundError, UsageError
from model_ops.location import Deadline, Location, is_transient, s3_client

log = logging.getLogger(__name__)

HASH_WINDOW = 64 << 20
# Half of gc's default grace period (24 h): a reused S3 blob older than this gets its LastModified renewed.
TOUCH_AFTER_SECONDS = 12 * 3600
COPY_CHUNK = 8 << 20
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    existed: bool = False  # True when the bytes were already stored (deduplicated)


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    modified: float  # seconds since the epoch


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload that was started and neither completed nor aborted. S3 keeps (and bills) its parts until
    someone aborts it, and nothing lists it as an object, so ``gc`` looks for these explicitly."""

    key: str
    upload_id: str
    modified: float  # when it was initiated, seconds since the epoch


def check_digest(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise UsageError(f"{digest!r} is not a SHA-256 digest", hint="a digest is 64 lowercase hex characters")
    return digest


def hash_file(path: Path, progress: Progress | None = None) -> tuple[str, int]:
    """SHA-256 and size of a file, reading it through bounded mmap windows."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset < size:
            length = min(HASH_WINDOW, size - offset)
            with mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=offset) as window:
                window.madvise(mmap.MADV_SEQUENTIAL)
                with memoryview(window) as view:
                    h.update(view)
            offset += length
            if progress:
                progress.update(length)
    return h.hexdigest(), size


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


class BlobStore(ABC):
    """Interface shared by the local and S3 stores."""

    location: Location

    @abstractmethod
    def put_file(self, path: Path, *, label: str | None = None) -> Blob: ...

    @abstractmethod
    def put_bytes(self, data: bytes) -> Blob: ...

    @abstractmethod
    def put_chunk(self, digest: str, data: bytes | memoryview) -> bool:
        """Store ``data``, which the caller has just hashed to ``digest`` (a chunk of a larger file: small, many,
        so an existing blob of the right size is trusted and renewed rather than re-read). True when written."""

    @abstractmethod
    def exists(self, digest: str) -> bool: ...

    @abstractmethod
    def size(self, digest: str) -> int | None:
        """The stored size, or None when the blob is missing."""

    @abstractmethod
    def read_bytes(self, digest: str) -> bytes:
        """The whole blob, verified. For manifests and models that fit in memory."""

    @abstractmethod
    def fetch_to(self, digest: str, dest: Path, *, label: str | None = None) -> None:
        """Copy a blob to ``dest`` (verified, atomic: ``dest`` appears only when complete and correct)."""

    @abstractmethod
    def iter_blobs(self) -> Iterator[BlobInfo]: ...

    @abstractmethod
    def delete(self, digest: str) -> None: ...

    @abstractmethod
    def quarantine(self, digest: str) -> bool:
        """Move a blob out of its name before garbage collection decides for good (False: it was not there).
        A reader or a writer that looks for it now finds it missing, so a writer stores it again."""

    @abstractmethod
    def restore(self, digest: str) -> None:
        """Put a quarantined blob back under its name (a no-op where a writer already stored it again)."""

    @abstractmethod
    def purge(self, digest: str) -> None:
        """Delete a quarantined blob for good."""

    @abstractmethod
    def iter_quarantined(self) -> Iterator[BlobInfo]:
        """Blobs left in quarantine by a garbage collection that did not finish."""

    @abstractmethod
    def iter_temporaries(self) -> Iterator[BlobInfo]:
        """Leftovers of interrupted writes (digest field holds the temporary name)."""

    @abstractmethod
    def delete_temporary(self, name: str) -> None: ...

    def iter_multipart(self) -> Iterator[PendingUpload]:
        """Unfinished multipart uploads under this store. A local store has none (its temporaries are files)."""
        return iter(())

    def abort_multipart(self, upload: PendingUpload) -> None:
        """Abort an unfinished multipart upload, freeing its parts (a no-op when it is already gone)."""
        raise UsageError(f"{self.location} keeps no multipart uploads")

    @abstractmethod
    def verify(self, digest: str) -> str | None:
        """None when the blob is present and intact, else a sentence saying what is wrong."""

    @staticmethod
    def rel_key(digest: str) -> str:
        return f"sha256/{digest[:2]}/{digest[2:]}"


class LocalBlobStore(BlobStore):
    """Blobs under ``<dir>/sha256/ab/cdef…``; temporaries under ``<dir>/tmp`` on the same file system."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.root = location.path
        self.tmp_dir = self.root / "tmp"

    def _path(self, digest: str) -> Path:
        return self.root / self.rel_key(check_digest(digest))

    def _tempfile(self) -> Path:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self.tmp_dir / f"{uuid.uuid4().hex}.part"

    def _publish(self, tmp: Path, digest: str) -> bool:
        """Move ``tmp`` to its content address; False when the blob already existed (tmp is removed)."""
        final = self._path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        try:
            os.link(tmp, final)  # link() never replaces an existing name: no overwrite, even under a race
            published = True
        except FileExistsError:
            published = False
        finally:
            tmp.unlink(missing_ok=True)
        return published

    def put_file(self, path: Path, *, label: str | None = None) -> Blob:
        path = Path(path)
        before = _stat_key(os.stat(path))
        with Progress(before[0] * 2, label or f"storing {path.name}") as progress:
            digest, size = hash_file(path, progress)
            if self.exists(digest):
                if self.size(digest) == size:
                    self.touch(digest)  # keeps a blob that is about to be referenced out of reach of gc
                    return Blob(digest, size, existed=True)
                self._discard_damaged(digest)  # truncated or overwritten: replace it with the good bytes
            tmp = self._tempfile()
            try:
                _copy_file(path, tmp, progress)
                if _stat_key(os.stat(path)) != before:
                    raise UsageError(
                        f"{path} changed while it was being stored",
                        hint="store a file that no other process is writing",
                    )
                published = self._publish(tmp, digest)
            finally:
                tmp.unlink(missing_ok=True)
        return Blob(digest, size, existed=not published)

    def put_bytes(self, data: bytes) -> Blob:
        digest = hashlib.sha256(data).hexdigest()
        if self.exists(digest):
            if self.verify(digest) is None:  # small (manifests): checking the whole blob is cheap
                self.touch(digest)
                return Blob(digest, len(data), existed=True)
            self._discard_damaged(digest)
        tmp = self._tempfile()
        try:
            tmp.write_bytes(data)
            published = self._publish(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)
        return Blob(digest, len(data), existed=not published)

    def put_chunk(self, digest: str, data: bytes | memoryview) -> bool:
        # Thousands of these make one large file: plain strings and the fewest system calls (no chmod, a
        # directory created only when the first link into it fails).
        final = os.path.join(self.root, self.rel_key(check_digest(digest)))
        try:
            size: int | None = os.stat(final).st_size
        except FileNotFoundError:
            size = None
        if size == len(data):
            with contextlib.suppress(OSError):
                os.utime(final)  # keeps a chunk about to be referenced again out of reach of gc
            return False
        if size is not None:
            self._discard_damaged(digest)
        tmp = os.path.join(self.tmp_dir, f"{uuid.uuid4().hex}.part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        except FileNotFoundError:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            with open(fd, "wb") as f:
                f.write(data)  # a buffered file writes all of it or raises
            try:
                os.link(tmp, final)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.link(tmp, final)
            return True
        except FileExistsError:  # another writer published the same bytes first
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def copy_out(self, digest: str, size: int, out: BinaryIO) -> None:
        """Append the blob's bytes to ``out`` with an in-kernel copy, unverified: for a caller that hashes what it
        assembled (a chunked file, checked whole against its SHA-256) rather than every piece on the way."""
        try:
            src = open(self._path(digest), "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            raise NotFoundError(
                f"blob {digest} is missing from {self.location}",
                hint="run `model-ops fsck` to list every missing or damaged blob",
            ) from None
        with src:
            if os.fstat(src.fileno()).st_size != size:
                raise _mismatch(digest, self.location)
            out.flush()
            copied = 0
            try:
                while copied < size:
                    n = os.copy_file_range(src.fileno(), out.fileno(), size - copied)
                    if n == 0:
                        break
                    copied += n
            except OSError:
                src.seek(copied)
                out.write(src.read(size - copied))
                copied = size
            if copied != size:
                raise _mismatch(digest, self.location)

    def exists(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def _discard_damaged(self, digest: str) -> None:
        """Remove a blob whose bytes are known to be wrong, so the correct bytes can take its name. This is the
        one case where a name is reused: what was there could never have been read (reads verify)."""
        self.delete(digest)

    def touch(self, digest: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self._path(digest))

    def size(self, digest: str) -> int | None:
        try:
            return self._path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def read_bytes(self, digest: str) -> bytes:
        try:
            data = self._path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                f"blob {digest} is missing from {self.location}",
                hint="run `model-ops fsck` to list every missing or damaged blob",
            ) from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise _mismatch(digest, self.location)
        return data

    def fetch_to(self, digest: str, dest: Path, *, label: str | None = None) -> None:
        src = self._path(digest)
        if not src.is_file():
            raise NotFoundError(
                f"blob {digest} is missing from {self.location}",
                hint="run `model-ops fsck` to list every missing or damaged blob",
            )
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        size = src.stat().st_size
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        with Progress(size * 2, label) as progress:
            try:
                _copy_file(src, tmp, progress)
                os.chmod(tmp, 0o644)
                # Hashing the copy proves what the caller gets, and through it the stored bytes it came from.
                if hash_file(tmp, progress)[0] != digest:
                    raise _mismatch(digest, self.location)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)

    def verify(self, digest: str) -> str | None:
        path = self._path(digest)
        if not path.is_file():
            return f"blob {digest} is missing"
        if hash_file(path)[0] != digest:
            return _mismatch(digest, self.location).message
        return None

    def iter_blobs(self) -> Iterator[BlobInfo]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for sub in sorted(base.iterdir()):
            if not sub.is_dir():
                continue
            for f in sorted(sub.iterdir()):
                st = f.stat()
                yield BlobInfo(sub.name + f.name, st.st_size, st.st_mtime)

    def delete(self, digest: str) -> None:
        path = self._path(digest)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path, 0o644)
            path.unlink()

    def _quarantined(self, digest: str) -> Path:
        return self.root / "quarantine" / check_digest(digest)

    def quarantine(self, digest: str) -> bool:
        target = self._quarantined(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self._path(digest), target)
        except FileNotFoundError:
            return False
        return True

    def restore(self, digest: str) -> None:
        final = self._path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self._quarantined(digest), final)  # never over a blob a writer stored again meanwhile
        except (FileExistsError, FileNotFoundError):
            pass
        self._quarantined(digest).unlink(missing_ok=True)

    def purge(self, digest: str) -> None:
        path = self._quarantined(digest)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path, 0o644)
            path.unlink()

    def iter_quarantined(self) -> Iterator[BlobInfo]:
        base = self.root / "quarantine"
        if not base.is_dir():
            return
        for f in sorted(base.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                st = f.stat()
                yield BlobInfo(f.name, st.st_size, st.st_mtime)

    def iter_temporaries(self) -> Iterator[BlobInfo]:
        if not self.tmp_dir.is_dir():
            return
        for f in sorted(self.tmp_dir.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                st = f.stat()
                yield BlobInfo(f.name, st.st_size, st.st_mtime)

    def delete_temporary(self, name: str) -> None:
        (self.tmp_dir / Path(name).name).unlink(missing_ok=True)


def _copy_file(src: Path, dest: Path, progress: Progress | None) -> None:
    """In-kernel copy (copy_file_range), falling back to a bounded buffered copy where the kernel refuses."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        copied = 0
        try:
            while copied < size:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), min(COPY_CHUNK * 8, size - copied))
                if n == 0:
                    break
                copied += n
                if progress:
                    progress.update(n)
        except OSError:
            fin.seek(copied)
            fout.seek(copied)
            fout.truncate()
            while chunk := fin.read(COPY_CHUNK):
                fout.write(chunk)
                copied += len(chunk)
                if progress:
                    progress.update(len(chunk))
        if copied != size:
            raise UsageError(f"{src} shrank while it was being stored", hint="store a file no process is writing")


def _mismatch(digest: str, location: Location) -> IntegrityError:
    return IntegrityError(
        f"blob {digest} in {location} does not match its digest: the stored bytes were altered or damaged",
        hint="do not use it; run `model-ops fsck` to see every affected version, restore the blob from a backup",
    )


class S3BlobStore(BlobStore):
    """Blobs under ``s3://bucket/prefix/sha256/ab/cdef…``.

    A local file is hashed first; if the blob exists nothing is uploaded. Otherwise it is uploaded in a second pass
    (multipart above one part), re-hashed on the way, and the upload is completed only when both hashes agree, so a
    file that changes under us never lands under the wrong name. Completion is conditional (``If-None-Match``), so
    an existing blob is never overwritten.
    """

    PART_SIZE = 16 << 20
    MAX_PARTS_IN_FLIGHT = 4

    def __init__(self, location: Location) -> None:
        self.location = location
        self.bucket = location.bucket

    @property
    def client(self):  # type: ignore[no-untyped-def]
        return s3_client()

    def _key(self, digest: str) -> str:
        return self.location.key(self.rel_key(check_digest(digest)))

    def _head(self, digest: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(digest))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def exists(self, digest: str) -> bool:
        return self._head(digest) is not None

    def size(self, digest: str) -> int | None:
        head = self._head(digest)
        return None if head is None else int(head["ContentLength"])

    def _reuse(self, digest: str, size: int, full_check: bool = False) -> bool:
        """True when an intact blob already holds these bytes. A damaged one is replaced; an old one is touched."""
        head = self._head(digest)
        if head is None:
            return False
        intact = int(head["ContentLength"]) == size and (not full_check or self.verify(digest) is None)
        if not intact:
            return False
        self._renew(digest, head)
        return True

    def _renew(self, digest: str, head: dict) -> None:
        age = time.time() - head["LastModified"].timestamp()
        if age > TOUCH_AFTER_SECONDS:
            # S3 has no utime: copying the object onto itself renews LastModified, so gc's grace period
            # protects a blob that a registration is about to reference again.
            self.client.copy(
                {"Bucket": self.bucket, "Key": self._key(digest)},
                self.bucket,
                self._key(digest),
                ExtraArgs={"MetadataDirective": "REPLACE"},
            )

    def put_chunk(self, digest: str, data: bytes | memoryview) -> bool:
        head = self._head(digest)
        if head is not None and int(head["ContentLength"]) == len(data):
            self._renew(digest, head)
            return False
        return self._put_object(self._key(digest), bytes(data), replace=head is not None)

    def put_bytes(self, data: bytes) -> Blob:
        digest = hashlib.sha256(data).hexdigest()
        if self._reuse(digest, len(data), full_check=True):
            return Blob(digest, len(data), existed=True)
        published = self._put_object(self._key(digest), data, replace=self.exists(digest))
        return Blob(digest, len(data), existed=not published)

    def _put_object(self, key: str, data: bytes, replace: bool = False) -> bool:
        from botocore.exceptions import ClientError

        try:
            if replace:  # the blob there is damaged; these bytes hash to its name
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
            else:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise

    def put_file(self, path: Path, *, label: str | None = None) -> Blob:
        path = Path(path)
        size = os.stat(path).st_size
        with Progress(size * 2, label or f"storing {path.name}") as progress:
            digest, size = hash_file(path, progress)
            if self._reuse(digest, size):
                return Blob(digest, size, existed=True)
            damaged = self.exists(digest)
            key = self._key(digest)
            if size <= self.PART_SIZE:
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != digest:
                    raise UsageError(
                        f"{path} changed while it was being stored",
                        hint="store a file that no other process is writing",
                    )
                progress.update(size)
                return Blob(digest, size, existed=not self._put_object(key, data, replace=damaged))
            return Blob(digest, size, existed=not self._multipart(path, key, digest, progress, replace=damaged))

    def _multipart(self, path: Path, key: str, digest: str, progress: Progress, replace: bool = False) -> bool:
        client = self.client
        upload_id = client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        parts: list[dict] = []
        slots = threading.BoundedSemaphore(self.MAX_PARTS_IN_FLIGHT)
        failed = threading.Event()
        h = hashlib.sha256()

        def upload(number: int, body: bytes) -> dict:
            try:
                etag = client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                )["ETag"]
                progress.update(len(body))
                return {"PartNumber": number, "ETag": etag}
            except BaseException:
                failed.set()
                raise
            finally:
                slots.release()

        try:
            with open(path, "rb") as f, ThreadPoolExecutor(self.MAX_PARTS_IN_FLIGHT) as pool:
                futures = []
                number, size = 1, 0
                # A failed part (the client already retried it up to the deadline) ends the upload: reading and
                # sending the rest of a large file first would only delay the error and the abort.
                while not failed.is_set():
                    slots.acquire()  # bounds memory: at most MAX_PARTS_IN_FLIGHT parts held at once
                    body = f.read(self.PART_SIZE)
                    if not body or failed.is_set():
                        slots.release()
                        break
                    h.update(body)
                    size += len(body)
                    futures.append(pool.submit(upload, number, body))
                    number += 1
                parts = [fut.result() for fut in futures]
            if h.hexdigest() != digest:
                raise UsageError(
                    f"{path} changed while it was being stored", hint="store a file that no other process is writing"
                )
            return self._complete(key, upload_id, parts, size, replace)
        except BaseException:
            # Every part has finished (the pool waited for them), so an abort now frees them all. If it cannot
            # reach S3 either, the upload stays listed for `gc`, which aborts it after the grace period.
            self._abort_quietly(key, upload_id)
            raise

    def _complete(self, key: str, upload_id: str, parts: list[dict], size: int, replace: bool) -> bool:
        """Complete a multipart upload; False when the blob already existed. A retry after a reply was lost can
        find the upload gone (it completed) or the key taken (by this very completion): the object under the key
        decides, and an upload still pending is aborted."""
        from botocore.exceptions import ClientError

        condition = {} if replace else {"IfNoneMatch": "*"}
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **condition
            )
            return True
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                self._abort_quietly(key, upload_id)
                return False
            if code == "NoSuchUpload" and self._head_key(key) == size:
                return True
            raise

    def _head_key(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def _abort_quietly(self, key: str, upload_id: str) -> None:
        try:
            self.abort_multipart(PendingUpload(key, upload_id, time.time()))
        except Exception as e:  # never hide the error that made us abort
            log.warning("could not abort multipart upload %s of %s (gc will): %s", upload_id, key, e)

    def _get(self, digest: str, offset: int = 0, etag: str | None = None):  # type: ignore[no-untyped-def]
        """GET the blob, from ``offset`` on and only while it is still the object with ``etag`` when given."""
        from botocore.exceptions import ClientError

        extra = {}
        if offset:
            extra["Range"] = f"bytes={offset}-"
        if etag:
            extra["IfMatch"] = etag
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(digest), **extra)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFoundError(
                    f"blob {digest} is missing from {self.location}",
                    hint="run `model-ops fsck` to list every missing or damaged blob",
                ) from None
            if etag and code in ("PreconditionFailed", "412"):
                raise _Replaced from None
            raise

    def _download(self, digest: str, out: BinaryIO | None, label: str | None = None) -> str:
        """Stream a blob into ``out`` (or only hash it) and return the SHA-256 of what arrived.

        The client retries requests, not bodies: a connection that breaks mid-body surfaces while reading. Such a
        break is resumed with a ranged GET from the first missing byte, pinned to the same object by its ETag, and
        retried until the deadline (which starts again whenever bytes arrive). If the object was replaced meanwhile
        (a damaged blob rewritten), the read starts over. The caller compares the result with the digest, so a
        resumed read is trusted exactly as much as one in a single piece."""
        deadline = Deadline()
        h = hashlib.sha256()
        offset, size, etag = 0, 0, None
        with contextlib.ExitStack() as stack:
            progress: Progress | None = None
            while True:
                try:
                    obj = self._get(digest, offset, etag)
                except _Replaced:
                    h, offset, etag = hashlib.sha256(), 0, None
                    if out is not None:
                        out.seek(0)
                        out.truncate()
                    continue
                if etag is None:
                    etag, size = obj["ETag"], int(obj["ContentLength"])
                if progress is None:
                    progress = stack.enter_context(Progress(size, label))
                body = obj["Body"]
                try:
                    for chunk in body.iter_chunks(COPY_CHUNK):
                        h.update(chunk)
                        if out is not None:
                            out.write(chunk)
                        offset += len(chunk)
                        progress.update(len(chunk))
                        deadline.progress()
                except Exception as e:
                    if not is_transient(e):
                        raise
                    deadline.wait(e)
                    continue
                finally:
                    body.close()
                if offset >= size:
                    return h.hexdigest()
                deadline.wait(f"the body of blob {digest} ended after {offset} of {size} bytes")

    def read_bytes(self, digest: str) -> bytes:
        buf = io.BytesIO()
        if self._download(digest, buf) != digest:
            raise _mismatch(digest, self.location)
        return buf.getvalue()

    def fetch_to(self, digest: str, dest: Path, *, label: str | None = None) -> None:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with open(tmp, "wb") as out:
                got = self._download(digest, out, label)
            if got != digest:
                raise _mismatch(digest, self.location)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def verify(self, digest: str) -> str | None:
        try:
            got = self._download(digest, None)
        except NotFoundError:
            return f"blob {digest} is missing"
        return None if got == digest else _mismatch(digest, self.location).message

    def _list(self, prefix: str) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def iter_blobs(self) -> Iterator[BlobInfo]:
        prefix = self.location.key("sha256") + "/"
        for obj in self._list(prefix):
            rest = obj["Key"][len(prefix) :].replace("/", "")
            if DIGEST_RE.match(rest):
                yield BlobInfo(rest, int(obj["Size"]), obj["LastModified"].timestamp())

    def delete(self, digest: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(digest))

    def _quarantined(self, digest: str) -> str:
        return self.location.key(f"quarantine/{check_digest(digest)}")

    def quarantine(self, digest: str) -> bool:
        from botocore.exceptions import ClientError

        source = {"Bucket": self.bucket, "Key": self._key(digest)}
        try:
            self.client.copy_object(Bucket=self.bucket, Key=self._quarantined(digest), CopySource=source)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        self.delete(digest)  # the blob is gone from its name only once its copy is safe
        return True

    def restore(self, digest: str) -> None:
        from botocore.exceptions import ClientError

        source = {"Bucket": self.bucket, "Key": self._quarantined(digest)}
        try:  # the same bytes as any copy a writer stored again meanwhile: content addressed
            self.client.copy_object(Bucket=self.bucket, Key=self._key(digest), CopySource=source)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        self.purge(digest)

    def purge(self, digest: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._quarantined(digest))

    def iter_quarantined(self) -> Iterator[BlobInfo]:
        prefix = self.location.key("quarantine") + "/"
        for obj in self._list(prefix):
            rest = obj["Key"][len(prefix) :]
            if DIGEST_RE.match(rest):
                yield BlobInfo(rest, int(obj["Size"]), obj["LastModified"].timestamp())

    def iter_temporaries(self) -> Iterator[BlobInfo]:
        """None on S3: a PUT or a completed multipart upload publishes a blob whole, and what an interrupted upload
        leaves behind is not an object but a pending upload (:meth:`iter_multipart`)."""
        return iter(())

    def delete_temporary(self, name: str) -> None:
        """Abort the pending upload named ``KEY\\nUPLOAD_ID`` (how earlier versions listed them as temporaries)."""
        key, sep, upload_id = name.partition("\n")
        if not sep:
            raise UsageError(f"{name!r} names no pending upload", hint="S3 stores keep no temporary objects")
        self.abort_multipart(PendingUpload(key, upload_id, 0.0))

    def iter_multipart(self) -> Iterator[PendingUpload]:
        """Unfinished multipart uploads under this store's prefix (left by a killed process, or by a failed upload
        whose abort could not reach S3)."""
        prefix = self.location.key() + "/" if self.location.key() else ""
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for up in page.get("Uploads", []):
                yield PendingUpload(up["Key"], up["UploadId"], up["Initiated"].timestamp())

    def abort_multipart(self, upload: PendingUpload) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404", "NotFound"):
                raise


class _Replaced(Exception):
    """The object changed between two ranged reads of one download (its ETag no longer matches)."""


def open_blobstore(location: Location) -> BlobStore:
    return S3BlobStore(location) if location.is_s3 else LocalBlobStore(location)


def age_seconds(info: BlobInfo, now: Callable[[], float] = time.time) -> float:
    return now() - info.modified
