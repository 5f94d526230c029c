"""Model references: the same strings in the command line, the Python API and config.

``models:/NAME/3`` (version number), ``models:/NAME/1.2.0`` (semantic version), ``models:/NAME@champion`` (alias;
``@latest`` is the highest version) and ``models:/NAME/production`` (the version in a stage). The ``models:/``
prefix may be left out.

A name may carry one team namespace, ``team/model`` (the policy can give a team grants on its own names). The
reference grammar stays unambiguous because the part after the last ``/`` is always the selector:
``models:/NAME/VERSION|SEMVER|STAGE``, so ``models:/fraud/scorer/3`` is version 3 of ``fraud/scorer`` and
``models:/fraud/scorer`` is model ``fraud`` in stage ``scorer`` (an unknown stage, so an error, never a silent
pick). ``@ALIAS`` ends the name the same way (``models:/fraud/scorer@champion``). Neither part can be ``.`` or
``..`` (both start with a letter or digit) and there is at most one ``/``; model names never become local paths
(the Dagster layer's model names are the spec names, which have no ``/``), so a namespace cannot reach outside
the root.

``prompts:/NAME@ALIAS`` (and every other form under ``prompts:/``) names a version the same way and also asks that
it be a prompt: prompts share the registry, its aliases and stages with models, and resolving a ``prompts:/``
reference to anything else is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from model_ops.errors import UsageError
from model_ops.llm.layout import PROMPT

PREFIX = "models:/"
KINDS = {"models": "models:/", "prompts": "prompts:/"}
KIND_FLAVORS = {"prompts": PROMPT}  # the flavor a reference of this kind must resolve to
TEAM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
SEMVER_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
RESERVED_ALIASES = frozenset({"latest"})
REF_FORMS = "models:/NAME/VERSION, models:/NAME/MAJOR.MINOR.PATCH, models:/NAME@ALIAS or models:/NAME/STAGE"


@dataclass(frozen=True)
class Ref:
    name: str
    version: int | None = None
    semver: str | None = None
    alias: str | None = None
    stage: str | None = None
    kind: str = "models"  # "prompts": the version must be a prompt

    def __str__(self) -> str:
        prefix = KINDS[self.kind]
        if self.alias:
            return f"{prefix}{self.name}@{self.alias}"
        return f"{prefix}{self.name}/{self.version or self.semver or self.stage}"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid model name {name!r}",
            hint="use letters, digits, '_', '.' and '-', starting with a letter or digit (max 128), with at most one "
            "'/' after a team name (team/model)",
        )
    return name


def check_alias(alias: str, *, allow_reserved: bool = False) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        raise UsageError(
            f"invalid alias {alias!r}",
            hint="use lowercase letters, digits, '_' and '-', starting with a letter (max 64)",
        )
    if not allow_reserved and alias in RESERVED_ALIASES:
        raise UsageError(
            f"alias {alias!r} is reserved: it always points at the highest version", hint="choose another alias name"
        )
    return alias


def parse_ref(text: str) -> Ref:
    if not isinstance(text, str) or not text.strip():
        raise UsageError("empty model reference", hint=f"use {REF_FORMS}")
    raw = text.strip()
    kind, body = "models", raw
    for candidate, prefix in KINDS.items():
        if raw.startswith(prefix):
            kind, body = candidate, raw[len(prefix) :]
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            return Ref(check_name(name), alias=check_alias(alias, allow_reserved=True), kind=kind)
        if "/" not in body:
            raise UsageError(f"reference {raw!r} names no version, alias or stage", hint=f"use {REF_FORMS}")
        name, what = body.rsplit("/", 1)  # the selector is the last part: a name may be team/model
        check_name(name)
        if what.isdigit():
            version = int(what)
            if version < 1:
                raise UsageError(f"version numbers start at 1, not {what}")
            return Ref(name, version=version, kind=kind)
        if SEMVER_RE.fullmatch(what):
            return Ref(name, semver=what, kind=kind)
        if re.fullmatch(r"[a-z][a-z0-9_-]*", what):
            return Ref(name, stage=what, kind=kind)
    except UsageError as e:
        raise UsageError(f"malformed model reference {raw!r}: {e.message}", hint=e.hint or f"use {REF_FORMS}") from None
    raise UsageError(f"malformed model reference {raw!r}", hint=f"use {REF_FORMS}")
