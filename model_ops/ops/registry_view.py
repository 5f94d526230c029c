"""A model's registry as a reader sees it: the versions table, and the moves of stages and aliases with their reasons.

The Dagster layer shows these on the model's ``registry`` asset (``model_ops.defs.registry_view``), refreshed on
every registry change; they are read from the registry each time, never kept, so the UI cannot disagree with
``model-ops versions`` and ``model-ops audit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model_ops.jsonable import numbers, readable
from model_ops.ops.automation import evaluated_metrics
from model_ops.registry import Registry
from model_ops.registry import events as ev
from model_ops.registry.registry import ModelVersion
from model_ops.vocab import RecordKind

KEY_METRICS = 4  # metric columns in the versions table: the model's monitored metric first, then by name
# The events a reader of the registry page follows: what a version became, and why.
MOVES = (ev.REGISTERED, ev.STAGE_CHANGED, ev.ALIAS_SET, ev.ALIAS_REMOVED, ev.APPROVED, ev.ROLLBACK)


@dataclass(frozen=True)
class Move:
    """One change of what a version is (registered, a stage, an alias, an approval, a rollback, a deployment)."""

    seq: int
    time: str
    version: int | None
    event: str
    change: str
    reason: str
    actor: str

    def describe(self) -> str:
        who = f"v{self.version} " if self.version is not None else ""
        return f"{who}{self.event} {self.change}".rstrip() + (f": {self.reason}" if self.reason else "")


def metrics_of(versions: list[ModelVersion], events: list[ev.Event]) -> dict[int, dict[str, float]]:
    """Each version's numeric metrics: those it was registered with, overlaid by its evaluation records' (the
    holdout's ROC-AUC, log loss, latency, ...), so a version is judged by what its gates saw."""
    evaluated = evaluated_metrics(events)
    return {v.version: {**numbers(v.metrics), **evaluated.get(v.version, {})} for v in versions}


def key_metrics(metrics: dict[int, dict[str, float]], preferred: list[str] | None = None) -> list[str]:
    """The metric columns of the table, :data:`KEY_METRICS` at most: the ``preferred`` ones any version has (the
    metric the model is monitored on, then its gates' metrics), then the others by name."""
    names = sorted({k for m in metrics.values() for k in m})
    first = [n for n in dict.fromkeys(preferred or []) if n in names]
    return [*first, *(n for n in names if n not in first)][:KEY_METRICS]


def version_rows(
    versions: list[ModelVersion], metrics: list[str], values: dict[int, dict[str, float]]
) -> list[dict[str, Any]]:
    """One row per version, newest first: version, semver, stage, aliases, digest, the key metrics, created, by."""
    rows = []
    for v in reversed(versions):
        row: dict[str, Any] = {
            "version": v.version,
            "semver": v.semver,
            "stage": v.stage,
            "aliases": ", ".join(v.aliases),
            "digest": v.digest[:12],
        }
        for name in metrics:
            value = values[v.version].get(name)
            row[name] = readable(value) if value is not None else None
        row["created"] = ev.to_second(v.created_at)
        row["created_by"] = v.created_by
        rows.append(row)
    return rows


def version_facts(v: ModelVersion, metrics: dict[str, float]) -> dict[str, Any]:
    """What one version is, for its own partition of the ``versions`` asset: semver, stage, aliases and every
    numeric metric (four significant digits, so the UI shows 0.6953, not sixteen)."""
    facts: dict[str, Any] = {
        "semver": v.semver,
        "stage": v.stage,
        "aliases": ", ".join(v.aliases) or "-",
        "created": ev.to_second(v.created_at),
        "created_by": v.created_by,
    }
    # a metric that shares a fact's name (a model may log "stage") is shown as metric_<name>
    return {**facts, **{(f"metric_{k}" if k in facts else k): readable(x) for k, x in sorted(metrics.items())}}


def partition_key(version: int) -> str:
    """A version's partition of the ``versions`` asset: ``v3``."""
    return f"v{version}"


def moves(events: list[ev.Event], after: int = 0) -> list[Move]:
    """The moves among ``events`` numbered after ``after``, oldest first."""
    out = []
    for e in events:
        if e.seq <= after or (e.kind not in MOVES and e.kind != RecordKind.DEPLOYMENT):
            continue
        if e.kind == RecordKind.DEPLOYMENT:
            change = f"{e.data.get('action', '')}: {e.data.get('message', '')}"
        elif e.kind in (ev.ALIAS_SET, ev.ALIAS_REMOVED):
            change = f"@{e.key}: {_v(e.from_value)} -> {_v(e.to_value)}"
        elif e.kind == ev.REGISTERED:
            change = f"as {e.to_value}"
        elif e.kind == ev.APPROVED:
            change = f"for {e.key or e.to_value}"
        else:
            change = f"{e.from_value or '-'} -> {e.to_value or '-'}"
        out.append(
            Move(
                e.seq,
                ev.to_second(e.ts),
                e.version,
                e.kind,
                change,
                e.reason or "",
                e.shown_actor,
            )
        )
    return out


def _v(value: str | None) -> str:
    return f"v{value}" if value else "-"


@dataclass(frozen=True)
class View:
    """What the registry holds for one model now, and what moved since a given event."""

    model: str
    versions: list[dict[str, Any]]
    metrics: list[str]
    moved: list[Move]
    last_seq: int
    production: int | None
    facts: dict[int, dict[str, Any]]  # version -> :func:`version_facts`, oldest first
    named: list[tuple[int, frozenset[int]]]  # (seq, the versions it changes) of each event after ``after``

    def changed(self, upto: int) -> list[int]:
        """The versions whose facts an event after ``after`` and up to ``upto`` may have changed (a move, an
        evaluation, a tag; an alias move changes the version it left too), oldest first."""
        return sorted({v for seq, vs in self.named if seq <= upto for v in vs if v in self.facts})

    @property
    def stages(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.versions:
            out[row["stage"]] = out.get(row["stage"], 0) + 1
        return out


def view(reg: Registry, name: str, *, after: int = 0, preferred: list[str] | None = None) -> View | None:
    """The model's :class:`View`, or None when it has no version yet. ``preferred``: the metrics the table
    shows first (see :func:`key_metrics`)."""
    if name not in reg.models():
        return None
    versions = reg.versions(name)
    events = reg.audit(name)
    values = metrics_of(versions, events)
    metrics = key_metrics(values, preferred)
    production = next((v.version for v in versions if v.stage == reg.policy.production.stage), None)
    return View(
        name,
        version_rows(versions, metrics, values),
        metrics,
        moves(events, after),
        max((e.seq for e in events), default=0),
        production,
        {v.version: version_facts(v, values[v.version]) for v in versions},
        [(e.seq, _versions_named(e)) for e in events if e.seq > after],
    )


def _versions_named(e: ev.Event) -> frozenset[int]:
    named = {e.version} if e.version is not None else set()
    if e.kind in (ev.ALIAS_SET, ev.ALIAS_REMOVED):
        named |= {int(x) for x in (e.from_value, e.to_value) if x and x.isdigit()}
    return frozenset(named)
