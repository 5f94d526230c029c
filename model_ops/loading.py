"""``model_ops.load``: a registered model for downstream code, verified, cached on local disk by digest, and guarded
by its input signature.

``load("models:/churn@champion")`` resolves the reference in the registry (so an alias that moved is followed),
checks the version's signatures (required where the policy's ``require_signature`` lists its stage, and checked
whenever a key is at hand: see ``model_ops.registry.attest``), and takes the artifact's files from the local cache, fetching
them (verified) from the artifact store the first time. The cache is keyed by manifest digest, so it is shared by
every root and never stale; each load re-hashes the cached files against the manifest, and an entry that does not
match is thrown away and fetched again, never used.

The returned :class:`LoadedModel` checks a frame against the version's input signature before the model sees it:
a missing column, or a column of the wrong type (text where a number is expected), is a :class:`UsageError` that
names the columns and the types expected, not an error from deep inside scikit-learn. Extra columns are ignored and
columns are put in the signature's order.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_ops.artifacts import ArtifactStore
from model_ops.artifacts.blobstore import check_digest
from model_ops.artifacts.manifest import Manifest
from model_ops.artifacts.store import directory_holds
from model_ops.errors import IntegrityError, UsageError
from model_ops.location import Location
from model_ops.registry import Ref, Registry
from model_ops.registry.registry import ModelVersion

CACHE_ENV = "MODEL_OPS_CACHE"
_MANIFEST = "manifest.json"
_FILES = "files"
_NUMERIC = ("float", "int", "bool")


def load(
    ref: str | Ref,
    root: str | os.PathLike[str] | Location | None = None,
    actor: str | None = None,
    *,
    trusted: Iterable[str] = (),
    registry: Registry | None = None,
    base: str | None = None,
) -> LoadedModel:
    """The version ``ref`` points at (``models:/NAME@ALIAS``, ``models:/NAME/3``, ``models:/NAME/1.2.0``), ready to
    predict; or a prompt (``prompts:/NAME@ALIAS``), ready to :meth:`~LoadedModel.render`. ``root`` defaults like
    the command line (``$MODEL_OPS_ROOT``, else ``./.model_ops``); pass an open ``registry`` instead to reuse it.
    ``trusted`` names skops types to accept beyond those the artifact recorded.

    An application (:mod:`model_ops.llm.application`) comes back with its parts resolved now and checked against each
    other (:class:`Answering`, as ``.model``); a base model or an adapter as a verified local directory in the
    Hugging Face / PEFT layout (:class:`Weights`). ``base`` loads an adapter for another base than the one it was
    trained on, refused unless that base has the same architecture fingerprint."""
    from model_ops.llm.layout import ADAPTER, APPLICATION, BASE_MODEL, PROMPT, RETRIEVAL

    reg = registry if registry is not None else Registry.open(root, actor=actor)
    mv = reg.resolve(ref)
    reg.verify_signature(mv)
    if base is not None and mv.flavor != ADAPTER:
        raise UsageError(f"base= is for adapters, and {mv.ref} is a {mv.flavor!r} artifact")
    if mv.flavor in (ADAPTER, BASE_MODEL):
        return LoadedModel(weights(reg, mv, base), mv)
    if mv.flavor == APPLICATION:
        return LoadedModel(answering(reg, mv), mv)
    if mv.flavor in (PROMPT, RETRIEVAL):
        return LoadedModel(_yaml_artifact(reg, mv), mv)
    manifest, files = cached_files(reg.artifacts, mv.digest)
    from model_ops.ml import flavors

    model = flavors.load(files, trusted=tuple(trusted), flavor=manifest.flavor, what=mv.ref)
    return LoadedModel(model, mv)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A registry version's model with its record. ``model`` is the framework's own object (a scikit-learn
    Pipeline, an XGBoost estimator, ...); use :meth:`predict` / :meth:`predict_proba` to have frames checked."""

    model: Any
    model_version: ModelVersion

    @property
    def name(self) -> str:
        return self.model_version.name

    @property
    def version(self) -> int:
        return self.model_version.version

    @property
    def ref(self) -> str:
        return self.model_version.ref

    @property
    def semver(self) -> str:
        return self.model_version.semver

    @property
    def digest(self) -> str:
        return self.model_version.digest

    @property
    def flavor(self) -> str:
        return self.model_version.flavor

    @property
    def signature(self) -> dict | None:
        return self.model_version.signature

    @property
    def inputs(self) -> list[dict] | None:
        inputs = (self.signature or {}).get("inputs")
        return list(inputs) if isinstance(inputs, list) else None

    @property
    def classes_(self) -> np.ndarray:
        try:
            return self.model.classes_
        except AttributeError:
            raise AttributeError(f"{self.ref} is not a classifier: it has no classes_") from None

    def prepare(self, frame: Any) -> Any:
        """``frame`` as the model takes it: checked against the input signature, the signature's columns only, in
        its order, numbers held as text-free numbers. Unchanged when the version records no input columns."""
        inputs = self.inputs
        if not inputs:
            return frame
        if isinstance(frame, Mapping) or (isinstance(frame, list) and all(isinstance(r, Mapping) for r in frame)):
            frame = pd.DataFrame(frame)
        if not isinstance(frame, pd.DataFrame):
            raise UsageError(
                f"{self.ref} takes a pandas DataFrame, not a {type(frame).__name__}",
                hint="its columns: " + _describe(inputs),
            )
        problems: list[str] = []
        lookup = {c: c for c in frame.columns}
        if self._native_categories and self.flavor == "lightgbm":
            # LightGBM keeps a column named "mean radius" as "mean_radius": the frame may use either spelling.
            for c in frame.columns:
                lookup.setdefault(str(c).replace(" ", "_"), c)
        missing = [i for i in inputs if i["name"] not in lookup]
        if missing:
            problems.append("missing column(s) " + _describe(missing))
        out: dict[str, pd.Series] = {}
        for spec in inputs:
            name = spec["name"]
            if name not in lookup:
                continue
            column = frame[lookup[name]]
            if isinstance(column, pd.DataFrame):
                problems.append(f"column {name!r} appears {column.shape[1]} times")
                continue
            converted, problem = _conform(column, spec.get("type", spec.get("dtype")), self._native_categories)
            if problem:
                problems.append(f"column {name!r} {problem}")
            out[name] = converted
        if problems:
            raise UsageError(
                f"{self.ref} cannot score this frame: " + "; ".join(problems),
                hint="expected columns: " + _describe(inputs) + " (extra columns are ignored)",
            )
        return pd.DataFrame(out, index=frame.index)

    @property
    def _native_categories(self) -> bool:
        """A bare XGBoost or LightGBM estimator takes pandas categoricals as they are; anything else gets
        categories as text, the way training fits them."""
        return self.flavor in ("xgboost", "lightgbm") and not hasattr(self.model, "steps")

    def predict(self, frame: Any) -> np.ndarray:
        if not hasattr(self.model, "predict"):
            raise UsageError(f"{self.ref} is a {self.flavor!r} artifact, not a model that predicts")
        return self.model.predict(self.prepare(frame))

    def predict_proba(self, frame: Any) -> np.ndarray:
        if not hasattr(self.model, "predict_proba"):
            task = ((self.signature or {}).get("outputs") or {}).get("task") or "not a classifier"
            raise UsageError(f"{self.ref} has no predict_proba ({task})", hint="use predict()")
        return self.model.predict_proba(self.prepare(frame))

    def render(self, /, **values: Any) -> str:
        """A prompt's template filled in (see :class:`model_ops.llm.prompts.Prompt`); refuses missing or unknown
        variables by name."""
        return self._prompt().render(**values)

    def messages(self, /, **values: Any) -> list[dict[str, str]]:
        """A prompt as chat messages: system, few-shot examples, then the filled-in template."""
        return self._prompt().messages(**values)

    def _prompt(self) -> Any:
        from model_ops.llm.prompts import Prompt

        if isinstance(self.model, Answering):
            return self.model.prompt
        if not isinstance(self.model, Prompt):
            raise UsageError(f"{self.ref} is a {self.flavor!r} model, not a prompt", hint="use predict()")
        return self.model

    def __repr__(self) -> str:
        return f"LoadedModel({self.ref}, semver {self.semver}, {self.flavor}, digest {self.digest[:12]})"


@dataclass(frozen=True)
class Weights:
    """A base model's or an adapter's files, verified, in a local directory laid out as they were registered (the
    Hugging Face layout for a base, PEFT's for an adapter: what vLLM, PEFT and transformers read). ``base`` is the
    base model an adapter is loaded for."""

    path: Path
    base: ModelVersion | None = None


@dataclass(frozen=True)
class Answering:
    """An application with every part resolved to an exact version and checked against the others: what answers a
    request now. ``parts`` by role (``base_model``, ``adapter``, ``prompt``, ``retrieval``)."""

    application: ModelVersion
    parts: dict[str, ModelVersion]
    prompt: Any  # model_ops.llm.prompts.Prompt
    retrieval: Any = None  # model_ops.llm.retrieval.Retrieval

    def versions(self) -> dict[str, Any]:
        """Every version this answer uses, as a response names them."""
        follows = {
            role: (part or {}).get("follows")
            for role, part in (self.application.lineage.get("application") or {}).items()
        }
        return {
            "application": {
                "name": self.application.name,
                "version": self.application.version,
                "semver": self.application.semver,
            },
            **{
                role: {
                    "name": mv.name,
                    "version": mv.version,
                    "semver": mv.semver,
                    "digest": mv.digest,
                    "follows": follows.get(role),
                }
                for role, mv in self.parts.items()
            },
        }


def answering(reg: Registry, mv: ModelVersion) -> Answering:
    """The application version ``mv`` with its parts resolved now: pinned ones as recorded, ones that follow an
    alias or stage wherever it points (checked against the others again, so an alias moved to an adapter for
    another architecture is refused here, not served)."""
    from model_ops.registry import relations

    parts = relations.resolve_parts(reg, _yaml_artifact(reg, mv), mv.ref, mv.lineage.get("application"))
    for part in parts.values():
        reg.verify_signature(part)
    retrieval = _yaml_artifact(reg, parts["retrieval"]) if "retrieval" in parts else None
    return Answering(mv, parts, _yaml_artifact(reg, parts["prompt"]), retrieval)


def _yaml_artifact(reg: Registry, mv: ModelVersion) -> Any:
    """A prompt, retrieval configuration or application version's one YAML file, verified, parsed by its flavor."""
    from model_ops.llm.application import Application
    from model_ops.llm.layout import APPLICATION, PROMPT
    from model_ops.llm.prompts import Prompt
    from model_ops.llm.retrieval import Retrieval

    kind: Any = {PROMPT: Prompt, APPLICATION: Application}.get(mv.flavor, Retrieval)
    _, files = cached_files(reg.artifacts, mv.digest)
    ((name, data),) = files.items()
    return kind.parse(data, f"{mv.ref} ({name})")


def weights(reg: Registry, mv: ModelVersion, base: str | None = None) -> Weights:
    """A base model or adapter as a verified local directory (see :class:`Weights`); an adapter with the base it is
    loaded for, checked to have the architecture it was trained on."""
    from model_ops.llm.layout import ADAPTER
    from model_ops.registry import relations

    base_mv = None
    if mv.flavor == ADAPTER:
        trained_on = mv.lineage.get("base_model") or {}
        base_mv = reg.resolve(base) if base is not None else reg.get(trained_on["name"], trained_on["version"])
        relations.check_adapter_base(mv, base_mv, f"loading it on {base_mv.ref}")
    return Weights(cached_dir(reg.artifacts, mv.digest), base_mv)


def cached_dir(store: ArtifactStore, digest: str) -> Path:
    """An artifact's files in the local cache, as a directory, every file hashed against the manifest on this
    call in bounded memory (weights can be many GB); fetched (verified) from ``store`` first when the entry is
    missing or does not match. Safe with other processes loading the same artifact: an entry is put in place by
    one rename, and removing a damaged one and filling it again happen under a lock per entry."""
    entry = cache_dir() / check_digest(digest)
    if _entry_intact(entry, digest) is True:
        return entry / _FILES
    try:
        with _entry_lock(entry):
            for _ in range(2):
                found = _entry_intact(entry, digest)
                if found is True:
                    return entry / _FILES
                if found is False:
                    _discard(entry)
                _fill(entry, store, digest)
    except OSError as e:
        raise UsageError(
            f"the local model cache {cache_dir()} cannot be written: {e.strerror or e}",
            hint=f"set {CACHE_ENV} to a writable directory with room for the model",
        ) from None
    raise IntegrityError(
        f"the cached copy of artifact {digest[:12]} at {entry} does not match its digest right after it was written",
        hint=f"check the disk under {cache_dir()}",
    )


@contextmanager
def _entry_lock(entry: Path) -> Iterator[None]:
    """Held while a cache entry is removed or filled, by every process using this cache."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _entry_intact(entry: Path, digest: str) -> bool | None:
    """True when every file of the entry matches, None when there is no entry, False when it is damaged."""
    if not entry.exists():
        return None
    try:
        data = (entry / _MANIFEST).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            return False
        return directory_holds(Manifest.from_bytes(data, digest), entry / _FILES)
    except (OSError, IntegrityError):
        return False


def _discard(entry: Path) -> None:
    """Move a damaged entry out of its name, then delete it (called under :func:`_entry_lock`)."""
    aside = entry.parent / f".{entry.name}.{uuid.uuid4().hex[:8]}.bad"
    try:
        os.rename(entry, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- input checks


def _describe(inputs: list[dict]) -> str:
    return ", ".join(f"{i['name']} ({i.get('type', i.get('dtype')) or 'any type'})" for i in inputs)


def _conform(column: pd.Series, expected: str | None, native_categories: bool) -> tuple[pd.Series, str | None]:
    """The column as the model takes it, or why it cannot be: numbers stay numbers (objects that hold numbers are
    converted), categories are text with None for missing (or pandas categoricals, kept as they are for models
    that take them), and an unknown type is not checked."""
    if expected in _NUMERIC:
        return _numeric(column, str(expected))
    if expected == "category":
        if isinstance(column.dtype, pd.CategoricalDtype) and native_categories:
            return column, None
        if column.dtype == object or isinstance(column.dtype, (pd.StringDtype, pd.CategoricalDtype)):
            values = column.cat.categories if isinstance(column.dtype, pd.CategoricalDtype) else column
            kind = pd.api.types.infer_dtype(values, skipna=True)
            if kind in ("string", "empty"):
                if native_categories:  # XGBoost and LightGBM map categories by value, not by their order
                    return column.astype(object).astype("category"), None
                return column.astype(object).where(column.notna(), None), None
            return column, f"holds {_kind_name(kind)}, expected category (text)"
        return column, f"is {column.dtype}, expected category (text)"
    return column, None


def _numeric(column: pd.Series, expected: str) -> tuple[pd.Series, str | None]:
    want = f"expected {expected}"
    if isinstance(column.dtype, pd.api.extensions.ExtensionDtype) and pd.api.types.is_numeric_dtype(column.dtype):
        column = column.astype("float64")  # nullable Int64 / Float64 / boolean: pd.NA becomes NaN
    if pd.api.types.is_bool_dtype(column.dtype):
        return column, None
    if column.dtype == object:
        kind = pd.api.types.infer_dtype(column, skipna=True)
        if kind not in ("integer", "floating", "mixed-integer-float", "decimal", "boolean", "empty"):
            return column, f"holds {_kind_name(kind)} (dtype object), {want}"
        column = pd.to_numeric(column, errors="coerce").astype("float64")
    elif not pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_complex_dtype(column.dtype):
        return column, f"is {column.dtype}, {want}"
    values = column.dropna().to_numpy()
    if expected == "int" and pd.api.types.is_float_dtype(column.dtype) and not np.all(np.mod(values, 1) == 0):
        return column, f"holds numbers with fractions, {want}"
    if expected == "bool" and not np.isin(values, (0, 1)).all():
        return column, f"holds numbers other than 0 and 1, {want}"
    return column, None


def _kind_name(kind: str) -> str:
    return {
        "string": "text (str)",
        "mixed": "mixed values",
        "mixed-integer": "text mixed with numbers",
        "bytes": "bytes",
    }.get(kind, f"{kind} values")


# ---------------------------------------------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """``$MODEL_OPS_CACHE``, else ``$XDG_CACHE_HOME/model_ops``, else ``~/.cache/model_ops``."""
    raw = os.environ.get(CACHE_ENV) or ""
    if raw.strip():
        return Path(raw).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser().resolve() / "model_ops"


def cached_files(store: ArtifactStore, digest: str) -> tuple[Manifest, dict[str, bytes]]:
    """An artifact's manifest and files, from the local cache when its entry is intact, else fetched (verified)
    from ``store`` into the cache first. What is returned has been hashed against the digest on this call. A
    cache that cannot be written (a read-only home, a full disk) costs the caching, not the load."""
    entry = cache_dir() / check_digest(digest)
    found = _read_entry(entry, digest)
    if found is None:
        try:
            with _entry_lock(entry):
                found = _read_entry(entry, digest)  # another process may have filled it meanwhile
                if found is None:
                    if entry.exists():
                        _discard(entry)
                    _fill(entry, store, digest)
                    found = _read_entry(entry, digest)
        except OSError:
            manifest = store.manifest(digest)
            return manifest, {f.path: store.read_entry(f) for f in manifest.files}
    if found is None:
        raise IntegrityError(
            f"the cached copy of artifact {digest[:12]} at {entry} does not match its digest "
            "right after it was written",
            hint=f"check the disk under {cache_dir()}",
        )
    return found


def _read_entry(entry: Path, digest: str) -> tuple[Manifest, dict[str, bytes]] | None:
    """The entry's manifest and files when every byte matches; None otherwise (missing or damaged)."""
    try:
        data = (entry / _MANIFEST).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError("manifest")
        manifest = Manifest.from_bytes(data, digest)
        files = {}
        for f in manifest.files:
            content = (entry / _FILES / f.path).read_bytes()
            if len(content) != f.size or hashlib.sha256(content).hexdigest() != f.sha256:
                raise ValueError(f.path)
            files[f.path] = content
    except (OSError, ValueError, IntegrityError):
        return None
    return manifest, files


def _fill(entry: Path, store: ArtifactStore, digest: str) -> None:
    """Write the entry under a temporary name and rename it into place, so no reader sees half an entry."""
    staging = entry.parent / f".{entry.name}.{uuid.uuid4().hex[:8]}.part"
    try:
        (staging / _FILES).mkdir(parents=True)
        manifest_bytes = store.blobs.read_bytes(digest)  # verified against the digest by the store
        store.fetch(digest, staging / _FILES)  # every file verified by the store
        (staging / _MANIFEST).write_bytes(manifest_bytes)
        try:
            os.replace(staging, entry)  # an entry is never removed here: another process may be using it
        except OSError:
            pass  # another process put the entry in place first (or a damaged one is there); it is checked next
    finally:
        shutil.rmtree(staging, ignore_errors=True)
