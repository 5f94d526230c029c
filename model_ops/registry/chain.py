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
from model_ops.registry.policy import POLICY_CHANGED, Policy, root_part
from model_ops.registry.state import RegistryState


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


def _verb(commit: list[ev.Event]) -> tuple[str, ev.Event] | None:
    """The verb a commit needed and the event that states it; None for commits anyone may write (denials)."""
    kinds = {e.kind for e in commit}
    first = commit[0]
    if ev.REGISTERED in kinds:
        return "register", next(e for e in commit if e.kind == ev.REGISTERED)
    if ev.ROLLBACK in kinds:
        return "rollback", next(e for e in commit if e.kind == ev.ROLLBACK)
    moves = [e for e in commit if e.kind == ev.STAGE_CHANGED and e.data.get("cause") not in ("replaced", "rollback")]
    if moves:
        return f"transition:{moves[-1].to_value}", moves[-1]
    if kinds <= {ev.ALIAS_SET, ev.ALIAS_REMOVED}:
        return f"alias:{first.key}", first
    if kinds <= {ev.TAG_SET, ev.TAG_REMOVED}:
        return "tag", first
    if ev.APPROVED in kinds:
        return "approve", first
    if kinds & {ev.DENIED, POLICY_CHANGED}:
        return None
    if "deployment" in kinds:
        return "deploy", first
    return "record", first


def policy_problems(events: list[ev.Event], policy: Policy) -> list[str]:
    """Every committed write replayed against ``policy``: the ones it would have refused, named by event.

    Events that predate the hash chain are folded but not judged (the policy they were decided by is not known);
    so are events decided by another policy than this one (their ``policy`` digest differs): a policy edit does not
    turn yesterday's legitimate promotions into findings."""
    problems: list[str] = []
    state = RegistryState(policy.production.stage)
    governing = root_part(policy.digest)
    in_force: str | None = None  # the policy the log says governed, as its policy_changed events move it
    for commit in commits(events):
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
        decided_by = root_part(commit[0].policy)
        judged = commit[0].hash is not None and decided_by in (None, governing)
        if judged:
            problems.extend(_judge(commit, state, policy))
        state.apply_all(commit)
    return problems


def _judge(commit: list[ev.Event], state: RegistryState, policy: Policy) -> list[str]:
    found = _verb(commit)
    if found is None:
        return []
    verb, event = found
    actor = event.actor
    where = f"event {event.seq} ({_what(event)} by {actor})"
    out: list[str] = []
    why = policy.refusal(actor, event.identity, verb, event.model)
    if why is not None:
        out.append(f"{where}: {why.message} (by {why.by})")
    prod = policy.production
    m = state.models.get(event.model)
    for e in commit:
        if e.kind == ev.ALIAS_SET and prod.alias and e.key == prod.alias:
            enters = any(x.kind == ev.STAGE_CHANGED and x.to_value == prod.stage for x in commit)
            if not enters:
                out.append(f"event {e.seq}: alias {prod.alias} moved to v{e.version} without a move into {prod.stage}")
    if verb.startswith("transition:") and m is not None:
        vs = m.get(event.version or 0)
        stage = event.to_value or ""
        if vs is None:
            return out  # the fold reports events naming missing versions
        if stage not in policy.allowed_targets(vs.stage) and stage != vs.stage:
            out.append(f"{where}: the policy does not allow {vs.stage} -> {stage}")
        if stage in policy.gates:
            try:
                gate_results(policy, actor, m, vs, stage, identity=event.identity)
            except PolicyError as e:
                out.append(f"{where}: the gate was not met when it was committed ({e.message})")
    return out
