"""A version's artifact: a manifest listing its files with their digests and sizes.

The manifest is canonical JSON (sorted keys, no whitespace, no timestamps), itself stored as a blob; its SHA-256 is
the version's digest. The same files under the same names therefore always give the same digest, which is what makes
registration idempotent and reproduction checkable.

A large file is stored as content-defined chunks (:mod:`model_ops.artifacts.chunking`): its entry keeps the whole
file's SHA-256 and size and adds the ordered list of its chunks, each a blob of its own. A file stored whole has no
``chunks`` key at all, so manifests written before chunking existed keep their bytes and their digests.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from model_ops.errors import IntegrityError, UsageError
from model_ops.llm import layout

FORMAT = "model_ops.manifest/1"
FLAVOR_SKOPS = "sklearn-skops"
FLAVOR_FILES = "files"


@dataclass(frozen=True)
class ChunkRef:
    sha256: str
    size: int


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str  # of the whole file, however it is stored
    size: int
    chunks: tuple[ChunkRef, ...] = ()  # in file order; empty: the file is one blob named by ``sha256``

    @property
    def blobs(self) -> tuple[str, ...]:
        """The blobs that hold this file's bytes."""
        return tuple(c.sha256 for c in self.chunks) if self.chunks else (self.sha256,)

    def to_dict(self) -> dict:
        doc: dict = {"path": self.path, "sha256": self.sha256, "size": self.size}
        if self.chunks:
            doc["chunks"] = [[c.sha256, c.size] for c in self.chunks]
        return doc


@dataclass(frozen=True)
class Manifest:
    kind: str  # "file": one file; "directory": a tree of files
    flavor: str  # how to load it: "sklearn-skops" or plain "files"
    files: tuple[FileEntry, ...]

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "kind": self.kind,
            "flavor": self.flavor,
            "files": [f.to_dict() for f in self.files],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict:
        return json.loads(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, digest: str = "?") -> Manifest:
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            files = tuple(
                FileEntry(
                    str(f["path"]),
                    str(f["sha256"]),
                    int(f["size"]),
                    tuple(ChunkRef(str(sha), int(size)) for sha, size in f.get("chunks", ())),
                )
                for f in doc["files"]
            )
            manifest = cls(str(doc["kind"]), str(doc["flavor"]), files)
        except (ValueError, KeyError, TypeError) as e:
            raise IntegrityError(f"manifest {digest} is not a valid model_ops manifest: {e}") from None
        for f in files:
            _check_relpath(f.path)
            if f.chunks and sum(c.size for c in f.chunks) != f.size:
                raise IntegrityError(
                    f"manifest {digest}: the chunks of {f.path!r} add up to {sum(c.size for c in f.chunks)} bytes, "
                    f"the file has {f.size}"
                )
        return manifest


def _check_relpath(path: str) -> str:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise IntegrityError(f"manifest lists an unsafe path {path!r}")
    return path


def list_source_files(path: Path) -> tuple[str, list[tuple[str, Path]]]:
    """The kind and the (relative name, absolute path) pairs to store, validating the input on the way."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="give the path of a model file or a directory of files")
    if path.is_file():
        if path.stat().st_size == 0:
            raise UsageError(f"{path} is empty", hint="a model artifact must contain bytes; check the file was written")
        return "file", [(path.name, path)]
    if not path.is_dir():
        raise UsageError(f"{path} is neither a regular file nor a directory")
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in dirnames:  # os.walk lists a linked directory but does not enter it: never drop its files
            if (Path(dirpath) / name).is_symlink():
                raise UsageError(
                    f"{Path(dirpath) / name} is a symbolic link to a directory",
                    hint="store the files themselves, not links to them (copy the directory in, e.g. cp -rL)",
                )
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if full.is_symlink():
                raise UsageError(f"{full} is a symbolic link", hint="store the files themselves, not links to them")
            if not full.is_file():
                raise UsageError(f"{full} is not a regular file")
            entries.append((full.relative_to(path).as_posix(), full))
    if not entries:
        raise UsageError(f"directory {path} holds no files", hint="a model artifact must contain at least one file")
    return "directory", entries


def guess_flavor(kind: str, names: list[str]) -> str:
    if kind == "file" and names[0].endswith(".skops"):
        return FLAVOR_SKOPS
    return layout.flavor_of(kind, names) or FLAVOR_FILES
