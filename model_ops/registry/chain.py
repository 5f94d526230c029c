"""Re-walking the audit log: the hash chain, and every write re-checked against the policy.

Every event stores the hash of its predecessor and its own hash over all its stored fields (``events.chain_hash``),
so an edit, an insertion, a deletion or a reordering anywhere in the log breaks the chain at that point. A forged
event appended with the Delta API by someone who computes the hashes correctly keeps the chain intact; it is found
by the second walk, which replays the log commit by commit and asks of each write what the registry would have asked
before committing it: may this actor do this verb, does the policy allow this move, did the gate's approvals and
metrics hold at that moment, does the production alias move only with production?

What neither walk can catch is a writer with raw access who forges events that obey the policy, under a name the
policy trusts. The registry's version signatures (``model-ops verify``) and the proven identity recorded beside the
claimed actor are what make such writes evident; see the README's "Trust" section.
"""

from __future__ import annotations

from collections.abc import Iterator

from model_ops.errors import PolicyError
from model_ops.registry import events as ev
from model_ops.registry.gates import gate_results
from model_ops.registry.policy import POLICY_CHANGED, Policy, PolicyArchive, root_part
from model_ops.registry.state import ModelState, RegistryState


def chain_problems(events: list[ev.Event]) -> list[str]:
    """Where the hash chain of ``events`` (sorted by seq, the whole log) breaks, named by event.

    Events written before the chain existed carry no hash; the chain starts at the first event that has one, with
    ``prev_hash`` the genesis value, and from there on every event must carry one."""
    problems: list[str] = []
    prev: str | None = None
    started = False
    for e in events:
        if e.hash is None:
            if started:
                problems.append(f"event {e.seq} ({_what(e)}) has no hash: it was written outside model_ops")
            continue
        expected_prev = prev if started else ev.GENESIS
        if e.prev_hash != expected_prev:
            problems.append(
                f"event {e.seq} ({_what(e)}) does not follow event {e.seq - 1} in the hash chain: an event before "
                "it was changed, inserted, deleted or reordered"
            )
        if ev.chain_hash(e) != e.hash:
            problems.append(f"event {e.seq} ({_what(e)}) was altered after it was written: its hash does not match")
        text = e.payload_text()
        if text and ev.payload_object(text) is None:
            problems.append(f"event {e.seq} ({_what(e)}) carries a payload that is not a JSON object")
        prev, started = e.hash, True
    return problems


def _what(e: ev.Event) -> str:
    return f"{e.kind} {e.model}" + (f" v{e.version}" if e.version is not None else "")


def commits(events: list[ev.Event]) -> Iterator[list[ev.Event]]:
    """Events grouped by the commit that wrote them: one commit stamps all of its events with one timestamp."""
    group: list[ev.Event] = []
    for e in events:
        if group and e.ts != group[0].ts:
            yield group
            group = []
        group.append(e)
    if group:
        yield group


_RECORD_VERBS = {"deployment": "deploy"}


def policy_problems(events: list[ev.Event], policy: Policy, archive: PolicyArchive | None = None) -> list[str]:
    """Every committed write replayed against the policy that decided it: the ones it would have refused, and
    commits of a shape the registry never writes, named by event.

    Each commit's ``policy`` column names the root policy that decided it; its text comes from ``archive`` (every
    policy a write was decided by is kept there by digest), or is ``policy`` itself when the digests agree. A
    commit claiming a policy whose text the registry does not hold is a finding: a forger cannot escape the replay
    by naming a made-up policy. Events that predate the hash chain are folded but not judged."""
    problems: list[str] = []
    state = RegistryState(policy.production.stage)
    known: dict[str, Policy | None] = {}
    current = root_part(policy.digest)
    if current is not None:
        known[current] = policy
    in_force: str | None = None  # the policy the log says governed, as its policy_changed events move it
    for commit in commits(events):
        chained = [e for e in commit if e.hash is not None]
        if chained:
            in_force = _policy_column(commit, in_force, problems)
            decided_by = root_part(commit[0].policy)
            if decided_by is None:
                # Every event written since the chain began names its policy: one that does not was written by
                # something else. It is judged by the policy in force now.
                problems.append(f"event {commit[0].seq} ({_what(commit[0])}) names no policy that decided it")
                decided_by = current
            if decided_by is not None:
                if decided_by not in known:
                    known[decided_by] = archive.load(decided_by) if archive is not None else None
                judge = known[decided_by]
                if judge is None:
                    problems.append(
                        f"event {commit[0].seq} ({_what(commit[0])}) was decided by policy {decided_by}, whose text "
                        "the registry does not hold"
                    )
                else:
                    problems.extend(_judge(commit, state, judge))
        state.apply_all(commit)
    return problems


def _policy_column(commit: list[ev.Event], in_force: str | None, problems: list[str]) -> str | None:
    for e in commit:
        claimed = root_part(e.policy)
        if e.hash is None or claimed is None:
            continue
        if e.kind == POLICY_CHANGED:
            if in_force is not None and e.from_value != in_force:
                problems.append(
                    f"event {e.seq} records a policy change from {e.from_value}, but {in_force} was in force"
                )
            in_force = e.to_value
        elif in_force is None:
            in_force = claimed
        elif claimed != in_force:
            problems.append(
                f"event {e.seq} ({_what(e)}) claims it was decided by policy {claimed}, but the log records "
                f"{in_force} in force then (no policy change between)"
            )
    return in_force


def _judge(commit: list[ev.Event], state: RegistryState, policy: Policy) -> list[str]:
    """What the registry would have refused in this commit. A commit is judged as a whole: the registry writes only
    a few shapes of commit (a registration with its tags and attachments; a stage move with the production version
    it replaces and the production alias; a rollback; and single events), each by one writer for one model, so
    anything else was written by something else. Nothing a payload says about itself (its ``cause``) is trusted."""
    first = commit[0]
    where = f"event {first.seq} ({_what(first)} by {first.actor})"
    writers = {(e.actor, e.identity, e.policy, e.model) for e in commit}
    if len(writers) > 1:
        return [f"{where}: one commit holds events of several writers or models, which model_ops never writes"]
    kinds = [e.kind for e in commit]
    prod = policy.production
    m = state.models.get(first.model)
    out: list[str] = []

    def refused(verb: str, e: ev.Event) -> None:
        why = policy.refusal(e.actor, e.identity, verb, e.model)
        if why is not None:
            out.append(f"event {e.seq} ({_what(e)} by {e.actor}): {why.message} (by {why.by})")

    if kinds in ([ev.DENIED], [POLICY_CHANGED]):
        return []
    if ev.REGISTERED in kinds:
        if set(kinds) - {ev.REGISTERED, ev.TAG_SET, ev.ATTACHMENT}:
            return [f"{where}: a registration commit holds {', '.join(sorted(set(kinds)))}"]
        born = {e.version for e in commit if e.kind == ev.REGISTERED}
        for e in commit:
            if e.kind == ev.REGISTERED and e.from_value != policy.initial_stage:
                out.append(f"event {e.seq}: {_what(e)} was registered into {e.from_value}, not {policy.initial_stage}")
            elif e.kind != ev.REGISTERED and e.version not in born:
                out.append(f"event {e.seq}: {_what(e)} rides on a registration of another version")
        refused("register", first)
        return out
    if ev.ROLLBACK in kinds:
        return out + _judge_rollback(commit, m, policy, refused)
    if ev.STAGE_CHANGED in kinds:
        return out + _judge_move(commit, m, policy, refused)
    if len(commit) != 1:
        return [f"{where}: a commit of {len(commit)} events ({', '.join(kinds)}) is not one model_ops writes"]
    e = first
    if e.kind in (ev.ALIAS_SET, ev.ALIAS_REMOVED):
        if prod.alias and e.key == prod.alias:
            return [f"event {e.seq}: alias {prod.alias} moved without a move into or out of {prod.stage}"]
        refused(f"alias:{e.key}", e)
    elif e.kind in (ev.TAG_SET, ev.TAG_REMOVED):
        refused("tag", e)
    elif e.kind == ev.APPROVED:
        refused("approve", e)
    elif e.kind in ev.RECORD_KINDS or e.kind == ev.ATTACHMENT:
        refused(_RECORD_VERBS.get(e.kind, "record"), e)
    else:
        out.append(f"event {e.seq}: {e.kind!r} is not an event model_ops writes alone")
    return out


def _judge_move(commit: list[ev.Event], m: ModelState | None, policy: Policy, refused) -> list[str]:  # type: ignore[no-untyped-def]
    prod = policy.production
    moves = [e for e in commit if e.kind == ev.STAGE_CHANGED]
    rest = [e for e in commit if e.kind != ev.STAGE_CHANGED]
    move = moves[-1]
    where = f"event {move.seq} ({_what(move)} by {move.actor})"
    if m is None or m.get(move.version or 0) is None:
        return []  # the fold reports events naming missing versions
    vs = m.get(move.version or 0)
    assert vs is not None
    out: list[str] = []
    if len(moves) > 2 or any(e.kind not in (ev.ALIAS_SET, ev.ALIAS_REMOVED) for e in rest) or len(rest) > 1:
        return [
            f"{where}: a stage-change commit of a shape model_ops never writes ({', '.join(e.kind for e in commit)})"
        ]
    if len(moves) == 2:
        old = moves[0]
        if not (
            move.to_value == prod.stage
            and old.version == m.production
            and old.from_value == prod.stage
            and old.to_value == prod.replaced_goes_to
        ):
            out.append(f"event {old.seq}: {_what(old)} is not the production version replaced by v{move.version}")
    elif move.to_value == prod.stage and m.production not in (None, move.version):
        out.append(f"{where}: v{move.version} entered {prod.stage} while v{m.production} stayed there")
    for e in rest:
        if e.key != prod.alias:
            out.append(f"event {e.seq}: alias {e.key} moved inside a stage change")
        elif e.kind == ev.ALIAS_SET and not (move.to_value == prod.stage and e.version == move.version):
            out.append(f"event {e.seq}: alias {prod.alias} moved to v{e.version} without a move into {prod.stage}")
        elif e.kind == ev.ALIAS_REMOVED and not (vs.stage == prod.stage and e.version == move.version):
            out.append(f"event {e.seq}: alias {prod.alias} removed without its version leaving {prod.stage}")
    stage = move.to_value or ""
    refused(f"transition:{stage}", move)
    if stage not in policy.allowed_targets(vs.stage) and stage != vs.stage:
        out.append(f"{where}: the policy does not allow {vs.stage} -> {stage}")
    if stage in policy.gates:
        try:
            gate_results(policy, move.actor, m, vs, stage, identity=move.identity)
        except PolicyError as e:
            out.append(f"{where}: the gate was not met when it was committed ({e.message})")
    return out


def _judge_rollback(commit: list[ev.Event], m: ModelState | None, policy: Policy, refused) -> list[str]:  # type: ignore[no-untyped-def]
    prod = policy.production
    kinds = [e.kind for e in commit]
    first = commit[0]
    where = f"event {first.seq} ({_what(first)} by {first.actor})"
    if kinds[:3] != [ev.ROLLBACK, ev.STAGE_CHANGED, ev.STAGE_CHANGED] or kinds[3:] not in ([], [ev.ALIAS_SET]):
        return [f"{where}: a rollback commit of a shape model_ops never writes ({', '.join(kinds)})"]
    if m is None:
        return []
    rb, leaving, entering = commit[0], commit[1], commit[2]
    out: list[str] = []
    if rb.from_value != str(m.production) or leaving.version != m.production:
        out.append(f"{where}: rolls back v{rb.from_value}, but v{m.production} was in {prod.stage}")
    if (leaving.from_value, leaving.to_value) != (prod.stage, prod.rolled_back_goes_to):
        out.append(f"event {leaving.seq}: a rolled-back version goes {prod.stage} -> {prod.rolled_back_goes_to}")
    if entering.version != rb.version or entering.to_value != prod.stage:
        out.append(f"event {entering.seq}: the version put back is not the rollback's target v{rb.version}")
    if len(commit) == 4 and (commit[3].key != prod.alias or commit[3].version != rb.version):
        out.append(f"event {commit[3].seq}: a rollback moves only alias {prod.alias}, to its target")
    refused("rollback", rb)
    return out
