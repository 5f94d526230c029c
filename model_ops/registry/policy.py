"""The registry policy: stages, allowed transitions, gates, retention and access control, from YAML.

The root's policy governs: ``<root>/registry/policy.yaml`` (local or on S3), or the shipped
``default_policy.yaml`` when the root has none. A policy the caller brings (``--policy FILE``,
``$MODEL_OPS_POLICY``, ``Registry.open(policy=...)``) can only narrow it, never widen it, so whoever may pass a
command-line option cannot talk their way past the registry's rules (see :meth:`Policy.narrowed_by`): a request is
allowed only when both policies allow it, the transitions are those both allow, the gates are those of both (the
larger approval count, the tighter metric bounds), four-eyes is the stricter of the two, and every ``require_*``
setting is on when either policy sets it (a list of stages: the union). The stages, production rules and retention are the root's alone.

Every event records which policy decided it (:attr:`Policy.digest`: ``root=sha256:…`` or ``default=sha256:…``, the
SHA-256 of the file's bytes, then ``;narrowed=sha256:…`` when a narrowing policy took part), so an auditor can tell
which rules were in force and ``sha256sum`` the file that claims to be them.

A policy that does not hold together (a transition to an unknown stage, a role that does
not exist, a retention period for a stage that cannot be archived) fails to load with the field named, instead of
failing later in the middle of a promotion.

A policy written before retention existed (no ``retention`` section) gets the shipped defaults for the stages it
has: periods naming a stage it lacks, or a stage it cannot archive from, are left out, and without the archive stage
nothing expires. A ``retention`` section that is written down is checked strictly.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from model_ops.bounds import Bound
from model_ops.errors import UsageError
from model_ops.location import Location, s3_client
from model_ops.registry.refs import TEAM_RE

POLICY_ENV = "MODEL_OPS_POLICY"
POLICY_FILE = "policy.yaml"  # under <root>/registry/
# The audit event written when the root's policy is not the one that decided the newest event (see Registry).
POLICY_CHANGED = "policy_changed"
# The verb a role needs to write under an actor name other than the identity the backend proved (see Access).
IMPERSONATE = "impersonate"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Gate(_Strict):
    approvals: int = Field(0, ge=0)
    metrics: dict[str, Bound] = Field(default_factory=dict)

    def metric_results(self, metrics: Mapping[str, float | None]) -> tuple[dict[str, dict], list[str]]:
        """Each metric bound checked against a version's recorded ``metrics`` (with :meth:`Bound.violation`, so a
        missing or NaN metric fails): the per-metric results recorded in the audit event, and one message per
        failure (``roc_auc = 0.6500, needs >= 0.7``)."""
        results: dict[str, dict] = {}
        failures: list[str] = []
        for metric, bound in self.metrics.items():
            value = metrics.get(metric)
            why = bound.violation(metric, value)
            results[f"metric:{metric}"] = {"value": value, "min": bound.min, "max": bound.max, "passed": why is None}
            if why is not None:
                failures.append(why)
        return results, failures


# The shipped retention periods, in days: how long a version may stay in a stage before retention archives it.
# The production stage's period counts from when a version stopped serving in production.
DEFAULT_RETENTION_DAYS: dict[str, float] = {"development": 30.0, "staging": 60.0, "production": 180.0}


class Retention(_Strict):
    """How long versions may wait in each stage before ``model_ops.ops.retention`` archives them.

    ``days`` maps a stage to its period; a stage without one never expires. The production stage's period is
    for versions that have served in production and no longer do, counted from when they stopped (whatever stage
    they were moved to). ``staging_stage`` is the stage whose period a model's
    ``monitoring.staging_retention_days`` overrides (None: specs cannot override). Archiving is a stage change to
    ``archive_stage``; nothing is deleted.
    """

    archive_stage: str = "archived"
    staging_stage: str | None = "staging"
    days: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_RETENTION_DAYS))

    @model_validator(mode="after")
    def _positive(self) -> Retention:
        bad = sorted(stage for stage, d in self.days.items() if not d > 0)
        if bad:
            raise ValueError(f"retention.days must be positive numbers of days; not for {', '.join(bad)}")
        return self


class ProductionRules(_Strict):
    stage: str = "production"
    alias: str | None = "champion"
    replaced_goes_to: str = "archived"
    rolled_back_goes_to: str = "archived"


# A grant in a role: a verb pattern, optionally ``@`` and a model-name pattern (``register@dev-*``). Patterns are
# shell-style (``*``, ``?``, ``[...]``; ``*`` also matches the ``/`` of a team model's name).
GRANT_RE = re.compile(r"[a-z*?\[\]][a-z0-9_:*?\[\]!-]*(@[A-Za-z0-9_.*?\[\]!/-]+)?")
ActorRoles = dict[str, list[str] | str]


def _is_pattern(key: str) -> bool:
    return any(c in key for c in "*?[")


def _lookup(table: ActorRoles, name: str) -> list[str] | None:
    """The roles ``table`` gives ``name``: its own entry, else every pattern key that matches it (in file order),
    else None. Pattern keys let a policy name many identities at once (``arn:aws:sts::*:assumed-role/ml/*``)."""
    exact = table.get(name)
    if exact is not None:
        return [exact] if isinstance(exact, str) else list(exact)
    found: list[str] = []
    for key, got in table.items():
        if _is_pattern(key) and fnmatch.fnmatchcase(name, key):
            found += [got] if isinstance(got, str) else list(got)
    return list(dict.fromkeys(found)) if found else None


def grant_matches(grant: str, verb: str, model: str | None) -> bool:
    """Whether ``grant`` (``verb`` or ``verb@models``) covers ``verb`` on ``model``. A grant limited to some models
    covers nothing when the model is not known: it must never stand for "every model"."""
    verb_pattern, _, model_pattern = grant.partition("@")
    if not fnmatch.fnmatchcase(verb, verb_pattern):
        return False
    return not model_pattern or (model is not None and fnmatch.fnmatchcase(model, model_pattern))


def namespace_of(model: str | None) -> str | None:
    """The team of a ``team/model`` name (None for a name without one)."""
    return model.split("/", 1)[0] if model and "/" in model else None


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused: the message (without the version), what to do, and which policy refused it."""

    message: str
    hint: str
    by: str


class Namespace(_Strict):
    """Grants on the models named ``<team>/...`` only: the team's members (actor name or proven identity, patterns
    allowed, as in ``access.actors``) and their roles there. A role is looked up in the team's own ``roles`` first,
    then in the policy's. These grants add to the policy-wide ones for the team's models and reach no other model,
    so a team owns its namespace without being able to touch anyone else's."""

    actors: ActorRoles = Field(default_factory=dict)
    roles: dict[str, list[str]] = Field(default_factory=dict)


class Access(_Strict):
    """Who may do what, on which models.

    ``actors`` maps a name (a claimed actor, or an identity the backend proved: an OS user, an AWS ARN; keys may be
    patterns) to roles; a name not listed gets ``default_role``. ``roles`` maps a role to grants: a verb pattern,
    optionally limited to models (``register@dev-*``). ``identities`` binds a proven identity to the actor name it
    may use without impersonating (``arn:aws:iam::123456789012:user/alice: alice``); an unbound identity's name is
    the identity itself. ``namespaces`` gives teams grants on their own ``team/model`` names.

    Writing under a name other than one's own (``--actor``, ``$MODEL_OPS_ACTOR``) needs the ``impersonate`` verb
    in the identity's own policy-wide roles (never from a team's); the request is then judged with the claimed
    name's roles. Without ``impersonate`` a claim is refused, so a self-asserted name cannot borrow another
    person's roles.
    """

    default_role: str | None = "maintainer"
    actors: ActorRoles = Field(default_factory=dict)
    identities: dict[str, str] = Field(default_factory=dict)
    roles: dict[str, list[str]] = Field(default_factory=dict)
    namespaces: dict[str, Namespace] = Field(default_factory=dict)
    # Where an s3:// root's writers are identified (STS GetCallerIdentity). Only the root's policy names it, never
    # the caller's environment: an endpoint the caller chooses could vouch for any identity. Unset: AWS's regional
    # STS over TLS when the store is AWS S3 itself; for an S3-compatible store (a custom endpoint), the access key
    # the store accepted, without asking any STS.
    sts_endpoint: str | None = None

    def roles_of(self, actor: str, model: str | None = None, *, teams: bool = True) -> list[str]:
        """``actor``'s roles: the policy-wide ones, then (for a team model, unless ``teams`` is false) ``team/role``
        for its roles there."""
        got = _lookup(self.actors, actor)
        roles = got if got is not None else ([self.default_role] if self.default_role else [])
        team = namespace_of(model) if teams else None
        section = self.namespaces.get(team) if team else None
        if section is not None:
            roles = roles + [f"{team}/{r}" for r in _lookup(section.actors, actor) or []]
        return roles

    def _grants(self, role: str) -> list[str]:
        team, _, name = role.rpartition("/")
        if not team:
            return self.roles.get(role, [])
        section = self.namespaces[team]
        return section.roles[name] if name in section.roles else self.roles.get(name, [])

    def allows(self, actor: str, verb: str, model: str | None = None, *, teams: bool = True) -> bool:
        """Whether ``actor``'s roles grant ``verb`` on ``model`` (None: a grant limited to models does not count;
        ``teams`` false: only the policy-wide roles count)."""
        return any(
            grant_matches(g, verb, model)
            for role in self.roles_of(actor, model, teams=teams)
            for g in self._grants(role)
        )

    def who_may(self, verb: str, model: str | None = None) -> list[str]:
        """The roles that grant ``verb`` on ``model`` (the team's roles as ``team/role``)."""
        roles = list(self.roles)
        team = namespace_of(model)
        if team in self.namespaces:
            roles += [f"{team}/{r}" for r in {*self.namespaces[team].roles, *self.roles}]
        return sorted({r for r in roles if any(grant_matches(g, verb, model) for g in self._grants(r))})

    def name_of(self, identity: str) -> str:
        """The actor name ``identity`` writes under without impersonating: its binding in ``identities`` (exact
        first, then the first matching pattern), else the identity itself."""
        if identity in self.identities:
            return self.identities[identity]
        for key, name in self.identities.items():
            if _is_pattern(key) and fnmatch.fnmatchcase(identity, key):
                return name
        return identity

    def refusal(self, actor: str, identity: str | None, verb: str, model: str | None, by: str) -> Refusal | None:
        """Why this access section refuses ``actor`` (proven to be ``identity``) doing ``verb`` on ``model``, or
        None when it allows it."""
        where = f" on {model}" if model else ""
        if identity is not None:
            own = self.name_of(identity)
            # Acting under another name is a policy-wide privilege: a team's grants cannot confer it, or a team
            # member could sign team models with the name of someone whose rights reach further.
            if actor not in (own, identity) and not self.allows(own, IMPERSONATE, model, teams=False):
                roles = ", ".join(self.roles_of(own, model, teams=False)) or "no role"
                return Refusal(
                    f"{identity!r} (role {roles}) may not act as actor {actor!r}{where}: "
                    f"writing under another name needs the {IMPERSONATE} verb",
                    f"drop --actor and $MODEL_OPS_ACTOR to act as {own!r}, or ask for a role that grants {IMPERSONATE}",
                    by,
                )
        if self.allows(actor, verb, model):
            return None
        roles = ", ".join(self.roles_of(actor, model)) or "no role"
        granted_by = self.who_may(verb, model)
        return Refusal(
            f"actor {actor!r} (role {roles}) may not {verb.replace(':', ' ')}{where}",
            ("roles that may: " + ", ".join(granted_by)) if granted_by else "no role in the policy grants it",
            by,
        )

    def problems(self) -> list[str]:
        """What does not hold together: undefined roles, malformed grants, team names models could not have."""
        out: list[str] = []
        roles = set(self.roles)
        if self.default_role and self.default_role not in roles:
            out.append(f"access.default_role {self.default_role!r} is not a defined role")
        for actor, got in self.actors.items():
            for role in [got] if isinstance(got, str) else got:
                if role not in roles:
                    out.append(f"access.actors.{actor} names undefined role {role!r}")
        grants = [(f"access.roles.{r}", g) for r, gs in self.roles.items() for g in gs]
        for team, section in self.namespaces.items():
            if not TEAM_RE.fullmatch(team):
                out.append(
                    f"access.namespaces.{team}: a team name is letters, digits, '_', '.' and '-', starting with a "
                    "letter or digit (max 64)"
                )
            known = roles | set(section.roles)
            for actor, got in section.actors.items():
                for role in [got] if isinstance(got, str) else got:
                    if role not in known:
                        out.append(f"access.namespaces.{team}.actors.{actor} names undefined role {role!r}")
            grants += [(f"access.namespaces.{team}.roles.{r}", g) for r, gs in section.roles.items() for g in gs]
        for where, grant in grants:
            if not GRANT_RE.fullmatch(grant):
                out.append(f"{where}: {grant!r} is not a grant (VERB or VERB@MODELS, e.g. 'register@dev-*')")
        return out


STAGE_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")  # as references parse them (models:/NAME/STAGE)


class Policy(_Strict):
    stages: list[str]
    initial_stage: str
    transitions: dict[str, list[str]]
    production: ProductionRules = Field(default_factory=ProductionRules)
    gates: dict[str, Gate] = Field(default_factory=dict)
    retention: Retention = Field(default_factory=Retention)
    # Whose approvals count towards a gate (gates.py): "proven" (``true``), distinct identities the backend proved,
    # never the transitioning one; "claimed", distinct actor names, which one person can meet with two names (for
    # a single-user setup, not a control); "off" (``false``), every approval counts.
    four_eyes: Literal["proven", "claimed", "off"] = "proven"
    require_signed_artifacts: bool = False
    # Weight files that unpickle on load (.bin, .pt, .ckpt …) can run code: refused in base models and adapters
    # unless allowed here.
    allow_pickle_weights: bool = False
    # Stages whose versions must carry valid signatures (model_ops.registry.attest): checked at load and fetch, on
    # entering the stage, and, for the production stage, on deployment. require_signed_artifacts means every stage.
    require_signature: list[str] = Field(default_factory=list)
    access: Access = Field(default_factory=Access)
    source: str = "default"
    # Set by the loader (see load_policy and narrowed_by), not by the YAML: which files decided, and the access
    # sections of narrowing policies that must allow a request too.
    _digest: str = PrivateAttr(default="")
    _root_file: str = PrivateAttr(default="")
    _raw: bytes = PrivateAttr(default=b"")  # the root file's bytes, kept by PolicyArchive for the audit replay
    _narrowing: tuple[tuple[str, Access], ...] = PrivateAttr(default=())

    @field_validator("four_eyes", mode="before")
    @classmethod
    def _four_eyes(cls, value: Any) -> Any:
        return {True: "proven", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        known = set(self.stages)
        problems = [
            f"stage {stage!r} must be lowercase letters, digits, '_' or '-', starting with a letter"
            for stage in self.stages
            if not STAGE_RE.fullmatch(stage)
        ]
        if self.initial_stage not in known:
            problems.append(f"initial_stage {self.initial_stage!r} is not one of stages {self.stages}")
        for src, targets in self.transitions.items():
            for stage in [src, *targets]:
                if stage not in known:
                    problems.append(f"transitions.{src} names unknown stage {stage!r}")
        for name, value in (
            ("production.stage", self.production.stage),
            ("production.replaced_goes_to", self.production.replaced_goes_to),
            ("production.rolled_back_goes_to", self.production.rolled_back_goes_to),
        ):
            if value not in known:
                problems.append(f"{name} {value!r} is not one of stages {self.stages}")
        for stage in self.gates:
            if stage not in known:
                problems.append(f"gates.{stage} is not one of stages {self.stages}")
        for stage in self.require_signature:
            if stage not in known:
                problems.append(f"require_signature names {stage!r}, which is not one of stages {self.stages}")
        if "retention" in self.model_fields_set:
            problems += self._retention_problems()
        else:
            self.retention = self._fitted_default_retention()
        problems += self.access.problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _retention_problems(self) -> list[str]:
        known, r, problems = set(self.stages), self.retention, []
        if r.archive_stage not in known:
            problems.append(f"retention.archive_stage {r.archive_stage!r} is not one of stages {self.stages}")
        if r.staging_stage is not None and r.staging_stage not in known:
            problems.append(f"retention.staging_stage {r.staging_stage!r} is not one of stages {self.stages}")
        for stage in r.days:
            if stage not in known:
                problems.append(f"retention.days.{stage} is not one of stages {self.stages}")
            elif stage == r.archive_stage:
                problems.append(f"retention.days.{stage}: versions in the archive stage do not expire again")
            elif stage != self.production.stage and r.archive_stage not in self.allowed_targets(stage):
                problems.append(
                    f"retention.days.{stage}: the transitions do not allow {stage} -> {r.archive_stage}, "
                    f"so an expired version could not be archived (add it to transitions.{stage})"
                )
        return problems

    def _fitted_default_retention(self) -> Retention:
        """The shipped periods, reduced to what this policy's stages and transitions can carry out."""
        archive = Retention().archive_stage
        if archive not in self.stages:
            return Retention(archive_stage=archive, staging_stage=None, days={})
        defaults = {
            self.production.stage if stage == "production" else stage: d for stage, d in DEFAULT_RETENTION_DAYS.items()
        }
        days = {
            stage: d
            for stage, d in defaults.items()
            if stage in self.stages
            and stage != archive
            and (stage == self.production.stage or archive in self.allowed_targets(stage))
        }
        staging = Retention().staging_stage
        return Retention(archive_stage=archive, staging_stage=staging if staging in self.stages else None, days=days)

    def allowed_targets(self, stage: str) -> list[str]:
        return list(self.transitions.get(stage, []))

    def signature_required(self, stage: str) -> bool:
        """Whether versions in ``stage`` must carry valid signatures (see ``require_signature``)."""
        return self.require_signed_artifacts or stage in self.require_signature

    def retention_days(self, stage: str, staging_override: float | None = None) -> float | None:
        """The retention period of ``stage`` in days (None: it never expires), with a model's override of the
        staging stage's period."""
        if staging_override is not None and stage == self.retention.staging_stage:
            return float(staging_override)
        return self.retention.days.get(stage)

    # ------------------------------------------------------------------ which rules decide

    @property
    def digest(self) -> str:
        """Which policy decided, as recorded in every event's ``policy`` column: ``root=sha256:<hex>`` (the root's
        file) or ``default=sha256:<hex>`` (the shipped default: the root has none), then ``;narrowed=sha256:<hex>``
        for each narrowing policy. Each hex is the SHA-256 of the file's bytes."""
        return self._digest

    @property
    def root_file(self) -> str:
        """Where the root's policy lives (or would live): the file whose absence the registry notices."""
        return self._root_file

    def refusal(self, actor: str, identity: str | None, verb: str, model: str | None) -> Refusal | None:
        """Why ``actor`` (proven to be ``identity``) may not ``verb`` on ``model``: the root's access section and
        every narrowing one must each allow the request, impersonation included. None when all of them do."""
        own = self._root_file if self._digest.startswith("root=") else "the shipped default"
        sections = [(f"the registry's policy ({own})", self.access)]
        sections += [(f"the narrowing policy {source}", access) for source, access in self._narrowing]
        for by, access in sections:
            why = access.refusal(actor, identity, verb, model, by)
            if why is not None:
                return why
        return None

    def name_of(self, identity: str) -> str:
        """The actor name ``identity`` writes under by default (its binding in the root's ``access.identities``)."""
        return self.access.name_of(identity)

    def narrowed_by(self, other: Policy) -> Policy:
        """This policy with ``other`` laid over it, which can only take permissions away.

        Access: both must allow each request. Transitions: only moves both allow. Gates, per stage of this
        policy: the larger approval count and, per metric, the tighter bounds (bounds that no longer overlap pass
        nothing). Four-eyes: the stricter mode. Every ``require_*`` setting: a flag is on when either sets it, a list of stages is the union. Stages,
        initial stage, production rules and retention stay this policy's: ``other`` cannot rename or re-route them.
        """
        transitions = {
            src: [t for t in targets if t in other.transitions.get(src, [])]
            for src, targets in self.transitions.items()
        }
        gates = {
            stage: _stricter(self.gates.get(stage), other.gates.get(stage))
            for stage in self.stages
            if stage in self.gates or stage in other.gates
        }
        flags: dict[str, Any] = {}
        for name in type(self).model_fields:
            if not name.startswith("require"):
                continue
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, bool):
                flags[name] = bool(mine or theirs)
            elif isinstance(mine, list):  # stages a requirement applies to: those of either, among this one's stages
                flags[name] = [x for x in self.stages if x in mine or x in theirs]
        four_eyes = max(self.four_eyes, other.four_eyes, key=FOUR_EYES_STRICTNESS.index)
        out = self.model_copy(
            update={
                "transitions": transitions,
                "gates": gates,
                "four_eyes": four_eyes,
                "source": f"{self.source} narrowed by {other.source}",
                **flags,
            }
        )
        out._digest = f"{self._digest};narrowed={other._file_digest()}"
        out._root_file = self._root_file
        out._raw = self._raw
        out._narrowing = (*self._narrowing, (other.source, other.access), *other._narrowing)
        return out

    def _file_digest(self) -> str:
        return self._digest.split(";", 1)[0].split("=", 1)[-1]


FOUR_EYES_STRICTNESS = ("off", "claimed", "proven")


def _stricter(a: Gate | None, b: Gate | None) -> Gate:
    """One gate that passes only what both ``a`` and ``b`` pass."""
    if a is None or b is None:
        return (a or b or Gate(approvals=0)).model_copy(deep=True)
    metrics = dict(a.metrics)
    for metric, bound in b.metrics.items():
        mine = metrics.get(metric)
        if mine is None:
            metrics[metric] = bound
            continue
        lows = [x for x in (mine.min, bound.min) if x is not None]
        highs = [x for x in (mine.max, bound.max) if x is not None]
        # Built without validation: bounds that do not overlap make a gate nothing passes, which is the intent.
        metrics[metric] = Bound.model_construct(min=max(lows) if lows else None, max=min(highs) if highs else None)
    return Gate.model_construct(approvals=max(a.approvals, b.approvals), metrics=metrics)


def root_part(digest: str | None) -> str | None:
    """The root's share of an event's ``policy`` column (``root=…`` or ``default=…``), None when not recorded."""
    return digest.split(";", 1)[0] if digest else None


def _parse(raw: bytes, source: str) -> Policy:
    try:
        doc = yaml.safe_load(raw.decode("utf-8")) or {}
    except UnicodeDecodeError:
        raise UsageError(f"policy {source} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise UsageError(f"policy {source} is not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"policy {source} must be a YAML mapping")
    if "source" in doc:
        raise UsageError(f"policy {source} sets 'source', which model_ops fills in itself", hint="remove it")
    try:
        policy = Policy(**doc, source=source)
    except ValidationError as e:
        details = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(policy)'}: {err['msg']}" for err in e.errors())
        raise UsageError(
            f"policy {source} is invalid: {details}", hint="compare it with model_ops/registry/default_policy.yaml"
        ) from None
    policy._digest = "file=sha256:" + hashlib.sha256(raw).hexdigest()
    return policy


def default_policy_text() -> str:
    return resources.files("model_ops.registry").joinpath("default_policy.yaml").read_text()


def _root_bytes(registry_location: Location) -> tuple[bytes | None, str]:
    """The bytes of the root's policy file (None when there is none) and where it is. Any other failure to read it
    (S3 access denied, a network error) is raised: falling back to the permissive default would hand out the
    maintainer role because a request failed."""
    if registry_location.is_s3:
        from botocore.exceptions import ClientError

        key = registry_location.key(POLICY_FILE)
        where = f"s3://{registry_location.bucket}/{key}"
        try:
            return s3_client().get_object(Bucket=registry_location.bucket, Key=key)["Body"].read(), where
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404", "NotFound"):
                raise
            return None, where
    local = registry_location.path / POLICY_FILE
    try:
        return local.read_bytes(), str(local)
    except (FileNotFoundError, NotADirectoryError):
        return None, str(local)


def root_policy(registry_location: Location) -> Policy:
    """The policy that governs the registry at ``registry_location``: its ``policy.yaml``, else the shipped
    default (its digest then starts ``default=``, which is how the registry tells "never had one" apart)."""
    raw, where = _root_bytes(registry_location)
    if raw is None:
        policy, origin = _parse(default_policy_text().encode(), "default"), "default"
    else:
        policy, origin = _parse(raw, where), "root"
    policy._digest = f"{origin}={policy._file_digest()}"
    policy._root_file = where
    policy._raw = raw if raw is not None else default_policy_text().encode()
    return policy


class PolicyArchive:
    """Every root policy a write was decided by, kept by digest (``registry/policies/<sha256>.yaml``), so that
    ``fsck`` replays each write against the very policy that decided it, after the file was edited or replaced,
    and a write claiming a policy nobody ever had is found. Files are written once and never changed."""

    def __init__(self, registry_location: Location) -> None:
        self.location = registry_location.child("policies")

    def keep(self, policy: Policy) -> None:
        raw = policy._raw
        if not raw:
            return
        name = hashlib.sha256(raw).hexdigest() + ".yaml"
        if self.location.is_s3:
            s3_client().put_object(Bucket=self.location.bucket, Key=self.location.key(name), Body=raw)
            return
        path = self.location.path / name
        if path.exists():
            return
        self.location.path.mkdir(parents=True, exist_ok=True)
        # A temporary name of its own per writer (threads share a pid), then one atomic rename into place.
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=self.location.path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def load(self, digest: str) -> Policy | None:
        """The policy whose root digest (``root=sha256:…`` or ``default=sha256:…``) is ``digest``, or None."""
        origin, _, rest = digest.partition("=")
        hexdigest = rest.removeprefix("sha256:")
        if not re.fullmatch(r"[0-9a-f]{64}", hexdigest) or origin not in ("root", "default"):
            return None
        raw: bytes | None = None
        shipped = default_policy_text().encode()
        if origin == "default" and hashlib.sha256(shipped).hexdigest() == hexdigest:
            raw = shipped
        else:
            name = hexdigest + ".yaml"
            try:
                if self.location.is_s3:
                    raw = (
                        s3_client().get_object(Bucket=self.location.bucket, Key=self.location.key(name))["Body"].read()
                    )
                else:
                    raw = (self.location.path / name).read_bytes()
            except Exception:  # not kept (or unreadable): the caller names the event that claims it
                return None
        if raw is None or hashlib.sha256(raw).hexdigest() != hexdigest:
            return None
        try:
            policy = _parse(raw, f"the policy {digest} kept in {self.location}")
        except UsageError:
            return None
        policy._digest = f"{origin}=sha256:{hexdigest}"
        return policy


def load_policy(registry_location: Location, path: str | os.PathLike[str] | None = None) -> Policy:
    """The root's policy, narrowed by ``path`` or ``$MODEL_OPS_POLICY`` when one is given (see
    :meth:`Policy.narrowed_by`). A narrowing file identical to the root's policy changes nothing and is not
    recorded as a narrowing."""
    governing = root_policy(registry_location)
    explicit = path or os.environ.get(POLICY_ENV)
    if not explicit:
        return governing
    p = Path(explicit)
    if not p.is_file():
        raise UsageError(f"policy file {p} does not exist", hint=f"fix {POLICY_ENV} or the path you passed")
    local = _parse(p.read_bytes(), str(p))
    if local._file_digest() == governing._file_digest():
        return governing
    return governing.narrowed_by(local)
