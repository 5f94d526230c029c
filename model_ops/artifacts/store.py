"""The artifact store: model files and directories as verified, content-addressed manifests.

``put`` stores every file as a blob (a large one as content-defined chunks, :mod:`model_ops.artifacts.chunking`)
and then the manifest that lists them (files first, so a manifest never points at a blob that is not there yet).
``fetch`` and ``read_file`` verify the manifest and every byte they return. The registry records only the manifest
digest; everything else follows from it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from model_ops.artifacts import chunking
from model_ops.artifacts.blobstore import Blob, BlobStore, hash_file, open_blobstore
from model_ops.artifacts.manifest import FileEntry, Manifest, guess_flavor, list_source_files
from model_ops.artifacts.progress import Progress
from model_ops.errors import IntegrityError, NotFoundError, UsageError
from model_ops.location import Location, resolve_root


@dataclass(frozen=True)
class StoredArtifact:
    digest: str  # SHA-256 of the manifest
    manifest: Manifest
    new_bytes: int  # bytes actually written (0 when everything was deduplicated)


class ArtifactStore:
    def __init__(self, root: Location, *, chunk_threshold: int | None = None) -> None:
        self.root = root
        self.blobs: BlobStore = open_blobstore(root.child("artifacts"))
        # Files of this many bytes or more are stored as chunks.
        self.chunk_threshold = chunking.CHUNK_THRESHOLD if chunk_threshold is None else chunk_threshold

    @classmethod
    def open(cls, root: str | os.PathLike[str] | Location | None = None) -> ArtifactStore:
        return cls(resolve_root(root))

    def put(self, path: str | os.PathLike[str], flavor: str | None = None) -> StoredArtifact:
        kind, sources = list_source_files(Path(path))
        entries: list[FileEntry] = []
        new_bytes = 0
        for name, source in sources:
            size = source.stat().st_size
            if size >= self.chunk_threshold:
                with Progress(size, f"storing {name}") as progress:
                    chunked = chunking.store_file(self.blobs, source, name, progress, size=size)
                entries.append(chunked.entry)
                new_bytes += chunked.new_bytes
                continue
            blob: Blob = self.blobs.put_file(source, label=f"storing {name}")
            entries.append(FileEntry(name, blob.digest, blob.size))
            new_bytes += 0 if blob.existed else blob.size
        manifest = Manifest(kind, flavor or guess_flavor(kind, [n for n, _ in sources]), tuple(entries))
        mblob = self.blobs.put_bytes(manifest.to_bytes())
        return StoredArtifact(mblob.digest, manifest, new_bytes)

    def manifest(self, digest: str) -> Manifest:
        return Manifest.from_bytes(self.blobs.read_bytes(digest), digest)

    def read_file(self, digest: str, name: str | None = None) -> bytes:
        """The verified bytes of one file of an artifact (the only file when ``name`` is None)."""
        return self.read_entry(_pick(self.manifest(digest), name, digest))

    def read_entry(self, entry: FileEntry) -> bytes:
        """The verified bytes of one file a manifest lists, however it is stored."""
        if not entry.chunks:
            return self.blobs.read_bytes(entry.sha256)
        buffer = io.BytesIO()
        chunking.read_into(self.blobs, entry, buffer)
        return buffer.getvalue()

    def _fetch_entry(self, entry: FileEntry, target: Path) -> None:
        label = f"fetching {entry.path}"
        if not entry.chunks:
            self.blobs.fetch_to(entry.sha256, target, label=label)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with Progress(entry.size, label) as progress:
                chunking.fetch_to(self.blobs, entry, tmp, progress)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def fetch(self, digest: str, dest: str | os.PathLike[str]) -> Path:
        """Download and verify an artifact.

        A one-file artifact goes to ``dest`` (or into it, when ``dest`` is an existing directory); a directory
        artifact becomes ``dest``, which must not exist or be empty. Nothing appears at ``dest`` unless every file
        arrived intact.
        """
        manifest = self.manifest(digest)
        dest = Path(dest)
        if manifest.kind == "file":
            entry = manifest.files[0]
            target = dest / entry.path if dest.is_dir() else dest
            if target.exists():
                raise UsageError(f"{target} already exists", hint="choose a new destination or remove it first")
            self._fetch_entry(entry, target)
            return target
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise UsageError(
                f"{dest} already exists and is not an empty directory", hint="choose a new destination directory"
            )
        staging = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.part"
        try:
            for entry in manifest.files:
                self._fetch_entry(entry, staging / entry.path)
            if dest.exists():
                dest.rmdir()
            os.replace(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest

    def check(self, digest: str) -> list[str]:
        """Problems with one artifact: a missing or altered manifest or file. Empty when intact."""
        problem = self.blobs.verify(digest)
        if problem:
            return [f"manifest: {problem}"]
        try:
            manifest = self.manifest(digest)
        except IntegrityError as e:
            return [e.message]
        problems = []
        for entry in manifest.files:
            if entry.chunks:
                problems += chunking.problems(self.blobs, entry)
                continue
            size = self.blobs.size(entry.sha256)
            if size is None:
                problems.append(f"file {entry.path}: blob {entry.sha256} is missing")
                continue
            if size != entry.size:
                problems.append(f"file {entry.path}: blob {entry.sha256} has {size} bytes, manifest says {entry.size}")
                continue
            problem = self.blobs.verify(entry.sha256)
            if problem:
                problems.append(f"file {entry.path}: {problem}")
        return problems

    def missing(self, digest: str) -> list[str]:
        """The blobs of one artifact that are not in the store (names only; no bytes are hashed)."""
        if not self.blobs.exists(digest):
            return [digest]
        try:
            manifest = self.manifest(digest)
        except (NotFoundError, IntegrityError):
            return [digest]
        return [blob for f in manifest.files for blob in f.blobs if not self.blobs.exists(blob)]

    def reachable(self, manifest_digests: Iterable[str]) -> set[str]:
        """Every blob that the given manifests need, manifests included. Unreadable manifests count as reachable
        themselves, and their files cannot be known, so callers must not collect garbage when any is unreadable."""
        keep: set[str] = set()
        for digest in manifest_digests:
            keep.add(digest)
            with contextlib.suppress(NotFoundError, IntegrityError):
                keep.update(blob for f in self.manifest(digest).files for blob in f.blobs)
        return keep

    def materialize_to_tempdir(self, digest: str) -> tuple[Path, tempfile.TemporaryDirectory]:
        tmp = tempfile.TemporaryDirectory(prefix="model_ops_fetch_")
        return self.fetch(digest, Path(tmp.name) / "artifact"), tmp


def directory_holds(manifest: Manifest, directory: Path, *, nothing_else: bool = False) -> bool:
    """Whether ``directory`` holds every file of ``manifest`` with its exact bytes (each hashed, in bounded memory);
    with ``nothing_else``, and no other file. A copy fetched earlier is checked this way before it is used again."""
    try:
        if nothing_else:
            present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
            if present != {f.path for f in manifest.files}:
                return False
        return all(hash_file(directory / f.path) == (f.sha256, f.size) for f in manifest.files)
    except OSError:
        return False


def _pick(manifest: Manifest, name: str | None, digest: str) -> FileEntry:
    if name is None:
        if len(manifest.files) != 1:
            raise UsageError(f"artifact {digest} holds {len(manifest.files)} files", hint="name the file to read")
        return manifest.files[0]
    for entry in manifest.files:
        if entry.path == name:
            return entry
    raise NotFoundError(
        f"artifact {digest} has no file {name!r}", hint="its files are: " + ", ".join(f.path for f in manifest.files)
    )
