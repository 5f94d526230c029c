"""Reproducing a version byte for byte, its lineage as one tree, and what differs between two versions.

``reproduce`` retrains from what the version recorded (the training snapshot at its Delta version, the spec and
seed kept in its lineage, the permutation seed if its labels were permuted) with today's code and packages, and
compares the rebuilt artifact's digest (every flavor) with the registered one. When they differ it says which of data, code version,
package versions and parameters differ, each checked on its own: the snapshot's rows against the fingerprint written
with them, the recipe's code version, the recorded environment, the fitted parameters.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from model_ops.data.delta import Dataset, frame_fingerprint
from model_ops.errors import ModelOpsError
from model_ops.location import resolve_root
from model_ops.ml import candidates, flavors
from model_ops.registry import Registry
from model_ops.registry import events as ev
from model_ops.registry.environment import environment
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import RecordKind


@dataclass
class Reproduction:
    ref: str
    identical: bool
    registered_sha256: str | None
    rebuilt_sha256: str | None
    differences: list[dict[str, Any]] = field(default_factory=list)
    checked: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _package_differences(recorded: dict[str, Any]) -> list[dict[str, Any]]:
    now = environment()
    out = []
    if recorded.get("python") and recorded["python"] != now["python"]:
        out.append({"kind": "packages", "what": "python", "recorded": recorded["python"], "now": now["python"]})
    before, after = recorded.get("packages") or {}, now["packages"]
    for name in sorted(set(before) | set(after)):
        if before.get(name) != after.get(name):
            out.append({"kind": "packages", "what": name, "recorded": before.get(name), "now": after.get(name)})
    return out


def reproduce(reg: Registry, ref: str) -> Reproduction:
    """Rebuild ``ref`` from its recorded lineage and compare digests (see the module docstring)."""
    mv = reg.resolve(ref)
    lineage, dataset = mv.lineage, mv.dataset or {}
    out = Reproduction(mv.ref, False, mv.digest, None)
    if "spec" not in lineage or "uri" not in dataset or "version" not in dataset:
        out.differences.append(
            {
                "kind": "lineage",
                "what": "recipe",
                "recorded": None,
                "now": None,
                "message": f"{mv.ref} records no training recipe (spec and snapshot): it was "
                "registered outside the candidate_model pipeline, so it cannot be rebuilt",
            }
        )
        return out
    try:
        spec = ModelSpec.model_validate(lineage["spec"])
    except ValueError as exc:
        out.differences.append(
            {
                "kind": "code",
                "what": "declaration",
                "recorded": None,
                "now": None,
                "message": "the recorded model declaration is not valid under today's schema "
                f"(written by an earlier model_ops): {str(exc).splitlines()[0]}",
            }
        )
        return out
    snap = Dataset(resolve_root(dataset["uri"]), f"{mv.name}/training_set")
    version = int(dataset["version"])
    out.checked = {
        "dataset": f"{dataset['uri']}@{version}",
        "code_version": candidates.code_version(spec),
        "seed": spec.seed,
    }
    try:
        rows = snap.read_arrow(version=version)
    except Exception as exc:  # expired or deleted versions surface as several delta-rs error types
        out.differences.append(
            {
                "kind": "data",
                "what": "snapshot",
                "recorded": f"{dataset['uri']}@{version}",
                "now": None,
                "message": f"the training snapshot at Delta version {version} cannot "
                f"be read any more ({exc.__class__.__name__}: {exc})",
            }
        )
        return out
    recorded_fp = lineage.get("snapshot_fingerprint") or snap.commit_metadata(version).get("model_ops.fingerprint")
    now_fp = frame_fingerprint(rows)
    del rows
    if recorded_fp and recorded_fp != now_fp:
        out.differences.append(
            {
                "kind": "data",
                "what": "snapshot rows",
                "recorded": recorded_fp,
                "now": now_fp,
                "message": f"the rows of {dataset['uri']}@{version} no longer match the fingerprint "
                "written with them: the table's files were changed outside model_ops",
            }
        )
    schema = snap.schema_hash(version)
    if dataset.get("schema_hash") and dataset["schema_hash"] != schema:
        out.differences.append(
            {
                "kind": "data",
                "what": "schema hash",
                "recorded": dataset["schema_hash"],
                "now": schema,
                "message": "the snapshot's schema differs from the recorded one",
            }
        )
    try:
        trained = candidates.fit_snapshot(snap, version, spec, lineage.get(candidates.LABEL_PERMUTATION)).trained
    except ModelOpsError as exc:
        out.differences.append({"kind": "data", "what": "fit", "recorded": None, "now": None, "message": exc.message})
        return out
    out.rebuilt_sha256 = flavors.expected_digest(trained.model)
    out.identical = out.rebuilt_sha256 == out.registered_sha256
    if out.identical:
        if out.differences:  # the bytes decide; a metadata mismatch that changed nothing is kept as a note
            out.checked["notes"] = [d["message"] for d in out.differences]
            out.differences = []
        return out
    if trained.rows != lineage.get("rows"):
        out.differences.append(
            {
                "kind": "data",
                "what": "training rows",
                "recorded": lineage.get("rows"),
                "now": trained.rows,
                "message": "a different number of labelled rows was fitted",
            }
        )
    recorded_code = lineage.get("code_version")
    if recorded_code != out.checked["code_version"]:
        out.differences.append(
            {
                "kind": "code",
                "what": "code_version",
                "recorded": recorded_code,
                "now": out.checked["code_version"],
                "message": "the training recipe or the spec sections it depends on changed",
            }
        )
    recorded_trainer, now_trainer = lineage.get("trainer") or {}, trained.trainer or {}
    if recorded_trainer.get("source_sha256") != now_trainer.get("source_sha256"):
        out.differences.append(
            {
                "kind": "code",
                "what": f"trainer {recorded_trainer.get('name') or now_trainer.get('name')}",
                "recorded": recorded_trainer.get("source_sha256"),
                "now": now_trainer.get("source_sha256"),
                "message": "the training function's source changed since the version was fitted",
            }
        )
    for key in sorted(set(mv.params) | set(trained.params)):
        if mv.params.get(key) != trained.params.get(key):
            out.differences.append(
                {
                    "kind": "parameters",
                    "what": key,
                    "recorded": mv.params.get(key),
                    "now": trained.params.get(key),
                    "message": "the registered model was fitted with other parameters than its recorded spec gives",
                }
            )
    out.differences.extend(_package_differences(lineage.get("environment") or {}))
    if not out.differences:
        out.differences.append(
            {
                "kind": "unknown",
                "what": "artifact",
                "recorded": out.registered_sha256,
                "now": out.rebuilt_sha256,
                "message": "data, code version, packages and parameters all match, yet the bytes differ",
            }
        )
    return out


# ------------------------------------------------------------------------------------------------------ lineage


def lineage(
    reg: Registry,
    ref: str,
    *,
    at: datetime | None = None,
    business: Callable[[str, str], datetime | None] | None = None,
) -> dict[str, Any]:
    """Dataset → run → version → evaluations and gates → stage and alias changes → deployments.

    With ``at``, as it stood then: the reference resolved against the registry of that moment (``@champion`` in
    July 2013 is the version that was champion then), its stage and aliases then, and only the events in effect
    by then, on the wall clock or, with ``business`` (see ``Registry.as_of``), in the world they describe."""
    mv = reg.resolve(ref) if at is None else reg.resolve_as_of(ref, at, business=business)
    log = reg.audit(mv.name)
    if at is not None:  # only what had happened by then: the order of the whole log decides in business time
        kept = set(ev.in_effect(log, at, business)) if business is not None else None
        log = [e for e in log if (e.seq in kept if kept is not None else e.ts <= ev.utc(at))]
    events = [e for e in log if e.version == mv.version]
    ds, lin = mv.dataset or {}, mv.lineage
    return {
        "ref": mv.ref,
        "as_of": None if at is None else {"time": at.isoformat(), "clock": "wall" if business is None else "business"},
        "semver": mv.semver,
        "digest": mv.digest,
        "stage": mv.stage,
        "aliases": list(mv.aliases),
        "dataset": {
            "uri": ds.get("uri"),
            "delta_version": ds.get("version"),
            "rows": ds.get("rows"),
            "schema_hash": ds.get("schema_hash"),
            "source": lin.get("source"),
            "window": lin.get("window"),
            "holdout": lin.get("holdout"),
        },
        "run": {
            "dagster_run_id": lin.get("dagster_run_id") or mv.run_id,
            "created_at": mv.created_at.isoformat(),
            "created_by": mv.created_by,
            "code_version": lin.get("code_version"),
            "git_commit": lin.get("git_commit"),
            "seed": lin.get("seed"),
            "parent": mv.parent,
            "bump": mv.bump,
        },
        "evaluations": [
            {
                "ts": e.ts.isoformat(),
                "window": e.business_window,
                "reason": e.reason,
                "holdout": e.data.get("holdout"),
                "champion": e.data.get("champion"),
                "gates": e.data.get("gates"),
                "metrics": {k: v for k, v in (e.data.get("metrics") or {}).items() if not k.startswith("latency_")},
            }
            for e in events
            if e.kind == RecordKind.EVALUATION
        ],
        "changes": [
            {
                "ts": e.ts.isoformat(),
                "window": e.business_window,
                "kind": e.kind,
                "from": e.from_value,
                "to": e.to_value,
                "key": e.key,
                "actor": e.actor,
                "reason": e.reason,
                "run_id": e.run_id,
            }
            for e in events
            if e.kind in (ev.STAGE_CHANGED, ev.ALIAS_SET, ev.ALIAS_REMOVED, ev.APPROVED, ev.ROLLBACK)
        ],
        "deployments": [
            {
                "ts": e.ts.isoformat(),
                "window": e.business_window,
                "action": e.data.get("action"),
                "message": e.data.get("message"),
                "reason": e.reason,
                "actor": e.actor,
                "run_id": e.run_id,
            }
            for e in events
            if e.kind == RecordKind.DEPLOYMENT
        ],
        "monitoring": [
            {"ts": e.ts.isoformat(), "window": e.business_window, "kind": e.kind, "reason": e.reason}
            for e in events
            if e.kind in (RecordKind.CANARY_ANALYSIS, RecordKind.RETRAIN, RecordKind.ALERT)
        ],
        "built_on": built_on(reg, mv),
    }


_BUILT_ON = (
    ("written_for", "written for"),
    ("base_model", "adapter of base"),
    ("embedding_model", "retrieves with embedding model"),
)


def built_on(reg: Registry, mv: Any) -> list[dict[str, Any]]:
    """What ``mv`` is built on, link by link, depth first: the parts of an application, the model a prompt was
    written for, the base an adapter was trained on, and so on down to versions built on nothing. Each link names
    the exact version recorded at registration, how deep it sits, and whether that version still holds the digest
    recorded then."""
    chain: list[dict[str, Any]] = []
    seen = {(mv.name, mv.version)}

    def links(current: Any) -> list[tuple[str, dict[str, Any]]]:
        parts = current.lineage.get("application")
        if isinstance(parts, dict):
            from model_ops.llm.application import ROLES

            return [(f"uses {r.replace('_', ' ')}", parts[r]) for r in ROLES if isinstance(parts.get(r), dict)]
        return [(rel, current.lineage[key]) for key, rel in _BUILT_ON if isinstance(current.lineage.get(key), dict)][:1]

    def walk(current: Any, depth: int) -> None:
        for relation, link in links(current):
            target = reg.get(link["name"], link["version"])
            chain.append(
                {
                    "relation": relation,
                    "ref": target.ref,
                    "semver": target.semver,
                    "flavor": target.flavor,
                    "stage": target.stage,
                    "depth": depth,
                    "follows": link.get("follows"),
                    "digest_as_recorded": target.digest == link.get("digest"),
                }
            )
            if (target.name, target.version) not in seen:
                seen.add((target.name, target.version))
                walk(target, depth + 1)

    walk(mv, 0)
    return chain


def _links(lineage: dict[str, Any]) -> dict[str, Any]:
    """The exact versions a version is built on, by role, as ``diff`` compares them."""
    parts = lineage.get("application")
    if isinstance(parts, dict):
        return {role: {k: link.get(k) for k in ("name", "version", "digest")} for role, link in parts.items()}
    return {k: lineage.get(k) for k, _ in _BUILT_ON}


def _for(item: dict[str, Any]) -> str:
    """``[for 2013-08-01] `` before an event written for a window (its business time), else nothing."""
    return f"[for {item['window']}] " if item.get("window") else ""


def render_lineage(tree: dict[str, Any]) -> str:
    d, r = tree["dataset"], tree["run"]
    when = tree.get("as_of")
    heading = []
    if when:  # the command line says how it was asked (a window); else the moment and its clock
        clock = "wall clock" if when["clock"] == "wall" else "business time"
        heading = [f"as of {when.get('label') or when['time'] + f' ({clock})'}"]
    built = [
        f"{'built on' if i == 0 else '':<8} {'   ' * b.get('depth', i)}{b['relation']} {b['ref']} ({b['flavor']}, "
        f"{b['semver']}, now {b['stage']})"
        + (f" following {b['follows']}" if b.get("follows") else "")
        + ("" if b["digest_as_recorded"] else "  DIGEST DIFFERS FROM THE ONE RECORDED")
        for i, b in enumerate(tree.get("built_on") or [])
    ]
    lines = [
        *heading,
        *built,
        f"dataset  {d['uri']} @ Delta version {d['delta_version']}  ({d['rows']} rows, schema {d['schema_hash']})"
        if d["uri"]
        else "dataset  - (none recorded)",
        f"         from {d['source'] or '-'}; window {', '.join(d['window'] or []) or '-'}; "
        f"holdout {d['holdout'] or '-'}",
        f"└─ run   {r['dagster_run_id'] or '-'}  by {r['created_by']} at {r['created_at']}",
        f"         code {r['code_version'] or '-'}, git {r['git_commit'] or '-'}, seed {r['seed']}",
        f"   └─ version {tree['ref']} ({tree['semver']}) sha256:{tree['digest'][:12]}  "
        f"{'then' if when else 'now'} {tree['stage']}"
        + (f" [{', '.join(tree['aliases'])}]" if tree["aliases"] else ""),
        f"         parent {('v' + str(r['parent'])) if r['parent'] else '-'}; "
        f"{r['bump'].get('level')}: {r['bump'].get('reason')}",
    ]
    for e in tree["evaluations"]:
        lines.append(f"      ├─ evaluated {e['ts'][:19]} on {e['holdout']}: {e['reason']}")
        for g in e.get("gates") or []:
            lines.append(f"      │    {'PASS' if g['passed'] else 'FAIL'} {g['name']}: {g['message']}")
    later = [
        (
            c["ts"],
            _for(c) + f"{c['kind']} {(c['key'] + ' ') if c['key'] else ''}{c['from'] or '-'} -> {c['to'] or '-'} "
            f"by {c['actor']}: {c['reason'] or '-'}",
        )
        for c in tree["changes"]
    ]
    later += [(m["ts"], _for(m) + f"{m['kind']}: {m['reason'] or '-'}") for m in tree["monitoring"]]
    later += [(d["ts"], _for(d) + f"deployment {d['action']}: {d['message']}") for d in tree["deployments"]]
    later.sort()
    for i, (ts, text) in enumerate(later):
        lines.append(f"      {'└─' if i == len(later) - 1 else '├─'} {ts[:19]} {text}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------- diff


def diff(reg: Registry, ref_a: str, ref_b: str) -> dict[str, Any]:
    """Parameters, metrics, signature, data versions, code and packages of two versions, and B's bump reason."""
    a, b = reg.resolve(ref_a), reg.resolve(ref_b)

    def changed(x: dict[str, Any], y: dict[str, Any]) -> dict[str, list[Any]]:
        return {k: [x.get(k), y.get(k)] for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)}

    la, lb = a.lineage, b.lineage
    pa_, pb = (la.get("environment") or {}).get("packages") or {}, (lb.get("environment") or {}).get("packages") or {}
    return {
        "a": {"ref": a.ref, "semver": a.semver, "digest": a.digest, "stage": a.stage},
        "b": {"ref": b.ref, "semver": b.semver, "digest": b.digest, "stage": b.stage},
        "same_artifact": a.digest == b.digest,
        "params": changed(a.params, b.params),
        "metrics": changed(a.metrics, b.metrics),
        "signature_changed": a.signature != b.signature,
        "data": changed(
            {**(a.dataset or {}), "window": la.get("window"), "holdout": la.get("holdout")},
            {**(b.dataset or {}), "window": lb.get("window"), "holdout": lb.get("holdout")},
        ),
        "code": changed(
            {k: la.get(k) for k in ("code_version", "git_commit", "seed", "estimator")},
            {k: lb.get(k) for k in ("code_version", "git_commit", "seed", "estimator")},
        ),
        "packages": changed(pa_, pb),
        "built_on": changed(_links(la), _links(lb)),
        "files": file_changes(reg, a.digest, b.digest),
        "text": text_diff(reg, a, b),
        "bump": {
            "level": b.bump.get("level"),
            "reason": b.bump.get("reason"),
            "from": b.bump.get("from"),
            "parent": b.parent,
        },
    }


def file_changes(reg: Registry, digest_a: str, digest_b: str) -> dict[str, dict[str, Any]]:
    """Per file of either artifact: added, removed or changed, with sizes; for a file stored as chunks in both,
    how many of B's chunks A did not have and their bytes (what storing B cost)."""
    if digest_a == digest_b:
        return {}
    fa = {f.path: f for f in reg.artifacts.manifest(digest_a).files}
    fb = {f.path: f for f in reg.artifacts.manifest(digest_b).files}
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(set(fa) | set(fb)):
        x, y = fa.get(path), fb.get(path)
        if x is not None and y is not None and x.sha256 == y.sha256:
            continue
        change = "added" if x is None else "removed" if y is None else "changed"
        entry: dict[str, Any] = {"change": change, "bytes": [x.size if x else None, y.size if y else None]}
        if x is not None and y is not None and x.chunks and y.chunks:
            had = {c.sha256 for c in x.chunks}
            new = [c for c in y.chunks if c.sha256 not in had]
            entry["chunks"] = {"new": len(new), "of": len(y.chunks), "new_bytes": sum(c.size for c in new)}
        out[path] = entry
    return out


def text_diff(reg: Registry, a: Any, b: Any) -> list[str] | None:
    """A unified diff of two prompts', retrieval configurations' or applications' files (their text is their behaviour); None
    otherwise."""
    from model_ops.llm.layout import APPLICATION, PROMPT, RETRIEVAL

    if a.flavor != b.flavor or a.flavor not in (PROMPT, RETRIEVAL, APPLICATION) or a.digest == b.digest:
        return None
    old, new = (reg.artifacts.read_file(mv.digest).decode("utf-8", "replace") for mv in (a, b))
    return list(difflib.unified_diff(old.splitlines(), new.splitlines(), fromfile=a.ref, tofile=b.ref, lineterm=""))


def render_diff(d: dict[str, Any]) -> str:
    a, b = d["a"], d["b"]
    lines = [
        f"{a['ref']} ({a['semver']}, {a['stage']})  ->  {b['ref']} ({b['semver']}, {b['stage']})",
        f"artifact   {'identical' if d['same_artifact'] else 'differs'}",
        f"semver     {b['semver']}: {d['bump']['level']} bump from {d['bump']['from'] or '-'} "
        f"(parent v{d['bump']['parent']}): {d['bump']['reason']}",
        f"signature  {'changed' if d['signature_changed'] else 'same'}",
    ]
    for section in ("data", "params", "metrics", "code", "packages", "built_on"):
        items = d[section]
        if not items:
            lines.append(f"{section:<10} same")
            continue
        lines.append(f"{section:<10} " + "; ".join(f"{k}: {_short(x)} -> {_short(y)}" for k, (x, y) in items.items()))
    for path, f in (d.get("files") or {}).items():
        sizes = " -> ".join("-" if n is None else f"{n:,} B" for n in f["bytes"])
        chunks = f.get("chunks")
        extra = f"; {chunks['new']} of {chunks['of']} chunks new ({chunks['new_bytes']:,} B)" if chunks else ""
        lines.append(f"file       {path}: {f['change']} ({sizes}{extra})")
    if d.get("text"):
        lines += ["text", *("  " + line for line in d["text"])]
    return "\n".join(lines)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
