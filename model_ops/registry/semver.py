"""Semantic versions assigned automatically by comparing a new version with its parent.

MAJOR: the interface changed: input signature (feature names or dtypes) or output (task, classes); or what the
model is built on: an adapter's base model, a base model's architecture.
MINOR: same interface, different training data version, estimator or hyper-parameters.
PATCH: only code version, environment or the bytes themselves changed.
The bump is applied above the highest semver already used in the line it belongs to, so semvers never repeat even
when a version's parent is not the newest version.
"""

from __future__ import annotations

import json
from typing import Any

from model_ops.registry.refs import SEMVER_RE

FIRST = "1.0.0"


def parse(semver: str) -> tuple[int, int, int]:
    m = SEMVER_RE.fullmatch(semver)
    if not m:
        raise ValueError(f"not a semantic version: {semver!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def outputs_key(outputs: Any) -> str:
    """The output signature in canonical form, a class label compared by value: class ``1.0`` is class ``1`` (a
    label column read with missing values arrives as floats, without them as integers)."""
    if isinstance(outputs, dict) and isinstance(outputs.get("classes"), list):
        outputs = {
            **outputs,
            "classes": [int(c) if isinstance(c, float) and c.is_integer() else c for c in outputs["classes"]],
        }
    return _canon(outputs)


def _inputs(sig: dict | None) -> Any:
    if not sig:
        return None
    inputs = sig.get("inputs")
    if isinstance(inputs, list):
        return sorted((str(i.get("name")), str(i.get("dtype", i.get("type")))) for i in inputs if isinstance(i, dict))
    return inputs


def _changed_keys(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if _canon(a.get(k)) != _canon(b.get(k))]


def classify(parent: dict | None, new: dict) -> tuple[str, str]:
    """('major'|'minor'|'patch', reason) for a new version record against its parent's record."""
    if parent is None:
        return "initial", "first version of the model"
    pl, nl = parent.get("lineage") or {}, new.get("lineage") or {}
    if pl.get("application") or nl.get("application"):
        return _application(pl.get("application") or {}, nl.get("application") or {})
    if (pl.get("base_model") or nl.get("base_model")) and _base(pl) != _base(nl):
        return "major", f"base model {_base(pl)} → {_base(nl)}"
    pfp, nfp = (pl.get("architecture") or {}).get("fingerprint"), (nl.get("architecture") or {}).get("fingerprint")
    if (pfp or nfp) and pfp != nfp:
        return (
            "major",
            f"architecture changed (tensor names, dtypes or shapes; fingerprint {str(pfp)[:12]} → {str(nfp)[:12]})",
        )
    for key, what in (("written_for", "written for"), ("embedding_model", "embedding model")):
        if (pl.get(key) or nl.get(key)) and _base(pl, key) != _base(nl, key):
            return "major", f"{what} {_base(pl, key)} → {_base(nl, key)}"
    pp, np_ = pl.get("prompt") or {}, nl.get("prompt") or {}
    if (pp or np_) and pp.get("variables") != np_.get("variables"):
        return "major", f"prompt variables changed ({_added_removed(pp.get('variables'), np_.get('variables'))})"
    psig, nsig = parent.get("signature") or {}, new.get("signature") or {}
    if psig or nsig:
        if _inputs(psig) != _inputs(nsig):
            before = {n for n, _ in (_inputs(psig) or [])} if isinstance(_inputs(psig), list) else set()
            after = {n for n, _ in (_inputs(nsig) or [])} if isinstance(_inputs(nsig), list) else set()
            return "major", f"input signature changed ({_added_removed(before, after) or 'feature dtypes changed'})"
        if outputs_key(psig.get("outputs")) != outputs_key(nsig.get("outputs")):
            return "major", "output signature changed (task or classes)"
    reasons = []
    if _canon(parent.get("dataset")) != _canon(new.get("dataset")):
        reasons.append("training data version changed")
    if _canon(pl.get("estimator")) != _canon(nl.get("estimator")):
        reasons.append("estimator changed")
    if (pp or np_) and _canon(pp.get("parameters")) != _canon(np_.get("parameters")):
        keys = _changed_keys(pp.get("parameters") or {}, np_.get("parameters") or {})
        reasons.append("generation parameters changed (" + ", ".join(keys) + ")")
    pr, nr = pl.get("retrieval") or {}, nl.get("retrieval") or {}
    if (pr or nr) and _canon(pr.get("index")) != _canon(nr.get("index")):
        reasons.append(f"index table changed ({_index(pr)} → {_index(nr)})")
    if (pr or nr) and _canon(pr.get("chunking")) != _canon(nr.get("chunking")):
        reasons.append("chunking changed (the index must be rebuilt)")
    changed = _changed_keys(parent.get("params") or {}, new.get("params") or {})
    if changed:
        reasons.append("parameters changed (" + ", ".join(changed[:8]) + ("…" if len(changed) > 8 else "") + ")")
    if reasons:
        return "minor", "; ".join(reasons)
    changed_lineage = [
        k for k in ("code_version", "git_commit", "environment", "seed") if _canon(pl.get(k)) != _canon(nl.get(k))
    ]
    if changed_lineage:
        return "patch", "same interface, data and parameters; changed: " + ", ".join(changed_lineage)
    if pp or np_:
        return "patch", "same variables and parameters; the prompt's text changed"
    if pr or nr:
        changed = [k for k in ("top_k", "parameters") if _canon(pr.get(k)) != _canon(nr.get(k))]
        return "patch", "same embedding model, index and chunking; changed: " + (", ".join(changed) or "the file")
    return "patch", "same interface, data and parameters; different artifact bytes"


def _application(before: dict, after: dict) -> tuple[str, str]:
    """An application's bump: MAJOR when its parts or its base model change, MINOR when the adapter, prompt or
    retrieval configuration it uses is another version, PATCH when only how a part is referenced changed."""
    if set(after) != set(before):
        return "major", f"application parts changed ({_added_removed(before, after)})"
    if _base(before) != _base(after):
        return "major", f"base model {_base(before)} → {_base(after)}"
    vb, va = (before.get("prompt") or {}).get("variables"), (after.get("prompt") or {}).get("variables")
    if vb is not None and va is not None and set(vb) != set(va):
        return "major", f"prompt variables changed ({_added_removed(vb, va)})"
    moved = [
        f"{role.replace('_', ' ')} {_base(before, role)} → {_base(after, role)}"
        for role in after
        if role != "base_model" and _base(before, role) != _base(after, role)
    ]
    if moved:
        return "minor", "; ".join(moved)
    return "patch", "the same part versions, referenced differently (pinned or following an alias)"


def _added_removed(before: Any, after: Any) -> str:
    """``added a, b; removed c`` between two collections of names ("" when they hold the same names)."""
    was, now = set(before or ()), set(after or ())
    detail = [f"added {', '.join(sorted(now - was))}"] if now - was else []
    detail += [f"removed {', '.join(sorted(was - now))}"] if was - now else []
    return "; ".join(detail)


def _base(lineage: dict, key: str = "base_model") -> str:
    """What a version is built on (an adapter's base, the model a prompt was written for) as a reason names it
    ("llama_base 3"), or "none"."""
    base = lineage.get(key)
    if not isinstance(base, dict):
        return "none"
    return f"{base.get('name')} {base.get('version')}"


def _index(retrieval: dict) -> str:
    index = retrieval.get("index") or {}
    return f"{index.get('uri')}@{index.get('version')}" if index else "none"


class SemverIndex:
    """The highest semver used per line (overall major; minor per major; patch per major.minor), kept as versions
    register so a bump costs O(1) instead of a scan over every version of the model. A batch stacks its own index
    on the model's (``over``) without copying it."""

    __slots__ = ("top_major", "top_minor", "top_patch", "over")

    def __init__(self, over: SemverIndex | None = None) -> None:
        self.top_major: int | None = None
        self.top_minor: dict[int, int] = {}
        self.top_patch: dict[tuple[int, int], int] = {}
        self.over = over

    @classmethod
    def of(cls, semvers: list[str] | set[str]) -> SemverIndex:
        index = cls()
        for s in semvers:
            index.add(s)
        return index

    def add(self, semver: str) -> None:
        major, minor, patch = parse(semver)
        self.top_major = major if self.top_major is None else max(self.top_major, major)
        self.top_minor[major] = max(self.top_minor.get(major, minor), minor)
        self.top_patch[(major, minor)] = max(self.top_patch.get((major, minor), patch), patch)

    def _get(self, attr: str, key: object, default: int | None) -> int | None:
        mine = getattr(self, attr).get(key)
        theirs = self.over._get(attr, key, None) if self.over else None
        values = [v for v in (mine, theirs) if v is not None]
        return max(values) if values else default

    def major(self) -> int | None:
        values = [v for v in (self.top_major, self.over.major() if self.over else None) if v is not None]
        return max(values) if values else None


def bump(level: str, parent_semver: str | None, used: SemverIndex) -> str:
    top = used.major()
    if level == "initial" or parent_semver is None:
        return FIRST if top is None else f"{top + 1}.0.0"
    major, minor, _patch = parse(parent_semver)
    if level == "major":
        return f"{(top if top is not None else major) + 1}.0.0"
    if level == "minor":
        return f"{major}.{used._get('top_minor', major, minor) + 1}.0"  # type: ignore[operator]
    return f"{major}.{minor}.{used._get('top_patch', (major, minor), 0) + 1}"  # type: ignore[operator]
