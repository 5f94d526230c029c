"""Who is writing, as far as the backend can prove it, beside the actor name the writer claims.

``--actor`` and ``MODEL_OPS_ACTOR`` are claims: anyone can type any name. What the storage itself authenticates
is harder to fake, so every event records it in its ``identity`` column and the access checks and four-eyes
approvals use it:

- a local root: the operating-system user of the process's *effective* uid (from the password database, not from
  ``$USER`` or ``$LOGNAME``, which the caller sets at will). The files are written with that uid, so the OS has
  authenticated it as far as a shared disk can.
- an ``s3://`` root: the caller of the credentials, from STS ``GetCallerIdentity`` (an ARN such as
  ``arn:aws:iam::123456789012:user/alice``), asked at the STS endpoint the root's policy names
  (``access.sts_endpoint``), else at AWS's regional endpoint over TLS, never at one from the environment (a
  caller-chosen endpoint could vouch for anyone). S3 authenticates every request signed with them. An
  S3-compatible store (a custom endpoint) whose policy names no STS endpoint gets ``s3-access-key:<access key
  id>``: the key the store accepted, which is what that store can tell us.

The S3 answer is cached per process and per set of credentials (one STS round trip, at the first write).
"""

from __future__ import annotations

import functools
import os
import pwd

from model_ops.errors import ModelOpsError, UsageError
from model_ops.location import Location, s3_endpoint


def local_user() -> str:
    """The name of the effective uid in the password database (``uid-<n>`` when the uid has no entry)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid-{uid}"


@functools.lru_cache(maxsize=8)
def _caller(endpoint: str, region: str, access_key: str) -> str:
    """The STS caller ARN for these credentials, asked at ``endpoint`` (never one the environment chooses: the
    client gets it explicitly, which overrides ``AWS_ENDPOINT_URL*``). A failure is raised, not cached and not
    papered over with a weaker identity."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    sts = boto3.session.Session().client(
        "sts",
        endpoint_url=endpoint,
        region_name=region,
        config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}),
    )
    try:
        arn = sts.get_caller_identity().get("Arn")
    except (BotoCoreError, ClientError) as e:
        raise ModelOpsError(
            f"cannot prove who is writing to S3: STS at {endpoint} did not answer ({str(e).splitlines()[0]}); "
            "nothing was written",
            hint="check the network and the credentials; the root's policy names the STS endpoint "
            "(access.sts_endpoint)",
        ) from None
    if not arn:
        raise ModelOpsError(f"cannot prove who is writing to S3: STS at {endpoint} returned no caller ARN")
    return str(arn)


def s3_caller(sts_endpoint: str | None = None) -> str:
    """The proven identity of the AWS credentials in use (see the module docstring)."""
    import boto3

    session = boto3.session.Session()
    creds = session.get_credentials()
    if creds is None:
        raise UsageError(
            "no AWS credentials are configured, so model_ops cannot tell who is writing to S3",
            hint="configure credentials the standard AWS way (environment, profile or instance role)",
        )
    frozen = creds.get_frozen_credentials()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or session.region_name or "us-east-1"
    if sts_endpoint is None and s3_endpoint() is not None:
        return f"s3-access-key:{frozen.access_key}"  # an S3-compatible store: the key it accepted is the proof
    return _caller(sts_endpoint or f"https://sts.{region}.amazonaws.com", region, frozen.access_key)


def prove(root: Location, sts_endpoint: str | None = None) -> str:
    """The identity the backend of ``root`` authenticates this process as (``sts_endpoint``: the root policy's)."""
    return s3_caller(sts_endpoint) if root.is_s3 else local_user()
