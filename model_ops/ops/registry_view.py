"""A model's registry as a reader sees it: the versions table, and the moves of stages and aliases with their reasons.

The Dagster layer shows these on the model's ``registry`` asset (``model_ops.defs.registry_view``), refreshed on
every registry change; they are read from the registry each time, never kept, so the UI cannot disagree with
``model-ops versions`` and ``model-ops audit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def key_metrics(versions: list[ModelVersion], first: str | None = None) -> list[str]:
    """The metric columns of the table: ``first`` (the metric the model is monitored on) when any version has
    it, then the other numeric metrics by name, :data:`KEY_METRICS` at most."""
    names = sorted({k for v in versions for k, x in v.metrics.items() if isinstance(x, (int, float))})
    if first in names:
        names = [first, *(n for n in names if n != first)]
    return names[:KEY_METRICS]


def version_rows(versions: list[ModelVersion], metrics: list[str]) -> list[dict[str, Any]]:
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
            value = v.metrics.get(name)
            row[name] = round(float(value), 4) if isinstance(value, (int, float)) else None
        row["created"] = ev.to_second(v.created_at)
        row["created_by"] = v.created_by
        rows.append(row)
    return rows


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

    @property
    def stages(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.versions:
            out[row["stage"]] = out.get(row["stage"], 0) + 1
        return out


def view(reg: Registry, name: str, *, after: int = 0, first_metric: str | None = None) -> View | None:
    """The model's :class:`View`, or None when it has no version yet."""
    if name not in reg.models():
        return None
    versions = reg.versions(name)
    events = reg.audit(name)
    metrics = key_metrics(versions, first_metric)
    production = next((v.version for v in versions if v.stage == reg.policy.production.stage), None)
    return View(
        name,
        version_rows(versions, metrics),
        metrics,
        moves(events, after),
        max((e.seq for e in events), default=0),
        production,
    )
