"""Where model_ops keeps its state: a local folder or an ``s3://bucket/prefix`` root.

One root holds everything (``registry/``, ``artifacts/``, datasets), so a deployment moves from a laptop to S3 by
changing one string. S3 is configured the standard AWS way (environment, profile, instance role); the endpoint comes
from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` so S3-compatible stores and test servers work unchanged.

S3 faults are ridden out here, for both clients model_ops uses: an endpoint that is unreachable, resets connections,
answers 5xx or throttles is retried with capped exponential backoff until ``MODEL_OPS_S3_DEADLINE`` seconds (default
30) have passed since the first failure, and then the operation fails with :class:`S3UnavailableError`, one line
naming the endpoint. boto3 gets it through a retry handler on the one client :func:`s3_client` builds; the Delta
engine (delta-rs over ``object_store``) through the retry options in :meth:`Location.delta_storage_options`. What
neither can retry on its own (a body cut off mid-stream, a Delta commit whose reply was lost) is retried by the
callers with :class:`Deadline` and :func:`is_transient`.
"""

from __future__ import annotations

import functools
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from model_ops.errors import ModelOpsError, UsageError

DEFAULT_ROOT = ".model_ops"
DEADLINE_ENV = "MODEL_OPS_S3_DEADLINE"
DEFAULT_DEADLINE_SECONDS = 30.0
# Backoff between attempts: 0.1 s doubling up to 2 s, with jitter, so a client notices within about 2 s that an
# endpoint is back, and many clients do not retry in lock step.
FIRST_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 2.0
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 60.0

T = TypeVar("T")


@dataclass(frozen=True)
class Location:
    """A normalised root URI: an absolute local path, or ``s3://bucket/prefix`` without a trailing slash."""

    uri: str

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def bucket(self) -> str:
        return self.uri[len("s3://") :].split("/", 1)[0]

    @property
    def key_prefix(self) -> str:
        """The key prefix inside the bucket, '' or ending without a slash."""
        rest = self.uri[len("s3://") :].split("/", 1)
        return rest[1] if len(rest) > 1 else ""

    @property
    def parent(self) -> Location:
        """The location one level up (the registry root of one of its tables)."""
        if self.is_s3:
            head, _, tail = self.uri[len("s3://") :].rstrip("/").rpartition("/")
            return Location(f"s3://{head}") if head and tail else self
        return Location(os.path.dirname(self.uri.rstrip("/")) or self.uri)

    def child(self, *parts: str) -> Location:
        return Location("/".join([self.uri.rstrip("/"), *[p.strip("/") for p in parts]]))

    def key(self, *parts: str) -> str:
        """The S3 object key for a path below this root."""
        return "/".join(p.strip("/") for p in (self.key_prefix, *parts) if p.strip("/"))

    @property
    def path(self) -> Path:
        if self.is_s3:
            raise ValueError(f"{self.uri} is not a local path")
        return Path(self.uri)

    def delta_storage_options(self) -> dict[str, str]:
        """Options for delta-rs. Credentials are resolved by boto3 so profiles, SSO and roles work too.

        The retry keys are delta-rs's names for ``object_store``'s ``RetryConfig``: it retries a request that
        could not connect, a 5xx or 429 answer, and (for reads and unconditional writes) a timeout or a reset, until
        ``max_retries`` or ``retry_timeout`` (counted from the first attempt), whichever comes first. Its default of
        10 retries from a 100 ms backoff can give up within about 2 s (a 3-second outage failed the command); here
        the deadline bounds it. A conditional write (the commit of a Delta version) whose connection broke after it
        was sent is not retried by ``object_store``: the commit may have landed, and only the caller can find out
        (``DeltaCas.try_append``). Nor is a listing whose body broke mid-stream. Connect and request timeouts stay
        at ``object_store``'s defaults (5 s and 30 s)."""
        if not self.is_s3:
            return {}
        deadline = s3_deadline()
        opts: dict[str, str] = {
            "conditional_put": "etag",
            "retry_timeout": f"{max(1, round(deadline * 1000))}ms",
            # Every retry waits at least the first backoff, so this many never run out before the deadline.
            "max_retries": str(max(10, math.ceil(deadline / FIRST_BACKOFF_SECONDS))),
            "backoff_config.init_backoff": f"{round(FIRST_BACKOFF_SECONDS * 1000)}ms",
            "backoff_config.max_backoff": f"{round(MAX_BACKOFF_SECONDS * 1000)}ms",
            "backoff_config.base": "2",
        }
        endpoint = s3_endpoint()
        if endpoint:
            opts["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.startswith("http://"):
                opts["AWS_ALLOW_HTTP"] = "true"
        session = _boto3_session()
        region = session.region_name or "us-east-1"
        opts["AWS_REGION"] = region
        creds = session.get_credentials()
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            opts["AWS_ACCESS_KEY_ID"] = frozen.access_key
            opts["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
            if frozen.token:
                opts["AWS_SESSION_TOKEN"] = frozen.token
        return opts

    def __str__(self) -> str:
        return self.uri


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_deadline() -> float:
    """Seconds to keep retrying a failing S3 operation, from ``MODEL_OPS_S3_DEADLINE`` (default 30)."""
    raw = os.environ.get(DEADLINE_ENV, "").strip()
    if not raw:
        return DEFAULT_DEADLINE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(
            f"{DEADLINE_ENV}={raw!r} is not a number of seconds",
            hint=f"set it to how long to retry an unreachable S3 endpoint, e.g. {DEFAULT_DEADLINE_SECONDS:g}",
        )
    return value


class S3UnavailableError(ModelOpsError):
    """The S3 endpoint kept failing (unreachable, resetting connections, answering 5xx or throttling) until the
    deadline passed. Every write is atomic, so nothing half-written is visible; running the command again is safe."""

    exit_code = 1

    @classmethod
    def after(cls, seconds: float, error: BaseException | str) -> S3UnavailableError:
        endpoint = current_endpoint_url()
        return cls(
            f"cannot reach the S3 endpoint {endpoint} after {seconds:g} s: {describe(error)}",
            hint=f"check that {endpoint} is up and reachable from here (network, DNS, proxy, AWS_ENDPOINT_URL), then "
            f"run the command again: what was committed before is intact; {DEADLINE_ENV} sets how long to wait",
        )


def current_endpoint_url() -> str:
    """The endpoint requests go to: the configured one, else the one boto3 resolves for the region."""
    configured = s3_endpoint()
    if configured:
        return configured
    try:
        return str(s3_client().meta.endpoint_url)
    except Exception:  # only used to word an error message; never mask the error being reported
        return "https://s3.amazonaws.com"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def describe(error: BaseException | str) -> str:
    """One line saying what went wrong. The Delta engine reports a chain of causes on indented lines (each an
    arrow); the innermost one says it best ("Connection refused (os error 111)")."""
    if isinstance(error, str):
        return error
    cause = _innermost_os_error(error)
    if cause is not None:  # boto3 wraps the socket's error twice ("Could not connect to the endpoint URL: ...")
        return f"{cause.strerror} (os error {cause.errno})"
    if _is_client_error(error):
        meta = getattr(error, "response", {}).get("ResponseMetadata", {})
        code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
        status = meta.get("HTTPStatusCode")
        return f"HTTP {status} {code}".strip() if status else str(error)
    lines = [_ANSI.sub("", line).strip().lstrip("\u21b3").strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return type(error).__name__
    return lines[-1] if len(lines) > 1 else lines[0]


# Words in the Delta engine's (object_store's) and Arrow's errors that mean the network or the service failed, not the
# request: it could not connect, the connection broke, it timed out, or S3 answered 5xx or "slow down".
_TRANSIENT_TEXT = (
    "error sending request",
    "connection refused",
    "connection reset",
    "connection closed",
    "connection aborted",
    "broken pipe",
    "tcp connect error",
    "client error (connect)",
    "client error (sendrequest)",
    "timed out",
    "error decoding response body",
    "error reading a body",
    "unexpected eof",
    "incomplete message",
    "dns error",
    "internalerror",
    "slowdown",
    "serviceunavailable",
    "500 internal server error",
    "502 bad gateway",
    "503 service unavailable",
    "504 gateway timeout",
)
_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "PriorRequestNotComplete",
}


def _innermost_os_error(error: BaseException) -> OSError | None:
    """The socket-level error (refused, reset, timed out) at the bottom of an exception chain, if any."""
    found: OSError | None = None
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno is not None and seen.strerror:
            found = seen
        seen = seen.__cause__ or seen.__context__
    return found


def _is_client_error(error: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(error, ClientError)


def _transient_one(error: BaseException) -> bool:
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )
    from botocore.exceptions import (
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import ProtocolError
    from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

    if isinstance(error, BotoConnectionError | HTTPClientError | ResponseStreamingError | IncompleteReadError):
        return True
    if isinstance(error, ConnectionError | TimeoutError | ProtocolError | Urllib3TimeoutError):
        return True
    if _is_client_error(error):
        response: dict[str, Any] = getattr(error, "response", {})
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status == 429 or response.get("Error", {}).get("Code") in _TRANSIENT_CODES
    if isinstance(error, OSError | RuntimeError) or type(error).__name__ in ("DeltaError", "DeltaProtocolError"):
        text = str(error).lower()
        return any(word in text for word in _TRANSIENT_TEXT)
    return False


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or what it was raised from) is a failure of the network or of S3 that retrying can cure,
    as opposed to a refusal (403, 404, a failed precondition) or a bug. Decides what :class:`Deadline` retries.
    Only explicit causes (``raise ... from``) count: an error raised while *handling* a network failure is a bug
    of its own, not a network failure."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None or isinstance(seen, ModelOpsError):
            return False
        if _transient_one(seen):
            return True
        seen = seen.__cause__
    return False


def backoff_seconds(attempt: int) -> float:
    """Capped exponential backoff with jitter for retry number ``attempt`` (1-based)."""
    ceiling = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** min(attempt - 1, 30))
    return ceiling * random.uniform(0.5, 1.0)


class Deadline:
    """How long one operation keeps retrying: :data:`DEADLINE_ENV` seconds from its first failure. Counting from the
    first failure rather than the start means a long transfer that keeps making progress is never cut short;
    :meth:`progress` starts the count again after a failure was overcome."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = s3_deadline() if seconds is None else seconds
        self.first_failure: float | None = None
        self.attempt = 0

    def next_delay(self, error: BaseException | str) -> float:
        """Seconds to wait before the next attempt; raises :class:`S3UnavailableError` once the deadline passed."""
        now = time.monotonic()
        if self.first_failure is None:
            self.first_failure = now
        left = self.first_failure + self.seconds - now
        if left <= 0:
            if isinstance(error, BaseException):
                raise S3UnavailableError.after(self.seconds, error) from error
            raise S3UnavailableError.after(self.seconds, error)
        self.attempt += 1
        return min(left, backoff_seconds(self.attempt))

    def wait(self, error: BaseException | str) -> None:
        time.sleep(self.next_delay(error))

    def progress(self) -> None:
        self.first_failure = None
        self.attempt = 0


def retry_transient(fn: Callable[[], T], deadline: Deadline | None = None) -> T:
    """``fn()``, called again after a transient failure (:func:`is_transient`) until the deadline passes."""
    deadline = deadline or Deadline()
    while True:
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            deadline.wait(e)


class _RetryUntilDeadline:
    """The S3 client's retry decision. botocore's standard retry mode decides *whether* a failure is worth another
    attempt (connection errors, 5xx, throttling, ``RequestTimeout``); its fixed five attempts, 50 ms apart at first,
    give up within a second, which is what turned a 3-second outage into a failed command. This handler keeps the
    standard mode's judgement and replaces its stopping rule with the deadline (per API call, from its first
    failure). It runs before botocore's own handlers and answers only for transient failures, so everything else
    (S3's region redirects among them) is still botocore's to decide."""

    def __init__(self) -> None:
        from botocore.retries.standard import StandardRetryConditions

        self._conditions = StandardRetryConditions(max_attempts=1 << 30)

    def __call__(
        self,
        attempts: int,
        response: Any,
        caught_exception: BaseException | None,
        operation: Any,
        request_dict: dict[str, Any],
        **_: Any,
    ) -> float | None:
        from botocore.retries.standard import RetryContext

        http_response, parsed = response if response is not None else (None, None)
        context = RetryContext(
            attempt_number=attempts,
            operation_model=operation,
            http_response=http_response,
            parsed_response=parsed,
            caught_exception=caught_exception,
            request_context=request_dict["context"],
        )
        if not self._conditions.is_retryable(context):
            return None
        deadline = request_dict["context"].setdefault("model_ops_deadline", Deadline())
        if caught_exception is not None:
            return deadline.next_delay(caught_exception)
        status = getattr(http_response, "status_code", "?")
        code = (parsed or {}).get("Error", {}).get("Code", "")
        return deadline.next_delay(f"HTTP {status} {code}".strip())


def _boto3_session():  # type: ignore[no-untyped-def]
    import boto3

    return boto3.session.Session()


@functools.lru_cache(maxsize=8)
def _cached_client(endpoint: str | None, region: str | None):  # type: ignore[no-untyped-def]
    from botocore.config import Config

    session = _boto3_session()
    client = session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region or session.region_name or "us-east-1",
        config=Config(
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=16,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            tcp_keepalive=True,
        ),
    )
    client.meta.events.register_first("needs-retry.s3", _RetryUntilDeadline(), unique_id="model-ops-deadline")
    return client


def s3_client():  # type: ignore[no-untyped-def]
    """A boto3 S3 client for the current environment (cached per endpoint and region)."""
    return _cached_client(s3_endpoint(), os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))


def object_exists(location: Location, name: str) -> bool:
    """Whether the object ``name`` below ``location`` exists: one ``stat`` locally, one ``HEAD`` on S3 (an error
    other than "not found" is raised, never read as absence)."""
    if not location.is_s3:
        return os.path.exists(os.path.join(location.uri, name))
    from botocore.exceptions import ClientError

    try:
        s3_client().head_object(Bucket=location.bucket, Key=location.key(name))
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def resolve_root(root: str | os.PathLike[str] | Location | None = None) -> Location:
    """The root from the argument, else ``$MODEL_OPS_ROOT``, else ``./.model_ops``."""
    if isinstance(root, Location):
        return root
    raw = str(root) if root is not None else os.environ.get("MODEL_OPS_ROOT") or DEFAULT_ROOT
    raw = raw.strip()
    if not raw:
        raise UsageError("the model_ops root is empty", hint="pass --root PATH or set MODEL_OPS_ROOT")
    if raw.startswith("s3://"):
        bucket = raw[len("s3://") :].split("/", 1)[0]
        if not bucket:
            raise UsageError(f"root {raw!r} names no bucket", hint="use s3://BUCKET/PREFIX")
        return Location(raw.rstrip("/"))
    if "://" in raw:
        scheme = raw.split("://", 1)[0]
        raise UsageError(
            f"root {raw!r} uses scheme {scheme!r}, which model_ops does not support",
            hint="use a local path or s3://BUCKET/PREFIX",
        )
    return Location(str(Path(raw).expanduser().resolve()))


CONDITIONAL_PROBE_NAME = "conditional-write-probe"
_CONDITIONAL_WRITES_SEEN: set[tuple[str | None, str]] = set()


def require_conditional_writes(location: Location) -> None:
    """Refuse to write to an S3 store that does not honour put-if-absent (``If-None-Match: *``).

    Every Delta commit (the registry's, a dataset's, the prediction log's) is a put-if-absent of the next Delta log version: that is what makes version numbers
    unique and stops two writers from overwriting each other's commits. AWS S3 and current S3-compatible stores
    honour it; some older ones ignore the header and store the object anyway, which would lose commits silently.
    (delta-rs, the Delta engine, dropped its DynamoDB lock for such stores in 1.x, so there is nothing to fall back
    on.) The probe puts one small object at ``<location>/conditional-write-probe`` with the condition: once it
    exists, the put must be refused. One request per process and bucket, then remembered."""
    if not location.is_s3:
        return
    seen = (s3_endpoint(), location.bucket)
    if seen in _CONDITIONAL_WRITES_SEEN:
        return
    from botocore.exceptions import ClientError

    client, key = s3_client(), location.key(CONDITIONAL_PROBE_NAME)
    body = b"model_ops checks that this store refuses a second put-if-absent of this object\n"

    def put() -> str:
        try:
            client.put_object(Bucket=location.bucket, Key=key, Body=body, IfNoneMatch="*")
            return "stored"
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return "refused"  # a conflict with a concurrent put-if-absent: the condition was evaluated too
            if code == "NotImplemented" or status == 501:
                return "unsupported"
            if is_transient(e):
                raise
            raise UsageError(
                f"the S3 store at {current_endpoint_url()} refused a put-if-absent of "
                f"s3://{location.bucket}/{key} with {status} {code}: {e.response.get('Error', {}).get('Message', '')}",
                hint="model_ops needs to write below its root with If-None-Match (put-if-absent): check the "
                "credentials' permissions and that the store supports conditional writes",
            ) from None

    outcome = retry_transient(put)
    if outcome == "stored":  # the probe's first put in this bucket: the same put must now be refused
        outcome = retry_transient(put)
    if outcome != "refused":
        endpoint = current_endpoint_url()
        how = (
            "answered 501 Not Implemented to a put with If-None-Match"
            if outcome == "unsupported"
            else f"stored s3://{location.bucket}/{key} twice, ignoring If-None-Match: * on the second put"
        )
        raise UsageError(
            f"the S3 store at {endpoint} does not support conditional writes: it {how}. model_ops commits each "
            "version of its tables (the registry's, the datasets', the prediction log's) by put-if-absent, so on "
            "this store two writers could overwrite each other's commits; nothing was committed",
            hint="use a store that honours If-None-Match on PUT (AWS S3; current MinIO, Ceph RGW or Cloudflare R2), "
            "or a local --root",
        )
    _CONDITIONAL_WRITES_SEEN.add(seen)
