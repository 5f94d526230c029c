"""Event webhooks: registry events POSTed, HMAC-signed, to the receivers listed in ``<root>/registry/webhooks.yaml``.

Why it is built this way:

* **The event log is the outbox.** Nothing is queued at write time: every event a receiver may want is already in
  the append-only log, numbered by ``seq`` without gaps, and a commit publishes its events together or not at all.
  Each webhook keeps a durable delivery cursor in ``<root>/registry/webhooks/<name>.json`` (a local file replaced
  atomically, or an S3 object); a dispatcher reads the events after it and POSTs them in ``seq`` order, recording
  progress only after the receiver answered 2xx. A crash, a kill or ``os._exit`` between the POST and the record
  sends that event again: delivery is **at least once**, and a receiver deduplicates by the delivery id, which is
  the same on every attempt (it is derived from the webhook's name and the event).
* **In order per model, not globally.** A receiver that keeps rejecting one model's event holds back that model's
  later events only: other models' events still go. The state file says which: ``cursor`` (every selected event
  up to it is delivered), ``ahead`` (per model, the last event delivered beyond the cursor) and ``blocked`` (per
  model, the event that failed, how often, the error, and when to try again). The first delivery of each event
  therefore always arrives after the first delivery of that model's earlier events; only redeliveries (same id)
  can arrive later. While a receiver answers but refuses, each further model gets one attempt per pass (not
  ``max_attempts``) until one is accepted, so a receiver refusing everything costs one request per model. A
  receiver that cannot be reached at all (connection refused, timeout, TLS failure) ends the pass at once:
  nothing else would get through either.
* **Retries with exponential backoff, never giving up.** An event is tried ``max_attempts`` times per pass, the
  pause doubling from ``backoff`` up to ``max_backoff``; then it stays pending, and background passes leave the
  model (or, for an unreachable receiver, the webhook) alone until the next pause has passed. ``model-ops webhooks
  deliver`` ignores those pauses: an operator asking for delivery gets an attempt now.
* **The registry write never waits.** ``Registry._after_commit`` calls :func:`after_commit`, which only wakes a
  daemon thread (one per registry and process, plus one per webhook, each exiting when idle; kicks while it runs
  coalesce into one more pass) and cannot raise. The command line gives those threads at most
  ``EXIT_FLUSH_SECONDS`` before it leaves with ``os._exit``, and so does any process that exits normally (an
  ``atexit`` handler); whatever did not go stays pending by cursor and goes with the next write, the next
  ``model-ops webhooks deliver``, or a long-lived process's retry timer.
* **Concurrent dispatchers cannot skip an event.** Every state a dispatcher writes claims only deliveries that
  happened (by it, or recorded before it read the state), and such claims stay true, so writing one, or the union
  of two, never marks an undelivered event as delivered. Saving reads the stored state and merges it in (cursor and
  per-model positions take the maximum) before replacing it, so a slower dispatcher does not move the cursor back
  either. On a local root dispatchers also take turns through an ``flock`` on ``<name>.lock``, so they rarely POST
  the same event twice; on S3 the merge is made safe by conditional writes (``If-Match`` on the object's ETag) and
  two dispatchers may both deliver an event, which at-least-once allows.
* **A new webhook starts at its configuration.** Events committed before ``webhooks.yaml`` was last modified (when
  the webhook first runs and has no state yet) are not sent, unless ``replay_history: true``. Changing a webhook's
  event filter applies to events after its cursor. A webhook is known by its name: renaming one starts it afresh.

Signing: the body is JSON ``{"delivery_id", "webhook", "registry", "event"}`` (``event`` is ``Event.to_dict()``);
``X-Model-Ops-Timestamp`` is the Unix time of the attempt and ``X-Model-Ops-Signature`` is ``sha256=`` followed by
the hex HMAC-SHA256, keyed by the secret in the environment variable ``secret_env`` names, of
``<timestamp>.<raw body>``. A receiver recomputes it over the raw bytes, compares in constant time, and refuses a
timestamp more than five minutes away from its clock (a captured request cannot be replayed later):
:func:`verify_signature` does exactly that.
"""

from __future__ import annotations

import atexit
import contextlib
import fnmatch
import hashlib
import hmac
import http.client
import json
import logging
import os
import re
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model_ops import __version__
from model_ops.errors import ConflictError, IntegrityError, NotFoundError, UsageError
from model_ops.location import Location, s3_client
from model_ops.registry import events as ev
from model_ops.registry.eventlog import EventLog

try:  # POSIX: dispatchers on one machine take turns; elsewhere the merge on save alone keeps the cursor sound
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from model_ops.registry.registry import Registry

log = logging.getLogger(__name__)

CONFIG_NAME = "webhooks.yaml"
STATE_DIR = "webhooks"
SIGNATURE_HEADER = "X-Model-Ops-Signature"
TIMESTAMP_HEADER = "X-Model-Ops-Timestamp"
DELIVERY_HEADER = "X-Model-Ops-Delivery"
EVENT_HEADER = "X-Model-Ops-Event"
ATTEMPT_HEADER = "X-Model-Ops-Attempt"
SIGNATURE_TOLERANCE_SECONDS = 300
# What the command line waits for background deliveries before it exits (see ``cli.entry``).
EXIT_FLUSH_SECONDS = 2.0
# How long a background pass waits for another dispatcher of the same webhook to finish before leaving the work
# to it (the holder reads the log again before it stops, so events committed meanwhile are not left behind).
BACKGROUND_LOCK_WAIT_SECONDS = 60.0
# On S3 reading webhooks.yaml costs a request; background passes reuse what they read for this long.
S3_CONFIG_TTL_SECONDS = 30.0
_MAX_RESPONSE_BYTES = 64 << 10

# The kinds a webhook gets when its filter names none: new versions, stage and alias moves, gate verdicts
# (evaluation and canary analysis records), deployments, rollbacks and alerts.
DEFAULT_KINDS: tuple[str, ...] = (
    ev.REGISTERED,
    ev.STAGE_CHANGED,
    ev.ALIAS_SET,
    ev.ALIAS_REMOVED,
    ev.ROLLBACK,
    "deployment",
    "evaluation",
    "canary_analysis",
    "alert",
)
KNOWN_KINDS = frozenset(ev.STATE_KINDS | ev.RECORD_KINDS | {ev.DENIED, ev.ATTACHMENT})
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ---------------------------------------------------------------------------------------------------- configuration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventFilter(_Strict):
    """Which events a webhook gets: ``kinds`` (event kinds, ``"*"`` for all) and ``models`` (name globs)."""

    kinds: list[str] = Field(default_factory=lambda: list(DEFAULT_KINDS))
    models: list[str] = Field(default_factory=lambda: ["*"])

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        if not kinds:
            raise ValueError("list at least one event kind, or '*' for all")
        unknown = [k for k in kinds if k != "*" and k not in KNOWN_KINDS]
        if unknown:
            raise ValueError(
                f"unknown event kind(s) {', '.join(repr(k) for k in unknown)}; "
                f"kinds are {', '.join(sorted(KNOWN_KINDS))}, or '*' for all"
            )
        return kinds

    @field_validator("models")
    @classmethod
    def _globs(cls, models: list[str]) -> list[str]:
        if not models or any(not m.strip() for m in models):
            raise ValueError("list model names or globs such as 'fraud_*' ('*' for every model), none empty")
        return models

    def selects(self, event: ev.Event) -> bool:
        return ("*" in self.kinds or event.kind in self.kinds) and any(
            fnmatch.fnmatchcase(event.model, pattern) for pattern in self.models
        )


class Webhook(_Strict):
    """One receiver. ``max_attempts`` counts attempts per delivery pass: an event is never dropped."""

    name: str
    url: str
    secret_env: str
    events: EventFilter = Field(default_factory=EventFilter)
    timeout: float = Field(5.0, gt=0, le=300)
    max_attempts: int = Field(3, ge=1, le=100)
    backoff: float = Field(0.5, gt=0, le=3600)
    max_backoff: float = Field(300.0, gt=0, le=86400)
    replay_history: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a webhook name: lowercase letters, digits, '_' or '-', starting with a letter or "
                "digit, at most 64 characters (it names the state file)"
            )
        return name

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        return url

    @field_validator("secret_env")
    @classmethod
    def _env_name(cls, name: str) -> str:
        if not _ENV_RE.fullmatch(name):
            raise ValueError(
                f"{name!r} is not an environment variable name; name the variable that holds the secret "
                "(the secret itself does not belong in this file)"
            )
        return name

    @model_validator(mode="after")
    def _backoff_order(self) -> Webhook:
        if self.max_backoff < self.backoff:
            raise ValueError(f"max_backoff ({self.max_backoff:g}) is below backoff ({self.backoff:g})")
        return self

    def pause(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failed attempt: doubling, capped."""
        return float(min(self.max_backoff, self.backoff * 2 ** min(max(failures, 1) - 1, 60)))


class _File(_Strict):
    webhooks: list[Webhook] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> _File:
        seen: dict[str, int] = {}
        for i, hook in enumerate(self.webhooks):
            if hook.name in seen:
                raise ValueError(f"webhooks[{i}].name {hook.name!r} is already the name of webhooks[{seen[hook.name]}]")
            seen[hook.name] = i
        return self


@dataclass(frozen=True)
class Config:
    """The webhooks of one registry, where they were read from, and when that file was last modified."""

    webhooks: tuple[Webhook, ...]
    source: str
    modified: datetime | None = None

    def select(self, names: Sequence[str] | None) -> list[Webhook]:
        if not names:
            return list(self.webhooks)
        known = {h.name: h for h in self.webhooks}
        missing = [n for n in names if n not in known]
        if missing:
            raise NotFoundError(
                f"no webhook named {', '.join(repr(n) for n in missing)} in {self.source}",
                hint=("webhooks: " + ", ".join(known)) if known else f"configure webhooks in {self.source}",
            )
        return [known[n] for n in names]


def _field(loc: tuple[Any, ...], doc: Any) -> str:
    """``webhooks[0].events.kinds (webhook 'ops')`` for a pydantic error location."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    if len(loc) >= 2 and loc[0] == "webhooks" and isinstance(loc[1], int):
        try:
            name = doc["webhooks"][loc[1]]["name"]
        except (KeyError, IndexError, TypeError):
            name = None
        if isinstance(name, str):
            out += f" (webhook {name!r})"
    return out or "(file)"


def parse_config(text: str, source: str, modified: datetime | None = None) -> Config:
    """Validate webhooks.yaml; a mistake is a :class:`UsageError` naming the field (``webhooks[1].url``)."""
    hint = f"fix {source}; the README's Webhooks section shows a complete example"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"webhooks file {source} is not valid YAML: {e}", hint=hint) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise UsageError(f"webhooks file {source} must be a mapping with a 'webhooks' list", hint=hint)
    try:
        parsed = _File.model_validate(doc)
    except ValidationError as e:
        details = "; ".join(f"{_field(tuple(err['loc']), doc)}: {err['msg']}" for err in e.errors())
        raise UsageError(f"webhooks file {source} is invalid: {details}", hint=hint) from None
    return Config(tuple(parsed.webhooks), source, modified)


def config_source(registry_location: Location) -> str:
    return registry_location.child(CONFIG_NAME).uri


def load_config(registry_location: Location) -> Config:
    """The webhooks configured for a registry (none when webhooks.yaml does not exist)."""
    source = config_source(registry_location)
    if registry_location.is_s3:
        from botocore.exceptions import ClientError

        try:
            got = s3_client().get_object(Bucket=registry_location.bucket, Key=registry_location.key(CONFIG_NAME))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return Config((), source)
            raise
        return parse_config(got["Body"].read().decode(), source, got["LastModified"].astimezone(timezone.utc))
    path = registry_location.path / CONFIG_NAME
    try:
        text = path.read_text()
        modified = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    except FileNotFoundError:
        return Config((), source)
    except OSError as e:
        raise UsageError(f"cannot read webhooks file {path}: {e.strerror}") from None
    return parse_config(text, source, modified)


# ---------------------------------------------------------------------------------------------------- signing


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<body>``, so the timestamp cannot be changed either."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str | bytes,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance: float = SIGNATURE_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """What a receiver runs on the raw body and the two headers: True only for a genuine, recent request."""
    if not timestamp or not signature:
        return False
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def delivery_id(webhook: str, event: ev.Event) -> str:
    """Stable per event and webhook, across every redelivery and process: the receiver's deduplication key."""
    material = "\n".join((webhook, str(event.seq), event.ts.isoformat(), event.model, event.kind))
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def render_body(webhook: str, event: ev.Event, registry_uri: str) -> bytes:
    """The exact bytes POSTed (and signed): the same on every attempt."""
    doc = {
        "delivery_id": delivery_id(webhook, event),
        "webhook": webhook,
        "registry": registry_uri,
        "event": event.to_dict(),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()


# ---------------------------------------------------------------------------------------------------- delivery state


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


class Blocked(BaseModel):
    """A model whose next event the receiver did not accept: later events of that model wait behind it."""

    seq: int
    attempts: int
    error: str
    since: str
    retry_after: float


class DeliveryState(BaseModel):
    """What ``<root>/registry/webhooks/<name>.json`` holds. Every selected event with ``seq <= cursor``, and every
    event of model M with ``seq <= ahead[M]``, has been delivered; nothing else is claimed."""

    model_config = ConfigDict(extra="ignore")

    format: int = 1
    webhook: str = ""
    cursor: int = Field(0, ge=0)
    ahead: dict[str, int] = Field(default_factory=dict)
    blocked: dict[str, Blocked] = Field(default_factory=dict)
    retry_after: float | None = None  # the receiver could not be reached: background passes wait until then
    delivered: int = 0
    last_delivery: dict[str, Any] | None = None
    last_error: dict[str, Any] | None = None
    updated: str | None = None

    def done(self, event: ev.Event) -> bool:
        return event.seq <= self.cursor or event.seq <= self.ahead.get(event.model, 0)

    def normalize(self) -> None:
        self.ahead = {m: s for m, s in self.ahead.items() if s > self.cursor}
        self.blocked = {m: b for m, b in self.blocked.items() if b.seq > max(self.cursor, self.ahead.get(m, 0))}

    def merge(self, other: DeliveryState) -> None:
        """Fold in what another dispatcher stored. Both claim only deliveries that happened, so the union does."""
        self.cursor = max(self.cursor, other.cursor)
        for model, seq in other.ahead.items():
            self.ahead[model] = max(self.ahead.get(model, 0), seq)
        for model, blocked in other.blocked.items():
            self.blocked.setdefault(model, blocked)
        self.delivered = max(self.delivered, other.delivered)
        if other.last_delivery and (
            not self.last_delivery or other.last_delivery.get("seq", 0) > self.last_delivery.get("seq", 0)
        ):
            self.last_delivery = other.last_delivery
        if other.last_error and (not self.last_error or other.last_error.get("at", "") > self.last_error.get("at", "")):
            self.last_error = other.last_error
        self.normalize()


class _StateStore:
    """One webhook's state, saved by read-merge-replace (see :meth:`DeliveryState.merge`)."""

    def __init__(self, registry_location: Location, name: str) -> None:
        self.folder = registry_location.child(STATE_DIR)
        self.name = name
        self.uri = self.folder.child(f"{name}.json").uri
        self._etag: str | None = None  # S3: the object as this store last read or wrote it
        self._read_once = False

    def _parse(self, raw: bytes) -> DeliveryState:
        try:
            return DeliveryState.model_validate_json(raw)
        except ValidationError as e:
            raise IntegrityError(
                f"webhook state {self.uri} is unreadable: {e.errors()[0]['msg']}",
                hint="delete it to restart this webhook from the time webhooks.yaml was last changed",
            ) from None

    def load(self) -> DeliveryState | None:
        self._read_once = True
        if self.folder.is_s3:
            from botocore.exceptions import ClientError

            try:
                got = s3_client().get_object(Bucket=self.folder.bucket, Key=self.folder.key(f"{self.name}.json"))
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                    self._etag = None
                    return None
                raise
            self._etag = got["ETag"]
            return self._parse(got["Body"].read())
        try:
            return self._parse((self.folder.path / f"{self.name}.json").read_bytes())
        except FileNotFoundError:
            return None

    def save(self, state: DeliveryState) -> None:
        state.webhook = self.name
        state.updated = _now_iso()
        if self.folder.is_s3:
            self._save_s3(state)
            return
        folder = self.folder.path
        folder.mkdir(parents=True, exist_ok=True)
        stored = self.load()
        if stored is not None:
            state.merge(stored)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(state.model_dump_json(indent=2).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / f"{self.name}.json")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _save_s3(self, state: DeliveryState) -> None:
        from botocore.exceptions import ClientError

        client = s3_client()
        key = self.folder.key(f"{self.name}.json")
        if not self._read_once:
            stored = self.load()
            if stored is not None:
                state.merge(stored)
        for _ in range(20):
            condition = {"IfMatch": self._etag} if self._etag else {"IfNoneMatch": "*"}
            body = state.model_dump_json(indent=2).encode()
            try:
                put = client.put_object(
                    Bucket=self.folder.bucket, Key=key, Body=body, ContentType="application/json", **condition
                )
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code")
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code not in ("PreconditionFailed", "ConditionalRequestConflict") and status not in (409, 412):
                    raise
                stored = self.load()  # another dispatcher saved meanwhile: take its progress in and try again
                if stored is not None:
                    state.merge(stored)
                continue
            self._etag = put["ETag"]
            return
        raise ConflictError(f"webhook state {self.uri} kept changing under this dispatcher; progress not saved")


@contextlib.contextmanager
def _turn(registry_location: Location, name: str, wait: float) -> Iterator[bool]:
    """Local roots: wait up to ``wait`` s for this webhook's ``flock`` (threads and processes alike); yields whether
    it was taken. S3 roots: always True (no lock there; the conditional merge keeps the state sound)."""
    if registry_location.is_s3 or fcntl is None:
        yield True
        return
    folder = registry_location.path / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                taken = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    taken = False
                    break
                time.sleep(0.05)
        try:
            yield taken
        finally:
            if taken:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------- HTTP


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer that is not 2xx: following it would send the signed body somewhere unconfigured."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass
class _Outcome:
    ok: bool
    error: str = ""
    unreachable: bool = False  # no answer at all: the next event would not get through either
    attempts: int = 0


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> _Outcome:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(_MAX_RESPONSE_BYTES)
            status = response.status
    except urllib.error.HTTPError as e:
        try:
            detail = e.read(200).decode("utf-8", "replace").strip()
        except Exception:
            detail = ""
        finally:
            e.close()
        return _Outcome(False, f"HTTP {e.code}" + (f": {detail}" if detail else ""))
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, refused, timed out, TLS, bad answer
        reason = getattr(e, "reason", None) or e
        parts = urllib.parse.urlsplit(url)  # scheme and host only: paths and queries of webhook URLs carry tokens
        return _Outcome(False, f"could not reach {parts.scheme}://{parts.netloc}: {reason}", unreachable=True)
    if 200 <= status < 300:
        return _Outcome(True)
    return _Outcome(False, f"HTTP {status}")


# ---------------------------------------------------------------------------------------------------- dispatching


@dataclass
class Report:
    """One webhook after a delivery run (or as ``status`` sees it)."""

    webhook: str
    url: str
    state: str
    cursor: int = 0
    pending: int = 0
    delivered: int = 0  # in this run
    delivered_total: int = 0
    blocked: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_delivery: dict[str, Any] | None = None
    last_error: dict[str, Any] | None = None
    retry_after: str | None = None
    retry_in: float | None = None  # seconds until a background pass may try the earliest blocked event again
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Dispatcher:
    """Delivers one registry's pending events. Different webhooks may be delivered from different threads at once
    (each has its own event-log handle); one webhook is delivered by one thread at a time."""

    def __init__(self, registry_location: Location, registry_uri: str) -> None:
        self.location = registry_location
        self.registry_uri = registry_uri
        self._logs: dict[str, EventLog] = {}
        self._guard = threading.Lock()
        self._config: Config | None = None
        self._config_key: Any = None

    @classmethod
    def for_registry(cls, registry: Registry) -> Dispatcher:
        return cls(registry.location, str(registry.root))

    def config(self, *, cached: bool = False) -> Config:
        """webhooks.yaml, parsed again only when it changed (locally: its mtime; on S3, when ``cached``, at most
        every ``S3_CONFIG_TTL_SECONDS``)."""
        with self._guard:
            if self.location.is_s3:
                key: Any = time.monotonic() // S3_CONFIG_TTL_SECONDS if cached else object()
            else:
                try:
                    st = os.stat(os.path.join(self.location.uri, CONFIG_NAME))
                    key = (st.st_mtime_ns, st.st_size, st.st_ino)
                except FileNotFoundError:
                    key = None
            if self._config is None or key != self._config_key:
                self._config, self._config_key = load_config(self.location), key
            return self._config

    def _fresh_log(self, name: str) -> EventLog:
        """This webhook's event-log handle, brought up to date. A handle idle past the log retention cannot catch
        up incrementally (its next commits were expired): it is opened afresh instead."""
        with self._guard:
            handle = self._logs.get(name)
        if handle is not None:
            try:
                handle.refresh()
                return handle
            except Exception as e:
                log.info("webhook %s: reopening the event log (%s)", name, e)
        handle = EventLog(self.location)
        handle.refresh()
        with self._guard:
            self._logs[name] = handle
        return handle

    def _starting_cursor(self, hook: Webhook, config: Config, events: EventLog) -> int:
        """A new webhook's cursor: the last event committed before webhooks.yaml was written (0 to replay all)."""
        if hook.replay_history or config.modified is None:
            return 0
        before = events.read(pc.field("ts") < pa.scalar(config.modified, pa.timestamp("us", tz="UTC")), ["seq"])
        return int(pc.max(before.column("seq")).as_py() or 0) if before.num_rows else 0

    def _report(
        self, hook: Webhook, state: DeliveryState, store: _StateStore, events: list[ev.Event], **extra: Any
    ) -> Report:
        pending = sum(1 for e in events if hook.events.selects(e) and not state.done(e))
        waits = [b.retry_after for b in state.blocked.values()] + ([state.retry_after] if state.retry_after else [])
        return Report(
            webhook=hook.name,
            url=hook.url,
            state=store.uri,
            cursor=state.cursor,
            pending=pending,
            delivered_total=state.delivered,
            blocked={
                m: {**b.model_dump(exclude={"retry_after"}), "retry_after": _iso(b.retry_after)}
                for m, b in sorted(state.blocked.items())
            },
            last_delivery=state.last_delivery,
            last_error=state.last_error,
            retry_after=_iso(state.retry_after) if state.retry_after and state.retry_after > time.time() else None,
            retry_in=max(min(waits) - time.time(), 0.0) if waits else None,
            **extra,
        )

    # -------------------------------------------------------------------- public entry points

    def status(self, names: Sequence[str] | None = None) -> list[Report]:
        """Pending events, blocked models and the last error of each webhook; changes nothing."""
        config = self.config()
        reports = []
        for hook in config.select(names):
            store = _StateStore(self.location, hook.name)
            events_log = self._fresh_log(hook.name)
            state = store.load() or DeliveryState(cursor=self._starting_cursor(hook, config, events_log))
            events = ev.from_arrow(events_log.read_after(state.cursor))
            reports.append(self._report(hook, state, store, events))
        return reports

    def deliver(self, names: Sequence[str] | None = None, *, wait: float = 0.0) -> list[Report]:
        """Deliver what is pending now, ignoring background pauses, retrying for up to ``wait`` seconds."""
        deadline = time.monotonic() + max(wait, 0.0)
        config = self.config()
        reports = []
        for hook in config.select(names):
            delivered = 0
            while True:
                lock_wait = max(deadline - time.monotonic(), 0.0)
                report = self.deliver_one(hook, config, deadline=deadline, lock_wait=lock_wait)
                delivered += report.delivered
                left = deadline - time.monotonic()
                if report.pending == 0 or report.skipped or left <= 0:
                    break
                failures = max((b["attempts"] for b in report.blocked.values()), default=1)
                time.sleep(min(left, hook.pause(failures)))
            report.delivered = delivered
            reports.append(report)
        return reports

    def deliver_one(
        self,
        hook: Webhook,
        config: Config,
        *,
        deadline: float | None = None,
        respect_backoff: bool = False,
        lock_wait: float = 0.0,
    ) -> Report:
        """One pass for one webhook: POST the pending events in order until none is left or the receiver is
        unreachable, recording progress after every delivery. ``deadline`` (``time.monotonic()``) cuts the pauses
        between attempts short, not the delivery of a backlog the receiver accepts."""
        store = _StateStore(self.location, hook.name)
        with _turn(self.location, hook.name, lock_wait) as taken:
            events_log = self._fresh_log(hook.name)
            stored = store.load()
            state = stored or DeliveryState(cursor=self._starting_cursor(hook, config, events_log))
            if not taken:
                events = ev.from_arrow(events_log.read_after(state.cursor))
                return self._report(hook, state, store, events, skipped="another dispatcher is delivering it now")
            if stored is None:
                store.save(state)
            if respect_backoff and state.retry_after and state.retry_after > time.time():
                events = ev.from_arrow(events_log.read_after(state.cursor))
                return self._report(hook, state, store, events, skipped="the receiver was unreachable; waiting")
            delivered, version = 0, None
            blocked_now: set[str] = set()
            events = []
            while True:
                if version is not None:
                    events_log = self._fresh_log(hook.name)
                if events_log.version == version:
                    break  # nothing committed since the last read
                version = events_log.version
                events = ev.from_arrow(events_log.read_after(state.cursor))
                n, stop = self._pass(hook, state, store, events, blocked_now, deadline, respect_backoff)
                delivered += n
                if stop:
                    break
            return self._report(hook, state, store, events, delivered=delivered)

    # -------------------------------------------------------------------- one pass

    def _pass(
        self,
        hook: Webhook,
        state: DeliveryState,
        store: _StateStore,
        events: list[ev.Event],
        blocked_now: set[str],
        deadline: float | None,
        respect_backoff: bool,
    ) -> tuple[int, bool]:
        """Deliver ``events`` (sorted by seq) that are selected and not done. Returns (delivered, stop)."""
        frontier = 0  # events before it are all done: the cursor may move past them

        def advance() -> None:
            nonlocal frontier
            while frontier < len(events):
                e = events[frontier]
                if hook.events.selects(e) and not state.done(e):
                    break
                state.cursor = max(state.cursor, e.seq)
                frontier += 1
            state.normalize()

        saved_cursor = state.cursor
        delivered, degraded = 0, False
        for e in events:
            if state.done(e) or not hook.events.selects(e) or e.model in blocked_now:
                continue
            blocked = state.blocked.get(e.model)
            if respect_backoff and blocked is not None and blocked.retry_after > time.time():
                blocked_now.add(e.model)
                continue
            secret = os.environ.get(hook.secret_env)
            if not secret:
                outcome = _Outcome(
                    False,
                    f"environment variable {hook.secret_env} (secret_env) is not set here, so nothing can be signed",
                    unreachable=True,
                    attempts=1,
                )
            else:
                outcome = self._send(
                    hook, e, secret, 1 if degraded else hook.max_attempts, blocked.attempts if blocked else 0, deadline
                )
            if outcome.ok:
                state.ahead[e.model] = e.seq
                state.blocked.pop(e.model, None)
                state.retry_after = None
                state.delivered += 1
                state.last_delivery = {
                    "at": _now_iso(),
                    "seq": e.seq,
                    "model": e.model,
                    "kind": e.kind,
                    "delivery_id": delivery_id(hook.name, e),
                }
                advance()
                store.save(state)
                saved_cursor = state.cursor
                delivered, degraded = delivered + 1, False
                continue
            total = (blocked.attempts if blocked else 0) + outcome.attempts
            retry_after = time.time() + hook.pause(total)
            state.blocked[e.model] = Blocked(
                seq=e.seq,
                attempts=total,
                error=outcome.error,
                since=blocked.since if blocked else _now_iso(),
                retry_after=retry_after,
            )
            state.last_error = {"at": _now_iso(), "seq": e.seq, "model": e.model, "error": outcome.error}
            blocked_now.add(e.model)
            log.info("webhook %s: event %s (%s) not delivered: %s", hook.name, e.seq, e.model, outcome.error)
            if outcome.unreachable:
                state.retry_after = retry_after
                advance()
                store.save(state)
                return delivered, True
            degraded = True  # the receiver answers but refuses: other models get one attempt each until one passes
            advance()
            store.save(state)
            saved_cursor = state.cursor
        advance()
        if state.cursor != saved_cursor:  # only unselected events passed since the last save
            store.save(state)
        return delivered, False

    def _send(
        self, hook: Webhook, event: ev.Event, secret: str, attempts: int, failures: int, deadline: float | None
    ) -> _Outcome:
        body = render_body(hook.name, event, self.registry_uri)
        did = delivery_id(hook.name, event)
        outcome = _Outcome(False)
        for i in range(attempts):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": f"model-ops-webhooks/{__version__}",
                DELIVERY_HEADER: did,
                EVENT_HEADER: event.kind,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(secret, timestamp, body),
                ATTEMPT_HEADER: str(failures + i + 1),
            }
            outcome = _post(hook.url, body, headers, hook.timeout)
            outcome.attempts = i + 1
            if outcome.ok or i == attempts - 1:
                return outcome
            pause = hook.pause(failures + i + 1)
            if deadline is not None and time.monotonic() + pause > deadline:
                return outcome
            time.sleep(pause)
        return outcome


# ---------------------------------------------------------------------------------------------------- background


_idle = threading.Condition()
_workers: dict[tuple[str, str], _Worker] = {}
_flush_at_exit = False


class _Worker:
    """At most one daemon thread per job, started on demand and gone when idle. Kicks while it runs coalesce into
    one more round, so a burst of commits costs a pass or two, and the thread count is bounded by the registries
    and webhooks this process writes to. A job may ask to run again after a pause (a blocked event's backoff): a
    daemon timer kicks it then, so a long-lived process retries even when nothing else is written."""

    def __init__(self, name: str, job: Callable[[], float | None]) -> None:
        self.name = name
        self._job = job
        self._again = False
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._timer_due = 0.0
        self._last_problem: str | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def kick(self) -> None:
        with _idle:
            self._again = True
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        while True:
            with _idle:
                if not self._again:
                    self._thread = None
                    _idle.notify_all()
                    return
                self._again = False
            try:
                again_in = self._job()
                self._last_problem = None
            except Exception as e:  # a background pass must never take the process down; say it once
                problem = str(e)
                if problem != self._last_problem:
                    log.warning("%s: %s", self.name, problem, exc_info=not isinstance(e, UsageError))
                self._last_problem = problem
                continue
            if again_in is not None:
                self._retry_in(again_in)

    def _retry_in(self, seconds: float) -> None:
        due = time.monotonic() + seconds
        with _idle:
            if self._timer is not None and self._timer_due <= due:
                return
            if self._timer is not None:
                self._timer.cancel()
            timer = threading.Timer(seconds, self._fire)
            timer.daemon = True
            timer.start()
            self._timer, self._timer_due = timer, due

    def _fire(self) -> None:
        with _idle:
            self._timer = None
        self.kick()


def _worker(key: tuple[str, str], name: str, job: Callable[[], Callable[[], float | None]]) -> _Worker:
    """The worker for ``key``; ``job()`` makes its job the first time only."""
    global _flush_at_exit
    with _idle:
        worker = _workers.get(key)
        if worker is None:
            worker = _workers[key] = _Worker(name, job())
        if not _flush_at_exit:
            # A process that ends normally (a Dagster run, a script) gives in-flight deliveries the same bounded
            # moment as the command line; daemon threads still run while atexit handlers do.
            atexit.register(flush, EXIT_FLUSH_SECONDS)
            _flush_at_exit = True
        return worker


def _forget_workers() -> None:
    """In a forked child the parent's threads do not exist: start afresh instead of waiting on them."""
    global _idle
    _idle = threading.Condition()
    _workers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def _background_pass(dispatcher: Dispatcher, name: str) -> float | None:
    """One background pass; returns when to try again if the receiver left events blocked."""
    config = dispatcher.config(cached=True)
    hook = next((h for h in config.webhooks if h.name == name), None)
    if hook is None:
        return None
    report = dispatcher.deliver_one(hook, config, respect_backoff=True, lock_wait=BACKGROUND_LOCK_WAIT_SECONDS)
    return report.retry_in if report.pending and report.retry_in is not None else None


def _planner(dispatcher: Dispatcher) -> Callable[[], float | None]:
    return lambda: _plan(dispatcher)


def _plan(dispatcher: Dispatcher) -> None:
    """Wake one worker per configured webhook, so a slow receiver does not delay the others."""
    for hook in dispatcher.config(cached=True).webhooks:
        name = hook.name
        _worker(
            (dispatcher.location.uri, name),
            f"model_ops webhook {name} of {dispatcher.location.uri}",
            lambda name=name: lambda: _background_pass(dispatcher, name),  # type: ignore[misc]
        ).kick()


def after_commit(registry: Registry) -> None:
    """Start delivering what the commit just wrote, in the background. Called by ``Registry._after_commit``; costs
    a ``stat`` when the registry has no webhooks.yaml (a local root), never waits for a receiver, never raises."""
    try:
        location = registry.location
        if not location.is_s3 and not os.path.exists(os.path.join(location.uri, CONFIG_NAME)):
            return
        _worker(
            (location.uri, ""),
            f"model_ops webhooks of {location.uri}",
            lambda: _planner(Dispatcher.for_registry(registry)),
        ).kick()
    except Exception as e:  # the commit succeeded; delivery will catch up on the next pass
        log.warning("model_ops webhooks: could not start delivery after a commit: %s", e)


def flush(timeout: float = EXIT_FLUSH_SECONDS) -> bool:
    """Wait up to ``timeout`` seconds for background deliveries to go idle; True when they did. What is still
    in flight when it returns False stays pending by cursor."""
    deadline = time.monotonic() + timeout
    with _idle:
        while any(w.busy for w in _workers.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _idle.wait(left)
    return True


# ---------------------------------------------------------------------------------------------------- rendering


def render(reports: list[Report], config: Config) -> str:
    """The human form of ``model-ops webhooks status`` and ``deliver``."""
    if not reports:
        return f"no webhooks configured (add them to {config.source})"
    lines = []
    for r in reports:
        head = f"{r.webhook}  {r.url}\n  pending {r.pending}, delivered {r.delivered_total} in all"
        if r.delivered:
            head += f" ({r.delivered} just now)"
        lines.append(head + f", cursor {r.cursor}")
        if r.skipped:
            lines.append(f"  skipped: {r.skipped}")
        if r.retry_after:
            lines.append(f"  nothing could be sent; background delivery resumes at {r.retry_after}")
        for model, b in r.blocked.items():
            lines.append(f"  blocked: {model} at event {b['seq']} after {b['attempts']} attempt(s): {b['error']}")
        if r.last_error and not r.blocked:
            e = r.last_error
            lines.append(f"  last error {e['at'][:19]} (event {e['seq']}, {e['model']}): {e['error']}")
        if r.last_delivery:
            d = r.last_delivery
            lines.append(f"  last delivery {d['at'][:19]}: event {d['seq']} ({d['model']}, {d['kind']})")
    return "\n".join(lines)
