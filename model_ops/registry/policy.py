"""The registry policy: stages, allowed transitions, gates, and access control, from YAML.

Looked up in this order: an explicit path, ``$MODEL_OPS_POLICY``, ``<root>/registry/policy.yaml``, the shipped
``default_policy.yaml``. A policy that does not hold together (a transition to an unknown stage, a role that does
not exist) fails to load with the field named, instead of failing later in the middle of a promotion.
"""

from __future__ import annotations

import fnmatch
import os
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model_ops.errors import UsageError
from model_ops.location import Location, s3_client

POLICY_ENV = "MODEL_OPS_POLICY"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetricBound(_Strict):
    min: float | None = None
    max: float | None = None


class Gate(_Strict):
    approvals: int = Field(0, ge=0)
    metrics: dict[str, MetricBound] = Field(default_factory=dict)


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
        return any(fnmatch.fnmatchcase(verb, pattern)
                   for role in self.roles_of(actor) for pattern in self.roles.get(role, []))

    def who_may(self, verb: str) -> list[str]:
        return sorted(r for r, pats in self.roles.items() if any(fnmatch.fnmatchcase(verb, p) for p in pats))


class Policy(_Strict):
    stages: list[str]
    initial_stage: str
    transitions: dict[str, list[str]]
    production: ProductionRules = Field(default_factory=ProductionRules)
    gates: dict[str, Gate] = Field(default_factory=dict)
    four_eyes: bool = True
    require_signed_artifacts: bool = False
    access: Access = Field(default_factory=Access)
    source: str = "default"

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        known = set(self.stages)
        problems = []
        if self.initial_stage not in known:
            problems.append(f"initial_stage {self.initial_stage!r} is not one of stages {self.stages}")
        for src, targets in self.transitions.items():
            for stage in [src, *targets]:
                if stage not in known:
                    problems.append(f"transitions.{src} names unknown stage {stage!r}")
        for name, value in (("production.stage", self.production.stage),
                            ("production.replaced_goes_to", self.production.replaced_goes_to),
                            ("production.rolled_back_goes_to", self.production.rolled_back_goes_to)):
            if value not in known:
                problems.append(f"{name} {value!r} is not one of stages {self.stages}")
        for stage in self.gates:
            if stage not in known:
                problems.append(f"gates.{stage} is not one of stages {self.stages}")
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

    def allowed_targets(self, stage: str) -> list[str]:
        return list(self.transitions.get(stage, []))


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
        raise UsageError(f"policy {source} is invalid: {details}",
                         hint="compare it with model_ops/registry/default_policy.yaml") from None


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
