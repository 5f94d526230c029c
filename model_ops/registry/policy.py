"""The registry policy: stages, allowed transitions, gates, retention and access control, from YAML.

Looked up in this order: an explicit path, ``$MODEL_OPS_POLICY``, ``<root>/registry/policy.yaml``, the shipped
``default_policy.yaml``. A policy that does not hold together (a transition to an unknown stage, a role that does
not exist, a retention period for a stage that cannot be archived) fails to load with the field named, instead of
failing later in the middle of a promotion.

A policy written before retention existed (no ``retention`` section) gets the shipped defaults for the stages it
has: periods naming a stage it lacks, or a stage it cannot archive from, are left out, and without the archive stage
nothing expires. A ``retention`` section that is written down is checked strictly.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model_ops.bounds import Bound
from model_ops.errors import UsageError
from model_ops.location import Location, s3_client

POLICY_ENV = "MODEL_OPS_POLICY"


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


class Access(_Strict):
    default_role: str | None = "maintainer"
    actors: dict[str, list[str] | str] = Field(default_factory=dict)
    roles: dict[str, list[str]] = Field(default_factory=dict)

    def roles_of(self, actor: str) -> list[str]:
        got = self.actors.get(actor)
        if got is None:
            return [self.default_role] if self.default_role else []
        return [got] if isinstance(got, str) else list(got)

    def allows(self, actor: str, verb: str) -> bool:
        return any(
            fnmatch.fnmatchcase(verb, pattern) for role in self.roles_of(actor) for pattern in self.roles.get(role, [])
        )

    def who_may(self, verb: str) -> list[str]:
        return sorted(r for r, pats in self.roles.items() if any(fnmatch.fnmatchcase(verb, p) for p in pats))


STAGE_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")  # as references parse them (models:/NAME/STAGE)


class Policy(_Strict):
    stages: list[str]
    initial_stage: str
    transitions: dict[str, list[str]]
    production: ProductionRules = Field(default_factory=ProductionRules)
    gates: dict[str, Gate] = Field(default_factory=dict)
    retention: Retention = Field(default_factory=Retention)
    four_eyes: bool = True
    require_signed_artifacts: bool = False
    # Stages whose versions must carry valid signatures (model_ops.registry.attest): checked at load and fetch, on
    # entering the stage, and, for the production stage, on deployment. require_signed_artifacts means every stage.
    require_signature: list[str] = Field(default_factory=list)
    access: Access = Field(default_factory=Access)
    source: str = "default"

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
        roles = set(self.access.roles)
        if self.access.default_role and self.access.default_role not in roles:
            problems.append(f"access.default_role {self.access.default_role!r} is not a defined role")
        for actor, got in self.access.actors.items():
            for role in [got] if isinstance(got, str) else got:
                if role not in roles:
                    problems.append(f"access.actors.{actor} names undefined role {role!r}")
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


def _parse(text: str, source: str) -> Policy:
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"policy {source} is not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"policy {source} must be a YAML mapping")
    try:
        return Policy(**doc, source=source)
    except ValidationError as e:
        details = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(policy)'}: {err['msg']}" for err in e.errors())
        raise UsageError(
            f"policy {source} is invalid: {details}", hint="compare it with model_ops/registry/default_policy.yaml"
        ) from None


def default_policy_text() -> str:
    return resources.files("model_ops.registry").joinpath("default_policy.yaml").read_text()


def load_policy(registry_location: Location, path: str | os.PathLike[str] | None = None) -> Policy:
    explicit = path or os.environ.get(POLICY_ENV)
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise UsageError(f"policy file {p} does not exist", hint=f"fix {POLICY_ENV} or the path you passed")
        return _parse(p.read_text(), str(p))
    if registry_location.is_s3:
        from botocore.exceptions import ClientError

        key = registry_location.key("policy.yaml")
        try:
            body = s3_client().get_object(Bucket=registry_location.bucket, Key=key)["Body"].read().decode()
            return _parse(body, f"s3://{registry_location.bucket}/{key}")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404", "NotFound"):
                raise
    else:
        local = registry_location.path / "policy.yaml"
        if local.is_file():
            return _parse(local.read_text(), str(local))
    return _parse(default_policy_text(), "default")
