"""A real PostgreSQL server on loopback for the tests that run Dagster on Postgres, started and stopped by the test.

The server binaries are whichever release is installed (15 on the project's machines), found on the PATH or under
``/usr/lib/postgresql/*/bin`` (Debian's layout). PostgreSQL
refuses to run as root, so under root (as in CI) they run as the system's ``postgres`` user, in a data directory
it owns; clients connect over TCP on 127.0.0.1 with trust authentication, which is what a throwaway test cluster
needs and nothing else should use.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from model_ops_tests.helpers import free_port

START_SECONDS = 60


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    db_name: str

    @property
    def env(self) -> dict[str, str]:
        """The variables ``dagster.postgres.yaml`` reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": self.db_name,
        }

    def query_autocommit(self, sql: str, db_name: str = "postgres") -> None:
        """Run ``sql`` outside a transaction (``create database`` needs that), in ``db_name``."""
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname=db_name)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def query(self, sql: str) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname=self.db_name)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()


def binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (the newest release under Debian's layout), or None when
    PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent

    def release(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=release, reverse=True):
        if (Path(candidate) / "pg_ctl").exists() and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


def missing() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None when it can (for a test's skip reason)."""
    if binaries() is None:
        return "PostgreSQL's initdb and pg_ctl were found neither on the PATH nor in /usr/lib/postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no postgres user to run the server as (PostgreSQL refuses root)"
        if shutil.which("runuser") is None:
            return "running as root, and runuser is not installed to run the server as the postgres user"
    return None


@contextmanager
def postgres_server(db_name: str = "dagster") -> Iterator[Postgres]:
    """A fresh cluster with database ``db_name``, on a free loopback port, removed afterwards."""
    why = missing()
    bin_dir = binaries()
    if why is not None or bin_dir is None:
        raise RuntimeError(f"cannot start PostgreSQL: {why}")
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="model_ops_pg_"))
    data, log = base / "data", base / "server.log"
    port = free_port()

    def run(*args: str) -> None:  # in the server's own directory: the caller's may be closed to its user
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=START_SECONDS, cwd=base)

    try:
        if prefix:
            owner = pwd.getpwnam("postgres")
            os.chown(base, owner.pw_uid, owner.pw_gid)
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c full_page_writes=off"
        run(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-o",
            options,
            "-w",
            "-t",
            str(START_SECONDS),
            "start",
        )
        server = Postgres("127.0.0.1", port, "postgres", db_name)
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                Postgres("127.0.0.1", port, "postgres", "postgres").query("select 1")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        server.query_autocommit(f'create database "{db_name}"')
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=START_SECONDS,
                cwd=base,
            )
        shutil.rmtree(base, ignore_errors=True)
