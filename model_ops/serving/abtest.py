"""The A/B experiment a live server runs for one model: which arm served each key, the outcomes posted for them,
the sequential test they feed, and the conclusion written once to the audit log.

The experiment is declared in the registry (``model-ops experiment start``, :func:`model_ops.ops.experiments.start`);
the fleet reads it when it rebuilds a slot and the slot carries one :class:`LiveExperiment`, kept across rebuilds
that leave the experiment as it was. Routing is :func:`model_ops.ops.routing.plan`, the batch path's own.

**How arms appear.** The prediction log's and the responses' ``arm`` is ``production`` for rows the production
version answered (production monitoring keeps judging them) and ``experiment`` for rows of the other arms; the row's
``model_version`` names its experiment arm (each arm is its own version). A canary in progress takes no traffic
while an experiment runs (its weight would change the experiment's split); the shadow is scored on every row and
never served, as always. ``/status`` shows the experiment of each slot: arms, weights, counts, status, reason.

**Which arm served a key.** Assignment is sticky, so the experiment's arm of a key is known from the key alone; but
an outcome counts only for a key this server actually served under the experiment, and the outcomes that judge a
prediction (``correct``, ``abs_error``, ``squared_error``) need the prediction served. So every served row leaves its
key, version, prediction and partition in a bounded memory (the most recent ``memory`` keys); keys it does not hold
(never served here, or served so long ago that they were forgotten) are counted and reported as unknown, never fed.

**Outcomes survive a restart.** Every accepted batch is appended to the model's outcomes table
(``<root>/datasets/<model>/outcomes``, partitioned like the prediction log, by the window the key was served in)
before the answer goes out, one Delta commit per batch, numbered. A slot built for a running experiment replays
that table batch by batch (each batch was one look of the test, so the always-valid p-values come back exactly) and
refills the memory from the prediction log's rows served since the experiment started.

**One process.** The state lives in the server process: run an experiment's server with one worker (``--workers
1``), or post each key's outcome to the worker that served it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from model_ops.data.delta import PARTITION, Dataset
from model_ops.location import Location
from model_ops.ops import experiments as ex
from model_ops.serving.predlog import ORIGIN, Origin, predictions_dataset
from model_ops.serving.scoring import RequestError
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import RecordKind

log = logging.getLogger("model_ops.serving")

MEMORY_KEYS = 200_000
REPORTED_KEYS = 20  # unknown keys named in an answer (all are counted)

OUTCOMES_SCHEMA = pa.schema(
    [
        ("experiment", pa.string()),
        ("started_seq", pa.int64()),
        ("batch", pa.int64()),
        ("received_at", pa.timestamp("us", tz="UTC")),
        (PARTITION, pa.string()),
        ("key", pa.string()),
        ("arm", pa.string()),
        ("model_version", pa.int64()),
        ("label", pa.string()),
        ("prediction", pa.string()),
        ("outcome", pa.float64()),
    ]
)


def outcomes_dataset(root: Location, model: str) -> Dataset:
    """The outcomes posted to the live server for ``model``'s experiments."""
    return Dataset(root.child("datasets", model, "outcomes"), f"{model}/outcomes")


def key_text(value: Any) -> str:
    """A key as the memory and the outcomes table spell it: whole-number floats as integers (JSON clients send
    ``7.0`` for ``7``), as the server's routing reads them."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        return key_text(value.item())
    return str(value)


class LiveExperiment:
    """One running experiment in a server: the test's state, the memory of served keys, the outcomes table."""

    def __init__(
        self,
        declared: ex.Declared,
        spec: ModelSpec,
        root: Location,
        open_registry: Callable[[], Any],
        *,
        memory: int = MEMORY_KEYS,
    ) -> None:
        self.declared = declared
        self.config = declared.config
        self.spec = spec
        self.root = root
        self.experiment = ex.Experiment(declared.config)
        self.memory = memory
        self.recorded: set[str] = set()  # conclusions already in the audit log
        self.unknown = 0  # outcomes for keys this server did not serve (or forgot), over its life
        self.duplicates = 0
        self._open_registry = open_registry
        self._reg: Any = None
        self._served: OrderedDict[str, tuple[int, Any, str]] = OrderedDict()  # key -> (version, prediction, partition)
        self._fed: set[str] = set()
        self._batch = 0
        # Two locks: batches of outcomes take turns (the test's looks and the table's batches stay in order), and
        # the served-key memory has its own, held only for dict updates, because the request path (the event loop)
        # takes it and must never wait for an outcomes batch's Delta commit.
        self._lock = threading.Lock()
        self._memory_lock = threading.Lock()
        self._last: ex.Decision | None = None  # the latest decision, read by /status without waiting for a batch
        self._arm_of = {a.version: a.name for a in self.config.arms}

    # ------------------------------------------------------------------------------------------------ resuming

    @classmethod
    def resume(
        cls,
        declared: ex.Declared,
        spec: ModelSpec,
        root: Location,
        open_registry: Callable[[], Any],
        events: Iterable[Any] = (),
        *,
        memory: int = MEMORY_KEYS,
    ) -> LiveExperiment:
        """The experiment as the outcomes table and the prediction log leave it: every posted batch replayed in
        order (one look each), the memory refilled with the keys served since it started. ``events``, the model's
        audit log, tells which conclusions are already recorded."""
        live = cls(declared, spec, root, open_registry, memory=memory)
        live.recorded = {
            e.data["conclusion"]
            for e in events
            if e.kind == RecordKind.EXPERIMENT and e.data.get("experiment") == declared.config.name
            if "conclusion" in e.data
        }
        live._replay()
        live._refill()
        live._last = live.experiment.decision()
        return live

    def _replay(self) -> None:
        self.experiment, self._fed, self._batch = _replayed(self.declared, self.root)

    def _refill(self) -> None:
        table = predictions_dataset(self.root, self.config.model)
        if not table.exists():
            return
        key = self.spec.key_column
        schema = table.arrow_schema()
        if any(c not in schema.names for c in (key, "model_version", "prediction", "served", "scored_at")):
            return
        started = pd.Timestamp(self.declared.started_at).tz_convert("UTC").to_pydatetime()
        where: list[tuple[str, str, Any]] = [("served", "=", True), ("scored_at", ">=", started)]
        if ORIGIN in schema.names:  # served by a server, not scored by the batch path meanwhile
            where.append((ORIGIN, "=", Origin.LIVE.value))
        rows = table.read(columns=[key, "model_version", "prediction", PARTITION, "scored_at"], where=where)
        rows = rows[rows["model_version"].isin(list(self._arm_of))]
        if rows.empty:
            return
        rows = rows.sort_values("scored_at", kind="stable").tail(self.memory * 2)
        keys = rows[key].map(key_text)
        sticky = self.experiment.assign(keys)
        routed = rows["model_version"].map(self._arm_of).to_numpy(dtype=object) == sticky
        self.remember(keys[routed], rows["model_version"][routed], rows["prediction"][routed], rows[PARTITION][routed])

    # ------------------------------------------------------------------------------------------------ serving

    def remember(
        self, keys: Iterable[Any], versions: Iterable[Any], predictions: Iterable[Any], partitions: Iterable[Any]
    ) -> None:
        """Served rows, so their outcomes can be told apart from unknown keys and judged against the prediction."""
        with self._memory_lock:
            served = self._served
            for k, v, p, part in zip(keys, versions, predictions, partitions):
                text = key_text(k)
                served[text] = (int(v), p.item() if isinstance(p, np.generic) else p, str(part))
                served.move_to_end(text)
            while len(served) > self.memory:
                served.popitem(last=False)

    @property
    def remembered(self) -> int:
        return len(self._served)

    # ------------------------------------------------------------------------------------------------ outcomes

    def post(self, doc: Any) -> dict[str, Any]:
        """Take one ``{"outcomes": [{"key": ..., "label": ...}, ...]}`` document: validate it whole (a RequestError
        naming the first problem, nothing taken), append the outcomes of known keys to the outcomes table, feed
        them to the test as one look, record a conclusion the first time it is reached, and answer what was
        taken, what was not and why, and the decision."""
        items = _items(doc)
        keys = [key_text(item["key"]) for item in items]
        with self._lock:
            with self._memory_lock:
                memory = {k: self._served[k] for k in set(keys) if k in self._served}
            known: dict[str, int] = {}  # key -> position of its last outcome in this batch
            unknown: list[str] = []
            duplicates = 0
            for i, k in enumerate(keys):
                if k in self._fed:
                    duplicates += 1
                elif k in memory:
                    if k in known:
                        duplicates += 1
                    known[k] = i
                else:
                    unknown.append(k)
            taken = sorted(known.values())
            served = [memory[keys[i]] for i in taken]
            labels = [items[i]["label"] for i in taken]
            outcomes = ex.outcome_values(self.declared.outcome, labels, [s[1] for s in served])
            self._check(outcomes, taken, items)
            arms = [self._arm_of[s[0]] for s in served]
            if taken:
                self._append(keys, taken, served, labels, arms, outcomes)
            late_before = int(self.experiment.late.sum())
            decision = self.experiment.observe_many(arms, outcomes) if taken else self.experiment.decision()
            self._fed.update(keys[i] for i in taken)
            self.unknown += len(unknown)
            self.duplicates += duplicates
            recorded = self._record(decision)
            late = int(self.experiment.late.sum()) - late_before
            self._last = decision
        return {
            "model": self.config.model,
            "experiment": self.config.name,
            "received": len(items),
            "accepted": len(taken),
            "unknown": len(unknown),
            "unknown_keys": unknown[:REPORTED_KEYS],
            "duplicates": duplicates,
            "late": late,
            "status": decision.status,
            "winner": decision.winner,
            "winner_version": decision.winner_version,
            "reason": decision.reason,
            "recorded": recorded,
            "decision": decision.to_dict(),
        }

    def _check(self, outcomes: np.ndarray, taken: Sequence[int], items: list[dict[str, Any]]) -> None:
        bad = ~np.isfinite(outcomes)
        if self.config.kind == ex.BINARY:
            bad |= ~np.isin(outcomes, (0.0, 1.0))
        if bad.any():
            i = taken[int(np.flatnonzero(bad)[0])]
            want = "0 or 1 (or true/false)" if self.config.kind == ex.BINARY else "a number"
            raise RequestError(
                f"outcomes[{i}]: label {items[i]['label']!r} of key {items[i]['key']!r} cannot be judged by the "
                f"experiment's outcome {self.declared.outcome!r}: it needs {want}; nothing in this request was taken",
                422,
            )

    def _append(
        self,
        keys: list[str],
        taken: list[int],
        served: list[tuple[int, Any, str]],
        labels: list[Any],
        arms: list[str],
        outcomes: np.ndarray,
    ) -> None:
        n = len(taken)
        batch = self._batch + 1
        now = datetime.now(timezone.utc)
        table = pa.table(
            {
                "experiment": pa.array([self.config.name] * n, pa.string()),
                "started_seq": pa.array([self.declared.started_seq] * n, pa.int64()),
                "batch": pa.array([batch] * n, pa.int64()),
                "received_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
                PARTITION: pa.array([s[2] for s in served], pa.string()),
                "key": pa.array([keys[i] for i in taken], pa.string()),
                "arm": pa.array(arms, pa.string()),
                "model_version": pa.array([s[0] for s in served], pa.int64()),
                "label": pa.array([str(v) for v in labels], pa.string()),
                "prediction": pa.array([None if s[1] is None else str(s[1]) for s in served], pa.string()),
                "outcome": pa.array(outcomes, pa.float64()),
            },
            schema=OUTCOMES_SCHEMA,
        )
        dataset = outcomes_dataset(self.root, self.config.model)
        try:
            dataset.append(table)
        except Exception as exc:  # nothing taken: the client may post the same outcomes again
            log.error("model_ops serve: outcomes of %s not written: %s", self.config.name, exc)
            raise RequestError(
                f"the outcomes could not be stored ({type(exc).__name__}); nothing in this request was taken",
                503,
                hint="post them again",
            ) from exc
        self._batch = batch

    def _record(self, decision: ex.Decision) -> str | None:
        """The conclusion in the audit log (written the first time it is reached); None while running. A registry
        that cannot be written now is tried again at the next batch."""
        conclusion = decision.conclusion
        if conclusion is None or conclusion in self.recorded:
            return conclusion
        try:
            if self._reg is None:
                self._reg = self._open_registry()
            ex.record_decision(self._reg, self.experiment)
        except Exception as exc:
            log.warning(
                "model_ops serve: the conclusion %s of %s is not recorded yet: %s", conclusion, self.config.name, exc
            )
            return None
        self.recorded.add(conclusion)
        log.info("model_ops serve: %s on %s: %s", self.config.name, self.config.model, decision.reason)
        return conclusion

    # ------------------------------------------------------------------------------------------------ status

    def describe(self) -> dict[str, Any]:
        """What /status shows: the latest decision (none posted yet: the resumed state's), never waiting for a
        batch of outcomes being written."""
        d = self._last if self._last is not None else self.experiment.decision()
        return {
            "experiment": self.config.name,
            "outcome": self.declared.outcome,
            "arms": {a.name: a.version for a in self.config.arms},
            "weights": {a.name: float(w) for a, w in zip(self.config.arms, self.config.weights)},
            "status": d.status,
            "winner": d.winner,
            "counts": d.counts,
            "remembered_keys": len(self._served),
            "unknown_outcomes": self.unknown,
            "duplicate_outcomes": self.duplicates,
            "recorded": sorted(self.recorded),
            "reason": d.reason,
        }


def replay(declared: ex.Declared, root: Location) -> tuple[ex.Experiment, set[str]]:
    """The experiment as the outcomes posted to servers leave it (each batch one look, in order), and the keys
    whose outcomes it holds."""
    experiment, fed, _ = _replayed(declared, root)
    return experiment, fed


def _replayed(declared: ex.Declared, root: Location) -> tuple[ex.Experiment, set[str], int]:
    experiment = ex.Experiment(declared.config)
    table = outcomes_dataset(root, declared.config.model)
    if not table.exists():
        return experiment, set(), 0
    rows = table.read(
        columns=["received_at", "batch", "key", "arm", "outcome"],
        where=[("experiment", "=", declared.config.name), ("started_seq", "=", declared.started_seq)],
    )
    if rows.empty:
        return experiment, set(), 0
    # A batch is one commit at one time: in time order (then number), batches of one process replay in the order
    # they were looked at.
    for _, batch in rows.groupby(["received_at", "batch"], sort=True):
        experiment.observe_many(batch["arm"].to_numpy(dtype=object), batch["outcome"].to_numpy())
    return experiment, set(rows["key"].astype(str)), int(rows["batch"].max())


def _items(doc: Any) -> list[dict[str, Any]]:
    """The outcomes of a request, checked for shape: a RequestError (422) naming the first item that is wrong."""
    if not isinstance(doc, dict) or "outcomes" not in doc:
        raise RequestError('an outcomes request is a JSON object {"outcomes": [{"key": ..., "label": ...}, ...]}', 422)
    items = doc["outcomes"]
    if not isinstance(items, list) or not items:
        raise RequestError('"outcomes" must be a non-empty list of {"key": ..., "label": ...} objects', 422)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise RequestError(f"outcomes[{i}] is {type(item).__name__}, not an object with a key and a label", 422)
        missing = [f for f in ("key", "label") if item.get(f) is None]
        if missing:
            raise RequestError(f"outcomes[{i}] has no {' and no '.join(missing)}", 422)
        key, label = item["key"], item["label"]
        if isinstance(key, (bool, dict, list)) or (isinstance(key, float) and not math.isfinite(key)):
            raise RequestError(f"outcomes[{i}]: key {key!r} is not a key (a string or an integer)", 422)
        if isinstance(label, (dict, list)):
            raise RequestError(f"outcomes[{i}]: label {label!r} is not a label (a number, a boolean or a string)", 422)
    return items
