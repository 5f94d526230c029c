"""What an LLM artifact is built on, read and checked when it is registered.

- A **base model** (:data:`~model_ops.llm.layout.BASE_MODEL`) records its architecture summary and fingerprint in
  its lineage, and its full tensor table as an attachment (:data:`TABLE_LABEL`), so adapters can be checked
  against it later without fetching its weights.
- A **prompt** (:mod:`model_ops.llm.prompts`) is parsed and its template checked against its declared variables;
  the model it names in ``model:`` is resolved and recorded, so a prompt says which exact version it was written
  for.
- A **retrieval configuration** (:mod:`model_ops.llm.retrieval`) resolves its embedding model to the exact
  version and opens its index table at the version it names; both are recorded.
- An **adapter** (:data:`~model_ops.llm.layout.ADAPTER`) must name its base (``--base models:/NAME@ALIAS``): the
  exact base version is resolved, the adapter's LoRA tensors are checked against that base's tensor table, and
  the base's name, version, digest and fingerprint are recorded in the adapter's lineage. A new base is a MAJOR
  change (:func:`model_ops.registry.semver.classify`).

Weight files that unpickle (``.bin``, ``.pt`` …) are refused in both unless the policy sets
``allow_pickle_weights: true``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_ops.artifacts.manifest import FLAVOR_FILES, guess_flavor, list_source_files
from model_ops.errors import PolicyError, UsageError
from model_ops.llm import layout
from model_ops.llm.adapters import Adapter, check_fits
from model_ops.llm.application import Application
from model_ops.llm.layout import ADAPTER, APPLICATION, BASE_MODEL, PROMPT, RETRIEVAL
from model_ops.llm.prompts import Prompt
from model_ops.llm.retrieval import Retrieval
from model_ops.llm.weights import BaseModel

if TYPE_CHECKING:
    from model_ops.registry.registry import Registry

TABLE_LABEL = "tensor-table"
LINKS = ("base_model", "written_for", "embedding_model")  # lineage keys naming the exact version a version uses
TABLE_FILE = "tensor_table.json"
ATTACHED_REASON = {
    TABLE_LABEL: "the base model's tensor table (names, dtypes, shapes), read from its safetensors headers"
}


@dataclass
class Prepared:
    """What an LLM registration adds: its flavor, lineage fields and attachments (label -> (file name, bytes))."""

    flavor: str | None
    lineage: dict[str, Any] = field(default_factory=dict)
    attachments: dict[str, tuple[str, bytes]] = field(default_factory=dict)


def prepare(registry: Registry, path: Any, flavor: str | None, base: str | None) -> Prepared:
    kind, sources = list_source_files(Path(path))
    names = [n for n, _ in sources]
    flavor = flavor or guess_flavor(kind, names)
    if flavor in (PROMPT, RETRIEVAL, APPLICATION):
        if base is not None:
            raise UsageError(f"--base is for adapters; a {flavor} names what it uses in its own file")
        if len(sources) != 1:
            raise UsageError(f"a {flavor} is one YAML file, not a directory")
        read = {PROMPT: _prompt, RETRIEVAL: _retrieval, APPLICATION: _application}[flavor]
        return read(registry, sources[0][1])
    if flavor == FLAVOR_FILES and kind == "directory" and layout.CONFIG_FILE in names:
        pickles = layout.pickle_files(names)  # by name, as in base models: what a loader would unpickle
        if pickles and not registry.policy.allow_pickle_weights:  # a model directory whose weights are pickles
            raise PolicyError(
                f"{path} holds weights in a format that runs code when loaded: {', '.join(pickles[:5])}",
                hint="convert them to safetensors, or set allow_pickle_weights: true in the registry's policy",
            )
    if flavor not in (BASE_MODEL, ADAPTER):
        if base is not None:
            raise UsageError(
                f"--base names what an adapter was trained on, and {path} is not an adapter",
                hint=f"an adapter is a directory with {layout.ADAPTER_CONFIG} and {layout.ADAPTER_WEIGHTS}",
            )
        return Prepared(flavor)
    if kind != "directory":
        raise UsageError(f"a {flavor} is a directory of files, and {path} is one file")
    pickles = layout.pickle_files(names)
    if pickles and not registry.policy.allow_pickle_weights:
        raise PolicyError(
            f"{path} holds weights in a format that runs code when loaded: {', '.join(pickles[:5])}",
            hint="convert them to safetensors, or set allow_pickle_weights: true in the registry's policy",
        )
    if flavor == BASE_MODEL:
        if base is not None:
            raise UsageError("--base is for adapters; a base model is registered on its own")
        model = BaseModel.read(Path(path))
        table = model.table_bytes()
        return Prepared(
            flavor,
            {"architecture": model.summary()},
            {TABLE_LABEL: (TABLE_FILE, table)},
        )
    if base is None:
        raise UsageError(
            f"{path} is an adapter and needs the base model it was trained on",
            hint="pass --base models:/NAME@ALIAS (or /N) naming a registered base_model version",
        )
    base_mv = registry.resolve(base)
    _require_flavor(base_mv, BASE_MODEL, "--base")
    base_table = registry.attachment(base_mv.name, base_mv.version, TABLE_LABEL)
    if base_table is None:
        raise UsageError(f"{base_mv.ref} has no tensor table to check the adapter against", hint="register it again")
    adapter = Adapter.read(Path(path))
    check_fits(adapter, BaseModel.from_table(base_table), str(path), base_mv.ref)
    architecture = (base_mv.record.get("lineage") or {}).get("architecture") or {}
    return Prepared(
        flavor,
        {
            "base_model": {
                "name": base_mv.name,
                "version": base_mv.version,
                "digest": base_mv.digest,
                "fingerprint": architecture.get("fingerprint"),
            },
            "adapter": adapter.summary(),
        },
    )


def _prompt(registry: Registry, source: Path) -> Prepared:
    prompt = Prompt.parse(source.read_bytes(), str(source))
    lineage: dict[str, Any] = {"prompt": prompt.summary()}
    if prompt.model is not None:
        target = registry.resolve(prompt.model)
        lineage["written_for"] = {"name": target.name, "version": target.version, "digest": target.digest}
    return Prepared(PROMPT, lineage)


def _retrieval(registry: Registry, source: Path) -> Prepared:
    from deltalake.exceptions import DeltaError

    from model_ops.data.delta import Dataset
    from model_ops.errors import NotFoundError
    from model_ops.location import resolve_root

    config = Retrieval.parse(source.read_bytes(), str(source))
    embedder = registry.resolve(config.embedding_model)
    uri, version = config.index_ref()
    try:
        Dataset(resolve_root(uri), "retrieval index").table(version)
    except (NotFoundError, DeltaError, OSError) as e:
        raise UsageError(
            f"{source}: the index table {uri} cannot be opened at version {version}: {e}",
            hint="name a Delta table and one of its versions (URI@VERSION) that exists",
        ) from None
    return Prepared(
        RETRIEVAL,
        {
            "retrieval": {**config.summary(), "index": {"uri": uri, "version": version}},
            "embedding_model": {"name": embedder.name, "version": embedder.version, "digest": embedder.digest},
        },
    )


ROLE_FLAVORS = {"base_model": BASE_MODEL, "adapter": ADAPTER, "prompt": PROMPT, "retrieval": RETRIEVAL}
_FLAVOR_HINTS = {
    BASE_MODEL: "register the base's directory (safetensors shards and config.json) first, then name it",
    ADAPTER: "an adapter is a PEFT directory (adapter_config.json, adapter_model.safetensors) registered with --base",
    PROMPT: "a prompt is a prompt.yaml registered on its own (see model_ops.llm.prompts)",
    RETRIEVAL: "a retrieval configuration is a retrieval.yaml (see model_ops.llm.retrieval)",
}


def _require_flavor(mv: Any, flavor: str, where: str) -> None:
    if mv.flavor != flavor:
        raise UsageError(
            f"{where}: {mv.ref} is a {mv.flavor!r} artifact, not a {flavor.replace('_', ' ')}",
            hint=_FLAVOR_HINTS[flavor],
        )


def fingerprint(mv: Any) -> str | None:
    """The architecture fingerprint of a base model version, or the one an adapter version recorded for its base."""
    lineage = mv.record.get("lineage") or {}
    if mv.flavor == BASE_MODEL:
        return (lineage.get("architecture") or {}).get("fingerprint")
    return (lineage.get("base_model") or {}).get("fingerprint")


def check_adapter_base(adapter_mv: Any, base_mv: Any, purpose: str) -> None:
    """Refuse ``purpose`` (e.g. "serving it") of an adapter on a base whose architecture differs from the one it was
    trained on, naming both; the same base under another version or name is fine when its fingerprint is equal."""
    trained_on = (adapter_mv.record.get("lineage") or {}).get("base_model") or {}
    wanted, found = fingerprint(adapter_mv), fingerprint(base_mv)
    if wanted is None or wanted != found:
        raise PolicyError(
            f"{adapter_mv.ref} was trained on {trained_on.get('name')} v{trained_on.get('version')} "
            f"(architecture {str(wanted)[:12]}); {base_mv.ref} has architecture {str(found)[:12]}, "
            f"so {purpose} is refused",
            hint=f"use a base with the same tensor names, dtypes and shapes, or an adapter trained on {base_mv.ref}",
        )


def _follows(ref: str) -> str | None:
    """``@ALIAS`` or ``/STAGE`` for a reference that moves with an alias or a stage; None for a pinned one."""
    from model_ops.registry.refs import parse_ref

    parsed = parse_ref(ref)
    return f"@{parsed.alias}" if parsed.alias else f"/{parsed.stage}" if parsed.stage else None


def part(mv: Any, ref: str | None) -> dict[str, Any]:
    """How an application records one of its parts: the exact version, what a reference by alias or stage follows,
    and for a prompt the variables it takes (what callers send)."""
    recorded = {
        "name": mv.name,
        "version": mv.version,
        "semver": mv.semver,
        "digest": mv.digest,
        "flavor": mv.flavor,
        "ref": ref,
        "follows": _follows(ref) if ref else None,
    }
    if mv.flavor == PROMPT:
        recorded["variables"] = _variables(mv)
    return recorded


def _variables(prompt_mv: Any) -> list[str]:
    """The variables a prompt version takes, as its lineage recorded them, sorted."""
    return sorted(((prompt_mv.record.get("lineage") or {}).get("prompt") or {}).get("variables") or [])


def _still_fits(role: str, mv: Any, recorded: dict[str, Any], what: str) -> None:
    """A part that follows an alias or stage may move only to a version that answers the same callers the same way:
    a prompt taking the variables recorded at registration, a retrieval configuration of the same major version
    (the same embedding model). An adapter may move to any adapter for the same architecture (checked against the
    base by :func:`check_adapter_base`)."""
    if mv.version == recorded.get("version"):
        return
    if role == "prompt" and recorded.get("variables") is not None:
        now = _variables(mv)
        if now != recorded["variables"]:
            raise PolicyError(
                f"{what}: its prompt {recorded.get('ref')} now resolves to {mv.ref}, which takes "
                f"{', '.join(now) or 'no variables'}; the application was registered for "
                f"{', '.join(recorded['variables']) or 'no variables'}, what its callers send, so it is not used",
                hint="register a new version of the application for the new variables, or move the alias back",
            )
    then = str(recorded.get("semver") or "")
    if role == "retrieval" and then.split(".")[0] != mv.semver.split(".")[0]:
        raise PolicyError(
            f"{what}: its retrieval {recorded.get('ref')} now resolves to {mv.ref} ({mv.semver}), a new major version "
            f"(another embedding model) beside the {then} it was registered with, so it is not used",
            hint="register a new version of the application to take it, or move the alias back",
        )


def resolve_parts(
    registry: Registry, app: Application, what: str, recorded: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every part of ``app`` resolved now and checked against the others: ``{role: ModelVersion}``. The base of an
    application that names only an adapter is the exact base that adapter was trained on when the application
    was registered (``recorded``: its lineage's parts), so an adapter alias that moves never changes the base
    model under it: an adapter for another architecture is refused."""
    found: dict[str, Any] = {}
    for role, ref in app.parts().items():
        mv = registry.resolve(ref)
        _require_flavor(mv, ROLE_FLAVORS[role], f"{what}: {role}")
        then = (recorded or {}).get(role)
        if isinstance(then, dict):
            _still_fits(role, mv, then, what)
        found[role] = mv
    adapter = found.get("adapter")
    if adapter is not None:
        trained_on = (adapter.record.get("lineage") or {}).get("base_model") or {}
        if "base_model" not in found:
            pinned = (recorded or {}).get("base_model") or trained_on
            found["base_model"] = registry.get(pinned["name"], pinned["version"])
        check_adapter_base(adapter, found["base_model"], f"{what}: answering with it on that base")
    written_for = (found["prompt"].record.get("lineage") or {}).get("written_for")
    if isinstance(written_for, dict):
        models = {found[r].name for r in ("base_model", "adapter") if r in found}
        if written_for.get("name") not in models:
            raise PolicyError(
                f"{what}: {found['prompt'].ref} was written for {written_for.get('name')} "
                f"v{written_for.get('version')}, and this application answers with {', '.join(sorted(models))}",
                hint="name a prompt written for this application's base model or adapter",
            )
    return {role: found[role] for role in ROLE_FLAVORS if role in found}


def _application(registry: Registry, source: Path) -> Prepared:
    app = Application.parse(source.read_bytes(), str(source))
    written = app.parts()
    parts = resolve_parts(registry, app, str(source))
    return Prepared(APPLICATION, {"application": {role: part(mv, written.get(role)) for role, mv in parts.items()}})
