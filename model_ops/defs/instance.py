"""Which Dagster instance model_ops runs on: the embedded SQLite one by default, or the shared one on PostgreSQL.

``MODEL_OPS_INSTANCE`` selects it (``sqlite`` or ``postgres``) when a ``$DAGSTER_HOME`` is set up (``model-ops
demo`` into a new one). An existing ``dagster.yaml`` there is used as it is, so a team's own instance
configuration is never overwritten; asking for the other kind than the one it configures is refused, not ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from model_ops.errors import InstanceUnavailableError, UsageError

ENV = "MODEL_OPS_INSTANCE"
EMBEDDED_YAML = "telemetry:\n  enabled: false\n"  # SQLite in $DAGSTER_HOME itself, Dagster's default storage
POSTGRES_YAML = Path(__file__).with_name("dagster.postgres.yaml")
POSTGRES_ENV = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")
KINDS = ("sqlite", "postgres")
COMPUTE_LOGS_PREFIX = "dagster-compute-logs"


def selected() -> str | None:
    """The instance kind ``MODEL_OPS_INSTANCE`` asks for (None when unset); a clear error for an unknown one."""
    raw = os.environ.get(ENV)
    if not raw or not raw.strip():
        return None
    kind = raw.strip().lower()
    if kind not in KINDS:
        raise UsageError(f"{ENV}={raw!r} names no Dagster instance", hint=f"use one of: {', '.join(KINDS)}")
    return kind


def check_postgres_env() -> None:
    """The connection settings the Postgres instance reads, all present and the port a number; else a
    :class:`UsageError` naming what is wrong."""
    missing = [name for name in POSTGRES_ENV if name not in os.environ]
    if missing:
        raise UsageError(
            f"the PostgreSQL Dagster instance needs its database connection in the environment; missing: "
            f"{', '.join(missing)}",
            hint=f"set them (DAGSTER_PG_PASSWORD may be empty for trust authentication), or unset {ENV} and use a "
            "new --dagster-home for the embedded SQLite instance",
        )
    port = os.environ["DAGSTER_PG_PORT"].strip()
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(
            f"DAGSTER_PG_PORT={port!r} is not a port number", hint="set it to the server's port, e.g. 5432"
        )


def instance_yaml(kind: str) -> str:
    """The ``dagster.yaml`` of instance ``kind``; for Postgres, only once its connection is in the environment."""
    if kind == "sqlite":
        return EMBEDDED_YAML
    check_postgres_env()
    return POSTGRES_YAML.read_text()


def compute_logs_yaml() -> str:
    """With ``MODEL_OPS_ENV=s3``, the ``compute_logs`` section that keeps each step's stdout and stderr in the
    same bucket as the registry and the datasets (``<root>/dagster-compute-logs``), so a run's logs outlive the
    machine that ran it; '' otherwise. The endpoint and credentials come from the standard AWS settings, as for
    the rest of the state."""
    from model_ops.defs.resources import environment, environment_root

    if environment() != "s3":
        return ""
    root = environment_root()
    section = {
        "compute_logs": {
            "module": "dagster_aws.s3.compute_log_manager",
            "class": "S3ComputeLogManager",
            "config": {"bucket": root.bucket, "prefix": root.key(COMPUTE_LOGS_PREFIX)},
        }
    }
    return "# MODEL_OPS_ENV=s3: step logs in the bucket of the model_ops root\n" + yaml.safe_dump(section)


def reads_connection_env(text: str) -> bool:
    """Whether a ``dagster.yaml``'s text takes its database connection from the ``DAGSTER_PG_*`` settings (as
    model_ops' own Postgres instance does), so they describe where it connects."""
    return "DAGSTER_PG_" in text


def kind_of(config: dict[str, Any]) -> str:
    """``postgres`` when a ``dagster.yaml`` puts the run storage on PostgreSQL (either way of saying it), else
    ``sqlite``."""
    storage = config.get("storage")
    if isinstance(storage, dict) and "postgres" in storage:
        return "postgres"
    run_storage = config.get("run_storage")
    if isinstance(run_storage, dict) and "postgres" in str(run_storage.get("module", "")):
        return "postgres"
    return "sqlite"


def prepare_home(dagster_home: str | None) -> Path:
    """``dagster_home`` (default ``$DAGSTER_HOME``, else ``./.dagster_home``) with a ``dagster.yaml``: the one
    there, or the selected instance's written there; ``DAGSTER_HOME`` is set to it for this process."""
    home = Path(dagster_home or os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    config = home / "dagster.yaml"
    wanted = selected()
    if config.exists():
        text = config.read_text()
        try:
            existing = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"{config} is not valid YAML: {exc}", hint="fix it, or use a new --dagster-home") from None
        have = kind_of(existing if isinstance(existing, dict) else {})
        if wanted is not None and wanted != have:
            raise UsageError(
                f"{ENV}={wanted} but {config} configures a {have} instance",
                hint=f"use a new --dagster-home for the {wanted} instance, or unset {ENV} to use this one",
            )
        if have == "postgres" and reads_connection_env(text):
            check_postgres_env()
    else:
        text = instance_yaml(wanted or "sqlite") + compute_logs_yaml()
        home.mkdir(parents=True, exist_ok=True)
        config.write_text(text)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def unavailable(home: str | Path, exc: BaseException) -> InstanceUnavailableError | None:
    """``exc`` as an :class:`InstanceUnavailableError` when it is a PostgreSQL instance's database failing to
    connect (the server down, a wrong host, port, database, user or password), else None."""
    from dagster_postgres.utils import DagsterPostgresException
    from sqlalchemy.exc import OperationalError

    driver_error = getattr(exc, "orig", None)
    from_postgres = isinstance(exc, DagsterPostgresException) or (
        isinstance(exc, OperationalError) and type(driver_error).__module__.startswith("psycopg2")
    )
    if not from_postgres:
        return None
    cause = exc.__cause__ or exc
    cause = getattr(cause, "orig", None) or cause  # the driver's own message, without SQLAlchemy's wrapping
    config = Path(home) / "dagster.yaml"
    where = "the database its dagster.yaml names"
    if reads_connection_env(config.read_text() if config.exists() else "") and all(
        name in os.environ for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB")
    ):
        where = f"{os.environ['DAGSTER_PG_HOST']}:{os.environ['DAGSTER_PG_PORT']}/{os.environ['DAGSTER_PG_DB']}"
    reason = " ".join(str(cause).split())[:300]
    return InstanceUnavailableError(
        f"cannot reach the Dagster instance's database ({where}, configured in {config}): {reason}",
        hint="check that the server is up and the DAGSTER_PG_* settings are right, then run the command again; "
        "nothing was run",
    )
