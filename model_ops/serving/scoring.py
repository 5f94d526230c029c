"""One registry version ready to answer live requests, scored exactly as the batch path scores a partition.

The batch path (``predictions`` asset) calls :func:`model_ops.ml.tasks.predict` on
:func:`model_ops.ml.training.model_input` of the rows, with the version's own view of the declaration
(:func:`model_ops.ml.training.version_spec`). :meth:`Version.score` calls the same two functions on the same view,
so a row scored live and the same row scored in a batch get the same prediction and score. Before that, a request's
rows are checked the way ``model_ops.load`` checks a frame (:meth:`model_ops.loading.LoadedModel.prepare`: missing
or wrong-typed columns are named), plus the declaration's rule on missing values (a feature whose
``max_null_fraction`` is 0 takes no missing value), so a bad request is refused with its problem before any model
sees it.
"""

from __future__ import annotations

import functools
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import numpy as np
import pandas as pd

from model_ops.errors import UsageError
from model_ops.loading import LoadedModel
from model_ops.ml import tasks
from model_ops.ml.training import model_input, version_spec
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import FeatureType

T = TypeVar("T")
R = TypeVar("R")

PEAK_SECONDS = 0.5  # how long a coalescer remembers how many requests were in the server at once
DEFAULT_LINGER = 0.010  # seconds a call may wait for requests to join it
PARSING_WAIT = 5  # a call may wait this many lingers for requests whose bodies are in and being parsed


class RequestError(UsageError):
    """A request the server refuses, with the HTTP status that says why (4xx, never 5xx)."""

    def __init__(self, message: str, status: int = 400, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.version = ""  # the version and arm whose rows were refused, once a request was routed
        self.arm = ""
        self.partition = ""  # the refused rows' partition (their first row's), once a request was routed


def spec_for(spec: ModelSpec, signature: dict[str, Any] | None) -> ModelSpec:
    """The declaration as version ``signature`` sees it, with every feature typed: declared types first, then the
    signature's (a declaration that leaves types to the source's schema is typed by what the version was trained
    on, the same types the batch path reads from the features table)."""
    view = version_spec(spec, signature)
    if view.typed:
        return view
    types: dict[str, FeatureType | str] = {
        str(i.get("name")): str(i.get("type"))
        for i in (signature or {}).get("inputs") or []
        if isinstance(i, dict) and i.get("type") in set(FeatureType)
    }
    untyped = [f.name for f in view.features if f.type is None and f.name not in types]
    if untyped:
        raise UsageError(
            f"{spec.name}: the type of feature(s) {', '.join(untyped)} is neither declared nor in the version's "
            "signature, so requests cannot be checked",
            hint="declare `type:` for them in the model's declaration",
        )
    return view.with_schema(types, features_only=True)


@dataclass(frozen=True, eq=False)
class Version:
    """A loaded registry version and the declaration as it sees it (its inputs, task and threshold)."""

    loaded: LoadedModel
    spec: ModelSpec
    batcher: Batcher = field(init=False, repr=False)
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> OIP datatype, found by :meth:`warm`

    def __post_init__(self) -> None:
        # The batcher calls back through a weak reference: a version holding a batcher holding the version would
        # be a reference cycle, freed only by the garbage collector's full passes, and never once the server has
        # frozen its startup objects (``gc.freeze``): each model replaced after startup would stay in memory.
        object.__setattr__(self, "batcher", Batcher(_weakly(self.score_now)))

    @classmethod
    def build(cls, loaded: LoadedModel, spec: ModelSpec) -> Version:
        return cls(loaded, spec_for(spec, loaded.signature))

    @property
    def number(self) -> int:
        return self.loaded.version

    @property
    def semver(self) -> str:
        return self.loaded.semver

    def check(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` checked against the version's signature and the declaration's missing-value rule; a
        :class:`RequestError` (422) naming every problem otherwise."""
        try:
            prepared = self.loaded.prepare(frame)
        except UsageError as exc:
            raise RequestError(exc.message, 422, hint=exc.hint) from None
        missing = [c for c in self.spec.feature_names if c not in frame.columns]
        if missing:
            raise RequestError(f"missing column(s) {', '.join(missing)} required by {self.loaded.ref}", 422)
        problems = []
        for feature in self.spec.features:
            if feature.max_null_fraction > 0:
                continue
            col = frame[feature.name]
            empty = col.isna().to_numpy()
            if col.dtype == object:
                empty |= np.array([isinstance(v, float) and math.isnan(v) for v in col], dtype=bool)
            if empty.any():
                rows = np.flatnonzero(empty)[:5].tolist()
                problems.append(f"column {feature.name!r} has missing values (NaN or null) in row(s) {rows}")
        if problems:
            raise RequestError(
                f"{self.loaded.ref} cannot score this request: " + "; ".join(problems),
                422,
                hint="the declaration allows no missing value in these features (max_null_fraction 0)",
            )
        return prepared if isinstance(prepared, pd.DataFrame) else frame

    def score(self, frame: pd.DataFrame) -> tuple[dict[str, np.ndarray], float]:
        """The prediction-log output columns for the rows of ``frame`` (prediction, score, per-class
        probabilities) and the wall time per row in milliseconds, scored together with the rows of requests
        that arrived meanwhile (see :class:`Batcher`). The model's own refusal of a value it cannot take is a
        :class:`RequestError` (422), never a server error."""
        return self.batcher.score(frame)

    def score_now(self, frame: pd.DataFrame) -> tuple[dict[str, np.ndarray], float]:
        """:meth:`score` for these rows alone, in the calling thread."""
        t0 = time.perf_counter()
        try:
            predicted = tasks.predict(self.loaded.model, model_input(frame, self.spec), self.spec)
        except UsageError as exc:
            raise RequestError(exc.message, 422, hint=exc.hint) from None
        except (ValueError, TypeError) as exc:
            raise RequestError(f"{self.loaded.ref} cannot score these rows: {exc}", 422) from None
        latency = (time.perf_counter() - t0) * 1000 / max(len(frame), 1)
        return predicted.columns(), latency

    def probe(self) -> pd.DataFrame:
        """One made-up row that every input accepts (a declared minimum or 0 for numbers, the first allowed value
        or a placeholder for categories): the warm-up and health check of a slot before it takes traffic."""
        row: dict[str, Any] = {}
        for f in self.spec.features:
            if self.spec.feature_type(f.name) is FeatureType.CATEGORY:
                row[f.name] = (f.allowed or ["probe"])[0]
            elif self.spec.feature_type(f.name) is FeatureType.BOOL:
                row[f.name] = False
            else:
                row[f.name] = f.min if f.min is not None else 0
        return pd.DataFrame([row])

    def warm(self) -> None:
        """Score the probe row once: loads lazy state (imports, caches) off the request path and proves the
        version answers at all."""
        from model_ops.serving.protocol import datatype_of

        columns, _ = self.score_now(self.check(self.probe()))
        self.outputs.update({name: datatype_of(values) for name, values in columns.items()})


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    item: T
    size: int
    done: bool = False
    result: R | None = None
    error: BaseException | None = None


class Arrival:
    """A caller on its way to :meth:`Coalescer.run` (its request still being read or parsed)."""

    __slots__ = ("queued", "parsing")

    def __init__(self) -> None:
        self.queued = False
        self.parsing = False  # its body is in: it is being parsed, and will be queued or refused soon


class Coalescer(Generic[T, R]):
    """Work of concurrent callers done in one call (opportunistic batching).

    A model call has a fixed cost (scikit-learn's input validation and each transformer's set-up) that dwarfs the
    cost of a few rows, so a server that calls the model once per request spends most of its time on that fixed
    cost. Here a caller that finds nothing running starts a call; callers arriving while it runs queue up, and when
    it finishes the next one takes every queued item (up to ``max_rows`` rows) into one call of ``run_many``, which
    returns each item's own result. If the combined call fails, each item is run alone by ``run_one``, so one
    caller's bad input fails only that caller.

    Callers announce themselves for as long as their request is in the server (:meth:`arriving`, from before its
    body is read until its answer is ready). A caller about to start a call waits while fewer requests are queued
    than were in the server at once during the last half second, at most ``linger`` seconds (``model-ops serve
    --batch-delay``, 10 ms by default; 0 turns the wait off): under steady load the requests one call answered come
    back within a round trip, and the queue delay lets one call score them all, where scoring at once splits them
    into ever smaller alternating batches (a dynamic batcher's queue delay, as inference servers have). A caller
    waits for nothing once no other request was in the server during the last half second; right after a burst, a
    lone request may wait the delay once.

    Requests whose bodies are in and being parsed (:meth:`parsing`) are waited for longer, up to
    :data:`PARSING_WAIT` delays: they are certain to be queued or refused within moments, and on a busy machine
    parsing a few 100-row bodies takes longer than the delay, so a call that left without them scored half the
    requests it could have. A client still sending its body is never waited for beyond the delay.
    """

    def __init__(
        self,
        run_one: Callable[[T], R],
        run_many: Callable[[list[T]], list[R]],
        max_rows: int = 2048,
        linger: float = DEFAULT_LINGER,
    ) -> None:
        self._one = run_one
        self._many = run_many
        self.max_rows = max_rows
        self.linger = linger
        self._cond = threading.Condition()
        self._queue: list[_Pending[T, R]] = []
        self._busy = False
        self._arriving = 0  # announced, not yet queued
        self._parsing = 0  # announced, body in, not yet queued
        self._in_server = 0  # announced, not yet answered
        self._peak = 0  # most requests in the server at once, over the last PEAK_SECONDS
        self._peak_at = 0.0
        self.calls = 0
        self.combined = 0  # items that shared a call with others

    @contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Announce a caller for the duration of its request; pass what it yields to :meth:`run`."""
        arrival = Arrival()
        with self._cond:
            self._arriving += 1
            self._in_server += 1
            now = time.monotonic()
            if self._in_server >= self._peak or now - self._peak_at > PEAK_SECONDS:
                self._peak, self._peak_at = self._in_server, now
        try:
            yield arrival
        finally:
            with self._cond:
                self._in_server -= 1
                if not arrival.queued:  # refused before it was scored (a bad body): no longer on its way
                    self._arriving -= 1
                    self._parsing -= arrival.parsing
                self._cond.notify_all()

    def parsing(self, arrival: Arrival) -> None:
        """``arrival``'s body is in and a worker thread is parsing it or about to (see the class's note); once per
        arrival, later calls change nothing. The server calls it when the body is in if a worker thread is free,
        else from the thread once it has one: a request waiting for a thread (every thread held by queued
        callers) is not about to be queued, and a call waiting for it would wait its whole limit."""
        with self._cond:
            if not arrival.queued and not arrival.parsing:
                arrival.parsing = True
                self._parsing += 1

    def run(self, item: T, size: int, arrival: Arrival | None = None) -> R:
        mine: _Pending[T, R] = _Pending(item, size)
        batch: list[_Pending[T, R]] = []
        with self._cond:
            if arrival is not None and not arrival.queued:
                arrival.queued = True
                self._arriving -= 1
                self._parsing -= arrival.parsing
            self._queue.append(mine)
            self._cond.notify_all()
            while not mine.done and self._busy:
                self._cond.wait()
            if not mine.done:
                self._busy = True
                now = time.monotonic()
                if now - self._peak_at > PEAK_SECONDS:  # the last burst is over
                    self._peak, self._peak_at = self._in_server, now
                deadline = now + self.linger
                parsed_by = now + self.linger * PARSING_WAIT
                while len(self._queue) < self._peak and sum(p.size for p in self._queue) < self.max_rows:
                    # bodies in and being parsed join this call for sure: waited for longer than the others
                    left = (parsed_by if self._parsing > 0 else deadline) - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                # The leader's own item always goes in its call (a caller never leaves without its result),
                # then queued items in arrival order while their rows fit.
                self._queue.remove(mine)
                batch, rows = [mine], mine.size
                while self._queue and rows + self._queue[0].size <= self.max_rows:
                    batch.append(self._queue.pop(0))
                    rows += batch[-1].size
        if batch:
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        if not mine.done:
            raise RuntimeError("a scoring call ended without this request's result: a bug")
        if mine.error is not None:
            raise mine.error
        return cast(R, mine.result)

    def _run(self, batch: list[_Pending[T, R]]) -> None:
        self.calls += 1
        if len(batch) > 1:
            try:
                results = self._many([p.item for p in batch])
            except Exception:
                pass  # each item alone below: only the one at fault fails
            else:
                self.combined += len(batch)
                for p, result in zip(batch, results, strict=True):
                    p.result, p.done = result, True
                return
        for p in batch:
            try:
                p.result = self._one(p.item)
            except BaseException as exc:  # handed to the caller's own thread, raised there
                p.error = exc
            p.done = True


Scored = tuple[dict[str, np.ndarray], float]


def _score_many(score: Callable[[pd.DataFrame], Scored], frames: list[pd.DataFrame]) -> list[Scored]:
    outputs, latency = score(pd.concat(frames, ignore_index=True))
    results: list[Scored] = []
    start = 0
    for frame in frames:
        end = start + len(frame)
        results.append(({n: v[start:end] for n, v in outputs.items()}, latency))
        start = end
    return results


def _weakly(method: Callable[[pd.DataFrame], Scored]) -> Callable[[pd.DataFrame], Scored]:
    ref = weakref.WeakMethod(method)  # type: ignore[arg-type]

    def call(frame: pd.DataFrame) -> Scored:
        bound = ref()
        if bound is None:
            raise RuntimeError("the version was unloaded while a request was being scored")
        return bound(frame)

    return call


class Batcher:
    """Rows of concurrent requests scored by one version in one call of its model (a :class:`Coalescer` of
    frames). Every supported model scores rows independently, so the outputs are those of scoring each request
    alone (the batch path scores 512 rows per call the same way)."""

    def __init__(self, score: Callable[[pd.DataFrame], Scored], max_rows: int = 2048):
        self._coalescer: Coalescer[pd.DataFrame, Scored] = Coalescer(
            score, functools.partial(_score_many, score), max_rows
        )

    @property
    def calls(self) -> int:
        return self._coalescer.calls

    def score(self, frame: pd.DataFrame) -> Scored:
        return self._coalescer.run(frame, len(frame))
