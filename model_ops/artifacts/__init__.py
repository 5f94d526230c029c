"""Content-addressed, verified artifact storage (no Dagster imports)."""

from model_ops.artifacts.blobstore import Blob, BlobStore, hash_file, open_blobstore
from model_ops.artifacts.manifest import FLAVOR_FILES, FLAVOR_SKOPS, FileEntry, Manifest
from model_ops.artifacts.store import ArtifactStore, StoredArtifact

__all__ = [
    "ArtifactStore",
    "Blob",
    "BlobStore",
    "FileEntry",
    "FLAVOR_FILES",
    "FLAVOR_SKOPS",
    "Manifest",
    "StoredArtifact",
    "hash_file",
    "open_blobstore",
]
