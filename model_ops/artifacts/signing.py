"""Optional manifest signing with a key from the environment (HMAC-SHA256).

A signature binds a manifest digest to a key: whoever holds ``MODEL_OPS_SIGNING_KEY`` can tell a manifest the
team produced from one written into the store by anything else. The key id (a hash of the key) is stored with the
signature so a mismatch can say "signed with another key" rather than just "bad signature".
"""

from __future__ import annotations

import hashlib
import hmac
import os

from model_ops.errors import IntegrityError, UsageError

KEY_ENV = "MODEL_OPS_SIGNING_KEY"
ALGORITHM = "hmac-sha256"


def signing_key() -> bytes | None:
    raw = os.environ.get(KEY_ENV)
    if raw is None or raw == "":
        return None
    if len(raw) < 16:
        raise UsageError(
            f"{KEY_ENV} is too short ({len(raw)} characters)",
            hint="use at least 16 random characters, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`",
        )
    return raw.encode()


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"model_ops key id:" + key).hexdigest()[:16]


def sign(manifest_digest: str, key: bytes) -> dict[str, str]:
    value = hmac.new(key, manifest_digest.encode(), hashlib.sha256).hexdigest()
    return {"alg": ALGORITHM, "key_id": key_id(key), "value": value}


def verify(manifest_digest: str, signature: dict | None, key: bytes | None, *, what: str) -> None:
    """Raise IntegrityError unless ``signature`` is a valid signature of the digest under ``key``."""
    if not signature:
        raise IntegrityError(
            f"{what} is not signed, and this registry requires signed artifacts",
            hint="register it again with MODEL_OPS_SIGNING_KEY set",
        )
    if key is None:
        raise IntegrityError(
            f"cannot verify the signature of {what}: {KEY_ENV} is not set",
            hint=f"set {KEY_ENV} to the registry's signing key",
        )
    if signature.get("alg") != ALGORITHM:
        raise IntegrityError(f"{what} is signed with unsupported algorithm {signature.get('alg')!r}")
    if signature.get("key_id") != key_id(key):
        raise IntegrityError(
            f"{what} was signed with another key (key id {signature.get('key_id')}, yours is {key_id(key)})",
            hint=f"set {KEY_ENV} to the key the registry signs with",
        )
    expected = hmac.new(key, manifest_digest.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(signature.get("value", ""))):
        raise IntegrityError(
            f"the signature of {what} is wrong: the manifest or its signature was altered",
            hint="do not load it; run `model-ops fsck`",
        )
