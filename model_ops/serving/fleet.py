"""What serves each model now (its :class:`Slot`), kept in step with the registry by a follower thread.

Following the registry cheaply: the registry folds its Delta event log and, when its fold is current, tells whether
anything happened since with one probe of the next commit file (one stat locally, one HEAD on S3; see
``Registry._sync``). The follower calls that every ``poll_seconds`` and compares the log's version with the one it
last acted on; only when the log moved does it read each model's deployment manifest
(:func:`model_ops.ops.deployment.current`), and only a manifest that changed builds a new slot.

Swapping atomically (blue-green): a new slot is built completely off the request path (every version loaded,
checked and warmed by scoring a probe row) while the old one keeps answering; then one assignment of the slot table
puts it in force. A request reads the table once, so it is answered wholly by the old slot or wholly by the new one,
never half by each. Versions that leave service stay loaded for ``drain_seconds``, so switching back is another
reference assignment, with nothing to load; the version a production rollback would restore is kept loaded too (a
warm standby), so ``model-ops rollback`` takes effect within one poll.

When the registry cannot be read, the slots in force keep serving; the server is ready as long as it has a slot for
each model it serves, and reports not-ready only while it has none.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from model_ops.errors import ModelOpsError, NotFoundError
from model_ops.loading import load
from model_ops.ops import deployment as dep
from model_ops.ops import experiments as exps
from model_ops.ops.deployment import Manifest
from model_ops.registry import Registry
from model_ops.serving.abtest import LiveExperiment
from model_ops.serving.follower import Follower
from model_ops.serving.scoring import Version
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import Arm

log = logging.getLogger("model_ops.serving")

RETRY_SECONDS = 5.0
REBUILD_SWITCH_INTERVAL = 0.0002


@dataclass(frozen=True, eq=False)
class Slot:
    """Everything one model's requests are answered with: the manifest and its versions, loaded and warmed, and
    the A/B experiment running on the model (its arms' versions are loaded too; it routes every served row)."""

    model: str
    manifest: Manifest
    versions: dict[int, Version]
    spec: ModelSpec
    log_version: int
    built_at: float = field(default_factory=time.time)
    experiment: LiveExperiment | None = None

    def version(self, arm: Arm | str) -> Version | None:
        number = {
            Arm.PRODUCTION: self.manifest.production,
            Arm.CANARY: self.manifest.canary,
            Arm.SHADOW: self.manifest.shadow,
        }[Arm(arm)]
        return None if number is None else self.versions[number]

    @property
    def production(self) -> Version:
        assert self.manifest.production is not None
        return self.versions[self.manifest.production]

    def describe(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest.to_dict(),
            "semvers": {str(v): ver.semver for v, ver in sorted(self.versions.items())},
            "registry_log_version": self.log_version,
            "built_at": self.built_at,
            "experiment": self.experiment.describe() if self.experiment is not None else None,
        }


def _audit(reg: Registry, name: str) -> list[Any]:
    """The model's deployment and experiment records, from the registry's fold: no read of the audit table, so a
    move of the log costs the fleet one incremental read however many models it serves."""
    return reg.serving_records(name)


def _same_experiment(live: LiveExperiment | None, running: exps.Declared | None) -> bool:
    if live is None or running is None:
        return live is None and running is None
    return live.declared.started_seq == running.started_seq


_SWITCHING = threading.Lock()
_switching: list[float] = []  # the interval to restore, while any follower reads (one entry per reader)


@contextmanager
def _prompt_switching() -> Iterator[None]:
    """While the registry is read and a slot rebuilt, request threads hand the interpreter over more often, so the
    follower's many short native calls (Delta reads) are not each kept waiting for a full switch interval under
    load. A poll that finds nothing new holds it for one stat. The interval is process-wide: with several
    followers in one process the first to enter saves it and the last to leave restores it, so overlapping
    polls can never leave the process switching every 0.2 ms."""
    with _SWITCHING:
        _switching.append(sys.getswitchinterval() if not _switching else _switching[0])
        sys.setswitchinterval(REBUILD_SWITCH_INTERVAL)
    try:
        yield
    finally:
        with _SWITCHING:
            saved = _switching.pop()
            if not _switching:
                sys.setswitchinterval(saved)


def registry_log_version(reg: Registry) -> int:
    """The Delta version of the registry's event log, brought up to date: :meth:`Registry.log_version`, the
    registry's own change probe (one stat when nothing changed). A function of its own so a test can make the
    registry unreachable here alone."""
    return reg.log_version()


class Fleet(Follower):
    """The slot of every served model, and the follower that rebuilds them when the registry moves.

    ``names``: the models to serve (None: every declared model with a production version, followed as models come
    and go). ``specs``: the declarations by name (a model needs one: it names the key and time columns and the task).
    """

    def __init__(
        self,
        open_registry: Callable[[], Registry],
        specs: dict[str, ModelSpec],
        names: Iterable[str] | None = None,
        *,
        poll_seconds: float = 0.2,
        drain_seconds: float = 60.0,
        standby: bool = True,
        on_swap: Callable[[str, Slot | None, Slot], None] | None = None,
    ) -> None:
        super().__init__(poll_seconds)
        self._open = open_registry
        self.specs = dict(specs)
        self.names = list(names) if names else None
        self.drain_seconds = drain_seconds
        self.standby = standby
        self.on_swap = on_swap
        # The table requests read; replaced (never mutated) by one assignment.
        self.slots: dict[str, Slot] = {}
        self.problems: dict[str, str] = {}  # per model: why it is not served (no declaration, a failed build)
        self.registry_errors = 0
        self.last_registry_error: str | None = None
        self.reloads = 0
        self.last_refresh: dict[str, Any] | None = None  # the last poll that found the log moved: its timings
        self._reg: Registry | None = None
        self._seen = -2  # the log version acted on; -2: never read
        self._retry_at = 0.0
        self._loaded: dict[tuple[str, int], Version] = {}
        self._released: dict[tuple[str, int], float] = {}
        self._standbys: dict[str, int] = {}
        self._experiments: dict[tuple[str, int], LiveExperiment] = {}  # by (model, start record's seq)
        self._lock = threading.Lock()  # one refresh at a time (the follower thread, or a caller)

    # ------------------------------------------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        """Something to serve for every model asked for (or for at least one, when none was named)."""
        slots = self.slots
        if self.names:
            return all(n in slots for n in self.names)
        return bool(slots)

    def loaded_versions(self) -> list[tuple[str, int]]:
        return sorted(self._loaded)

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "models": {n: s.describe() for n, s in sorted(self.slots.items())},
            "problems": dict(self.problems),
            "loaded": [f"{n}/{v}" for n, v in self.loaded_versions()],
            "registry_errors": self.registry_errors,
            "last_registry_error": self.last_registry_error,
            "reloads": self.reloads,
            "last_refresh": self.last_refresh,
        }

    # ------------------------------------------------------------------------------------------------ follower

    def refresh(self) -> bool:
        """One poll: True when some slot changed. Cheap when the log did not move (one probe)."""
        with self._lock, _prompt_switching():
            t0 = time.perf_counter()
            try:
                if self._reg is None:
                    self._reg = self._open()
                version = registry_log_version(self._reg)
            except Exception as exc:  # unreachable, unreadable, damaged: keep serving what we have
                self._registry_error(exc)
                return False
            now = time.monotonic()
            retry_due = bool(self._retry_at) and now >= self._retry_at  # a failed build is tried again
            if version == self._seen and not retry_due:
                self._expire(now)
                return False
            t1 = time.perf_counter()
            try:
                changed = self._rebuild(self._reg, version)
            except Exception as exc:
                self._registry_error(exc)
                self._retry_at = now + RETRY_SECONDS
                return False
            self.last_refresh = {
                "log_version": version,
                "read_ms": round((t1 - t0) * 1000, 1),
                "rebuild_ms": round((time.perf_counter() - t1) * 1000, 1),
                "changed": changed,
            }
            self._expire(time.monotonic())
            return changed

    def _registry_error(self, exc: BaseException) -> None:
        self.registry_errors += 1
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if message != self.last_registry_error:
            log.warning("model_ops serve: cannot read the registry (%s); serving what is loaded", message)
        self.last_registry_error = message

    def _targets(self, reg: Registry) -> list[str]:
        if self.names:
            return list(self.names)
        return [n for n in reg.models() if n in self.specs]

    def _rebuild(self, reg: Registry, log_version: int) -> bool:
        changed = False
        failed = False
        slots = dict(self.slots)
        names = self._targets(reg)
        for name in list(slots):
            if name not in names:
                del slots[name]
                changed = True
        for name in names:
            spec = self.specs.get(name)
            if spec is None:
                self.problems[name] = f"{name} has no model declaration here, so it cannot be served"
                continue
            try:
                events = _audit(reg, name)  # read once: the manifest and the running experiment both come from it
                manifest = dep.current(reg, name, events)
            except NotFoundError as exc:
                self.problems[name] = exc.message
                slots.pop(name, None)
                continue
            running = exps.running(events)
            if manifest.production is None:
                self.problems[name] = f"{name} has no version in production"
                changed = changed or slots.pop(name, None) is not None
                continue
            old = slots.get(name)
            standby = self._standby(reg, name) if self.standby else None
            if old is not None and old.manifest == manifest and _same_experiment(old.experiment, running):
                if standby is not None:
                    self._standbys[name] = standby
                continue
            try:
                slot = self._build(reg, name, spec, manifest, log_version, running, events)
                if standby is not None:
                    self._version(reg, name, spec, standby)
                    self._standbys[name] = standby
            except Exception as exc:  # a version that cannot be loaded, checked or warmed never takes traffic
                why = exc.message if isinstance(exc, ModelOpsError) else f"{type(exc).__name__}: {exc}"
                self.problems[name] = f"cannot serve {manifest.describe()}: {why}"
                log.warning("model_ops serve: %s: %s; %s", name, self.problems[name], "keeping the slot in force")
                failed = True
                continue
            self.problems.pop(name, None)
            slots[name] = slot
            changed = True
            self.slots = dict(slots)  # the atomic switch for this model (one reference assignment)
            self.reloads += 1
            log.info("model_ops serve: %s now serves %s", name, manifest.describe())
            if self.on_swap is not None:
                self.on_swap(name, old, slot)
        self.slots = slots
        self._seen = log_version
        self._retry_at = time.monotonic() + RETRY_SECONDS if failed else 0.0
        return changed

    def _standby(self, reg: Registry, name: str) -> int | None:
        try:
            return reg.rollback_target(name)
        except ModelOpsError:
            return None

    def _build(
        self,
        reg: Registry,
        name: str,
        spec: ModelSpec,
        manifest: Manifest,
        log_version: int,
        running: exps.Declared | None = None,
        events: list[Any] | None = None,
    ) -> Slot:
        numbers = [v for v in (manifest.production, manifest.canary, manifest.shadow) if v is not None]
        if running is not None:
            numbers += [a.version for a in running.config.arms if a.version not in numbers]
        versions = {v: self._version(reg, name, spec, v) for v in numbers}
        return Slot(
            name, manifest, versions, spec, log_version, experiment=self._experiment(reg, spec, running, events)
        )

    def _experiment(
        self, reg: Registry, spec: ModelSpec, running: exps.Declared | None, events: list[Any] | None
    ) -> LiveExperiment | None:
        """The live state of the running experiment: the one already followed, else resumed from the outcomes
        table and the prediction log. Experiments that stopped are let go."""
        model = spec.name
        for key in [k for k in self._experiments if k[0] == model]:
            if running is None or key[1] != running.started_seq:
                del self._experiments[key]
        if running is None:
            return None
        key = (model, running.started_seq)
        live = self._experiments.get(key)
        if live is None:
            live = LiveExperiment.resume(running, spec, reg.root, self._open, events or [])
            self._experiments[key] = live
            log.info("model_ops serve: %s runs the experiment %s", model, running.config.name)
        return live

    def _version(self, reg: Registry, name: str, spec: ModelSpec, number: int) -> Version:
        """A loaded, checked and warmed version (from the drain cache when it is still there)."""
        key = (name, number)
        found = self._loaded.get(key)
        if found is None:
            found = Version.build(load(f"models:/{name}/{number}", registry=reg), spec)
            found.warm()
            self._loaded[key] = found
        self._released.pop(key, None)
        return found

    def _expire(self, now: float) -> None:
        """Unload versions out of service (not in a slot, not a standby) for longer than the drain time."""
        in_use = {(n, v) for n, s in self.slots.items() for v in s.versions}
        in_use |= {(n, v) for n, v in self._standbys.items()}
        for key in list(self._loaded):
            if key in in_use:
                self._released.pop(key, None)
                continue
            since = self._released.setdefault(key, now)
            if now - since >= self.drain_seconds:
                del self._loaded[key]
                del self._released[key]
