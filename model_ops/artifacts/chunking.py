"""Large files as content-defined chunks: a small change to a multi-GB file stores a few new chunks, not the file.

A file of :data:`CHUNK_THRESHOLD` bytes or more is cut with FastCDC (the 2020 algorithm, through ``pyfastcdc``):
cut points depend on the bytes around them, not on offsets, so an edit moves only the chunks it touches and the
rest of the file, and every other version or model holding the same bytes, shares the same chunks. Each chunk is an
ordinary blob named by its SHA-256, so deduplication, verification, ``fsck`` and ``gc`` (with its grace period and
its race rules) treat chunks exactly as they treat whole-file blobs; the manifest entry lists a file's chunks in
order beside the whole file's SHA-256.

Sizes: :data:`AVERAGE` is 256 KiB (64 KiB to 1 MiB). Every chunk is an object of its own on disk or in S3, so the
average sets how many files and requests a 2 GiB checkpoint costs (about 8,000); a 1 KiB edit still stores at most
two new chunks (≤ 2 MiB), and tensors, which are megabytes each, are cut finely enough that changing a tenth of them
stores about a tenth of the bytes.

One pass over the bytes, in bounded memory: the file is mapped one window at a time and cut; each chunk goes, as a
view of the mapping (no copy), to a worker that hashes and stores it (hashing and file or network I/O release the
GIL, so workers run side by side), and the window goes to one thread that hashes the whole file. Reading
reassembles in the same bounded way: chunks are fetched ahead by workers, each verified by its own digest, written
in order, and the whole file is checked against its SHA-256 before anything is handed over.
"""

from __future__ import annotations

import hashlib
import itertools
import mmap
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pyfastcdc import FastCDC

from model_ops.artifacts.blobstore import BlobStore, LocalBlobStore
from model_ops.artifacts.manifest import ChunkRef, FileEntry
from model_ops.artifacts.progress import Progress
from model_ops.errors import IntegrityError, UsageError

CHUNK_THRESHOLD = 16 << 20
AVERAGE = 256 << 10
MINIMUM = 64 << 10
MAXIMUM = 1 << 20
WINDOW = 8 << 20  # one mapped stretch of a file being stored (several of a chunk's MAXIMUM)
WINDOWS_AHEAD = 3  # windows mapped at once: one cut while the ones before it are hashed and stored
HASH_STEP = 8 << 20  # what the hasher behind a local fetch reads at a time
IN_FLIGHT = 32  # chunks fetched but not yet written: memory ≤ IN_FLIGHT × MAXIMUM
# Threads hashing and storing chunks: on a local disk the work is hashing, so one per core; S3 waits on the
# network, so more requests in flight pay there.
LOCAL_WORKERS = max(2, min(4, os.cpu_count() or 2))
REMOTE_WORKERS = 8


@dataclass(frozen=True)
class ChunkedFile:
    entry: FileEntry
    new_bytes: int  # bytes of the chunks this call wrote (0: every chunk was already stored)


def chunker() -> FastCDC:
    return FastCDC(AVERAGE, min_size=MINIMUM, max_size=MAXIMUM)


def cut_points(view: memoryview) -> list[tuple[int, int]]:
    """(offset, length) of each chunk of ``view``, in order. Cut points depend only on the bytes since the last
    cut, so a file cut window by window, each window starting where the last one's final chunk started, gives
    exactly the chunks of the whole file cut at once."""
    found = []
    for chunk in chunker().cut_buf(view):
        found.append((chunk.offset, chunk.length))
        chunk.data.release()
    return found


def store_file(
    blobs: BlobStore, path: Path, name: str, progress: Progress | None = None, *, size: int | None = None
) -> ChunkedFile:
    """Store ``path`` as chunks and return its manifest entry. Refuses a file that changed while it was read.

    The file is mapped a window at a time (:data:`WINDOW`). While the chunks of one window are hashed and stored
    by workers, straight from the mapping, and one thread hashes the window into the whole file's SHA-256, the
    next window is cut: at most :data:`WINDOWS_AHEAD` windows are mapped at once, whatever the file's size."""
    before = _stat_key(path)
    if size is not None and before[0] != size:  # the caller chose chunking for a file of ``size`` bytes
        raise UsageError(
            f"{path} changed while it was being stored", hint="store a file that no other process is writing"
        )
    whole = hashlib.sha256()
    refs: list[ChunkRef] = []
    new_bytes = 0

    def store(piece: memoryview) -> tuple[ChunkRef, bool]:
        digest = hashlib.sha256(piece).hexdigest()
        written = blobs.put_chunk(digest, piece)
        if progress:
            progress.update(len(piece))
        return ChunkRef(digest, len(piece)), written

    def settle(window: _Window) -> None:
        nonlocal new_bytes
        try:
            for future in window.stored:
                ref, written = future.result()
                refs.append(ref)
                new_bytes += ref.size if written else 0
            if window.hashed is not None:
                window.hashed.result()
        except BaseException:
            window.abandon()  # its other chunks may still be read by workers: wait for them before unmapping
            raise
        window.close()

    mapped: deque[_Window] = deque()
    with (
        open(path, "rb") as f,
        ThreadPoolExecutor(_workers(blobs), thread_name_prefix="model_ops-chunk") as workers,
        ThreadPoolExecutor(1, thread_name_prefix="model_ops-hash") as hasher,  # one thread: updates stay in order
    ):
        size = os.fstat(f.fileno()).st_size
        start = 0
        try:
            while start < size:
                window = _Window(f.fileno(), start, size)
                mapped.append(window)
                window.hashed = hasher.submit(whole.update, window.whole)
                window.stored = [workers.submit(store, piece) for piece in window.pieces]
                start += window.consumed
                if len(mapped) >= WINDOWS_AHEAD:
                    settle(mapped.popleft())
            while mapped:
                settle(mapped.popleft())
        except BaseException:
            for window in mapped:
                window.abandon()
            raise
    if _stat_key(path) != before or start != before[0]:
        raise UsageError(
            f"{path} changed while it was being stored", hint="store a file that no other process is writing"
        )
    return ChunkedFile(FileEntry(name, whole.hexdigest(), start, tuple(refs)), new_bytes)


class _Window:
    """One mapped stretch of a file being stored, from ``start`` to the last cut point inside it (the end of the
    file, for the last window), with the views its chunks are hashed and stored from."""

    def __init__(self, fd: int, start: int, size: int) -> None:
        base = start - start % mmap.ALLOCATIONGRANULARITY
        length = min(WINDOW, size - base)
        self._map = mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=base)
        self.view = memoryview(self._map)[start - base :]
        try:
            points = cut_points(self.view)
        except BaseException:
            self.view.release()
            self._map.close()
            raise
        if base + length < size:  # the final cut may only be the window's edge: the next window starts there
            points.pop()
        self.consumed = sum(n for _, n in points)
        assert self.consumed > 0, "a window holds more than one chunk (WINDOW > MAXIMUM)"
        self.pieces = [self.view[at : at + n] for at, n in points]
        self.whole = self.view[: self.consumed]  # released here, not left to a worker thread's references
        self.hashed: Future[None] | None = None
        self.stored: list[Future[tuple[ChunkRef, bool]]] = []

    def abandon(self) -> None:
        """Stop what has not started and wait for the rest: nothing may read the mapping once it is closed."""
        for future in self.stored:
            future.cancel()
        pending: list[Future[Any]] = [*self.stored]
        if self.hashed is not None:
            pending.append(self.hashed)
        wait(pending)
        self.close()

    def close(self) -> None:
        for piece in self.pieces:
            piece.release()
        self.whole.release()
        self.view.release()
        self._map.close()


def fetch_to(blobs: BlobStore, entry: FileEntry, tmp: Path, progress: Progress | None = None) -> None:
    """Write a chunked file to ``tmp``, verified: on a local store the chunks are copied in the kernel and the
    result hashed once (what fetching a whole-file blob costs); elsewhere they are fetched ahead and verified one
    by one (:func:`read_into`). Raises :class:`IntegrityError` naming the damaged chunk; callers publish ``tmp``
    only when this returns."""
    if not isinstance(blobs, LocalBlobStore):
        with open(tmp, "wb") as out:
            read_into(blobs, entry, out, progress)
        return
    if _copy_and_hash(blobs, entry, tmp, progress) == entry.sha256:
        return
    found = problems(blobs, entry)
    raise IntegrityError(
        found[0] if found else f"{entry.path} assembled from its chunks does not match its SHA-256 {entry.sha256}",
        hint="run `model-ops fsck` to list every missing or damaged blob",
    )


def _copy_and_hash(blobs: LocalBlobStore, entry: FileEntry, tmp: Path, progress: Progress | None) -> str:
    """Copy a chunked file's chunks to ``tmp`` in the kernel while one thread hashes what has been written, behind
    the copy: the SHA-256 of the bytes the caller gets, in about the time of the copy alone, not of the copy and then
    a hash."""
    whole = hashlib.sha256()
    moved = threading.Condition()
    written, finished = 0, False

    failed: list[BaseException] = []

    def hash_behind() -> None:
        try:
            follow()
        except BaseException as e:  # surfaced by the caller after the copy, as itself
            failed.append(e)

    def follow() -> None:
        buffer = bytearray(HASH_STEP)
        view = memoryview(buffer)
        hashed = 0
        with open(tmp, "rb") as r:
            while True:
                with moved:
                    while written - hashed < HASH_STEP and not finished:
                        moved.wait()
                    upto, last = written, finished
                while hashed < upto:
                    n = os.preadv(r.fileno(), [view[: min(HASH_STEP, upto - hashed)]], hashed)
                    if n == 0:
                        return  # shorter than was written: the digest will not match
                    whole.update(view[:n])
                    hashed += n
                    if progress:
                        progress.update(n)
                if last:
                    return

    hasher = threading.Thread(target=hash_behind, name="model_ops-hash", daemon=True)
    with open(tmp, "wb") as out:
        hasher.start()
        try:
            for ref in entry.chunks:
                blobs.copy_out(ref.sha256, ref.size, out)
                out.flush()  # a chunk copied by plain writes (no in-kernel copy here) is in the file too
                with moved:
                    written += ref.size
                    if written % HASH_STEP < ref.size:  # another step is ready for the hasher
                        moved.notify()
        finally:
            with moved:
                finished = True
                moved.notify()
            hasher.join()
    if failed:
        raise failed[0]
    return whole.hexdigest()


def read_into(blobs: BlobStore, entry: FileEntry, out: BinaryIO, progress: Progress | None = None) -> None:
    """Write a chunked file's bytes to ``out``, every chunk verified by its digest and the whole by its SHA-256.

    On a mismatch :class:`IntegrityError` is raised after ``out`` received some bytes: callers write to a
    temporary and publish it only when this returns."""
    whole = hashlib.sha256()

    def fetch(ref: ChunkRef) -> bytes:
        data = blobs.read_bytes(ref.sha256)  # verified against its name by the store
        if len(data) != ref.size:
            raise IntegrityError(
                f"chunk {ref.sha256} of {entry.path} has {len(data)} bytes, its manifest says {ref.size}",
                hint="run `model-ops fsck` to list every missing or damaged blob",
            )
        return data

    with (
        ThreadPoolExecutor(_workers(blobs), thread_name_prefix="model_ops-chunk") as workers,
        ThreadPoolExecutor(1, thread_name_prefix="model_ops-hash") as hasher,
    ):
        refs = iter(entry.chunks)
        ahead = deque(workers.submit(fetch, ref) for ref in itertools.islice(refs, IN_FLIGHT))
        try:
            while ahead:
                data = ahead.popleft().result()
                if (ref := next(refs, None)) is not None:
                    ahead.append(workers.submit(fetch, ref))
                hashed = hasher.submit(whole.update, data)  # beside the write, not after it
                out.write(data)
                hashed.result()
                if progress:
                    progress.update(len(data))
        except BaseException:
            for future in ahead:
                future.cancel()
            raise
    if whole.hexdigest() != entry.sha256:
        raise IntegrityError(
            f"{entry.path} reassembled from its chunks does not match its SHA-256 {entry.sha256}",
            hint="run `model-ops fsck`; the chunks named in the manifest do not make up the file it names",
        )


def problems(blobs: BlobStore, entry: FileEntry) -> list[str]:
    """What is wrong with a chunked file's chunks: missing, of the wrong size, or altered."""
    found = []
    for number, ref in enumerate(entry.chunks, 1):
        where = f"file {entry.path}: chunk {number} of {len(entry.chunks)} ({ref.sha256})"
        size = blobs.size(ref.sha256)
        if size is None:
            found.append(f"{where} is missing")
        elif size != ref.size:
            found.append(f"{where} has {size} bytes, the manifest says {ref.size}")
        elif (problem := blobs.verify(ref.sha256)) is not None:
            found.append(f"{where}: {problem}")
    return found


def _workers(blobs: BlobStore) -> int:
    return LOCAL_WORKERS if isinstance(blobs, LocalBlobStore) else REMOTE_WORKERS


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino
