"""Serving LLM applications: what answers each request, resolved from the application's deployment manifest and
kept in step with the registry.

An application version (:mod:`model_ops.llm.application`) names a base model, an adapter, a prompt and a retrieval
configuration. Its production version (and canary, at its weight) is the deployment manifest, as for any model
(:mod:`model_ops.ops.deployment`), so an application is deployed, canaried and rolled back as a unit. Parts
referenced by alias or stage follow it: whenever the registry's log moves, every served application is resolved
again (:func:`model_ops.loading.answering`: the parts checked against each other, so an alias moved to an adapter
for another architecture keeps the old answer in force and is reported, never served). An adapter switch is
therefore an alias move, in force within a poll or two.

Each request is routed by its key (``key`` in the body, else ``X-Routing-Key``, else its request id) exactly as
the model server routes rows, rendered with the prompt of its arm, and answered with every version it used. Adapters
are written, verified, to ``lora_dir/NAME-vN`` in PEFT's layout (``adapter_config.json``,
``adapter_model.safetensors``), the directory vLLM's filesystem LoRA resolver loads an adapter named ``NAME-vN``
from; with a generation backend (an OpenAI-compatible ``/v1/chat/completions``, such as vLLM), the rendered
messages are sent to it under that adapter's name and its answer is returned with the versions.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from model_ops.artifacts.store import directory_holds
from model_ops.errors import ModelOpsError, NotFoundError, UsageError
from model_ops.llm.layout import APPLICATION
from model_ops.loading import Answering, answering
from model_ops.ops import deployment as dep
from model_ops.ops import routing
from model_ops.ops.deployment import Manifest
from model_ops.registry import Registry
from model_ops.serving import fleet
from model_ops.serving.follower import Follower
from model_ops.serving.scoring import RequestError
from model_ops.vocab import Arm

log = logging.getLogger("model_ops.serving")

RETRY_SECONDS = 5.0
BACKEND_TIMEOUT = 120.0


@dataclass(frozen=True, eq=False)
class AppSlot:
    """What answers one application's requests now: its manifest and each of its versions resolved."""

    name: str
    manifest: Manifest
    answers: dict[int, Answering]
    log_version: int
    built_at: float = field(default_factory=time.time)

    def route(self, key: str) -> tuple[Arm, Answering]:
        arm = Arm.PRODUCTION
        if self.manifest.canary is not None and self.manifest.canary_weight > 0:
            arm = Arm(routing.assign_arms(pd.Series([key]), self.manifest.canary_weight, salt=self.name)[0])
        number = self.manifest.canary if arm is Arm.CANARY else self.manifest.production
        assert number is not None
        return arm, self.answers[number]

    def key(self) -> tuple[Any, ...]:
        """What the slot serves, to tell whether a rebuild changed anything."""
        return (
            self.manifest,
            tuple(
                (v, tuple((role, mv.version, mv.digest) for role, mv in a.parts.items()))
                for v, a in sorted(self.answers.items())
            ),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest.to_dict(),
            "versions": {str(v): a.versions() for v, a in sorted(self.answers.items())},
            "registry_log_version": self.log_version,
            "built_at": self.built_at,
        }


def lora_name(adapter: Any) -> str:
    """The name an adapter version is served under (and its directory under ``lora_dir``): ``NAME-vN``, with the
    ``/`` of a team's name as ``+``, which no model name contains, so two adapters never share a directory."""
    return f"{adapter.name.replace('/', '+')}-v{adapter.version}"


class Withdrawn(NotFoundError):
    """The application has nothing in production (never deployed, or its production version was withdrawn): it
    stops answering, rather than answering with what it no longer deploys."""


class Applications(Follower):
    """The slot of every served application, and the follower that resolves them again when the registry moves."""

    thread_name = "model-ops-serve-applications"
    failure = "resolving applications failed"

    def __init__(
        self,
        open_registry: Callable[[], Registry],
        names: Iterable[str],
        *,
        poll_seconds: float = 0.2,
        lora_dir: str | Path | None = None,
    ) -> None:
        super().__init__(poll_seconds)
        self._open = open_registry
        self.names = list(names)
        self.lora_dir = Path(lora_dir) if lora_dir else None
        self.slots: dict[str, AppSlot] = {}  # replaced, never mutated: a request reads it once
        self.problems: dict[str, str] = {}  # per application: why it does not answer, or answers with an older slot
        self.registry_problem: str | None = None
        self.reloads = 0
        self._placed: dict[Path, str] = {}  # adapter directories this server wrote or checked: their digests
        self._reg: Registry | None = None
        self._seen = -2
        self._retry_at = 0.0
        self._lock = threading.Lock()  # one refresh at a time (the follower thread, or a caller)

    @property
    def ready(self) -> bool:
        return all(n in self.slots for n in self.names)

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "applications": {n: s.describe() for n, s in sorted(self.slots.items())},
            "problems": dict(self.problems),
            "registry_problem": self.registry_problem,
            "reloads": self.reloads,
        }

    def refresh(self) -> bool:
        """One poll: True when some application now answers differently. One probe when the log did not move."""
        with self._lock:
            try:
                if self._reg is None:
                    self._reg = self._open()
                version = fleet.registry_log_version(self._reg)  # the model slots' probe (and its test seam)
            except Exception as exc:
                self.registry_problem = f"cannot read the registry: {str(exc).splitlines()[0] if str(exc) else exc}"
                return False
            self.registry_problem = None
            now = time.monotonic()
            misplaced = any(not path.is_dir() for path in self._placed)  # an adapter directory someone removed
            if version == self._seen and not misplaced and not (self._retry_at and now >= self._retry_at):
                return False
            self._placed = {path: d for path, d in self._placed.items() if path.is_dir()}
            changed, failed = False, False
            slots = dict(self.slots)
            for name in self.names:
                try:
                    slot = self._build(self._reg, name, version)
                except Withdrawn as exc:
                    self.problems[name] = exc.message
                    if slots.pop(name, None) is not None:
                        changed = True
                        log.warning("model_ops serve: %s: %s; it no longer answers", name, exc.message)
                    continue
                except Exception as exc:  # nothing half-checked takes traffic: the slot in force keeps answering
                    why = exc.message if isinstance(exc, ModelOpsError) else f"{type(exc).__name__}: {exc}"
                    self.problems[name] = why
                    log.warning("model_ops serve: %s: %s; keeping what answers now", name, why)
                    failed = True
                    continue
                self.problems.pop(name, None)
                old = slots.get(name)
                if old is not None and old.key() == slot.key():
                    continue
                slots[name] = slot
                changed = True
                self.reloads += 1
                log.info("model_ops serve: application %s now answers with %s", name, _summary(slot))
            self.slots = slots
            self._seen = version
            self._retry_at = now + RETRY_SECONDS if failed else 0.0
            return changed

    def _build(self, reg: Registry, name: str, log_version: int) -> AppSlot:
        manifest = dep.current(reg, name)
        if manifest.production is None:
            raise Withdrawn(
                f"{name} has no version in production", hint=f"deploy one with `model-ops deploy {name} deploy`"
            )
        numbers = [v for v in (manifest.production, manifest.canary) if v is not None]
        versions = {v: reg.get(name, v) for v in numbers}
        for mv in versions.values():
            if mv.flavor != APPLICATION:
                raise UsageError(f"{mv.ref} is a {mv.flavor!r} model, not an LLM application, so it is not served here")
        answers = {v: answering(reg, mv) for v, mv in versions.items()}
        if self.lora_dir is not None:
            for a in answers.values():
                if "adapter" in a.parts:
                    self._place_adapter(reg, a.parts["adapter"])
        return AppSlot(name, manifest, answers, log_version)

    def _place_adapter(self, reg: Registry, adapter: Any) -> Path:
        """The adapter's files under ``lora_dir/NAME-vN``, fetched and verified. A directory this server placed is
        trusted while it is there (so a registry move does not re-hash every adapter). Placing holds a lock on
        ``lora_dir`` (server worker processes share it): a directory found there is checked under it, and
        replaced only when it does not hold exactly the adapter's files."""
        assert self.lora_dir is not None
        target = self.lora_dir / lora_name(adapter)
        if self._placed.get(target) == adapter.digest and target.is_dir():
            return target
        self.lora_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lora_dir / ".model_ops.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target.is_dir() and _holds(reg, adapter.digest, target)):
                staging = self.lora_dir / f".{target.name}.{uuid.uuid4().hex[:8]}.part"
                aside = self.lora_dir / f".{target.name}.{uuid.uuid4().hex[:8]}.bad"
                try:
                    reg.artifacts.fetch(adapter.digest, staging)
                    if target.exists():
                        target.rename(aside)
                    staging.rename(target)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                    shutil.rmtree(aside, ignore_errors=True)
        self._placed[target] = adapter.digest
        return target

    def slot(self, name: str) -> AppSlot:
        found = self.slots.get(name)
        if found is None:
            if name in self.names:
                why = self.problems.get(name) or self.registry_problem or "it is still being loaded"
                raise RequestError(f"application {name} cannot answer yet: {why}", 503)
            raise RequestError(
                f"application {name} is not served here",
                404,
                hint="served applications: " + (", ".join(self.names) or "none"),
            )
        return found


def _holds(reg: Registry, digest: str, directory: Path) -> bool:
    try:
        manifest = reg.artifacts.manifest(digest)
    except ModelOpsError:
        return False
    return directory_holds(manifest, directory, nothing_else=True)


def _summary(slot: AppSlot) -> str:
    def one(a: Answering) -> str:
        return ", ".join(f"{mv.name} v{mv.version}" for mv in a.parts.values())

    text = f"v{slot.manifest.production} ({one(slot.answers[slot.manifest.production])})"  # type: ignore[index]
    if slot.manifest.canary is not None:
        text += f", canary v{slot.manifest.canary} at {slot.manifest.canary_weight:.0%}"
        text += f" ({one(slot.answers[slot.manifest.canary])})"
    return text


# ---------------------------------------------------------------------------------------------------- requests


def prompt_request(doc: Any) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """``(variables, key, rest)`` of a request body: ``variables`` (an object of the prompt's variables), an
    optional routing ``key`` and, for generation, whatever else the body holds (OpenAI chat-completion fields)."""
    if not isinstance(doc, dict):
        raise RequestError("the request body must be a JSON object with a 'variables' object")
    variables = doc.get("variables", {})
    if not isinstance(variables, dict):
        raise RequestError("'variables' must be an object of the prompt's variables", hint='e.g. {"customer": "Ada"}')
    key = doc.get("key")
    if key is not None and not isinstance(key, (str, int)):
        raise RequestError("'key' must be a string or an integer")
    rest = {k: v for k, v in doc.items() if k not in ("variables", "key")}
    if "messages" in rest or "model" in rest:
        raise RequestError(
            "'messages' and 'model' come from the application (its prompt and its adapter)",
            hint="send the prompt's variables in 'variables'",
        )
    return variables, None if key is None else str(key), rest


def answer(slot: AppSlot, variables: dict[str, Any], key: str) -> dict[str, Any]:
    """The rendered request for one arm of the application, naming every version it uses."""
    arm, chosen = slot.route(key)
    try:
        messages = chosen.prompt.messages(**variables)
    except ModelOpsError as exc:
        what = f"{slot.name} v{chosen.application.version} ({arm.value}, prompt {chosen.parts['prompt'].ref})"
        raise RequestError(f"{what}: {exc.message}", 400, hint=exc.hint) from None
    doc: dict[str, Any] = {
        "application": slot.name,
        "arm": arm.value,
        "versions": chosen.versions(),
        "messages": messages,
        "parameters": dict(chosen.prompt.parameters),
    }
    adapter = chosen.parts.get("adapter")
    doc["served_model"] = lora_name(adapter) if adapter is not None else chosen.parts["base_model"].name
    if chosen.retrieval is not None:
        r = chosen.retrieval
        uri, version = r.index_ref()
        doc["retrieval"] = {"top_k": r.top_k, "index": {"uri": uri, "version": version}, **r.summary()}
    return doc


# What a caller may set on a generation, over the prompt's own parameters, and how: (type, smallest, largest).
GENERATION_FIELDS: dict[str, tuple[type | tuple[type, ...], float | None, float | None]] = {
    "max_tokens": (int, 1, 1_000_000),
    "max_completion_tokens": (int, 1, 1_000_000),
    "temperature": ((int, float), 0, 2),
    "top_p": ((int, float), 0, 1),
    "presence_penalty": ((int, float), -2, 2),
    "frequency_penalty": ((int, float), -2, 2),
    "seed": (int, 0, 2**63 - 1),
    "n": (int, 1, 8),
    "stop": ((str, list), None, None),
    "user": (str, None, None),
}


def generation_fields(extra: dict[str, Any]) -> dict[str, Any]:
    """The caller's generation settings, checked: only :data:`GENERATION_FIELDS`, each of its type and range, so
    the versioned prompt's parameters are what a caller may tune, not replace with anything the backend accepts."""
    if "stream" in extra:
        raise RequestError("streaming is not supported here", 400, hint="leave out 'stream'; the answer comes whole")
    unknown = sorted(set(extra) - set(GENERATION_FIELDS))
    if unknown:
        raise RequestError(
            f"unknown field(s) {', '.join(unknown)}", hint="generation settings: " + ", ".join(GENERATION_FIELDS)
        )
    for key, value in extra.items():
        kind, low, high = GENERATION_FIELDS[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            expected = {int: "a whole number", str: "text"}.get(kind, "a number")  # type: ignore[arg-type]
            if key == "stop":
                expected = "text or a list of at most 4 texts"
            raise RequestError(f"'{key}' must be {expected}, not {value!r}")
        if isinstance(value, (int, float)) and not (
            (not isinstance(value, float) or math.isfinite(value))
            and (low is None or value >= low)
            and (high is None or value <= high)
        ):
            raise RequestError(f"'{key}' must be from {low} to {high}, not {value!r}")
        if key == "stop" and isinstance(value, list) and (len(value) > 4 or not all(isinstance(v, str) for v in value)):
            raise RequestError("'stop' must be text or a list of at most 4 texts")
    return dict(extra)


def generate(backend: str, rendered: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """The backend's chat completion for a rendered request: its messages under the served model's name, the
    prompt's generation parameters under the caller's own ``fields`` (checked by :func:`generation_fields`).
    Raises RequestError (502) when the backend fails."""
    body = {
        **rendered["parameters"],
        **fields,
        "model": rendered["served_model"],
        "messages": rendered["messages"],
    }
    request = urllib.request.Request(
        backend.rstrip("/") + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=BACKEND_TIMEOUT) as response:  # noqa: S310 (the operator's URL)
            reply = json.loads(response.read())
    except urllib.error.HTTPError as e:
        detail = e.read()[:500].decode(errors="replace")
        raise RequestError(f"the generation backend refused the request ({e.code}): {detail}", 502) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise RequestError(f"the generation backend at {backend} did not answer: {e}", 502) from None
    if not isinstance(reply, dict):
        raise RequestError("the generation backend answered with something other than a JSON object", 502)
    return reply
