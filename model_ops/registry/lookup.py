"""How a reference picks a version: one set of rules for the folded state and for the snapshot.

Both keep a model's versions in their own way (objects in memory, rows in SQLite); each offers the few questions
below, and :func:`find_number` answers a reference from them, with the same errors either way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from model_ops.errors import NotFoundError, UsageError
from model_ops.registry.refs import KIND_FLAVORS, KINDS, Ref


class VersionIndex(Protocol):
    def count(self) -> int:
        """How many versions the model has (the newest is number ``count()``)."""
        ...

    def semver_number(self, semver: str) -> int | None: ...

    def alias_number(self, alias: str) -> int | None: ...

    def alias_names(self) -> list[str]: ...

    def newest_in_stage(self, stage: str) -> int | None: ...


def unknown_model(name: str, root: object, known: Iterable[str]) -> NotFoundError:
    names = sorted(known)
    return NotFoundError(
        f"no model named {name!r} in {root}",
        hint=("models here: " + ", ".join(names[:20])) if names else "the registry is empty",
    )


def find_number(index: VersionIndex, ref: Ref, stages: Iterable[str]) -> int:
    """The version number ``ref`` names in the model ``index`` describes; NotFoundError when there is none."""
    number: int | None = None
    if ref.version is not None:
        number = ref.version
        if number > index.count():
            raise NotFoundError(f"{ref.name} has no version {number} (latest is {index.count()})")
    elif ref.semver is not None:
        number = index.semver_number(ref.semver)
        if number is None:
            raise NotFoundError(f"{ref.name} has no version with semver {ref.semver}")
    elif ref.alias is not None:
        if ref.alias == "latest":
            number = index.count()
        else:
            number = index.alias_number(ref.alias)
            if number is None:
                raise NotFoundError(
                    f"{ref.name} has no alias {ref.alias!r}",
                    hint="aliases: " + (", ".join(sorted(index.alias_names())) or "none yet"),
                )
    elif ref.stage is not None:
        known = list(stages)
        if ref.stage not in known:
            raise UsageError(f"unknown stage {ref.stage!r} in {ref}", hint="stages: " + ", ".join(known))
        number = index.newest_in_stage(ref.stage)
        if number is None:
            raise NotFoundError(f"{ref.name} has no version in stage {ref.stage}")
    if not number or not 1 <= number <= index.count():
        raise NotFoundError(f"{ref} does not resolve to a version")
    return number


def check_kind(ref: Ref, flavor: str, found: str) -> None:
    """Refuse a ``prompts:/`` reference that resolved to something other than a prompt."""
    wanted = KIND_FLAVORS.get(ref.kind)
    if wanted is not None and flavor != wanted:
        raise UsageError(
            f"{ref} resolved to {found}, a {flavor!r} artifact, not a {wanted}",
            hint=f"name models with models:/ and prompts with {KINDS[ref.kind]}",
        )
