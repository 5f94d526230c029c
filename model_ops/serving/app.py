"""The Starlette application of ``model-ops serve``.

Endpoints: ``GET /v2/health/live``, ``/v2/health/ready``, ``GET /v2``, ``GET /v2/models/{name}`` (and
``/ready``), ``POST /v2/models/{name}/infer`` (Open Inference Protocol v2); ``POST /v2/models/{name}/outcomes`` (outcomes of an
A/B experiment's keys, :mod:`model_ops.serving.abtest`); ``POST /v2/models/{name}/invocations``
and ``POST /invocations`` (MLflow's scoring format; the bare path needs ``X-Model-Name`` when more than one model is
served); ``GET /metrics`` (Prometheus); ``GET /status`` (what each slot serves, JSON).

One request: the slot table is read once (so the whole request is answered by one manifest, before or after a
swap), each row is routed by :func:`model_ops.ops.routing.assign_arms` on its key (the declaration's key column,
else the ``X-Routing-Key`` header, else the row's request id) salted with the model name, exactly as the batch path
routes a partition; every arm's rows are checked and scored in a worker thread; only when all of them succeeded are
the rows handed to the prediction log and the response sent. The shadow version, if any, is scored on all rows
after the response has gone (a background task), logged with ``served = false``, and compared with what was served
(counts at /metrics); its output never reaches the caller.

Every response names what answered: ``model_version``, ``model_semver`` and ``arm`` fields (per row too: an OIP
response's ``parameters.model_versions`` / ``arms``, an MLflow response's ``model_versions`` / ``arms``) and the
``X-Model-Version`` / ``X-Model-Semver`` / ``X-Model-Arm`` headers when every row went to the same arm.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import math
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import anyio
import numpy as np
import pandas as pd
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from model_ops import __version__
from model_ops.data.partitions import Partitioning
from model_ops.errors import UsageError
from model_ops.location import Location, resolve_root
from model_ops.ops import routing
from model_ops.registry import Registry
from model_ops.serving import protocol
from model_ops.serving.alerts import AlertEngine
from model_ops.serving.fleet import Fleet, Slot
from model_ops.serving.metrics import Metrics
from model_ops.serving.predlog import ORIGIN, Origin, PredictionLog, Same
from model_ops.serving.scoring import DEFAULT_LINGER, Arrival, Coalescer, RequestError, Version
from model_ops.serving.stats import ServingStats
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import Arm

log = logging.getLogger("model_ops.serving")

MAX_BODY_BYTES = 10 * 1024 * 1024
OIP = "oip"
MLFLOW = "mlflow"


@dataclass
class ServeConfig:
    """How a server runs: what it serves and from where, how it follows the registry, and its limits."""

    root: str | None = None
    names: list[str] = field(default_factory=list)
    actor: str | None = None
    policy: str | None = None
    poll_seconds: float = 0.2
    drain_seconds: float = 60.0
    standby: bool = True
    max_body_bytes: int = MAX_BODY_BYTES
    log_capacity: int = 10_000
    log_batch_rows: int = 50_000  # at most this many rows in one prediction-log commit (see serving.predlog)
    log_flush_seconds: float = 1.0
    batch_delay_seconds: float = DEFAULT_LINGER  # how long a scoring call may wait for requests to join it
    log_predictions: bool = True
    stats_seconds: float = 10.0  # the serving statistics' interval, which is also how often alerts are judged

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))


# ---------------------------------------------------------------------------------------------------- responses


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None, background: Any = None) -> Response:
    body = json.dumps(doc, separators=(",", ":"), allow_nan=False, default=_default).encode()
    return Response(body, status, headers=headers, media_type="application/json", background=background)


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        item = value.item()
        return None if isinstance(item, float) and not math.isfinite(item) else item
    if isinstance(value, (datetime, pd.Timestamp)):
        return value.isoformat()
    return str(value)


def _error(protocol_name: str, exc: RequestError | str, status: int | None = None) -> Response:
    message = exc if isinstance(exc, str) else str(exc).replace("\n  hint: ", "; hint: ")
    code = status or (exc.status if isinstance(exc, RequestError) else 500)
    if protocol_name == MLFLOW:
        error_code = {404: "RESOURCE_DOES_NOT_EXIST"}.get(code, "BAD_REQUEST" if code < 500 else "INTERNAL_ERROR")
        return _json({"error_code": error_code, "message": message}, code)
    return _json({"error": message}, code)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused past ``limit`` bytes: by its Content-Length before reading, and while it
    streams in (a chunked body, or one that lies about its length)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise RequestError(f"the request body is {size} bytes; the limit is {limit} bytes", 413)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise RequestError(f"the request body is over the limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------------- scoring


_RECORDED = threading.Lock()

# The collector's thresholds while serving: a request allocates thousands of short-lived objects (frames, arrays,
# JSON values), so the default first-generation threshold of 700 ran a collection several times per request.
GC_THRESHOLDS = (20_000, 20, 20)


@dataclass
class _Served:
    """A request's outcome before it is sent: outputs in row order, and who answered each row."""

    slot: Slot
    frame: pd.DataFrame
    outputs: dict[str, np.ndarray]
    versions: np.ndarray
    arms: np.ndarray
    logged: list[tuple[Arm, Version, dict[str, Any], int]]
    request_id: str
    row_ids: list[str]
    ts: np.ndarray  # datetime64[us], UTC
    partitions: np.ndarray
    keys: np.ndarray
    scored_at: np.datetime64  # UTC
    # The requests scored together with this one, as one outcome: their rows are logged once, together.
    batch: _Served | None = None
    recorded: bool = False  # this outcome's rows went to the log (set once, under _RECORDED)

    def claim_recording(self) -> _Served | None:
        """The outcome whose rows this request's thread hands to the prediction log: its batch's (the first of the
        batch's requests to ask gets it, the others None), else its own."""
        target = self.batch if self.batch is not None else self
        with _RECORDED:
            if target.recorded:
                return None
            target.recorded = True
        return target

    @property
    def uniform(self) -> tuple[Version, Arm] | None:
        if len(self.logged) == 1:
            arm, version, _, _ = self.logged[0]
            return version, arm
        return None

    def split(self, frames: list[pd.DataFrame], request_ids: list[str]) -> list[_Served]:
        """The outcomes of the requests whose rows were scored together (``frames``, consecutive in this one's
        frame), each as if it had been served alone."""
        out: list[_Served] = []
        start = 0
        for frame, request_id in zip(frames, request_ids, strict=True):
            end = start + len(frame)
            logged = []
            for arm, version, part, _ in self.logged:
                idx = part["idx"]
                mine = (idx >= start) & (idx < end)
                count = int(np.count_nonzero(mine))
                if count:
                    piece = {
                        "idx": idx[mine] - start,
                        "outputs": {n: v[mine] for n, v in part["outputs"].items()},
                        "latency": part["latency"],
                    }
                    logged.append((arm, version, piece, count))
            out.append(
                _Served(
                    self.slot,
                    frame,
                    {n: v[start:end] for n, v in self.outputs.items()},
                    self.versions[start:end],
                    self.arms[start:end],
                    logged,
                    request_id,
                    self.row_ids[start:end],
                    self.ts[start:end],
                    self.partitions[start:end],
                    self.keys[start:end],
                    self.scored_at,
                    batch=self,
                )
            )
            start = end
        return out


def _row_ids(request_id: str, n: int) -> list[str]:
    return [request_id] if n == 1 else [f"{request_id}/{i}" for i in range(n)]


def _keys(
    frame: pd.DataFrame, spec: ModelSpec, header: str | None | list[str | None], row_ids: list[str]
) -> np.ndarray:
    """Each row's routing key: its key column value, else the ``X-Routing-Key`` header (one for the request, or
    one per row when requests were scored together), else its request id. Whole-number floats print as integers
    (a JSON column with a null becomes floats), as the batch path's integer keys do."""
    out: list[Any] = []
    given = frame[spec.key_column].tolist() if spec.key_column in frame.columns else [None] * len(frame)
    headers = header if isinstance(header, list) else [header] * len(frame)
    for value, rid, head in zip(given, row_ids, headers):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out.append(head if head is not None else rid)
        elif isinstance(value, float) and value.is_integer():
            out.append(int(value))
        else:
            out.append(value)
    keys = np.empty(len(out), dtype=object)
    keys[:] = out
    return keys


def _times(frame: pd.DataFrame, spec: ModelSpec, now: np.datetime64) -> np.ndarray:
    """Each row's time (datetime64[us], UTC): its time column when given, else now (see
    :mod:`model_ops.serving.predlog`)."""
    if spec.time_column not in frame.columns:
        return np.full(len(frame), now)
    raw = frame[spec.time_column]
    parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
    bad = parsed.isna() & raw.notna()
    if bad.any():
        first = raw[bad].iloc[0]
        raise RequestError(
            f"column {spec.time_column!r} holds {first!r}, which is not a time the log can hold "
            "(ISO 8601, between the years 1677 and 2262)",
            422,
        )
    values = parsed.dt.tz_convert(None).to_numpy(dtype="datetime64[us]")
    return np.where(np.isnat(values), now, values)


@functools.lru_cache(maxsize=4096)
def _day_key(partitioning: Partitioning, day: date) -> str:
    """The partition a day falls in, by the library's own rule (cached: live traffic comes from few days)."""
    return str(partitioning.key_of(pd.Series([pd.Timestamp(day, tz="UTC")])).iloc[0])


def _partition_keys(spec: ModelSpec, ts: np.ndarray) -> np.ndarray:
    """The partition of each row's time: windows are whole days, so the day decides (per distinct day)."""
    partitioning = Partitioning.of(spec)
    days, where = np.unique(ts.astype("datetime64[D]"), return_inverse=True)
    keys = np.empty(len(days), dtype=object)
    keys[:] = [_day_key(partitioning, d.item()) for d in days]
    return keys[where.reshape(-1)]


@functools.lru_cache(maxsize=4096)
def _declared(partitioning: Partitioning, key: str) -> bool:
    """Whether ``key`` is one of the model's declared windows (from its start, before its end, if any).

    The window in progress of an open-ended model counts as declared: it is, as soon as it is complete."""
    try:
        partitioning.parse(key)
    except UsageError:
        return False
    return True


def _undeclared(spec: ModelSpec, keys: np.ndarray) -> np.ndarray:
    """Which rows fall in a window the model does not declare: before its first window, or at or after its end
    (a request served today for a model whose windows are the months of 2013).

    Such a row keeps its own time and is logged under the window that time falls in, like any other: its time is
    never changed, and the row is not dropped. No asset of the model reads that partition (Dagster does not
    declare it), so drift, live performance and canary analysis never judge those rows; they are counted
    (``model_ops_prediction_log_undeclared_rows_total`` and /status), and judged if the declaration is ever
    widened to cover them."""
    partitioning = Partitioning.of(spec)
    if len(keys) and (keys == keys[0]).all():  # the usual case: every row in one window
        return np.full(len(keys), not _declared(partitioning, str(keys[0])))
    distinct, where = np.unique(keys.astype(str), return_inverse=True)
    outside = np.array([not _declared(partitioning, str(k)) for k in distinct], dtype=bool)
    return outside[where.reshape(-1)]


def _merge(parts: list[tuple[np.ndarray, dict[str, np.ndarray]]], n: int) -> dict[str, np.ndarray]:
    """Outputs of several arms put back in row order (a column an arm lacks is NaN for its rows)."""
    if len(parts) == 1:
        return parts[0][1]
    names = list(dict.fromkeys(c for _, cols in parts for c in cols))
    out = {}
    for name in names:
        values = []
        for idx, cols in parts:
            values.append(cols[name] if name in cols else np.full(len(idx), np.nan))
        merged = np.concatenate(values)
        column = np.empty(n, dtype=merged.dtype)
        column[np.concatenate([idx for idx, _ in parts])] = merged
        out[name] = column
    return out


def route(slot: Slot, keys: pd.Series | np.ndarray) -> list[tuple[Arm, Version, np.ndarray]]:
    """Which served version answers which rows (positions), by the batch path's own function
    (:func:`model_ops.ops.routing.plan`): production and the canary at its weight, by each key's hashed bucket
    salted with the model name; or, while an A/B experiment runs, its arms at their fixed weights, by the key's
    bucket salted with the experiment (the canary then takes no traffic; the shadow is scored as always).

    This is the one place a request's rows are split between versions; the rest of the request (checks,
    scoring, response, log) handles any number of arms. Rows of an experiment arm other than the production
    version carry the arm ``experiment``; their ``model_version`` names the arm."""
    live = slot.experiment
    return [
        (arm, slot.versions[number], idx)
        for arm, number, idx in routing.plan(
            keys, slot.manifest, live.experiment if live is not None else None, salt=slot.model
        )
    ]


@contextmanager
def _refused_by(version: Version, arm: Arm, partition: str = "") -> Iterator[None]:
    """A refusal of these rows names the version and arm that refused them, and their partition (for the error
    metrics and the serving statistics)."""
    try:
        yield
    except RequestError as exc:
        exc.version, exc.arm, exc.partition = str(version.number), arm.value, partition
        raise


def _serve(
    slot: Slot,
    frame: pd.DataFrame,
    request_id: str,
    routing_key: str | None | list[str | None],
    row_ids: list[str] | None = None,
) -> _Served:
    """Route, check and score every row (in a worker thread); raises RequestError before anything is logged.
    ``row_ids`` and a per-row ``routing_key`` list are given when several requests' rows are scored together."""
    spec = slot.spec
    n = len(frame)
    scored_at = np.datetime64(datetime.now(timezone.utc).replace(tzinfo=None), "us")
    row_ids = row_ids if row_ids is not None else _row_ids(request_id, n)
    keys = _keys(frame, spec, routing_key, row_ids)
    ts = _times(frame, spec, scored_at)
    partitions = _partition_keys(spec, ts)
    plan = route(slot, keys)
    checked = []
    for arm, version, idx in plan:
        with _refused_by(version, arm, partitions[idx[0]]):
            checked.append((arm, version, idx, version.check(frame.iloc[idx])))
    parts = []
    logged = []
    versions = np.empty(n, dtype=np.int64)
    arms = np.empty(n, dtype=object)
    for arm, version, idx, rows in checked:
        arms[idx] = arm.value
        with _refused_by(version, arm, partitions[idx[0]]):
            outputs, latency = version.score(rows)
        parts.append((idx, outputs))
        versions[idx] = version.number
        logged.append((arm, version, {"idx": idx, "outputs": outputs, "latency": latency}, len(idx)))
    return _Served(
        slot,
        frame,
        _merge(parts, n),
        versions,
        arms,
        logged,
        request_id,
        row_ids,
        ts,
        partitions,
        keys,
        scored_at,
    )


def _answer(
    slot: Slot,
    body: bytes,
    protocol_name: str,
    request_id: str | None,
    routing_key: str | None,
    arrival: Arrival | None = None,
    coalescer: Coalescer[_Item, _Served] | None = None,
) -> tuple[_Served, list[str] | None]:
    """Parse, route, check and score one request (with the requests arriving together, through the slot's
    ``coalescer``); the outputs an OIP request asked for (None: all)."""
    coalescer = coalescer or _coalescer(slot)
    if arrival is not None:  # its body is in and this worker thread is parsing it (if not counted already)
        coalescer.parsing(arrival)
    doc = protocol.parse_json(body)
    if protocol_name == OIP:
        frame = protocol.oip_frame(doc, slot.production.spec.feature_names)
        given = doc.get("id")
        request_id = given if isinstance(given, str) and given else request_id
    else:
        frame = protocol.mlflow_frame(doc)
    if frame.empty:
        raise RequestError("the request holds no rows")
    item = _Item(slot, frame, request_id or uuid.uuid4().hex, routing_key)
    served = coalescer.run(item, len(frame), arrival)
    wanted = protocol.wanted_outputs(doc, list(served.outputs)) if protocol_name == OIP else None
    return served, wanted


@dataclass(frozen=True, eq=False)
class _Item:
    """One parsed request waiting to be scored (by its slot: a coalescer holds no slot of its own, so a slot out of
    service and its loaded versions are freed with their coalescer)."""

    slot: Slot
    frame: pd.DataFrame
    request_id: str
    routing_key: str | None

    @property
    def shape(self) -> tuple[tuple[str, str], ...]:
        """Requests are scored together only when their frames have the same columns of the same types, so
        the combined frame checks and scores each row exactly as its own request's frame would."""
        return tuple((str(c), str(t)) for c, t in self.frame.dtypes.items())


def _serve_one(item: _Item) -> _Served:
    return _serve(item.slot, item.frame, item.request_id, item.routing_key)


def _serve_many(items: list[_Item]) -> list[_Served]:
    """Requests that arrived together, scored in one pass per frame shape: the rows of each group are routed,
    checked and scored at once (one call of each version's model instead of one per request), then handed back
    per request. A refusal of any row raises, and the coalescer then serves each request alone, so only the
    request at fault is refused."""
    results: dict[int, _Served] = {}
    groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.shape, []).append(i)
    for members in groups.values():
        group = [items[i] for i in members]
        if len(group) == 1:
            results[members[0]] = _serve_one(group[0])
            continue
        frames = [it.frame for it in group]
        row_ids = [rid for it in group for rid in _row_ids(it.request_id, len(it.frame))]
        headers = [it.routing_key for it in group for _ in range(len(it.frame))]
        served = _serve(group[0].slot, pd.concat(frames, ignore_index=True), group[0].request_id, headers, row_ids)
        for i, one in zip(members, served.split(frames, [it.request_id for it in group]), strict=True):
            results[i] = one
    return [results[i] for i in range(len(items))]


_COALESCERS: weakref.WeakKeyDictionary[Slot, Coalescer[_Item, _Served]] = weakref.WeakKeyDictionary()
_COALESCERS_LOCK = threading.Lock()


def _coalescer(slot: Slot, linger: float = DEFAULT_LINGER) -> Coalescer[_Item, _Served]:
    """The slot's coalescer: concurrent requests for one slot are served in one pass (see
    :class:`model_ops.serving.scoring.Coalescer`); a new slot (after a swap) starts its own."""
    found = _COALESCERS.get(slot)
    if found is None:
        with _COALESCERS_LOCK:
            found = _COALESCERS.get(slot)
            if found is None:
                found = Coalescer(_serve_one, _serve_many, linger=linger)
                _COALESCERS[slot] = found
    return found


def _log_columns(
    served: _Served, arm: Arm, version: Version, idx: np.ndarray, outputs: dict[str, np.ndarray], latency: float
) -> dict[str, Any]:
    """One arm's rows as prediction-log columns, in the batch path's order and spelling."""
    spec = served.slot.spec
    frame = served.frame
    n = len(idx)
    columns: dict[str, Any] = {
        "request_id": np.asarray(served.row_ids, dtype=object)[idx],
        "ts": served.ts[idx],
        "scored_at": Same(served.scored_at),
        "partition": served.partitions[idx],
        spec.key_column: served.keys[idx],
        "model_version": Same(np.int64(version.number)),
        "model_semver": Same(version.semver),
        "arm": Same(arm.value),
        "served": Same(arm is not Arm.SHADOW),
        **outputs,
        "latency_ms": Same(float(latency)),
    }
    for name in version.spec.feature_names:
        columns[name] = frame[name].to_numpy()[idx] if name in frame.columns else np.full(n, None)
    columns[ORIGIN] = Same(Origin.LIVE.value)  # a batch re-score keeps these rows
    return columns


# ---------------------------------------------------------------------------------------------------- the app


class Server:
    """The application's state and handlers: the fleet of slots, the prediction log and the metrics."""

    def __init__(self, fleet: Fleet, predlog: PredictionLog | None, config: ServeConfig) -> None:
        self.fleet = fleet
        self.predlog = predlog
        self.config = config
        self.metrics = Metrics()
        self.stats: ServingStats | None = None  # serving statistics and alerts (create_app sets them up)

    # ----------------------------------------------------------------------------------------- requests

    def _slot(self, name: str) -> Slot:
        slot = self.fleet.slots.get(name)
        if slot is None:
            served = sorted(self.fleet.slots)
            why = self.fleet.problems.get(name)
            raise RequestError(
                f"model {name!r} is not served here" + (f" ({why})" if why else ""),
                404,
                hint=("models served: " + ", ".join(served)) if served else "nothing is served yet",
            )
        return slot

    async def infer(self, request: Request, name: str, protocol_name: str) -> Response:
        t0 = time.perf_counter()
        try:
            slot = self._slot(name)
            coalescer = _coalescer(slot, self.config.batch_delay_seconds)
            with coalescer.arriving() as arrival:
                body = await _body(request, self.config.max_body_bytes)
                if anyio.to_thread.current_default_thread_limiter().available_tokens > 0:
                    coalescer.parsing(arrival)  # a worker thread starts on it at once (see Coalescer.parsing)
                # parsing a large body is work too: done in a worker thread, like the scoring, not in the event loop
                served, wanted = await run_in_threadpool(
                    self._answer,
                    slot,
                    body,
                    protocol_name,
                    request.headers.get("x-request-id"),
                    request.headers.get("x-routing-key"),
                    arrival,
                    coalescer,
                )
        except RequestError as exc:
            self.metrics.errors.labels(name, exc.version, exc.arm, str(exc.status), protocol_name).inc()
            if self.stats is not None:
                self.stats.refused(name, exc.version, exc.arm, exc.partition)
            return _error(protocol_name, exc)
        except Exception as exc:  # a bug: answered in the protocol's format, counted, logged with its traceback
            log.exception("model_ops serve: %s request for %s failed", protocol_name, name)
            self.metrics.errors.labels(name, "", "", "500", protocol_name).inc()
            if self.stats is not None:
                self.stats.refused(name, "", "")
            return _error(protocol_name, f"the server failed to answer ({type(exc).__name__}): a bug", 500)
        elapsed = time.perf_counter() - t0
        for arm, version, _, rows in served.logged:
            labels = (name, str(version.number), arm.value)
            self.metrics.requests.labels(*labels).inc()
            self.metrics.rows.labels(*labels).inc(rows)
            self.metrics.latency.labels(*labels).observe(elapsed)
        if self.stats is not None:
            self.stats.served(served, elapsed)
        background = BackgroundTask(self._shadow, served) if served.slot.manifest.shadow else None
        headers = {"X-Request-Id": served.request_id}
        uniform = served.uniform
        if uniform is not None:
            headers.update(
                {
                    "X-Model-Version": str(uniform[0].number),
                    "X-Model-Semver": uniform[0].semver,
                    "X-Model-Arm": uniform[1].value,
                }
            )
        versions = served.versions.tolist()
        arms = served.arms.tolist()
        semvers = {v.number: v.semver for _, v, _, _ in served.logged}
        top = {
            "model_version": str(uniform[0].number) if uniform else ",".join(str(v) for v in sorted(set(versions))),
            "model_semver": uniform[0].semver if uniform else ",".join(semvers[v] for v in sorted(set(versions))),
            "arm": uniform[1].value if uniform else "mixed",
        }
        if protocol_name == OIP:
            doc_out = {
                "model_name": name,
                "model_version": top["model_version"],
                "id": served.request_id,
                "parameters": {
                    "model_semver": top["model_semver"],
                    "arm": top["arm"],
                    "model_versions": versions,
                    "arms": arms,
                },
                "outputs": protocol.oip_outputs(served.outputs, wanted),
            }
        else:
            doc_out = {
                "predictions": protocol.json_values(served.outputs["prediction"]),
                "scores": protocol.json_values(served.outputs["score"]),
                **top,
                "model_versions": versions,
                "arms": arms,
                "id": served.request_id,
            }
        return _json(doc_out, headers=headers, background=background)

    def _answer(
        self,
        slot: Slot,
        body: bytes,
        protocol_name: str,
        request_id: str | None,
        routing_key: str | None,
        arrival: Arrival,
        coalescer: Coalescer[_Item, _Served],
    ) -> tuple[_Served, list[str] | None]:
        """:func:`_answer`, then the served rows handed to the prediction log and the experiment: in the worker
        thread too, so the event loop only moves bytes. Nothing is logged for a refused request."""
        served, wanted = _answer(slot, body, protocol_name, request_id, routing_key, arrival, coalescer)
        rows = served.claim_recording()  # requests scored together are logged together, by one of them
        if rows is not None:
            self._log(rows)
            if rows.slot.experiment is not None:  # which arm served each key, for the outcomes posted later
                rows.slot.experiment.remember(rows.keys, rows.versions, rows.outputs["prediction"], rows.partitions)
        return served, wanted

    def _log(self, served: _Served) -> None:
        if self.predlog is None:
            return
        undeclared = _undeclared(served.slot.spec, served.partitions)
        for arm, version, part, rows in served.logged:
            columns = functools.partial(
                _log_columns, served, arm, version, part["idx"], part["outputs"], part["latency"]
            )
            if self.predlog.offer(served.slot.model, columns, rows):
                outside = int(np.count_nonzero(undeclared[part["idx"]]))
                if outside:
                    self.metrics.undeclared_rows.labels(served.slot.model).inc(outside)

    def _shadow(self, served: _Served) -> None:
        """Score the shadow version on every row after the response went out; log it, never serve it."""
        version = served.slot.version(Arm.SHADOW)
        if version is None:
            return
        name, number = served.slot.model, str(version.number)
        try:
            outputs, latency = version.score(version.check(served.frame))
        except RequestError as exc:
            self.metrics.shadow_errors.labels(name, number).inc()
            log.warning("model_ops serve: shadow v%s of %s cannot score a request: %s", number, name, exc.message)
            return
        except Exception:
            self.metrics.shadow_errors.labels(name, number).inc()
            log.exception("model_ops serve: shadow v%s of %s failed", number, name)
            return
        n = len(served.frame)
        idx = np.arange(n)
        self.metrics.shadow_rows.labels(name, number).inc(n)
        differs = np.asarray(outputs["prediction"]) != np.asarray(served.outputs["prediction"])
        self.metrics.shadow_disagreements.labels(name, number).inc(int(np.count_nonzero(differs)))
        delta = np.abs(np.asarray(outputs["score"], dtype="float64") - served.outputs["score"].astype("float64"))
        for d in delta[np.isfinite(delta)]:
            self.metrics.shadow_score_delta.labels(name, number).observe(float(d))
        log.debug(
            "model_ops serve: shadow v%s of %s disagrees on %d of %d row(s), mean |score delta| %.4g",
            number,
            name,
            int(differs.sum()),
            n,
            float(np.nanmean(delta)) if n else 0.0,
        )
        if self.predlog is not None:
            self.predlog.offer(name, _log_columns(served, Arm.SHADOW, version, idx, outputs, latency), n)

    # ----------------------------------------------------------------------------------------- endpoints

    async def oip_infer(self, request: Request) -> Response:
        return await self.infer(request, request.path_params["name"], OIP)

    async def mlflow_named(self, request: Request) -> Response:
        return await self.infer(request, request.path_params["name"], MLFLOW)

    async def mlflow_bare(self, request: Request) -> Response:
        name = request.headers.get("x-model-name")
        if name is None:
            served = sorted(self.fleet.slots)
            if len(served) != 1:
                self.metrics.errors.labels("", "", "", "400", MLFLOW).inc()
                return _error(
                    MLFLOW,
                    RequestError(
                        f"/invocations answers for one model, and {len(served)} are served "
                        f"({', '.join(served) or 'none'}): name one with the X-Model-Name header, or POST to "
                        "/v2/models/NAME/invocations"
                    ),
                )
            name = served[0]
        return await self.infer(request, name, MLFLOW)

    async def outcomes(self, request: Request) -> Response:
        """``POST /v2/models/{name}/outcomes``: outcomes of keys the running experiment served, fed to its test;
        answers what was taken and the decision (see :mod:`model_ops.serving.abtest`)."""
        name = request.path_params["name"]
        try:
            slot = self._slot(name)
            live = slot.experiment
            if live is None:
                raise RequestError(
                    f"no A/B experiment is running on {name}, so there is nothing to post outcomes to",
                    409,
                    hint=f"start one with `model-ops experiment start {name} --name NAME --arm A=V1 --arm B=V2`",
                )
            body = await _body(request, self.config.max_body_bytes)
            answer = await run_in_threadpool(lambda: live.post(protocol.parse_json(body)))
        except RequestError as exc:
            return _error(OIP, exc)
        except Exception as exc:  # a bug: answered in the protocol's format, logged with its traceback
            log.exception("model_ops serve: outcomes for %s failed", name)
            return _error(OIP, f"the server failed to take the outcomes ({type(exc).__name__}): a bug", 500)
        return _json(answer)

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = self.fleet.ready
        return _json({"ready": ready, **({} if ready else {"problems": self.fleet.problems})}, 200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return _json({"name": "model_ops", "version": __version__, "extensions": ["mlflow_invocations"]})

    async def model_metadata(self, request: Request) -> Response:
        try:
            slot = self._slot(request.path_params["name"])
        except RequestError as exc:
            return _error(OIP, exc)
        prod = slot.production
        kinds = {"category": "BYTES", "int": "INT64", "bool": "BOOL", "float": "FP64"}
        inputs = [
            {"name": f, "datatype": kinds[str(prod.spec.feature_type(f))], "shape": [-1]}
            for f in prod.spec.feature_names
        ]
        outputs = [{"name": n, "datatype": kind, "shape": [-1]} for n, kind in prod.outputs.items()]
        return _json(
            {
                "name": slot.model,
                "versions": [str(v) for v in sorted(slot.versions)],
                "platform": f"model_ops/{prod.loaded.flavor}",
                "inputs": inputs,
                "outputs": outputs,
                "parameters": {
                    "task": str(prod.spec.task),
                    "key_column": prod.spec.key_column,
                    "time_column": prod.spec.time_column,
                    "production_semver": prod.semver,
                    **slot.describe(),
                },
            }
        )

    async def model_ready(self, request: Request) -> Response:
        ready = request.path_params["name"] in self.fleet.slots
        return _json({"name": request.path_params["name"], "ready": ready}, 200 if ready else 503)

    async def metrics_endpoint(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(self.metrics.render(self.predlog or _NoLog(), self.fleet), media_type=CONTENT_TYPE_LATEST)

    async def status(self, request: Request) -> Response:
        doc = self.fleet.status()
        if self.predlog is not None:
            doc["prediction_log"] = {
                "queue_depth": self.predlog.depth,
                "overflow_rows": self.predlog.overflow_rows,
                "written_rows": self.predlog.written_rows,
                "failed_rows": self.predlog.failed_rows,
                "undeclared_rows": self.metrics.undeclared(),
                "writer_cpu_seconds": round(self.predlog.writer_cpu_seconds, 3),
            }
        if self.stats is not None:
            doc["serving_stats"] = self.stats.describe()
        for name, slot in self.fleet.slots.items():  # how much requests arriving together were scored together
            found = _COALESCERS.get(slot)
            if found is not None and name in doc["models"]:
                doc["models"][name]["scoring"] = {"calls": found.calls, "requests_scored_together": found.combined}
        doc["garbage_collector"] = {  # see _settle_memory
            "frozen_objects": gc.get_freeze_count(),
            "thresholds": list(gc.get_threshold()),
            "collections": [generation["collections"] for generation in gc.get_stats()],
        }
        return _json(doc)


class _NoLog:
    depth = overflow_rows = written_rows = failed_rows = 0


def create_app(
    config: ServeConfig,
    *,
    specs: dict[str, ModelSpec] | None = None,
    open_registry: Callable[[], Registry] | None = None,
    own_process: bool = False,
) -> Starlette:
    """The server as an ASGI application: starts following the registry and the prediction-log writer on
    startup, and on shutdown (SIGTERM under uvicorn) stops following and writes every queued row.

    ``own_process``: the application is the process (``model-ops serve``), so once it is up it may tune the
    process-wide garbage collector for serving (:func:`_settle_memory`); an application embedded in another
    process (a test, a host application) leaves the collector as it found it."""
    root: Location = resolve_root(config.root)
    if specs is None:
        from model_ops.specs import load_specs

        specs = {s.name: s for s in load_specs()}
    opener = open_registry or (lambda: Registry.open(root, actor=config.actor, policy=config.policy))
    fleet = Fleet(
        opener,
        specs,
        config.names or None,
        poll_seconds=config.poll_seconds,
        drain_seconds=config.drain_seconds,
        standby=config.standby,
    )
    predlog = (
        PredictionLog(
            root,
            capacity=config.log_capacity,
            batch_rows=config.log_batch_rows,
            flush_seconds=config.log_flush_seconds,
        )
        if config.log_predictions
        else None
    )
    server = Server(fleet, predlog, config)
    # serving statistics every stats_seconds, and the alerts and canary guard judged on each interval
    alerts = AlertEngine(root, fleet, opener)
    stats = server.stats = ServingStats(root, specs, seconds=config.stats_seconds, listeners=[alerts])

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if predlog is not None:
            predlog.start()
        await anyio.to_thread.run_sync(fleet.start)
        stats.start()
        if own_process:
            _settle_memory()
        try:
            yield
        finally:
            # Each step runs whatever the one before it raised: the queued prediction rows are written last of all.
            for step, what in (
                (stats.close, "writing the last serving statistics"),  # the interval in progress is judged too
                (alerts.join, "waiting for the canary guard"),
                (fleet.stop, "stopping the registry follower"),
            ):
                try:
                    await anyio.to_thread.run_sync(step)
                except Exception:
                    log.exception("model_ops serve: shutdown: %s failed", what)
            if predlog is not None:
                await anyio.to_thread.run_sync(predlog.close)
                if predlog.overflow_rows or predlog.failed_rows:
                    log.warning(
                        "model_ops serve: prediction log: %d row(s) written, %d dropped on overflow, %d failed",
                        predlog.written_rows,
                        predlog.overflow_rows,
                        predlog.failed_rows,
                    )

    routes = [
        Route("/v2/health/live", server.live),
        Route("/v2/health/ready", server.ready),
        Route("/v2", server.server_metadata),
        Route("/v2/models/{name}", server.model_metadata),
        Route("/v2/models/{name}/ready", server.model_ready),
        Route("/v2/models/{name}/infer", server.oip_infer, methods=["POST"]),
        Route("/v2/models/{name}/outcomes", server.outcomes, methods=["POST"]),
        Route("/v2/models/{name}/invocations", server.mlflow_named, methods=["POST"]),
        Route("/invocations", server.mlflow_bare, methods=["POST"]),
        Route("/metrics", server.metrics_endpoint),
        Route("/status", server.status),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = server
    return app


def _settle_memory() -> None:
    """Keep the garbage collector's full passes short once the server is up (see :data:`GC_THRESHOLDS`).

    What the server holds for its lifetime (imported modules, loaded models, the registry's state) is moved out
    of the collector's reach (``gc.freeze``): a full pass then scans only what requests allocated since. Without
    this, each full pass walked a couple of hundred thousand startup objects with every thread stopped, a pause
    of 0.1-0.3 s that was most of the p99 latency under load. Frozen objects are still freed when nothing refers
    to them; only garbage in reference cycles among them is never collected. Startup's own is collected here
    first, and a loaded version holds no cycle (``scoring.Version``), so a model replaced later is freed."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def app_from_env() -> Starlette:
    """The application for a uvicorn worker process (``--workers N``): the config comes in ``MODEL_OPS_SERVE``."""
    import os

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s [worker {os.getpid()}] %(message)s")
    return create_app(ServeConfig.from_json(os.environ["MODEL_OPS_SERVE"]), own_process=True)
