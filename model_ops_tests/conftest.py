"""Shared fixtures: an isolated environment for every test, a fresh local registry root, and an S3 endpoint
(moto's server on loopback, started once per session) for the tests marked ``s3``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from model_ops_tests.helpers import free_port

S3_BUCKET = "model-ops-test"

# Settings that would leak the developer's own registry, policy, keys or run into the tests.
_MODEL_OPS_ENV = (
    "MODEL_OPS_ROOT",
    "MODEL_OPS_POLICY",
    "MODEL_OPS_SIGNING_KEY",
    "MODEL_OPS_SIGNING_KEY_PASSWORD",
    "MODEL_OPS_SIGNING_CERT",
    "MODEL_OPS_PUBLIC_KEY",
    "MODEL_OPS_LOCKFILE",
    "MODEL_OPS_TRUSTED_TYPES",
    "MODEL_OPS_RUN_ID",
    "MODEL_OPS_ACTOR",
    "MODEL_OPS_SPECS_DIR",
    "MODEL_OPS_ENV",
    "MODEL_OPS_EXECUTOR",
    "MODEL_OPS_CACHE",
)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in _MODEL_OPS_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MODEL_OPS_PROGRESS", "0")
    monkeypatch.setenv("MODEL_OPS_CACHE", str(tmp_path / "model-cache"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A registry root that does not exist yet (the registry creates it on first write)."""
    return tmp_path / "root"


@pytest.fixture
def reg(root: Path):  # type: ignore[no-untyped-def]
    from model_ops.registry import Registry

    return Registry.open(root, actor="tester")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real S3 HTTP endpoint on 127.0.0.1 (moto's server in its own process), with the test bucket created.

    Its own process, not a thread of the test process: some delta-rs calls hold the GIL while they wait for
    the endpoint, which would deadlock against a server thread that needs the GIL to answer.
    """
    import boto3

    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"the S3 test endpoint did not start; see {log.name}") from None
            time.sleep(0.1)
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=S3_BUCKET)
    yield endpoint
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture
def s3_root(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``s3://model-ops-test/<unique prefix>``: registry tables and artifacts both in the test endpoint."""
    from model_ops import location

    for var in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    # Keep the developer's ~/.aws out of it.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    location._cached_client.cache_clear()
    yield f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"
    location._cached_client.cache_clear()
