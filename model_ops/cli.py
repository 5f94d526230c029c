"""``model-ops``: the registry and artifact store from the command line.

Exit codes: 0 ok; 1 not found, or a check found problems (fsck, integrity); 2 usage, bad input or a refused request.
Every command takes ``--json`` and then prints exactly one JSON document on stdout. Errors go to stderr as one line
saying what is wrong and one saying what to do.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_ops import __version__
from model_ops.errors import ModelOpsError, UsageError
from model_ops.vocab import DeployAction, DriftStatus

if TYPE_CHECKING:  # the registry (Delta, boto3) is imported when a command needs it: `drift` does not
    from model_ops.registry import Registry
    from model_ops.registry.events import Event
    from model_ops.registry.version import VersionReader


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"error: {message}\n  hint: run `{self.prog} --help` for the full usage", file=sys.stderr)
        raise SystemExit(2)


def _json_arg(text: str | None, what: str) -> Any:
    """A JSON value given inline or as @FILE."""
    if text is None:
        return None
    source = "inline"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except OSError as e:
            raise UsageError(f"cannot read {what} from {path}: {e.strerror}") from None
        source = str(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(
            f"{what} is not valid JSON ({source}): {e.msg} at line {e.lineno} column {e.colno}",
            hint="quote it for the shell, e.g. --params '{\"C\": 1.0}', or pass @file.json",
        ) from None


PLACEHOLDER = "-"  # what an empty cell shows, in every table and tree the command line prints
NARROWEST = 8  # a column wrapped to fit the terminal keeps at least this many characters
WRAPPED_FIRST = 24


def _width(args: argparse.Namespace) -> int | None:
    """How wide the human output may be: the terminal's width when writing to one (or when ``COLUMNS`` says),
    else unlimited (piped output keeps one line per row), and unlimited with ``--wide``."""
    if getattr(args, "wide", False):
        return None
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def _table(
    rows: list[dict[str, Any]], columns: list[str], *, width: int | None = None, wrap: tuple[str, ...] = ()
) -> str:
    """Rows as aligned columns. With a ``width``, the ``wrap`` columns (free text: reasons, changes) share what
    the other columns leave and their cells continue on the next lines, so a row fits without losing a word."""
    if not rows:
        return "(none)"
    cells = [[(PLACEHOLDER if r.get(c) in (None, "") else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if width is not None:
        widths = _fit(widths, [i for i, c in enumerate(columns) if c in wrap], width)
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for row in cells:
        pieces = [
            textwrap.wrap(v, w, break_on_hyphens=False) or [""] if len(v) > w else [v] for v, w in zip(row, widths)
        ]
        for k in range(max(len(p) for p in pieces)):
            lines.append("  ".join((p[k] if k < len(p) else "").ljust(w) for p, w in zip(pieces, widths)).rstrip())
    return "\n".join(lines)


def _fit(widths: list[int], wrapped: list[int], limit: int) -> list[int]:
    """Widths for the ``wrapped`` columns so the table is ``limit`` wide. The first of them (the longest text, a
    reason) wraps first: the others keep their width while it keeps at least ``WRAPPED_FIRST`` characters;
    otherwise what is left is shared out, the narrower columns first getting all they need."""
    widths = list(widths)
    left = limit - sum(w for i, w in enumerate(widths) if i not in wrapped) - 2 * (len(widths) - 1)
    if sum(widths[i] for i in wrapped) <= left:
        return widths
    first, rest = wrapped[0], wrapped[1:]
    if left - sum(widths[i] for i in rest) >= min(WRAPPED_FIRST, widths[first]):
        widths[first] = left - sum(widths[i] for i in rest)
        return widths
    todo = sorted(wrapped, key=lambda i: widths[i])
    for n, i in enumerate(todo):
        share = max(left // (len(todo) - n), NARROWEST)
        widths[i] = min(widths[i], share)
        left -= widths[i]
    return widths


def _wrap(text: str, width: int | None) -> str:
    """Lines of a tree (``lineage``) longer than ``width`` continued on the next lines, under their own text, the
    tree's branches carried down."""
    if width is None:
        return text
    out = []
    for line in text.splitlines():
        if len(line) <= width:
            out.append(line)
            continue
        lead = len(line) - len(line.lstrip(" │├└─"))
        carried = line[:lead].replace("├─", "│ ").replace("└─", "  ").replace("─", " ")
        out += textwrap.wrap(
            line[lead:],
            width=max(width, lead + 20),
            initial_indent=line[:lead],
            subsequent_indent=carried + "   ",
            break_on_hyphens=False,
            break_long_words=True,
        )
    return "\n".join(out)


def _emit(args: argparse.Namespace, doc: Any, human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(human)


def _version_row(v: Any) -> dict[str, Any]:
    s = v.summary()
    s["aliases"] = ",".join(s["aliases"])
    s["digest"] = s["digest"][:12]
    s["created_at"] = s["created_at"][:19].replace("T", " ")
    return s


def _event_row(e: Event) -> dict[str, Any]:
    from model_ops.registry import events as ev

    if e.kind in (ev.ALIAS_SET, ev.ALIAS_REMOVED):
        change = f"{e.key}: {e.from_value or '-'} -> {e.to_value or '-'}"
    elif e.kind in (ev.TAG_SET, ev.TAG_REMOVED):
        change = f"{e.key}={e.to_value if e.to_value is not None else '(removed)'}"
    elif e.kind == ev.REGISTERED:
        change = f"semver {e.to_value}"
    elif e.kind == ev.DENIED:
        change = e.key or ""
    else:
        change = f"{e.from_value or '-'} -> {e.to_value or '-'}" if (e.from_value or e.to_value) else ""
    return {
        "seq": e.seq,
        "time": ev.to_second(e.ts),  # to the second: the sequence number orders events
        "window": e.business_window,
        "model": e.model,
        "version": e.version,
        "event": e.kind,
        "change": change,
        "actor": e.shown_actor,
        "reason": e.reason or "",
        "run": (e.run_id or "")[:8],
    }


# ---------------------------------------------------------------------------- commands


def cmd_register(reg: Registry, args: argparse.Namespace) -> int:
    mv = reg.register(
        args.name,
        args.path,
        params=_json_arg(args.params, "--params"),
        metrics=_json_arg(args.metrics, "--metrics"),
        dataset=args.dataset,
        signature=_json_arg(args.signature, "--signature"),
        tags=_json_arg(args.tags, "--tags"),
        description=args.description,
        run_id=args.run_id,
        base=args.base,
    )
    _emit(
        args,
        mv.to_dict(),
        f"{mv.ref}  semver {mv.semver}  stage {mv.stage}  digest {mv.digest}\n"
        f"  {mv.bump.get('level')}: {mv.bump.get('reason')}",
    )
    return 0


def cmd_versions(reg: VersionReader, args: argparse.Namespace) -> int:
    versions = reg.versions(args.name)
    _emit(
        args,
        [v.summary() for v in versions],
        _table(
            [_version_row(v) for v in versions],
            ["version", "semver", "stage", "aliases", "digest", "created_at", "created_by"],
            width=_width(args),
            wrap=("aliases", "created_by"),
        ),
    )
    return 0


def cmd_search(reg: VersionReader, args: argparse.Namespace) -> int:
    page = reg.search(args.query, order_by=args.order_by, limit=args.limit, cursor=args.cursor)
    rows = [{**_version_row(v), "ref": v.ref} for v in page.versions]
    human = _table(
        rows,
        ["name", "version", "semver", "stage", "aliases", "created_at", "created_by"],
        width=_width(args),
        wrap=("aliases", "created_by"),
    )
    if not rows:
        human = "no version matches"
    if page.cursor:
        human += f"\nmore: add --cursor {page.cursor} (same query and order) for the next {args.limit}"
    _emit(args, page.to_dict(), human)
    return 0


def cmd_models(reg: VersionReader, args: argparse.Namespace) -> int:
    rows = reg.model_summaries()
    _emit(args, rows, _table(rows, ["name", "versions", "latest", "production"]))
    return 0


def cmd_show(reg: VersionReader, args: argparse.Namespace) -> int:
    mv = reg.resolve(args.ref)
    doc = mv.to_dict()
    lines = [
        f"{mv.ref}  ({mv.name} {mv.semver})",
        f"  stage       {mv.stage}",
        f"  aliases     {', '.join(mv.aliases) or '-'}",
        f"  digest      {mv.digest}",
        f"  created     {mv.created_at.isoformat()} by {mv.created_by}" + (f" in run {mv.run_id}" if mv.run_id else ""),
        f"  parent      {('v' + str(mv.parent)) if mv.parent else '-'}   bump: {mv.bump.get('level')} ({mv.bump.get('reason')})",
        f"  artifact    {mv.flavor}, {mv.record.get('files')} file(s), {mv.record.get('size')} bytes"
        + ("  signed" if mv.record.get("signing") else ""),
    ]
    for label, value in (
        ("params", mv.params),
        ("metrics", mv.metrics),
        ("dataset", mv.dataset),
        ("signature", mv.signature),
        ("tags", dict(mv.tags)),
    ):
        if value:
            lines.append(f"  {label:<11} {json.dumps(value, sort_keys=True)}")
    lineage = mv.lineage
    env = lineage.get("environment") or {}
    lines.append(
        f"  lineage     code {lineage.get('code_version') or '-'}, git {lineage.get('git_commit') or '-'}, "
        f"seed {lineage.get('seed') if lineage.get('seed') is not None else '-'}"
    )
    if env:
        pkgs = ", ".join(f"{k} {v}" for k, v in sorted((env.get("packages") or {}).items()))
        lines.append(f"  environment Python {env.get('python')} on {env.get('platform')}; {pkgs}")
    if mv.record.get("description"):
        lines.append(f"  description {mv.record['description']}")
    _emit(args, doc, "\n".join(lines))
    return 0


def cmd_card(reg: Registry, args: argparse.Namespace) -> int:
    from model_ops.ml.model_card import latest

    mv, card = latest(reg, args.ref)
    _emit(args, {"ref": mv.ref, "semver": mv.semver, "model_card": card}, card.rstrip("\n"))
    return 0


def cmd_drift(reg: Registry | None, args: argparse.Namespace) -> int:
    from model_ops.data.tables import open_arrow
    from model_ops.ml import drift

    reference, current = open_arrow(args.reference), open_arrow(args.current)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    if columns is None:
        columns = [n for n in reference.schema.names if n in current.schema.names]
        if not columns:
            raise UsageError(
                "the reference and the current data share no column",
                hint="check the paths, or name the columns with --columns",
            )
    try:
        ref_profile = drift.profile(reference, columns=columns)
        report = drift.compare(
            ref_profile, drift.profile_like(ref_profile, current), min_rows=args.min_rows, threshold=args.threshold
        )
    except ValueError as exc:
        raise UsageError(str(exc), hint="name columns present in both with --columns") from exc
    rows = [
        {
            **{k: v for k, v in vars(f).items()},
            "drift": "DRIFT"
            if f.drift
            else ("insufficient data" if f.status == DriftStatus.INSUFFICIENT_DATA else "-"),
        }
        for f in report.features
    ]
    summary = (
        f"insufficient data: the current window has fewer than {report.min_rows} rows"
        if report.status == DriftStatus.INSUFFICIENT_DATA
        else f"{sum(f.drift for f in report.features)} of {len(report.features)} features drift "
        f"(share {report.drift_share:.2f}); dataset drift: {'YES' if report.dataset_drift else 'no'}"
    )
    _emit(
        args,
        report.to_dict(),
        _table(
            rows, ["feature", "kind", "method", "statistic", "threshold", "psi", "drift", "n_reference", "n_current"]
        )
        + "\n"
        + summary,
    )
    return 1 if report.dataset_drift else 0


def cmd_demo(reg: Registry | None, args: argparse.Namespace) -> int:
    from model_ops.defs.replay import main_json, run_demo, story_problems

    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else None
    result = run_demo(
        root=args.root,
        dagster_home=args.dagster_home,
        until=args.until,
        faulty=not args.no_faulty,
        progress=progress,
        model=args.model,
    )
    if args.json:
        main_json(result)
    summary = result["summary"]
    problems = story_problems(summary, faulty=not args.no_faulty, full_year=summary["complete"])
    for p in problems:
        print(f"demo: {p}", file=sys.stderr)
    return 1 if problems else 0


def cmd_reproduce(reg: Registry, args: argparse.Namespace) -> int:
    from model_ops.ops.provenance import reproduce

    result = reproduce(reg, args.ref)
    if result.identical:
        human = (
            f"{result.ref}: rebuilt byte for byte from {result.checked.get('dataset')} (sha256 {result.rebuilt_sha256})"
        )
    else:
        human = f"{result.ref}: NOT reproduced\n" + "\n".join(
            f"  {d['kind']:<10} {d['what']}: {d.get('message') or ''}"
            + (
                f" (recorded {d['recorded']!r}, now {d['now']!r})"
                if d.get("recorded") is not None or d.get("now") is not None
                else ""
            )
            for d in result.differences
        )
    _emit(args, result.to_dict(), human)
    return 0 if result.identical else 1


def cmd_lineage(reg: Registry, args: argparse.Namespace) -> int:
    from model_ops.ops.provenance import lineage, render_lineage

    if args.as_of is None and args.window is None:
        if args.business:
            raise UsageError(
                "--business reads --as-of TIMESTAMP as business time: give one",
                hint="model-ops lineage REF --as-of 2013-07-15 --business",
            )
        tree = lineage(reg, args.ref)
    else:
        from model_ops.ops import business_time
        from model_ops.registry.inputs import parse_timestamp

        when, clock, label = _moment(args, args.as_of, "lineage REF")
        effective = business_time.effective(_specs_by_name()) if clock == "business" else None
        tree = lineage(reg, args.ref, at=parse_timestamp(when), business=effective)
        tree["as_of"]["label"] = label
    _emit(args, tree, _wrap(render_lineage(tree), _width(args)))
    return 0


def cmd_diff(reg: Registry, args: argparse.Namespace) -> int:
    from model_ops.ops.provenance import diff, render_diff

    d = diff(reg, args.ref_a, args.ref_b)
    _emit(args, d, render_diff(d))
    return 0


def cmd_resolve(reg: VersionReader, args: argparse.Namespace) -> int:
    mv = reg.resolve(args.ref)
    _emit(args, mv.summary(), str(mv.version))
    return 0


def cmd_transition(reg: Registry, args: argparse.Namespace) -> int:
    mv = reg.transition(args.ref, args.stage, reason=args.reason, run_id=args.run_id, breaking=args.breaking)
    _emit(args, mv.summary(), f"{mv.ref} is now in {mv.stage}" + (f" ({', '.join(mv.aliases)})" if mv.aliases else ""))
    return 0


def cmd_approve(reg: Registry, args: argparse.Namespace) -> int:
    mv = reg.approve(args.ref, args.stage, reason=args.reason, run_id=args.run_id)
    _emit(args, mv.summary(), f"{reg.actor} approved {mv.ref} for {args.stage}")
    return 0


def cmd_alias(reg: Registry, args: argparse.Namespace) -> int:
    if args.alias_cmd == "set":
        mv = reg.set_alias(args.name, args.alias, args.version, reason=args.reason, run_id=args.run_id)
        _emit(args, mv.summary(), f"{args.name}@{args.alias} -> v{mv.version}")
    else:
        reg.remove_alias(args.name, args.alias, reason=args.reason, run_id=args.run_id)
        _emit(args, {"name": args.name, "alias": args.alias, "removed": True}, f"removed {args.name}@{args.alias}")
    return 0


def cmd_tag(reg: Registry, args: argparse.Namespace) -> int:
    if args.remove:
        mv = reg.remove_tag(args.ref, args.key, run_id=args.run_id)
    else:
        if args.value is None:
            raise UsageError("tag needs a VALUE (or --remove)")
        mv = reg.set_tag(args.ref, args.key, args.value, run_id=args.run_id)
    _emit(args, mv.to_dict(), f"{mv.ref} tags: {json.dumps(dict(mv.tags), sort_keys=True)}")
    return 0


def cmd_rollback(reg: Registry, args: argparse.Namespace) -> int:
    before = [v.version for v in reg.versions(args.name) if v.stage == reg.policy.production.stage]
    mv = reg.rollback(args.name, to=args.to, reason=args.reason, run_id=args.run_id)
    _emit(
        args,
        {**mv.summary(), "rolled_back_from": before[0] if before else None},
        f"{args.name}: production rolled back from v{before[0] if before else '?'} to v{mv.version} ({mv.semver})",
    )
    return 0


def cmd_deploy(reg: Registry, args: argparse.Namespace) -> int:
    """A deployment action on a model declared nowhere (an LLM application): the same actions, records and rules
    as the deployment asset applies to declared models, with the shipped canary steps."""
    from model_ops.llm.layout import APPLICATION
    from model_ops.ops import deployment as dep

    newest = reg.versions(args.name)[-1]
    if newest.flavor != APPLICATION:
        raise UsageError(
            f"{args.name} is a {newest.flavor!r} model; `model-ops deploy` deploys LLM applications",
            hint="a declared model is deployed by materializing its deployment asset, so its history is the asset's",
        )
    change = dep.apply(
        reg, dep.Target(args.name), args.action, version=args.version, reason=args.reason, run_id=args.run_id
    )
    _emit(
        args,
        {
            "action": change.action,
            "changed": change.changed,
            "message": change.message,
            "before": change.before.to_dict(),
            "after": change.after.to_dict(),
        },
        f"{args.name}: {change.message}\n  now: {change.after.describe()}",
    )
    return 0


def cmd_audit(reg: Registry, args: argparse.Namespace) -> int:
    events = reg.audit(args.name)
    _emit(
        args,
        [e.to_dict() for e in events],
        _table(
            [_event_row(e) for e in events],
            # one model's log needs no model column; the reason wraps first, then the change, then the actor
            ["seq", "time", "window", *([] if args.name else ["model"]), "version", "event", "change", "actor"]
            + ["reason", "run"],
            width=_width(args),
            wrap=("reason", "change", "actor"),
        ),
    )
    return 0


def _moment(args: argparse.Namespace, when: str | None, command: str) -> tuple[Any, str, str]:
    """The moment ``as-of`` and ``lineage --as-of`` read at: ``when`` (wall clock, or business time with
    ``--business``) or the start of ``--window KEY`` (business time). Returns it, its clock and how to say it."""
    from model_ops.ops import business_time

    if args.window is not None:
        if args.business:
            raise UsageError(
                "--window is business time already: drop --business", hint=f"model-ops {command} --window 2013-07"
            )
        if when is not None:
            raise UsageError(
                f"{command}: give a TIMESTAMP or --window, not both", hint=f"model-ops {command} --window 2013-07"
            )
        start = business_time.window_start(args.window)
        return (
            start,
            "business",
            f"window {args.window} (business time: what was in force from {start.date().isoformat()})",
        )
    if when is None:
        raise UsageError(
            f"{command} needs a TIMESTAMP (or --window KEY)", hint=f"model-ops {command} 2026-12-01T14:00Z"
        )
    return (
        when,
        "business" if args.business else "wall",
        f"{when} ({'business time' if args.business else 'wall clock'})",
    )


def cmd_as_of(reg: Registry, args: argparse.Namespace) -> int:
    from model_ops.ops import business_time

    given = list(args.when)
    if args.window is not None:
        when, clock, label = _moment(args, None, "as-of")
        if len(given) > 1:
            raise UsageError("as-of --window takes at most a model name", hint="model-ops as-of --window 2013-07 NAME")
        name = (given or [None])[0]
    else:
        if len(given) > 2:
            raise UsageError(
                "as-of takes a TIMESTAMP and a model name at most", hint="model-ops as-of 2026-12-01T14:00Z NAME"
            )
        when, clock, label = _moment(args, (given or [None])[0], "as-of")
        name = (given[1:] or [None])[0]
    effective = business_time.effective(_specs_by_name()) if clock == "business" else None
    state = reg.as_of(when, name, business=effective)
    rows = [
        {
            "model": model,
            "version": v["version"],
            "semver": v["semver"],
            "stage": v["stage"],
            "aliases": ",".join(v["aliases"]),
        }
        for model, m in state.items()
        for v in m["versions"]
    ]
    _emit(
        args,
        {"as_of": when if isinstance(when, str) else when.isoformat(), "clock": clock, "models": state},
        f"as of {label}:\n"
        + _table(rows, ["model", "version", "semver", "stage", "aliases"], width=_width(args), wrap=("aliases",)),
    )
    return 0


def _specs_by_name() -> dict[str, Any]:
    """The declared models (their partitioning says when a window ends); none when they cannot be loaded."""
    from model_ops.specs import load_specs

    try:
        return {s.name: s for s in load_specs()}
    except ModelOpsError:
        return {}


def cmd_fetch(reg: Registry, args: argparse.Namespace) -> int:
    mv = reg.resolve(args.ref)
    dest = reg.fetch(mv.ref, args.dest)
    _emit(args, {**mv.summary(), "path": str(dest)}, f"{mv.ref} -> {dest} (verified {mv.digest[:12]})")
    return 0


_MARKS = {True: "ok  ", False: "FAIL", None: "--  "}


def _verifier(args: argparse.Namespace) -> Any:
    from model_ops.artifacts import signing

    return signing.verifier_from_env(args.public_key)


def cmd_verify(reg: Registry, args: argparse.Namespace) -> int:
    """Every signature of a version, checked with a public key only (no write access to the root needed)."""
    from model_ops.artifacts import signing
    from model_ops.registry import attest

    verifier = _verifier(args)
    if verifier is None:
        raise UsageError(
            "no public key to verify with",
            hint="pass --public-key PEM (your own copy of the registry's public key, or the CA certificate of its "
            f"signing certificate) or set {signing.PUBLIC_KEY_ENV}",
        )
    report = attest.verify_report(reg, args.ref, verifier)
    lines = [f"{report['ref']}  ({report['semver']}, {report['stage']})  sha256:{report['digest'][:12]}"]
    if report["key_id"]:
        lines.append(f"  signed with {report['alg']} key {report['key_id'][:16]}; trusted: {report['trusted']}")
    lines += [f"  {_MARKS[c['ok']]} {c['check']:<28} {c['detail']}" for c in report["checks"]]
    lines.append("verified" if report["verified"] else "NOT verified")
    _emit(args, report, "\n".join(lines))
    return 0 if report["verified"] else 1


def _dependency_line(dep: dict[str, Any]) -> str:
    digest = ", ".join(f"{k}:{str(v)[:16]}" for k, v in (dep.get("digest") or {}).items())
    notes = dep.get("annotations") or {}
    if dep.get("name") == "environment":
        pkgs = ", ".join(f"{k} {v}" for k, v in sorted((notes.get("packages") or {}).items()))
        notes = {"python": notes.get("python"), "packages": pkgs}
    text = "  ".join(str(x) for x in (dep.get("uri"), digest) if x)
    extra = ", ".join(f"{k} {v}" for k, v in notes.items() if v not in (None, ""))
    return f"  {str(dep.get('name')):<12} {text}" + (f"  ({extra})" if extra else "")


def cmd_provenance(reg: Registry, args: argparse.Namespace) -> int:
    """A version's in-toto provenance statement, its signature and subject checked; exit 1 unless verified."""
    from model_ops.registry import attest

    report = attest.provenance_report(reg, args.ref, _verifier(args))
    statement = report.get("statement") or {}
    predicate = statement.get("predicate") or {}
    build, run = predicate.get("buildDefinition") or {}, predicate.get("runDetails") or {}
    state = "verified" if report["verified"] else "NOT verified" + ("" if report["signed"] else " (unsigned)")
    lines = [f"{report['ref']}  sha256:{report['digest'][:12]}  provenance {state}"]
    subjects = statement.get("subject") or []
    if subjects:
        first = subjects[0]
        lines.append(f"  {'subject':<12} {first.get('name')} sha256:{first.get('digest', {}).get('sha256', '')[:12]}")
        lines.append(f"  {'files':<12} " + ", ".join(str(s.get("name")) for s in subjects[1:]))
    if build:
        lines.append(f"  {'type':<12} {statement.get('predicateType')} ({build.get('buildType')})")
        builder = run.get("builder") or {}
        invocation = (run.get("metadata") or {}).get("invocationId")
        job = (build.get("internalParameters") or {}).get("dagster_job")
        lines.append(
            f"  {'builder':<12} {builder.get('id')}"
            + (f", run {invocation}" if invocation else "")
            + (f", job {job}" if job else "")
        )
        lines.append(f"  {'parameters':<12} {json.dumps(build.get('externalParameters') or {}, sort_keys=True)}")
        lines += [_dependency_line(d) for d in build.get("resolvedDependencies") or []]
    lines += [f"  problem: {p}" for p in report.get("problems") or []]
    _emit(args, report, "\n".join(lines))
    return 0 if report["verified"] else 1


def cmd_keygen(_: Registry | None, args: argparse.Namespace) -> int:
    """A new P-256 signing key (PEM, readable by its owner only) and its public key, neither overwritten."""
    from model_ops.artifacts import signing

    private = Path(args.private_key)
    public = Path(args.public_key_out) if args.public_key_out else private.with_name(private.stem + ".pub.pem")
    for path in (private, public):
        if path.exists():
            raise UsageError(f"{path} already exists", hint="keys are never overwritten; choose another path")
    key, pub, kid = signing.generate_key()
    try:
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise UsageError(f"cannot create {private}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    public.write_bytes(pub)
    doc = {"private_key": str(private), "public_key": str(public), "key_id": kid}
    human = (
        f"private key {private} (keep it secret), public key {public}, key id {kid[:16]}\n"
        f"sign with:   export {signing.KEY_ENV}={private.resolve()}\n"
        f"verify with: export {signing.PUBLIC_KEY_ENV}={public.resolve()}   (or --public-key)"
    )
    _emit(args, doc, human)
    return 0


def cmd_fsck(reg: Registry, args: argparse.Namespace) -> int:
    if args.repair:
        return _repair(reg, args)
    problems = reg.fsck()
    _emit(
        args,
        {"consistent": not problems, "problems": problems},
        "registry and artifacts are consistent"
        if not problems
        else f"{len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems),
    )
    return 1 if problems else 0


def _repair(reg: Registry, args: argparse.Namespace) -> int:
    report = reg.repair(apply=True)
    doc = {k: v for k, v in report.items()}
    if not report["needed"]:
        human = "the event log is intact; nothing to repair"
    else:
        lines = [
            f"rebuilt the event log: {report['kept']} event(s) kept"
            + (f", {len(report['from_receipts_only'])} restored from receipts" if report["from_receipts_only"] else ""),
            *(f"  found: {p}" for p in report["log_problems"]),
        ]
        if report["lost"]:
            lines.append(f"  could not restore acknowledged event(s) {report['lost']}: an event before them is gone")
        if report["unacknowledged_leftovers"]:
            lines.append(
                f"  left out event(s) {report['unacknowledged_leftovers']}: leftovers of writes that were never "
                "acknowledged"
            )
        lines.append(f"  the damaged log is kept at {report.get('moved_aside')}")
        human = "\n".join(lines)
    _emit(args, doc, human)
    problems = reg.fsck()
    if problems:
        print(f"{len(problems)} problem(s) remain:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    return 0


def cmd_maintain(reg: Registry, args: argparse.Namespace) -> int:
    report = reg.maintain()
    if report.get("skipped"):
        _emit(args, report, f"nothing done: {report['skipped']} (it does the same work)")
        return 0
    log = report.get("log") or {}
    snap = report.get("snapshot")
    lines = [
        f"event log: {log.get('files_removed', 0)} files compacted into {log.get('files_added', 0)}, "
        f"{log.get('files_vacuumed', 0)} vacuumed; now at commit {report['log_version']} ({report['events']} events)",
        f"versions table: {report.get('versions_projected') or 0} version(s) added",
        "snapshot: "
        + (
            "none (" + ("an S3 root folds its log on open" if reg.location.is_s3 else "see below") + ")"
            if not snap
            else f"{snap['file']} written ({snap['bytes']:,} bytes)"
            if snap["written"]
            else f"{snap['file']} still current, confirmed"
        ),
        f"took {report['seconds']['total']} s",
    ]
    lines += [f"problem: {p}" for p in report["problems"]]
    _emit(args, report, "\n".join(lines))
    return 1 if report["problems"] else 0


def cmd_gc(reg: Registry, args: argparse.Namespace) -> int:
    if args.grace_hours < 0:
        raise UsageError("--grace-hours must be zero or more")
    report = reg.gc(apply=args.apply, grace=timedelta(hours=args.grace_hours))
    n, size = len(report["unreferenced"]), report["unreferenced_bytes"]
    verb = "removed" if args.apply else "would remove"
    human = (
        f"{verb} {n} unreferenced blob(s), {size} bytes, {report['temporaries']} leftover temporary file(s) and "
        f"{report.get('multipart_uploads', 0)} unfinished multipart upload(s); "
        f"{report['referenced_blobs']} referenced blob(s) kept; {report['too_recent']} unreferenced blob(s) "
        f"younger than {args.grace_hours:g} h kept"
    )
    if not args.apply and (n or report["temporaries"] or report.get("multipart_uploads")):
        human += "\nrun again with --apply to remove them"
    _emit(args, report, human)
    return 0


def cmd_retention(reg: Registry, args: argparse.Namespace) -> int:
    """Per-stage retention: the plan (what would be archived and why, what stays and why), applied with --apply."""
    from model_ops.ops import retention
    from model_ops.registry.registry import parse_timestamp
    from model_ops.specs import load_specs

    specs = {s.name: s for s in load_specs()}  # a model's own staging override applies
    names = args.names or reg.models()
    for name in args.names:
        reg.versions(name)  # an unknown model: NotFoundError, exit 1
    now = parse_timestamp(args.now) if args.now else None
    plans = [retention.plan(reg, specs.get(n, n), now=now) for n in names]
    done = {p.model: retention.apply(reg, p) for p in plans} if args.apply else {}
    human = "\n\n".join(retention.render(p, done.get(p.model) if args.apply else None) for p in plans)
    if not args.apply and any(p.archive for p in plans):
        human += "\nrun again with --apply to archive them"
    _emit(args, [{**p.to_dict(), "applied": done.get(p.model)} for p in plans], human or "no models registered")
    return 0


def cmd_webhooks(reg: Registry, args: argparse.Namespace) -> int:
    """``deliver``: POST pending events now (exit 1 if some are still pending); ``status``: what is pending."""
    from model_ops.registry import webhooks

    dispatcher = webhooks.Dispatcher.for_registry(reg)
    if args.webhooks_cmd == "deliver":
        if args.wait < 0:
            raise UsageError("--wait must be zero or more seconds")
        reports = dispatcher.deliver(args.names, wait=args.wait)
    else:
        reports = dispatcher.status(args.names)
    config = dispatcher.config()
    doc = {"config": config.source, "webhooks": [r.to_dict() for r in reports]}
    _emit(args, doc, webhooks.render(reports, config))
    return 1 if args.webhooks_cmd == "deliver" and any(r.pending for r in reports) else 0


def _experiment_arms(args: argparse.Namespace) -> list[Any]:
    """``--arm NAME=VERSION`` (two or more) and ``--weight [NAME=]W`` (one per arm, summing to 1; default equal)."""
    from model_ops.ops.experiments import ArmConfig

    arms: list[tuple[str, int]] = []
    for text in args.arm or []:
        name, sep, version = text.partition("=")
        number = version.strip().removeprefix("v")
        if not sep or not name.strip() or not number.isdigit():
            raise UsageError(f"--arm {text!r} is not NAME=VERSION", hint="e.g. --arm control=2 --arm challenger=3")
        arms.append((name.strip(), int(number)))
    if len(arms) < 2:
        raise UsageError(
            f"an experiment needs two or more arms, got {len(arms)}", hint="e.g. --arm control=2 --arm challenger=3"
        )
    names = [n for n, _ in arms]
    if not args.weight:
        return [ArmConfig(v, 1.0 / len(arms), n) for n, v in arms]
    weights: dict[str, float] = {}
    for i, text in enumerate(args.weight):
        name, sep, value = text.rpartition("=")
        name = name.strip() if sep else (names[i] if i < len(names) else "")
        try:
            weight = float(value)
        except ValueError:
            raise UsageError(f"--weight {text!r} is not [NAME=]NUMBER", hint="e.g. --weight control=0.8") from None
        if name not in names:
            raise UsageError(f"--weight {text!r} names no arm (arms: {', '.join(names)})")
        if not (weight > 0 and weight < 1):
            raise UsageError(f"--weight {text!r}: a weight is a share of the traffic, between 0 and 1")
        weights[name] = weight
    if set(weights) != set(names):
        missing = [n for n in names if n not in weights]
        raise UsageError(f"--weight gives no weight for {', '.join(missing)}", hint="give every arm its weight")
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-9:
        raise UsageError(
            f"the weights sum to {total:g}, not 1", hint="give each arm its share of the traffic, e.g. 0.8 and 0.2"
        )
    return [ArmConfig(v, weights[n], n) for n, v in arms]


def _experiment_status(reg: Registry, args: argparse.Namespace) -> int:
    """The decision of an experiment: the outcomes posted to the server, replayed, then those joined from the
    prediction log and the declared labels table as one more look; a conclusion is recorded once."""
    from model_ops.data.sources import read_labels
    from model_ops.ops import experiments as exps
    from model_ops.serving.abtest import replay
    from model_ops.serving.predlog import predictions_dataset
    from model_ops.specs import load_specs

    events = reg.audit(args.model)
    known = exps.declared(events)
    if args.name:
        chosen = [d for d in known if d.config.name == args.name]
        if not chosen:
            raise UsageError(
                f"{args.model} has no experiment named {args.name!r}",
                hint=f"experiments: {', '.join(d.config.name for d in known) or 'none'}",
            )
    else:
        chosen = [d for d in known if d.running] or known[-1:]
        if not chosen:
            raise UsageError(
                f"{args.model} has no experiment",
                hint=f"start one with `model-ops experiment start {args.model} --name NAME --arm A=V1 --arm B=V2`",
            )
    declared = chosen[0]
    spec = {s.name: s for s in load_specs()}.get(args.model)
    experiment, fed = replay(declared, reg.root)
    notes: list[str] = []
    joined = None
    if spec is None:
        notes.append(f"{args.model} has no declaration here: only the outcomes posted to the server are counted")
    elif spec.labels is None:
        notes.append(f"{args.model} declares no labels table: only the outcomes posted to the server are counted")
    elif not predictions_dataset(reg.root, args.model).exists():
        notes.append("no prediction log yet: nothing to join with the labels table")
    else:
        key = spec.key_column
        where: list[tuple[str, str, Any]] = [("scored_at", ">=", declared.started_at)]
        if declared.stopped_at is not None:  # rows served after the stop were not routed by the experiment
            where.append(("scored_at", "<", declared.stopped_at))
        rows = predictions_dataset(reg.root, args.model).read(
            columns=[key, "model_version", "served", "prediction"], where=where
        )
        labels = read_labels(spec, rows[key], reg.root)
        joined, _ = exps.feed_outcomes(experiment, rows, labels, key_column=key, outcome=declared.outcome, exclude=fed)
    decision = experiment.decision()
    recorded = [e.data["conclusion"] for e in exps.recorded_conclusions(reg, args.model, declared.config.name)]
    event = exps.record_decision(reg, experiment, run_id=args.run_id)
    if event is not None:
        recorded.append(event.data["conclusion"])
    arms = ", ".join(f"{a.name} v{a.version} at {w:.0%}" for a, w in zip(declared.config.arms, declared.config.weights))
    state = "running" if declared.running else f"stopped at {declared.stopped_at} ({declared.stop_reason})"
    lines = [
        f"experiment {declared.config.name} on {args.model}: {state}",
        f"  arms        {arms}",
        f"  outcome     {declared.outcome} ({declared.config.kind}, {declared.config.better} is better), "
        f"α = {declared.config.alpha:g}, {declared.config.min_sample:,} to {declared.config.max_sample:,} per arm",
        f"  outcomes    {len(fed):,} posted to the server"
        + (f"; joined: {joined.summary()}" if joined is not None else ""),
        f"  decision    {decision.status}"
        + (f": {decision.winner} (v{decision.winner_version})" if decision.winner else ""),
        f"  reason      {decision.reason}",
        f"  recorded    {', '.join(recorded) or '-'}" + (" (now)" if event is not None else ""),
        *(f"  note        {n}" for n in notes),
    ]
    doc = {
        "experiment": declared.to_dict(),
        "posted_outcomes": len(fed),
        "joined": None
        if joined is None
        else {k: v for k, v in vars(joined).items() if k != "frame"} | {"outcomes": len(joined.frame)},
        "decision": decision.to_dict(),
        "recorded": recorded,
        "recorded_now": event is not None,
        "notes": notes,
    }
    _emit(args, doc, "\n".join(lines))
    return 0


def cmd_experiment(reg: Registry, args: argparse.Namespace) -> int:
    """A/B experiments: ``start`` declares one (the server and the batch path route by it), ``status`` reads its
    decision, ``stop`` ends it."""
    from model_ops.ops import experiments as exps

    if args.experiment_cmd == "status":
        return _experiment_status(reg, args)
    if args.experiment_cmd == "stop":
        from model_ops.serving.abtest import replay

        event = exps.stop(reg, args.model, args.name, reason=args.reason, run_id=args.run_id)
        (declared,) = [d for d in exps.declared(reg.audit(args.model)) if d.config.name == args.name]
        decision = replay(declared, reg.root)[0].decision()  # where the posted outcomes left it
        _emit(
            args,
            {
                "model": args.model,
                "experiment": args.name,
                "stopped": True,
                "seq": event.seq,
                "decision": decision.to_dict(),
            },
            f"{args.model}: experiment {args.name} stopped; the server routes by the deployment manifest again\n"
            f"  at the stop, by the outcomes posted to the server: {decision.reason}",
        )
        return 0
    kind, better = exps.OUTCOME_DEFAULTS[args.outcome]
    try:
        config = exps.ExperimentConfig(
            name=args.name,
            model=args.model,
            arms=tuple(_experiment_arms(args)),
            metric=args.outcome,
            max_sample=args.max_sample,
            kind=args.kind or kind,
            better=args.direction or better,
            alpha=args.alpha,
            min_sample=args.min_sample,
        )
    except ValueError as exc:
        raise UsageError(str(exc), hint="see `model-ops experiment start --help`") from None
    event = exps.start(reg, config, args.outcome, reason=args.reason, run_id=args.run_id)
    arms = ", ".join(f"{a.name} v{a.version} at {w:.0%}" for a, w in zip(config.arms, config.weights))
    _emit(
        args,
        {"model": args.model, "experiment": config.name, "seq": event.seq, "outcome": args.outcome, **config.to_dict()},
        f"{args.model}: experiment {config.name} started ({arms}; outcome {args.outcome}, {config.better} is better, "
        f"α = {config.alpha:g}, at most {config.max_sample:,} outcomes per arm)\n"
        f"  a running server routes by it within one poll; post outcomes to /v2/models/{args.model}/outcomes",
    )
    return 0


def _check_applications(args: argparse.Namespace) -> None:
    """Each ``--application`` is a valid name and, when it is registered, an application: refused (exit 2) before
    the server starts rather than served never-ready."""
    from model_ops.llm.layout import APPLICATION
    from model_ops.registry import Registry
    from model_ops.registry.refs import check_name

    reg = Registry.open(args.root, actor=args.actor, policy=args.policy)
    for name in args.application:
        check_name(name)
        if name in reg.models() and (flavor := reg.versions(name)[-1].flavor) != APPLICATION:
            raise UsageError(
                f"--application {name}: {name} is a {flavor!r} model, not an LLM application",
                hint=f"serve a model as NAME (`model-ops serve {name}`); an application is an application.yaml",
            )


def cmd_serve(reg: Registry | None, args: argparse.Namespace) -> int:
    """The live inference server (see ``model_ops.serving``); runs until SIGTERM or Ctrl-C."""
    from model_ops.serving import ServeConfig
    from model_ops.serving.server import run

    if args.drain < 0 or args.poll <= 0 or args.log_flush <= 0 or args.stats_interval <= 0:
        raise UsageError(
            "--drain must be zero or more seconds, --poll, --log-flush and --stats-interval more than zero"
        )
    if not 0 <= args.batch_delay <= 1000:
        raise UsageError(f"--batch-delay is milliseconds from 0 to 1000, not {args.batch_delay:g}")
    config = ServeConfig(
        root=args.root,
        names=list(args.names),
        actor=args.actor,
        policy=args.policy,
        poll_seconds=args.poll,
        drain_seconds=args.drain,
        log_predictions=not args.no_log,
        log_flush_seconds=args.log_flush,
        stats_seconds=args.stats_interval,
        batch_delay_seconds=args.batch_delay / 1000,
        applications=list(args.application),
        lora_dir=args.lora_dir,
        generate_url=args.generate_url,
    )
    if args.generate_url is not None and not args.generate_url.startswith(("http://", "https://")):
        raise UsageError(
            f"--generate-url {args.generate_url!r} is not an http(s) URL", hint="e.g. http://127.0.0.1:8000"
        )
    if args.lora_dir is not None:
        try:
            os.makedirs(args.lora_dir, exist_ok=True)
            writable = os.access(args.lora_dir, os.W_OK)
        except OSError as e:
            raise UsageError(
                f"--lora-dir {args.lora_dir} cannot be used: {e.strerror}", hint="name a directory"
            ) from None
        if not writable:
            raise UsageError(f"--lora-dir {args.lora_dir} is not writable", hint="name a directory this user can write")
    if args.application:
        _check_applications(args)
    run(config, host=args.host, port=args.port, workers=args.workers)
    return 0


# ---------------------------------------------------------------------------- parser


def _version_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number (1, 2, ...)")
    return int(text)


class _Unused:
    """Stands in for the parser of a command the line does not name (see ``build_parser(only=)``): every call on
    it is accepted and does nothing."""

    choices: dict[str, Any] = {}  # noqa: RUF012 (never written)

    def __getattr__(self, _: str) -> Any:
        return lambda *a, **k: self


UPKEEP_EXIT_SECONDS = 30.0
SNAPSHOT_COMMANDS = frozenset({"resolve", "versions", "show", "models", "search"})
_GLOBAL_WITH_VALUE = frozenset({"--root", "--actor", "--policy"})


def _named_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, when it is plainly one of the quick reads: a fresh ``resolve`` should not pay
    for building the parsers of forty other commands."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in _GLOBAL_WITH_VALUE:
            i += 2
            continue
        if word.startswith("-"):
            if word.split("=", 1)[0] in _GLOBAL_WITH_VALUE:
                i += 1
                continue
            return None  # --help, --version or a mistake: the full parser answers
        return word if word in SNAPSHOT_COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line. ``only``: build the subcommand of that name alone (the others answer nothing)."""
    p = _Parser(prog="model-ops", description="Model registry and artifact store of model_ops.")
    p.add_argument(
        "--root", help="registry root: a path or s3://bucket/prefix (default $MODEL_OPS_ROOT or ./.model_ops)"
    )
    p.add_argument(
        "--actor",
        help="the name to act under (default $MODEL_OPS_ACTOR, else your proven identity: the OS user, or the "
        "AWS caller on S3); another name than your own needs the impersonate verb",
    )
    p.add_argument(
        "--policy",
        help="a policy YAML that narrows the root's <root>/registry/policy.yaml (default $MODEL_OPS_POLICY); "
        "it can only take permissions away",
    )
    p.add_argument("--version", action="version", version=f"model-ops {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    def add(
        name: str, func: Any, help_text: str, *, run_id: bool = False, snapshot: bool = False
    ) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return _Unused()  # type: ignore[return-value]
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(func=func, snapshot_reads=snapshot)
        sp.add_argument("--json", action="store_true", help="print one JSON document")
        sp.add_argument(
            "--wide",
            action="store_true",
            help="print tables and trees in full, however wide (default: fit the terminal)",
        )
        if run_id:
            sp.add_argument("--run-id", help="the run this change belongs to (default $MODEL_OPS_RUN_ID)")
        return sp

    sp = add(
        "register", cmd_register, "store a model file or directory and register it as the next version", run_id=True
    )
    sp.add_argument("name")
    sp.add_argument("path")
    sp.add_argument("--params", help="JSON object (or @file.json)")
    sp.add_argument("--metrics", help="JSON object of numbers (or @file.json)")
    sp.add_argument("--dataset", help="training data as URI@VERSION")
    sp.add_argument("--signature", help='JSON: {"inputs": [{"name", "dtype"}], "outputs": {...}}')
    sp.add_argument("--tags", help="JSON object of tags")
    sp.add_argument("--description")
    sp.add_argument(
        "--base", help="for an adapter: the base model it was trained on, models:/NAME@ALIAS or models:/NAME/N"
    )

    sp = add("versions", cmd_versions, "list the versions of a model", snapshot=True)
    sp.add_argument("name")
    add("models", cmd_models, "list the registered models", snapshot=True)
    sp = add(
        "search",
        cmd_search,
        "find versions of any model by name, stage, alias, tags, metrics, params, dataset, time or actor",
        snapshot=True,
    )
    sp.add_argument(
        "query",
        nargs="?",
        default="",
        help='e.g. "stage = production and metrics.roc_auc > 0.7 and tags.team = fraud" (empty: every version); '
        "fields name version semver stage alias actor created run_id digest flavor dataset dataset.version "
        "tags.KEY metrics.KEY params.KEY; operators = != < <= > >= like (glob) in (...) exists; and or not ()",
    )
    sp.add_argument(
        "--order-by", help="created, version, name or metrics.KEY, then asc or desc (default: created desc)"
    )
    sp.add_argument("--limit", type=int, default=100, help="versions per page (default 100, at most 10000)")
    sp.add_argument("--cursor", help="the cursor a previous page printed, for the page after it")
    sp = add("show", cmd_show, "everything recorded about a version, lineage included", snapshot=True)
    sp.add_argument("ref")
    sp = add("card", cmd_card, "print a version's model card (markdown: data, model, evaluation, gates)")
    sp.add_argument("ref")
    sp = add("resolve", cmd_resolve, "print the version number a reference points at", snapshot=True)
    sp.add_argument("ref")
    sp = add("transition", cmd_transition, "move a version to another stage", run_id=True)
    sp.add_argument("ref")
    sp.add_argument("stage")
    sp.add_argument("--reason", required=True)
    sp.add_argument(
        "--breaking",
        action="store_true",
        help="accept that the version breaks the production version's input or output signature "
        "(recorded in the audit log with the reason)",
    )
    sp = add("approve", cmd_approve, "approve a version for a stage (counted by approval gates)", run_id=True)
    sp.add_argument("ref")
    sp.add_argument("stage")
    sp.add_argument("--reason", required=True)

    sp = add("alias", cmd_alias, "set or remove an alias")
    alias_sub = sp.add_subparsers(dest="alias_cmd", required=True, parser_class=_Parser, metavar="set|rm")
    for name, help_text in (("set", "point ALIAS at VERSION"), ("rm", "remove ALIAS")):
        asp = alias_sub.add_parser(name, help=help_text)
        asp.add_argument("name")
        asp.add_argument("alias")
        if name == "set":
            asp.add_argument("version")
        asp.add_argument("--reason", required=True)
        asp.add_argument("--run-id")
        asp.add_argument("--json", action="store_true")

    sp = add("tag", cmd_tag, "set (or --remove) a tag on a version", run_id=True)
    sp.add_argument("ref")
    sp.add_argument("key")
    sp.add_argument("value", nargs="?")
    sp.add_argument("--remove", action="store_true")
    sp = add(
        "deploy",
        cmd_deploy,
        "change what serves an LLM application: deploy (canary, or straight to production when nothing serves), "
        "advance, promote, rollback, rollback_production",
        run_id=True,
    )
    sp.add_argument("name")
    shadows = (DeployAction.SHADOW_ON, DeployAction.SHADOW_OFF)  # an application runs no shadow
    sp.add_argument("action", choices=[a.value for a in DeployAction if a not in shadows])
    sp.add_argument(
        "--version",
        "--to",
        dest="version",
        type=_version_number,
        help="the version to act on (default: the newest in staging; the canary; the previous production)",
    )
    sp.add_argument("--reason", help="why, for the audit log")
    sp = add(
        "rollback",
        cmd_rollback,
        "put the previous production version (or --to VERSION) back in production",
        run_id=True,
    )
    sp.add_argument("name")
    sp.add_argument("--to")
    sp.add_argument("--reason", required=True)
    sp = add("audit", cmd_audit, "every registry event, oldest first")
    sp.add_argument("name", nargs="?")
    sp = add(
        "as-of",
        cmd_as_of,
        "stages and aliases as they were at TIMESTAMP (ISO 8601, UTC when no zone) on the wall clock, or in the "
        "world the events describe (--business TIMESTAMP, --window KEY)",
    )
    sp.add_argument("when", nargs="*", metavar="TIMESTAMP [NAME]", help="the moment, then the model (optional)")
    sp.add_argument(
        "--business",
        action="store_true",
        help="read TIMESTAMP as business time: each event counts from the end of the window it was written for",
    )
    sp.add_argument("--window", help="the state that was in force during this window (2013-07 or 2013-07-01)")
    sp = add("fetch", cmd_fetch, "download a version's artifact to DEST, verifying every byte")
    sp.add_argument("ref")
    sp.add_argument("dest")
    key_help = "PEM public key(s) or CA certificate(s) to trust (default $MODEL_OPS_PUBLIC_KEY, else the signer's)"
    sp = add(
        "verify",
        cmd_verify,
        "check every signature of a version with a public key only: the whole version record, the OpenSSF Model "
        "Signing bundle against a fetched copy of the files, the provenance and the attachments; exit 1 unless all hold",
    )
    sp.add_argument("ref")
    sp.add_argument("--public-key", help=key_help)
    sp = add(
        "provenance",
        cmd_provenance,
        "print a version's in-toto (SLSA) provenance statement and check its signature and subject; exit 1 unless "
        "verified",
    )
    sp.add_argument("ref")
    sp.add_argument("--public-key", help=key_help)
    sp = add("keygen", cmd_keygen, "make a P-256 signing key pair for MODEL_OPS_SIGNING_KEY and MODEL_OPS_PUBLIC_KEY")
    sp.set_defaults(no_registry=True)
    sp.add_argument("private_key", help="where to write the private key (PEM, mode 0600)")
    sp.add_argument("--public-key-out", help="where to write the public key (default PRIVATE.pub.pem)")
    sp = add(
        "drift",
        cmd_drift,
        "per-feature and dataset drift of CURRENT against REFERENCE (Parquet or Delta); exit 1 on dataset drift",
    )
    sp.set_defaults(no_registry=True)
    sp.add_argument("--reference", required=True, help="Parquet file or folder, or Delta table (PATH@VERSION pins one)")
    sp.add_argument("--current", required=True, help="the same for the window to judge")
    sp.add_argument("--columns", help="comma-separated columns to compare (default: every shared column)")
    sp.add_argument("--min-rows", type=int, default=500, help="below this many current rows: insufficient data")
    sp.add_argument("--threshold", type=float, help="distance threshold for large references (default 0.1)")
    sp = add(
        "reproduce",
        cmd_reproduce,
        "retrain a version from its recorded lineage and compare digests; exit 1 "
        "with what differs (data, code version, packages, parameters)",
    )
    sp.add_argument("ref")
    sp = add(
        "lineage",
        cmd_lineage,
        "dataset -> run -> version -> evaluations -> stage and alias changes -> deployments, as a tree; as it "
        "stood at a moment with --as-of TIMESTAMP [--business] or --window KEY",
    )
    sp.add_argument("ref")
    sp.add_argument(
        "--as-of", metavar="TIMESTAMP", help="as it stood then: the reference resolved then, events until then"
    )
    sp.add_argument(
        "--business",
        action="store_true",
        help="read --as-of as business time: each event counts from the end of the window it was written for",
    )
    sp.add_argument("--window", help="as it stood during this window (2013-07 or 2013-07-01), in business time")
    sp = add(
        "diff",
        cmd_diff,
        "what differs between two versions: data, parameters, metrics, signature, code, "
        "packages, and the semver bump reason",
    )
    sp.add_argument("ref_a")
    sp.add_argument("ref_b")
    sp = add(
        "demo",
        cmd_demo,
        "replay a model's partitions one by one through Dagster (the built-in flight_delay's "
        "2013 by default): monitoring, drift-triggered retraining, canary analysis, promotion and rollback",
    )
    sp.set_defaults(no_registry=True)
    sp.add_argument(
        "--model",
        default="flight_delay",
        help="flight_delay (default), or the examples seattle_weather or flight_duration",
    )
    sp.add_argument("--until", default=None, help="last month to replay, YYYY-MM (default: the last partition)")
    sp.add_argument("--dagster-home", help="Dagster instance directory (default $DAGSTER_HOME, else ./.dagster_home)")
    sp.add_argument("--no-faulty", action="store_true", help="do not release the deliberately faulty candidate")
    sp = add(
        "serve",
        cmd_serve,
        "serve each model's deployment manifest over HTTP (Open Inference Protocol v2 and MLflow's /invocations), "
        "following the registry: canary, shadow, rollbacks and promotions take effect without a restart",
    )
    sp.set_defaults(no_registry=True)
    sp.add_argument(
        "names", nargs="*", metavar="NAME", help="models to serve (default: every declared model in production)"
    )
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    sp.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    sp.add_argument("--poll", type=float, default=0.2, help="seconds between registry polls (default 0.2)")
    sp.add_argument(
        "--drain", type=float, default=60.0, help="seconds a replaced version stays loaded for an instant switch back"
    )
    sp.add_argument("--no-log", action="store_true", help="do not write served predictions to the prediction log")
    sp.add_argument(
        "--log-flush",
        type=float,
        default=1.0,
        help="seconds the prediction log gathers rows before one append (default 1)",
    )
    sp.add_argument(
        "--batch-delay",
        type=float,
        default=10.0,
        help="milliseconds a scoring call may wait for concurrent requests to join it (default 10; 0: none)",
    )
    sp.add_argument(
        "--stats-interval",
        type=float,
        default=10.0,
        help="seconds per serving-statistics row and alert evaluation (default 10)",
    )
    sp.add_argument(
        "--application",
        action="append",
        default=[],
        metavar="NAME",
        help="serve this LLM application (repeatable): /v1/applications/NAME/prompt and /chat/completions",
    )
    sp.add_argument("--lora-dir", help="place served adapters here as NAME-vN in PEFT's layout (vLLM's LoRA resolver)")
    sp.add_argument(
        "--generate-url", help="an OpenAI-compatible server (such as vLLM) that generates for the applications"
    )
    sp = add("experiment", cmd_experiment, "A/B experiments between versions on live traffic: start, status, stop")
    exp_sub = sp.add_subparsers(dest="experiment_cmd", required=True, parser_class=_Parser, metavar="start|status|stop")
    esp = exp_sub.add_parser(
        "start",
        help="route MODEL's traffic between versions at fixed weights until stopped",
        description="Declare an A/B experiment in the audit log: the server and the batch path split MODEL's "
        "served rows between the arms by a hash of the key (sticky), the canary takes no traffic meanwhile, and "
        "outcomes feed a sequential test (mSPRT, always-valid p-values) that declares a winner or no difference.",
    )
    esp.add_argument("model", metavar="MODEL")
    esp.add_argument("--name", required=True, help="the experiment's name (once per model)")
    esp.add_argument(
        "--arm", action="append", metavar="NAME=VERSION", help="an arm (two or more; the first is the control)"
    )
    esp.add_argument("--weight", action="append", metavar="[NAME=]W", help="an arm's share of traffic (default equal)")
    esp.add_argument(
        "--outcome",
        "--metric",
        dest="outcome",
        choices=["correct", "label", "abs_error", "squared_error"],
        default="correct",
        help="what is compared per key: the served prediction being right (default), the label itself (a "
        "business outcome), or the prediction's absolute or squared error",
    )
    esp.add_argument("--kind", choices=["binary", "continuous"], help="the outcome's kind (default: the outcome's)")
    esp.add_argument("--direction", choices=["higher", "lower"], help="which way is better (default: the outcome's)")
    esp.add_argument("--alpha", type=float, default=0.05, help="false-positive rate of the test (default 0.05)")
    esp.add_argument(
        "--max-sample",
        type=int,
        default=10_000,
        help="outcomes per arm at which 'no difference' is given (default 10000)",
    )
    esp.add_argument("--min-sample", type=int, default=500, help="outcomes per arm before any decision (default 500)")
    esp.add_argument("--reason", help="why (recorded with the start)")
    esp = exp_sub.add_parser(
        "status",
        help="the experiment's decision and its reason; records a conclusion once",
        description="Replay the outcomes posted to the server, join the prediction log with the labels table, "
        "print the decision and its reason, and record a conclusion in the audit log the first time it is reached.",
    )
    esp.add_argument("model", metavar="MODEL")
    esp.add_argument("--name", help="the experiment (default: the running one, else the latest)")
    esp = exp_sub.add_parser("stop", help="end the experiment; the deployment manifest routes again")
    esp.add_argument("model", metavar="MODEL")
    esp.add_argument("--name", required=True)
    esp.add_argument("--reason", required=True)
    for esp in exp_sub.choices.values():
        esp.add_argument("--json", action="store_true", help="print one JSON document")
        esp.add_argument("--run-id", help="the run this change belongs to (default $MODEL_OPS_RUN_ID)")
    sp = add("fsck", cmd_fsck, "check every version's artifact and the event log; exit 1 if anything is wrong")
    sp.add_argument(
        "--repair",
        action="store_true",
        help="rebuild a damaged event log from its data files and commit receipts (stop writers first); "
        "the damaged log is moved aside, never deleted",
    )
    sp = add(
        "retention",
        cmd_retention,
        "archive versions past their stage's retention period, never what serves, "
        "is aliased or is needed by a served version's lineage (dry run unless --apply)",
    )
    sp.add_argument("names", nargs="*", metavar="NAME", help="models (default: all)")
    sp.add_argument("--apply", action="store_true")
    sp.add_argument("--now", help="judge ages as of this time (ISO 8601; default now)")
    add(
        "maintain",
        cmd_maintain,
        "compact the event log, update the versions table and write the state snapshot (writes never do this)",
    )
    sp = add("gc", cmd_gc, "remove blobs nothing references (dry run unless --apply)")
    sp.add_argument("--apply", action="store_true")
    sp.add_argument(
        "--grace-hours",
        type=float,
        default=24.0,
        help="keep unreferenced blobs younger than this (in-flight registrations; default 24)",
    )
    sp = add("webhooks", cmd_webhooks, "deliver pending event webhooks now, or show what is pending")
    hooks_sub = sp.add_subparsers(dest="webhooks_cmd", required=True, parser_class=_Parser, metavar="deliver|status")
    for name, help_text in (
        ("deliver", "POST pending events now, retrying for up to --wait seconds; exit 1 if some stay pending"),
        ("status", "pending events, blocked models and the last error of each webhook"),
    ):
        hsp = hooks_sub.add_parser(name, help=help_text, description=help_text)
        hsp.add_argument("names", nargs="*", metavar="NAME", help="webhooks (default: all in webhooks.yaml)")
        if name == "deliver":
            hsp.add_argument("--wait", type=float, default=10.0, help="seconds to keep retrying (default 10)")
        hsp.add_argument("--json", action="store_true", help="print one JSON document")
    return p


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


def _disk_full(exc: BaseException) -> str | None:
    """Where a write ran out of space, when that is what ``exc`` (or what caused it) says: an ``OSError`` with
    ENOSPC or EDQUOT, or the Delta engine's and S3 client's wrapping of one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return str(seen.filename) if seen.filename else "the device"
        if any(text in str(seen).lower() for text in _DISK_FULL_TEXT):
            return "the device"
        seen = seen.__cause__ or seen.__context__
    return None


def _current_snapshot(args: argparse.Namespace) -> Any:
    """The state snapshot to answer a read from without opening the registry (Arrow and the Delta engine are not
    even imported), when it is current: see ``model_ops/registry/snapshot.py``. None: open the registry."""
    from model_ops.location import resolve_root
    from model_ops.registry import snapshot

    return snapshot.open_current(resolve_root(args.root).child("registry"), policy_given=bool(args.policy))


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(only=_named_command(words)).parse_args(words)
    try:
        if getattr(args, "no_registry", False):
            reg = None
        elif getattr(args, "snapshot_reads", False) and (current := _current_snapshot(args)) is not None:
            return int(args.func(current, args))
        else:
            from model_ops.registry import Registry

            reg = Registry.open(args.root, actor=args.actor, policy=args.policy)
        return int(args.func(reg, args))
    except ModelOpsError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; nothing half-written is visible (writes are atomic)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: say so plainly, with the traceback for the report
        full = _disk_full(exc)
        if full is not None:
            print(f"error: no space left on {full}", file=sys.stderr)
            print(
                "  hint: free space there and run the command again; what was committed before is intact "
                "(every write is atomic), and `model-ops fsck` checks it",
                file=sys.stderr,
            )
            return 1
        from model_ops.location import S3UnavailableError, is_transient, resolve_root, s3_deadline

        # S3 kept failing past the deadline inside the Delta engine or Arrow, which raise their own errors: not a bug.
        try:
            on_s3 = resolve_root(getattr(args, "root", None)).is_s3
        except ModelOpsError:
            on_s3 = False
        if on_s3 and is_transient(exc):
            unavailable = S3UnavailableError.after(s3_deadline(), exc)
            print(f"error: {unavailable.message}", file=sys.stderr)
            print(f"  hint: {unavailable.hint}", file=sys.stderr)
            return unavailable.exit_code
        import traceback

        traceback.print_exc()
        print("error: model-ops failed unexpectedly (a bug); please report the traceback above", file=sys.stderr)
        return 1


def _flush() -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass


def entry() -> None:
    """Console-script entry point. Leaves with ``os._exit`` after flushing: every write is complete by then, and
    skipping interpreter finalisation avoids a rare abort while Arrow's and delta-rs's native thread pools are torn
    down ("terminate called without an active exception", exit 134 instead of the real exit code)."""
    code = main()
    _flush()  # the answer first: what follows only finishes background work
    hooks = sys.modules.get("model_ops.registry.webhooks")
    if hooks is not None:  # a write started deliveries: give them a moment; the rest stays pending by cursor
        hooks.flush(hooks.EXIT_FLUSH_SECONDS)
    upkeep = sys.modules.get("model_ops.registry.maintenance")
    if upkeep is not None:  # a write started a compaction: let it land rather than waste it
        upkeep.wait_for_background(UPKEEP_EXIT_SECONDS)
    _flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
