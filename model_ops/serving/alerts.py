"""The declared alerts and the canary guard, judged by the live server on its own traffic every stats interval.

:class:`AlertEngine` listens to :class:`~model_ops.serving.stats.ServingStats`: at the end of each interval it adds
the interval's figures to a rolling window per (model, version, arm) and judges, for every model it serves:

* each declared alert (``alerts:`` in the model's declaration) of kind ``p99_latency_ms``, ``error_rate`` or
  ``psi``, for each arm it watches, on the version that arm serves now, over the alert's ``window_seconds``. An
  arm with fewer than ``min_requests`` requests (answered plus refused) in the window is "insufficient data": the
  alert keeps the state it had, so a quiet minute neither fires nor resolves anything. PSI compares the window's
  values of the feature with the version's training reference, the drift profile attached to the version in the
  registry (``reference_profile``, the one ``drift_report`` uses), on the reference's own decile bins (numeric) or
  categories. Every evaluation becomes a row of ``<root>/datasets/<model>/alert_evaluations``; only a change of
  state (ok → firing, firing → resolved) becomes an ``alert`` record in the registry's audit log, which the
  registry's webhooks deliver (signed, retried, at least once). The state lives in the server's memory: a
  restarted server starts with every alert ok.
* ``metric_drop`` alerts need outcomes, which the server does not see; :func:`judge_metric_drops` judges them per
  partition where the labels are joined (the ``live_performance`` asset), with the same table and records.
* the canary guard (``deployment.guard``): the canary arm alone, over the guard's window; a breach of its error
  rate or p99 limit rolls the canary back at once through :func:`model_ops.ops.deployment.apply` (``rollback``,
  what ``model-ops rollback`` does to a running canary), in a thread of its own, once per canary version: not
  again while the write is in flight, nor after it took effect. A refused write (policy, a damaged log) is logged
  and counted (:attr:`AlertEngine.guard_failures`) and tried again after :data:`GUARD_RETRY_SECONDS`; it never
  stops the server. The fleet then follows the registry, as it follows any rollback.

With several servers (or ``--workers``) each judges its own traffic; two guards rolling back the same canary are
harmless (the second finds the manifest it decided on gone and changes nothing).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from model_ops.data.delta import PARTITION, Dataset
from model_ops.errors import ModelOpsError
from model_ops.location import Location
from model_ops.ml import drift
from model_ops.ml.monitoring import PROFILE_LABEL
from model_ops.registry import Registry
from model_ops.serving.stats import Cell, Interval, append, partition_now, server_id
from model_ops.specs.schema import LOWER_IS_BETTER, Alert, AlertKind, CanaryGuard, ModelSpec
from model_ops.vocab import Arm, RecordKind

log = logging.getLogger("model_ops.serving")

EVALUATIONS_TABLE = "alert_evaluations"
GUARD = "canary_guard"  # the guard's name in the evaluations table
GUARD_RETRY_SECONDS = 30.0
# What an evaluation says: the measurement passed the threshold, did not, or could not be judged.
FIRING, OK, INSUFFICIENT, NO_REFERENCE = "firing", "ok", "insufficient_data", "no_reference"
FIRED, RESOLVED = "fired", "resolved"

EVALUATIONS_SCHEMA = pa.schema(
    [
        (PARTITION, pa.string()),
        ("evaluated_at", pa.timestamp("us", tz="UTC")),
        ("server", pa.string()),
        ("alert", pa.string()),
        ("kind", pa.string()),
        ("arm", pa.string()),
        ("model_version", pa.int64()),
        ("value", pa.float64()),
        ("threshold", pa.float64()),
        ("requests", pa.int64()),
        ("window_seconds", pa.float64()),
        ("status", pa.string()),
        ("transition", pa.string()),
        ("reason", pa.string()),
    ]
)


def evaluations_dataset(root: Location, model: str) -> Dataset:
    return Dataset(root.child("datasets", model, EVALUATIONS_TABLE), f"{model}/{EVALUATIONS_TABLE}")


def read_evaluations(root: Location, model: str) -> pd.DataFrame:
    dataset = evaluations_dataset(root, model)
    return dataset.read() if dataset.exists() else pd.DataFrame(columns=EVALUATIONS_SCHEMA.names)


# ---------------------------------------------------------------------------------------------------- wording


def percent(fraction: float) -> str:
    """``0.041`` → ``4.1 %``."""
    return f"{fraction * 100:.3g} %"


def _number(value: float) -> str:
    return f"{value:.3g}"


def describe(kind: str, value: float, threshold: float, feature: str | None = None, metric: str | None = None) -> str:
    """The measurement against its limit, as a person reads it: ``error rate 4.1 % > 1 %``."""
    above = value > threshold
    sign = ">" if above else "≤"
    if kind == AlertKind.ERROR_RATE:
        return f"error rate {percent(value)} {sign} {percent(threshold)}"
    if kind == AlertKind.P99_LATENCY_MS:
        return f"p99 latency {value:.0f} ms {sign} {threshold:g} ms"
    if kind == AlertKind.PSI:
        return f"PSI of {feature} {_number(value)} {sign} {threshold:g}"
    return f"{metric} dropped by {_number(value)} {sign} {threshold:g} against its evaluation"


# ---------------------------------------------------------------------------------------------------- windows


@dataclass
class _Entry:
    at: float  # time.time() at the interval's end
    requests: int
    errors: int
    latencies_ms: np.ndarray
    samples: dict[str, list[np.ndarray]]


@dataclass
class Measure:
    """An arm's traffic over a window: requests answered, errors, latencies and the watched features' values."""

    requests: int = 0
    errors: int = 0
    latencies_ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    samples: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @property
    def judged(self) -> int:
        return self.requests + self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.judged if self.judged else 0.0

    @property
    def p99_ms(self) -> float | None:
        return float(np.quantile(self.latencies_ms, 0.99)) if len(self.latencies_ms) else None


class Windows:
    """Rolling windows of interval figures per (model, version, arm), kept for the longest window asked for."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int, str], deque[_Entry]] = {}

    def add(self, model: str, interval: Interval, at: float, keep_seconds: float) -> None:
        for (version, arm), cell in interval.by_arm(model).items():
            if version is None or arm is None:
                continue
            samples = interval.samples.get((model, version, arm), {})
            self._add((model, version, arm), _entry(at, cell, samples))
        for key, entries in list(self._entries.items()):
            if key[0] != model:
                continue
            while entries and entries[0].at < at - keep_seconds:
                entries.popleft()
            if not entries:
                del self._entries[key]

    def _add(self, key: tuple[str, int, str], entry: _Entry) -> None:
        self._entries.setdefault(key, deque()).append(entry)

    def measure(self, model: str, version: int, arm: str, seconds: float, now: float) -> Measure:
        entries = [e for e in self._entries.get((model, version, arm), ()) if e.at > now - seconds - 1e-6]
        samples: dict[str, list[np.ndarray]] = {}
        for e in entries:
            for feature, parts in e.samples.items():
                samples.setdefault(feature, []).extend(parts)
        latencies = np.concatenate([e.latencies_ms for e in entries]) if entries else np.empty(0)
        return Measure(sum(e.requests for e in entries), sum(e.errors for e in entries), latencies, samples)


def _entry(at: float, cell: Cell, samples: dict[str, list[np.ndarray]]) -> _Entry:
    return _Entry(at, cell.requests, cell.errors, np.asarray(cell.latencies_ms, dtype=np.float64), samples)


# ---------------------------------------------------------------------------------------------------- PSI


def psi_against(reference: drift.Profile, feature: str, values: np.ndarray) -> float | None:
    """PSI of ``values`` against the reference's profile of ``feature``: on its decile bins for a numeric
    feature, on its categories (and any new one) for a categorical one. None when the reference lacks it."""
    ref = reference.columns.get(feature)
    if ref is None or not len(values):
        return None
    if isinstance(ref, drift.NumericProfile):
        current = ref.empty_like()
        current.add(pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64))
        report = drift.compare(
            drift.Profile(reference.rows, {feature: ref}), drift.Profile(current.n, {feature: current}), min_rows=1
        )
        return report.features[0].psi
    counts = pd.Series(values).dropna().astype(str).value_counts()
    categories = sorted(set(ref.counts) | set(counts.index))
    rc = np.array([ref.counts.get(k, 0) for k in categories], dtype=np.float64)
    cc = np.array([int(counts.get(k, 0)) for k in categories], dtype=np.float64)
    return drift.psi(rc, cc)


# ---------------------------------------------------------------------------------------------------- the engine


@dataclass
class Evaluation:
    """One judgement of one alert (or of the guard) on one arm's version."""

    alert: str
    kind: str
    arm: str
    version: int | None
    value: float | None
    threshold: float
    requests: int
    window_seconds: float | None
    status: str
    transition: str
    reason: str

    def row(self, partition: str, at: datetime, server: str) -> dict[str, Any]:
        return {
            PARTITION: partition,
            "evaluated_at": at,
            "server": server,
            "alert": self.alert,
            "kind": self.kind,
            "arm": self.arm,
            "model_version": self.version,
            "value": self.value,
            "threshold": self.threshold,
            "requests": self.requests,
            "window_seconds": self.window_seconds,
            "status": self.status,
            "transition": self.transition,
            "reason": self.reason,
        }


def _scope(arm: str, version: int, window: float | None) -> str:
    return f"{arm} v{version}" + (f", last {window:g} s" if window is not None else "")


class AlertEngine:
    """A :class:`ServingStats` listener judging every served model's alerts and canary guard (see the module).

    ``fleet``: the server's :class:`~model_ops.serving.fleet.Fleet` (which versions serve which arm now);
    ``open_registry``: opens a registry handle of this engine's own (records, profiles, the guard's rollback)."""

    def __init__(
        self,
        root: Location,
        fleet: Any,
        open_registry: Callable[[], Registry],
        *,
        server: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.fleet = fleet
        self._open = open_registry
        self.server = server or server_id()
        self.clock = clock
        self.windows = Windows()
        self.firing: dict[tuple[str, str, str, int], bool] = {}  # (model, alert, arm, version) -> firing?
        self._profiles: dict[tuple[str, int], drift.Profile | None] = {}
        self._reg: Registry | None = None
        self._guarded: dict[tuple[str, int], float | None] = {}  # canary -> None in flight or done, else retry-at
        self._guard_threads: list[threading.Thread] = []
        self.evaluations = 0
        self.records = 0
        self.record_failures = 0
        self.guard_rollbacks = 0
        self.guard_failures = 0
        self.write_errors = 0

    def describe(self) -> dict[str, Any]:
        return {
            "alerts_firing": sorted(f"{m}/{a} ({arm} v{v})" for (m, a, arm, v), on in list(self.firing.items()) if on),
            "alert_evaluations": self.evaluations,
            "alert_records": self.records,
            "alert_record_failures": self.record_failures,
            "guard_rollbacks": self.guard_rollbacks,
            "guard_failures": self.guard_failures,
        }

    def registry(self) -> Registry:
        if self._reg is None:
            self._reg = self._open()
        return self._reg

    # ------------------------------------------------------------------------------------------------ per interval

    def __call__(self, interval: Interval) -> None:
        now = self.clock()
        at = interval.end
        for model, slot in sorted(self.fleet.slots.items()):
            spec: ModelSpec = slot.spec
            guard = spec.deployment.guard
            served = [a for a in spec.alerts if a.kind is not AlertKind.METRIC_DROP]
            if not served and guard is None:
                continue
            keep = max([a.window for a in served] + ([guard.window_seconds] if guard else []))
            self.windows.add(model, interval, now, keep)
            arms = {Arm.PRODUCTION.value: slot.manifest.production, Arm.CANARY.value: slot.manifest.canary}
            results: list[Evaluation] = []
            for alert in served:
                for arm in alert.arms:
                    version = arms.get(arm)
                    if version is not None:
                        results.append(self._judge(model, alert, arm, version, now))
                results.extend(self._gone(model, alert, arms))
            if guard is not None:
                self._forget_finished(model, slot.manifest.canary)
                if slot.manifest.canary is not None:
                    results.extend(self._guard(model, slot, guard, now))
            if results:
                self._publish(model, spec, results, at)

    def _judge(self, model: str, alert: Alert, arm: str, version: int, now: float) -> Evaluation:
        m = self.windows.measure(model, version, arm, alert.window, now)
        scope = _scope(arm, version, alert.window)
        key = (model, alert.name, arm, version)
        was = self.firing.get(key, False)
        value: float | None
        if m.judged < alert.min_requests:
            status = INSUFFICIENT
            value = None
            reason = f"{m.judged} requests < min_requests {alert.min_requests} ({scope}): not judged"
        else:
            if alert.kind is AlertKind.ERROR_RATE:
                value = m.error_rate
            elif alert.kind is AlertKind.P99_LATENCY_MS:
                value = m.p99_ms
            else:
                value = self._psi(model, version, alert.feature or "", m)
            if value is None:
                sampled = alert.kind is AlertKind.PSI and bool(m.samples.get(alert.feature or ""))
                status = NO_REFERENCE if sampled else INSUFFICIENT
                reason = (
                    f"PSI of {alert.feature} cannot be judged: v{version} has no drift reference profile of it"
                    if sampled
                    else f"no answered request with {alert.feature} to measure ({scope})"
                    if alert.kind is AlertKind.PSI
                    else f"no answered request to measure ({scope})"
                )
            else:
                status = FIRING if value > alert.threshold else OK
                text = describe(alert.kind, value, alert.threshold, alert.feature)
                reason = f"{text} over {m.judged} requests ({scope})"
        transition = ""
        if status in (FIRING, OK):
            now_firing = status == FIRING
            if now_firing != was:
                transition = FIRED if now_firing else RESOLVED
                self.firing[key] = now_firing
        return Evaluation(
            alert.name,
            str(alert.kind),
            arm,
            version,
            value,
            alert.threshold,
            m.judged,
            alert.window,
            status,
            transition,
            reason,
        )

    def _gone(self, model: str, alert: Alert, arms: dict[str, int | None]) -> list[Evaluation]:
        """A firing alert of a version no longer serving that arm resolves: nothing it measured serves there now."""
        out = []
        for key, firing in list(self.firing.items()):
            m, name, arm, version = key
            if m != model or name != alert.name or not firing or arms.get(arm) == version:
                continue
            del self.firing[key]
            out.append(
                Evaluation(
                    name,
                    str(alert.kind),
                    arm,
                    version,
                    None,
                    alert.threshold,
                    0,
                    alert.window,
                    OK,
                    RESOLVED,
                    f"v{version} no longer serves as {arm}",
                )
            )
        return out

    def _psi(self, model: str, version: int, feature: str, m: Measure) -> float | None:
        parts = m.samples.get(feature)
        if not parts:
            return None
        profile = self._profile(model, version)
        if profile is None:
            return None
        return psi_against(profile, feature, np.concatenate(parts))

    def _profile(self, model: str, version: int) -> drift.Profile | None:
        key = (model, version)
        if key not in self._profiles:
            try:
                raw = self.registry().attachment(model, version, PROFILE_LABEL)
                self._profiles[key] = None if raw is None else drift.Profile.from_json(raw.decode())
            except (ModelOpsError, ValueError) as exc:
                log.warning("model_ops serve: no drift reference of %s v%d for PSI alerts: %s", model, version, exc)
                self._profiles[key] = None
        return self._profiles[key]

    # ------------------------------------------------------------------------------------------------ the guard

    def _forget_finished(self, model: str, canary: int | None) -> None:
        """A guarded canary that no longer serves may come back one day (deployed again): guard it afresh."""
        for key, retry_at in list(self._guarded.items()):
            if key[0] == model and key[1] != canary and retry_at is None:
                del self._guarded[key]

    def _guard(self, model: str, slot: Any, guard: CanaryGuard, now: float) -> list[Evaluation]:
        canary = int(slot.manifest.canary)
        m = self.windows.measure(model, canary, Arm.CANARY.value, guard.window_seconds, now)
        scope = _scope(Arm.CANARY.value, canary, guard.window_seconds)
        if m.judged < guard.min_requests:
            reason = f"{m.judged} requests < min_requests {guard.min_requests} ({scope}): not judged"
            return [self._guard_eval(canary, None, guard.max_error_rate, m, guard, INSUFFICIENT, "", reason)]
        breaches = []
        out = []
        if guard.max_error_rate is not None:
            rate = m.error_rate
            text = f"{describe(AlertKind.ERROR_RATE, rate, guard.max_error_rate)} over {m.judged} requests"
            if rate > guard.max_error_rate:
                breaches.append(text)
            out.append((AlertKind.ERROR_RATE, rate, guard.max_error_rate, text))
        p99 = m.p99_ms
        if guard.max_p99_ms is not None and p99 is not None:
            text = f"{describe(AlertKind.P99_LATENCY_MS, p99, guard.max_p99_ms)} over {m.judged} requests"
            if p99 > guard.max_p99_ms:
                breaches.append(text)
            out.append((AlertKind.P99_LATENCY_MS, p99, guard.max_p99_ms, text))
        evaluations = []
        acting = bool(breaches) and self._may_act(model, canary, now)
        for kind, value, limit, text in out:
            breached = value > limit
            status = FIRING if breached else OK
            transition = FIRED if breached and acting else ""
            why = f"{text} ({scope})" + ("; rolling the canary back" if breached and acting else "")
            evaluations.append(self._guard_eval(canary, value, limit, m, guard, status, transition, why, kind))
        if acting:
            reason = f"canary guard: {'; '.join(breaches)} in the last {guard.window_seconds:g} s"
            self._start_rollback(model, slot.spec, slot.manifest.serving, canary, reason)
        return evaluations

    def _guard_eval(
        self,
        canary: int,
        value: float | None,
        limit: float | None,
        m: Measure,
        guard: CanaryGuard,
        status: str,
        transition: str,
        reason: str,
        kind: str = "guard",
    ) -> Evaluation:
        threshold = float(limit if limit is not None else (guard.max_p99_ms or 0.0))
        return Evaluation(
            GUARD,
            str(kind),
            Arm.CANARY.value,
            canary,
            value,
            threshold,
            m.judged,
            guard.window_seconds,
            status,
            transition,
            reason,
        )

    def _may_act(self, model: str, canary: int, now: float) -> bool:
        key = (model, canary)
        if key not in self._guarded:
            return True
        retry_at = self._guarded[key]
        return retry_at is not None and now >= retry_at

    def _start_rollback(self, model: str, spec: ModelSpec, serving: str, canary: int, reason: str) -> None:
        self._guarded[(model, canary)] = None
        thread = threading.Thread(
            target=self._rollback,
            args=(model, spec, serving, canary, reason),
            name=f"model-ops-serve-guard-{model}",
            daemon=True,
        )
        self._guard_threads = [t for t in self._guard_threads if t.is_alive()] + [thread]
        thread.start()

    def _rollback(self, model: str, spec: ModelSpec, serving: str, canary: int, reason: str) -> None:
        from model_ops.ops import deployment as dep

        try:
            change = dep.apply(self._open(), spec, "rollback", reason=reason, expect=serving)
        except Exception as exc:  # refused (policy, a damaged log) or broken: counted, retried later, never fatal
            self.guard_failures += 1
            self._guarded[(model, canary)] = self.clock() + GUARD_RETRY_SECONDS
            why = exc.message if isinstance(exc, ModelOpsError) else f"{type(exc).__name__}: {exc}"
            log.error(
                "model_ops serve: the canary guard could not roll back %s canary v%d (%s); it tries again in %.0f s",
                model,
                canary,
                why,
                GUARD_RETRY_SECONDS,
            )
            return
        if change.changed:
            self.guard_rollbacks += 1
            log.warning("model_ops serve: %s: %s (%s)", model, change.message, reason)
        else:  # what serves moved meanwhile (the manifest decided on is gone): judged again on the next breach
            self._guarded[(model, canary)] = self.clock()
            log.info("model_ops serve: %s: the canary guard changed nothing: %s", model, change.message)

    def join(self, timeout: float = 30.0) -> None:
        """Wait for rollbacks in flight (the server's shutdown)."""
        deadline = time.monotonic() + timeout
        for thread in self._guard_threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------------------------------------ output

    def _publish(self, model: str, spec: ModelSpec, results: list[Evaluation], at: datetime) -> None:
        partition = partition_now(spec, at)
        table = pa.Table.from_pylist([r.row(partition, at, self.server) for r in results], schema=EVALUATIONS_SCHEMA)
        try:
            append(evaluations_dataset(self.root, model), table)
            self.evaluations += len(results)
        except Exception as exc:
            self.write_errors += 1
            log.error("model_ops serve: %d alert evaluation(s) of %s not written: %s", len(results), model, exc)
        for r in results:
            if r.transition and r.alert != GUARD:
                self._record(model, r)

    def _record(self, model: str, r: Evaluation) -> None:
        try:
            self.registry().record(
                model,
                RecordKind.ALERT,
                version=r.version,
                reason=f"alert {r.alert} {r.transition}: {r.reason}",
                details=alert_details(r, self.server),
            )
            self.records += 1
        except Exception as exc:  # a denied or failed record is the operator's to see, never the server's end
            self.record_failures += 1
            why = exc.message if isinstance(exc, ModelOpsError) else f"{type(exc).__name__}: {exc}"
            log.error("model_ops serve: alert %s of %s could not be recorded: %s", r.alert, model, why)


def alert_details(r: Evaluation, server: str) -> dict[str, Any]:
    return {
        "alert": r.alert,
        "kind": r.kind,
        "state": FIRING if r.transition == FIRED else RESOLVED,
        "arm": r.arm,
        "value": r.value,
        "threshold": r.threshold,
        "requests": r.requests,
        "window_seconds": r.window_seconds,
        "server": server,
    }


# ---------------------------------------------------------------------------------------------------- metric drop


def judge_metric_drops(
    reg: Registry, root: Location, spec: ModelSpec, partition: str, arms: Iterable[Any], *, run_id: str | None = None
) -> list[Evaluation]:
    """The ``metric_drop`` alerts of one partition, where the outcomes are joined (the ``live_performance``
    asset): each watched arm's live metric against its version's evaluation metric (the metrics it was registered
    with). ``arms``: the partition's :class:`~model_ops.ml.monitoring.ArmPerformance`. Fewer labelled predictions
    than ``min_requests``, or no recorded evaluation metric, is not judged. The state before is the newest evaluation
    of the same alert, arm and version of an earlier partition in ``alert_evaluations``; a change is an ``alert``
    record (once: a re-run of a partition judged the same records nothing)."""
    alerts = [a for a in spec.alerts if a.kind is AlertKind.METRIC_DROP]
    if not alerts:
        return []
    history = read_evaluations(root, spec.name)
    history = history[history["kind"] == str(AlertKind.METRIC_DROP)] if not history.empty else history
    by_arm = {str(a.arm): a for a in arms}
    results: list[Evaluation] = []
    for alert in alerts:
        metric = alert.metric or ""
        for arm_name in alert.arms:
            perf = by_arm.get(arm_name)
            if perf is None:
                continue
            version = int(perf.model_version)
            scope = f"{arm_name} v{version}, partition {partition}"
            baseline = reg.get(spec.name, version).metrics.get(metric)
            live = perf.metrics.get(metric)
            value: float | None = None
            if perf.labelled < alert.min_requests:
                status = INSUFFICIENT
                reason = f"{perf.labelled} labelled predictions < min_requests {alert.min_requests} ({scope})"
            elif baseline is None or live is None:
                status = NO_REFERENCE
                reason = f"{metric} of {scope} cannot be judged: " + (
                    f"v{version} recorded no evaluation {metric}" if baseline is None else "no live value"
                )
            else:
                drop = float(live) - float(baseline) if metric in LOWER_IS_BETTER else float(baseline) - float(live)
                value = drop
                status = FIRING if drop > alert.threshold else OK
                reason = (
                    f"{describe(AlertKind.METRIC_DROP, drop, alert.threshold, metric=metric)} "
                    f"({metric} {float(live):.4g} live vs {float(baseline):.4g} evaluated) over {perf.labelled} "
                    f"labelled predictions ({scope})"
                )
            transition = ""
            if status in (FIRING, OK):
                before = (
                    history[
                        (history["alert"] == alert.name)
                        & (history["arm"] == arm_name)
                        & (history["model_version"] == version)
                        & history["status"].isin([FIRING, OK])
                    ]
                    if not history.empty
                    else history
                )
                # The state before is the newest judgement of an earlier partition, so a backfill of an older
                # partition or a re-run of this one cannot flip it; a re-run judged the same changes nothing.
                here = before[before[PARTITION] == partition] if not before.empty else before
                earlier = before[before[PARTITION] < partition] if not before.empty else before
                rerun_same = not here.empty and here.sort_values("evaluated_at")["status"].iloc[-1] == status
                was = (
                    not earlier.empty and earlier.sort_values([PARTITION, "evaluated_at"])["status"].iloc[-1] == FIRING
                )
                if not rerun_same and (status == FIRING) != was:
                    transition = FIRED if status == FIRING else RESOLVED
            results.append(
                Evaluation(
                    alert.name,
                    str(alert.kind),
                    arm_name,
                    version,
                    value,
                    alert.threshold,
                    int(perf.labelled),
                    None,
                    status,
                    transition,
                    reason,
                )
            )
    if results:
        at = datetime.now(timezone.utc)
        server = "live_performance" + (f" run {run_id}" if run_id else "")
        append(
            evaluations_dataset(root, spec.name),
            pa.Table.from_pylist([r.row(partition, at, server) for r in results], schema=EVALUATIONS_SCHEMA),
        )
        for r in results:
            if r.transition:
                reg.record(
                    spec.name,
                    RecordKind.ALERT,
                    version=r.version,
                    run_id=run_id,
                    reason=f"alert {r.alert} {r.transition}: {r.reason}",
                    details=alert_details(r, server),
                )
    return results
