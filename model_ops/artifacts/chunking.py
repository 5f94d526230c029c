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

One pass over the bytes, in bounded memory: the file is read once, as a stream; each chunk's bytes go to a worker
that hashes and stores it (hashing and file or network I/O release the GIL, so workers run beside the cutting) and,
in order, to one thread that hashes the whole file. At most :data:`IN_FLIGHT` chunks are held at once. Reading
reassembles in the same bounded way: chunks are fetched ahead by workers, each verified by its own digest, written
in order, and the whole file is checked against its SHA-256 before anything is handed over.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pyfastcdc import FastCDC

from model_ops.artifacts.blobstore import BlobStore
from model_ops.artifacts.manifest import ChunkRef, FileEntry
from model_ops.artifacts.progress import Progress
from model_ops.errors import IntegrityError, UsageError

CHUNK_THRESHOLD = 16 << 20
AVERAGE = 256 << 10
MINIMUM = 64 << 10
MAXIMUM = 1 << 20
IN_FLIGHT = 32  # chunks read but not yet stored (or fetched but not yet written): memory ≤ IN_FLIGHT × MAXIMUM
WORKERS = 8  # enough to keep S3 busy; on a local disk they mostly wait on the hashing they share


@dataclass(frozen=True)
class ChunkedFile:
    entry: FileEntry
    new_bytes: int  # bytes of the chunks this call wrote (0: every chunk was already stored)


def chunker() -> FastCDC:
    return FastCDC(AVERAGE, min_size=MINIMUM, max_size=MAXIMUM)


def cut(stream: BinaryIO) -> Iterator[bytes]:
    """The chunks of a stream, in order, each its own ``bytes`` (the chunker reuses its buffer)."""
    for chunk in chunker().cut_stream(stream):
        yield bytes(chunk.data)


def store_file(blobs: BlobStore, path: Path, name: str, progress: Progress | None = None) -> ChunkedFile:
    """Store ``path`` as chunks and return its manifest entry. Refuses a file that changed while it was read."""
    before = _stat_key(path)
    whole = hashlib.sha256()
    size = 0
    refs: list[ChunkRef] = []
    new_bytes = 0

    def store(data: bytes) -> tuple[ChunkRef, bool]:
        digest = hashlib.sha256(data).hexdigest()
        written = blobs.put_chunk(digest, data)
        if progress:
            progress.update(len(data))
        return ChunkRef(digest, len(data)), written

    def settle(stored: Future[tuple[ChunkRef, bool]], hashed: Future[None]) -> None:
        nonlocal new_bytes
        ref, written = stored.result()
        hashed.result()
        refs.append(ref)
        new_bytes += ref.size if written else 0

    pending: deque[tuple[Future[tuple[ChunkRef, bool]], Future[None]]] = deque()
    with (
        open(path, "rb", buffering=0) as f,
        ThreadPoolExecutor(WORKERS, thread_name_prefix="model_ops-chunk") as workers,
        ThreadPoolExecutor(1, thread_name_prefix="model_ops-hash") as hasher,  # one thread: updates stay in order
    ):
        try:
            for data in cut(f):
                size += len(data)
                pending.append((workers.submit(store, data), hasher.submit(whole.update, data)))
                if len(pending) >= IN_FLIGHT:
                    settle(*pending.popleft())
            while pending:
                settle(*pending.popleft())
        except BaseException:
            for stored, hashed in pending:
                stored.cancel()
                hashed.cancel()
            raise
    if _stat_key(path) != before or size != before[0]:
        raise UsageError(
            f"{path} changed while it was being stored", hint="store a file that no other process is writing"
        )
    return ChunkedFile(FileEntry(name, whole.hexdigest(), size, tuple(refs)), new_bytes)


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
        ThreadPoolExecutor(WORKERS, thread_name_prefix="model_ops-chunk") as workers,
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


def problems(blobs: BlobStore, entry: FileEntry, *, verify: Callable[[str], str | None]) -> list[str]:
    """What is wrong with a chunked file's chunks: missing, of the wrong size, or altered."""
    found = []
    for number, ref in enumerate(entry.chunks, 1):
        where = f"file {entry.path}: chunk {number} of {len(entry.chunks)} ({ref.sha256})"
        size = blobs.size(ref.sha256)
        if size is None:
            found.append(f"{where} is missing")
        elif size != ref.size:
            found.append(f"{where} has {size} bytes, the manifest says {ref.size}")
        elif (problem := verify(ref.sha256)) is not None:
            found.append(f"{where}: {problem}")
    return found


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino
