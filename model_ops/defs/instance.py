"""Which Dagster instance model_ops runs on: the embedded SQLite one by default, or the shared one on PostgreSQL.

``MODEL_OPS_INSTANCE`` selects it (``sqlite`` or ``postgres``). The choice only matters when a ``$DAGSTER_HOME``
is set up (``model-ops demo`` into a new one); an existing ``dagster.yaml`` there is always used as it is, so a
team's own instance configuration is never overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path

from model_ops.errors import ModelOpsError, UsageError

ENV = "MODEL_OPS_INSTANCE"
EMBEDDED_YAML = "telemetry:\n  enabled: false\n"  # SQLite in $DAGSTER_HOME itself, Dagster's default storage
POSTGRES_YAML = Path(__file__).with_name("dagster.postgres.yaml")
POSTGRES_ENV = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")
KINDS = ("sqlite", "postgres")


def selected() -> str:
    """The instance kind ``MODEL_OPS_INSTANCE`` asks for (``sqlite`` when unset); a clear error otherwise."""
    kind = (os.environ.get(ENV) or "sqlite").strip().lower()
    if kind not in KINDS:
        raise UsageError(
            f"{ENV}={os.environ.get(ENV)!r} names no Dagster instance", hint=f"use one of: {', '.join(KINDS)}"
        )
    return kind


def instance_yaml(kind: str) -> str:
    """The ``dagster.yaml`` of instance ``kind``; for Postgres, only once its connection is in the environment."""
    if kind == "sqlite":
        return EMBEDDED_YAML
    missing = [name for name in POSTGRES_ENV if name not in os.environ]
    if missing:
        raise UsageError(
            f"{ENV}=postgres needs the database connection in the environment; missing: {', '.join(missing)}",
            hint="set them (DAGSTER_PG_PASSWORD may be empty for trust authentication), or unset "
            f"{ENV} for the embedded SQLite instance",
        )
    return POSTGRES_YAML.read_text()


def prepare_home(dagster_home: str | None) -> Path:
    """``dagster_home`` (default ``$DAGSTER_HOME``, else ``./.dagster_home``) with a ``dagster.yaml``: the one
    there, or the selected instance's written there; ``DAGSTER_HOME`` is set to it for this process."""
    home = Path(dagster_home or os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    config = home / "dagster.yaml"
    if not config.exists():
        text = instance_yaml(selected())
        home.mkdir(parents=True, exist_ok=True)
        config.write_text(text)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


class InstanceUnavailableError(ModelOpsError):
    """The Dagster instance's database could not be reached or refused the connection; nothing was run."""

    exit_code = 1


def unavailable(home: str | Path, exc: BaseException) -> InstanceUnavailableError | None:
    """``exc`` as an :class:`InstanceUnavailableError` when it is the instance's database failing to connect (the
    server down, a wrong host, port, database, user or password), else None."""
    from sqlalchemy.exc import OperationalError

    try:
        from dagster_postgres.utils import DagsterPostgresException
    except ImportError:  # pragma: no cover - dagster-postgres is a dependency
        DagsterPostgresException = OperationalError  # noqa: N806
    if not isinstance(exc, (DagsterPostgresException, OperationalError)):
        return None
    cause = exc.__cause__ or exc
    cause = getattr(cause, "orig", None) or cause  # the driver's own message, without SQLAlchemy's wrapping
    where = "the database in its dagster.yaml"
    if all(name in os.environ for name in POSTGRES_ENV[:2] + POSTGRES_ENV[4:]):
        where = f"{os.environ['DAGSTER_PG_HOST']}:{os.environ['DAGSTER_PG_PORT']}/{os.environ['DAGSTER_PG_DB']}"
    reason = " ".join(str(cause).split())[:300]
    return InstanceUnavailableError(
        f"cannot reach the Dagster instance's database ({where}, configured in {Path(home) / 'dagster.yaml'}): {reason}",
        hint="check that the server is up and the DAGSTER_PG_* settings are right, then run the command again; "
        "nothing was run",
    )
