"""Where model_ops keeps its state: a local folder or an ``s3://bucket/prefix`` root.

One root holds everything (``registry/``, ``artifacts/``, datasets), so a deployment moves from a laptop to S3 by
changing one string. S3 is configured the standard AWS way (environment, profile, instance role); the endpoint comes
from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` so S3-compatible stores and test servers work unchanged.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from model_ops.errors import UsageError

DEFAULT_ROOT = ".model_ops"


@dataclass(frozen=True)
class Location:
    """A normalised root URI: an absolute local path, or ``s3://bucket/prefix`` without a trailing slash."""

    uri: str

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def bucket(self) -> str:
        return self.uri[len("s3://") :].split("/", 1)[0]

    @property
    def key_prefix(self) -> str:
        """The key prefix inside the bucket, '' or ending without a slash."""
        rest = self.uri[len("s3://") :].split("/", 1)
        return rest[1] if len(rest) > 1 else ""

    def child(self, *parts: str) -> Location:
        return Location("/".join([self.uri.rstrip("/"), *[p.strip("/") for p in parts]]))

    def key(self, *parts: str) -> str:
        """The S3 object key for a path below this root."""
        return "/".join(p.strip("/") for p in (self.key_prefix, *parts) if p.strip("/"))

    @property
    def path(self) -> Path:
        if self.is_s3:
            raise ValueError(f"{self.uri} is not a local path")
        return Path(self.uri)

    def delta_storage_options(self) -> dict[str, str]:
        """Options for delta-rs. Credentials are resolved by boto3 so profiles, SSO and roles work too."""
        if not self.is_s3:
            return {}
        opts: dict[str, str] = {"conditional_put": "etag"}
        endpoint = s3_endpoint()
        if endpoint:
            opts["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.startswith("http://"):
                opts["AWS_ALLOW_HTTP"] = "true"
        session = _boto3_session()
        region = session.region_name or "us-east-1"
        opts["AWS_REGION"] = region
        creds = session.get_credentials()
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            opts["AWS_ACCESS_KEY_ID"] = frozen.access_key
            opts["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
            if frozen.token:
                opts["AWS_SESSION_TOKEN"] = frozen.token
        return opts

    def __str__(self) -> str:
        return self.uri


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _boto3_session():  # type: ignore[no-untyped-def]
    import boto3

    return boto3.session.Session()


@functools.lru_cache(maxsize=8)
def _cached_client(endpoint: str | None, region: str | None):  # type: ignore[no-untyped-def]
    from botocore.config import Config

    session = _boto3_session()
    return session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region or session.region_name or "us-east-1",
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=16),
    )


def s3_client():  # type: ignore[no-untyped-def]
    """A boto3 S3 client for the current environment (cached per endpoint and region)."""
    return _cached_client(s3_endpoint(), os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))


def resolve_root(root: str | os.PathLike[str] | Location | None = None) -> Location:
    """The root from the argument, else ``$MODEL_OPS_ROOT``, else ``./.model_ops``."""
    if isinstance(root, Location):
        return root
    raw = str(root) if root is not None else os.environ.get("MODEL_OPS_ROOT") or DEFAULT_ROOT
    raw = raw.strip()
    if not raw:
        raise UsageError("the model_ops root is empty", hint="pass --root PATH or set MODEL_OPS_ROOT")
    if raw.startswith("s3://"):
        bucket = raw[len("s3://") :].split("/", 1)[0]
        if not bucket:
            raise UsageError(f"root {raw!r} names no bucket", hint="use s3://BUCKET/PREFIX")
        return Location(raw.rstrip("/"))
    if "://" in raw:
        scheme = raw.split("://", 1)[0]
        raise UsageError(
            f"root {raw!r} uses scheme {scheme!r}, which model_ops does not support",
            hint="use a local path or s3://BUCKET/PREFIX",
        )
    return Location(str(Path(raw).expanduser().resolve()))
