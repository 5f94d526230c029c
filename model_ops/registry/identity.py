"""Who is writing, as far as the backend can prove it, beside the actor name the writer claims.

``--actor`` and ``MODEL_OPS_ACTOR`` are claims: anyone can type any name. What the storage itself authenticates
is harder to fake, so every event records it in its ``identity`` column and the access checks and four-eyes
approvals use it:

- a local root: the operating-system user of the process's *effective* uid (from the password database, not from
  ``$USER`` or ``$LOGNAME``, which the caller sets at will). The files are written with that uid, so the OS has
  authenticated it as far as a shared disk can.
- an ``s3://`` root: the caller of the credentials, from STS ``GetCallerIdentity`` (an ARN such as
  ``arn:aws:iam::123456789012:user/alice``). S3 authenticates every request signed with them. An S3-compatible
  store that has no STS endpoint gets ``s3-access-key:<access key id>``: the key that S3 accepted, which is what
  that store can tell us.

The S3 answer is cached per process and per set of credentials (one STS round trip, at the first write).
"""

from __future__ import annotations

import functools
import os
import pwd

from model_ops.errors import UsageError
from model_ops.location import Location, s3_endpoint


def local_user() -> str:
    """The name of the effective uid in the password database (``uid-<n>`` when the uid has no entry)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid-{uid}"


@functools.lru_cache(maxsize=8)
def _caller(endpoint: str | None, region: str | None, access_key: str) -> str:
    """The STS caller ARN for these credentials, or the access key S3 accepted when STS cannot answer."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    session = boto3.session.Session()
    sts = session.client(
        "sts",
        # An endpoint meant for S3 alone (AWS_ENDPOINT_URL_S3) is not an STS endpoint; AWS_ENDPOINT_URL, when
        # set, is used by boto3 for every service and so for this one.
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_STS") or os.environ.get("AWS_ENDPOINT_URL") or None,
        region_name=region or session.region_name or "us-east-1",
        config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"}),
    )
    try:
        arn = sts.get_caller_identity().get("Arn")
    except (BotoCoreError, ClientError):
        arn = None
    return str(arn) if arn else f"s3-access-key:{access_key}"


def s3_caller() -> str:
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
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or session.region_name
    return _caller(s3_endpoint(), region, frozen.access_key)


def prove(root: Location) -> str:
    """The identity the backend of ``root`` authenticates this process as."""
    return s3_caller() if root.is_s3 else local_user()
