"""Keys and signatures: OpenSSF Model Signing (OMS) bundles made with ``model_signing``, and detached signatures
and DSSE envelopes over canonical JSON for what an OMS bundle does not cover.

An OMS bundle signs the artifact's files, and nothing else: not which model or version they are, not the
parameters, metrics or data they came from. A registry whose versions carried only that could be fed a forged
version record pointing at a validly signed artifact. So model_ops signs three things with one key:

- the artifact's files, as an OMS bundle (``model.sig``, a Sigstore bundle holding a DSSE envelope over an in-toto
  statement; made by ``model_signing`` and verifiable with its own CLI, no model_ops needed);
- the whole version record (see :mod:`model_ops.registry.attest` for exactly what), as a detached signature over
  its canonical JSON, computed where the version number is assigned;
- each attachment and the version's provenance statement (a DSSE envelope).

Keys come from the environment:

``MODEL_OPS_SIGNING_KEY``
    The signer: a path to (or the text of) a PEM elliptic-curve private key (P-256, P-384 or P-521: the curves
    ``model_signing``'s key signer takes). ``openssl ecparam -genkey -name prime256v1 -noout -out key.pem`` or
    ``model-ops keygen key.pem`` makes one. A value that is neither a PEM nor a path is taken, as in earlier
    releases, as a shared HMAC-SHA256 secret: versions are then signed (record, attachments, provenance) but
    carry no OMS bundle, and verifying needs the same secret, so it is no proof towards anyone who holds it.
``MODEL_OPS_SIGNING_KEY_PASSWORD``
    The password of an encrypted private key.
``MODEL_OPS_SIGNING_CERT``
    Optional: a PEM signing certificate for that key, followed by the intermediates up to (not including) the
    root. The OMS bundle and every signature then carry the chain, and verifiers trust the CA instead of a key.
``MODEL_OPS_PUBLIC_KEY``
    The verifier: a path to (or the text of) PEM public keys and/or CA certificates. Several keys in one file
    accept signatures made with any of them (a key rotation). Without it the verifier is the public half of
    ``MODEL_OPS_SIGNING_KEY``. The registry root holds no key that verification trusts: a key stored in the
    root would be only as trustworthy as the root, and whoever can rewrite the root could replace it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from model_ops.errors import IntegrityError, UsageError

KEY_ENV = "MODEL_OPS_SIGNING_KEY"
PASSWORD_ENV = "MODEL_OPS_SIGNING_KEY_PASSWORD"
CERT_ENV = "MODEL_OPS_SIGNING_CERT"
PUBLIC_KEY_ENV = "MODEL_OPS_PUBLIC_KEY"
ALGORITHM = "hmac-sha256"  # the shared-secret option (and the only algorithm of releases before OMS signing)
OMS_FILE = "model.sig"  # the name OpenSSF Model Signing gives the signature kept beside a model
INTOTO_PAYLOAD = "application/vnd.in-toto+json"
OMS_PREDICATE = "https://model_signing/signature/v1.0"
OMS_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
CURVES = {"secp256r1": "sha256", "secp384r1": "sha384", "secp521r1": "sha512"}  # as model_signing signs with each
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_GENERATE = "openssl ecparam -genkey -name prime256v1 -noout -out key.pem (or `model-ops keygen key.pem`)"


def canonical(doc: Any) -> bytes:
    """The bytes a signature covers: JSON with sorted keys and no whitespace, after a round trip through JSON, so
    a record signed before it is stored and the same record read back from storage give the same bytes."""
    plain = json.loads(json.dumps(doc, sort_keys=True))
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_id(key: bytes) -> str:
    """The id of a shared HMAC secret (a hash of it, safe to store)."""
    return hashlib.sha256(b"model_ops key id:" + key).hexdigest()[:16]


def public_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The id of a public key: the SHA-256 of its PEM SubjectPublicKeyInfo, the same value ``model_signing`` puts
    in an OMS bundle as the key hint, so a bundle and a version record name their key alike."""
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except ValueError:
        raise IntegrityError(f"{what} is not valid base64") from None


def _curve_hash(public_key: ec.EllipticCurvePublicKey) -> str:
    name = public_key.curve.name
    if name not in CURVES:
        raise UsageError(
            f"an elliptic-curve key on {name} cannot sign OpenSSF Model Signing bundles",
            hint="use a P-256, P-384 or P-521 key: " + _GENERATE,
        )
    return CURVES[name]


def _pem_blocks(text: bytes, label: str) -> list[bytes]:
    begin, end = f"-----BEGIN {label}-----".encode(), f"-----END {label}-----".encode()
    blocks, at = [], 0
    while (start := text.find(begin, at)) >= 0:
        stop = text.find(end, start)
        if stop < 0:
            break
        blocks.append(text[start : stop + len(end)] + b"\n")
        at = stop + len(end)
    return blocks


def _read_pem_setting(value: str, setting: str) -> tuple[bytes, str]:
    """The PEM text a setting gives inline or names as a file, and a description of where it came from."""
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode(), f"{setting} (inline PEM)"
    path = Path(value).expanduser()
    try:
        return path.read_bytes(), str(path)
    except OSError as e:
        raise UsageError(f"cannot read the key file {path} ({setting}): {e.strerror}", hint=_GENERATE) from None


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith((".pem", ".key", ".crt")) or Path(value).expanduser().exists()


# ---------------------------------------------------------------------------------------------------- signers


class Signer:
    """Signs bytes with one key; ``block`` is what a signature records about the key (algorithm, key id, and the
    certificate chain when there is one), so a verifier knows which key to check it with."""

    alg: str
    key_id: str

    def block(self) -> dict[str, Any]:
        return {"alg": self.alg, "key_id": self.key_id}

    def sign(self, data: bytes) -> str:
        raise NotImplementedError

    def verifier(self) -> Verifier:
        raise NotImplementedError

    def oms_bundle(self, path: Path) -> bytes | None:
        """An OMS bundle over the file or directory at ``path`` (None: this kind of key makes none)."""
        return None

    def describe(self) -> str:
        return f"{self.alg} key {self.key_id[:16]}"


class HmacSigner(Signer):
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise UsageError(
                f"{KEY_ENV} is too short for an HMAC secret ({len(secret)} characters)",
                hint="give the path of a PEM private key (" + _GENERATE + "), or at least 16 random characters",
            )
        self.secret = secret
        self.alg = ALGORITHM
        self.key_id = key_id(secret)

    def sign(self, data: bytes) -> str:
        return _b64(hmac.new(self.secret, data, hashlib.sha256).digest())

    def verifier(self) -> Verifier:
        return Verifier(hmac_keys={self.key_id: self.secret}, source=f"{KEY_ENV} (shared HMAC secret)")


class EcSigner(Signer):
    """An elliptic-curve private key, with an optional certificate chain (leaf first)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, chain: list[x509.Certificate] | None = None) -> None:
        self.private_key = private_key
        public = private_key.public_key()
        self.hash = _curve_hash(public)
        self.alg = f"ecdsa-{self.hash}"
        self.key_id = public_key_id(public)
        self.chain = list(chain or [])
        if self.chain and self.chain[0].public_key() != public:
            raise UsageError(
                f"the certificate in {CERT_ENV} is not for the key in {KEY_ENV}",
                hint="put the signing certificate of that key first in the file, then its intermediates",
            )

    def block(self) -> dict[str, Any]:
        out = super().block()
        if self.chain:
            out["certificates"] = [c.public_bytes(serialization.Encoding.PEM).decode() for c in self.chain]
        return out

    def sign(self, data: bytes) -> str:
        return _b64(self.private_key.sign(data, ec.ECDSA(_HASHES[self.hash]())))

    def verifier(self) -> Verifier:
        return Verifier(ec_keys={self.key_id: self.private_key.public_key()}, source=f"the public half of {KEY_ENV}")

    @contextlib.contextmanager
    def _files(self) -> Iterator[tuple[Path, Path | None, Path | None]]:
        """The key (unencrypted, readable by this user only, in a private directory removed right after) and the
        certificate files, as ``model_signing`` takes them: paths."""
        with tempfile.TemporaryDirectory(prefix="model_ops_sign_") as tmp:
            key = Path(tmp) / "key.pem"
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(
                    self.private_key.private_bytes(
                        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                    )
                )
            leaf = chain = None
            if self.chain:
                leaf, chain = Path(tmp) / "cert.pem", Path(tmp) / "chain.pem"
                leaf.write_bytes(self.chain[0].public_bytes(serialization.Encoding.PEM))
                # model_signing 1.1 cannot read an empty chain file; a leaf issued straight by the root repeats
                # itself there, which a verifier building the chain to its CA passes over.
                rest = self.chain[1:] or self.chain[:1]
                chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in rest))
            yield key, leaf, chain

    def oms_bundle(self, path: Path) -> bytes:
        from model_signing import signing as oms  # 0.6 s to import: only when an artifact is signed

        with self._files() as (key, leaf, chain), tempfile.TemporaryDirectory(prefix="model_ops_oms_") as out:
            config = oms.Config().set_hashing_config(hashing_config())
            if leaf is not None and chain is not None:
                config = config.use_certificate_signer(
                    private_key=key, signing_certificate=leaf, certificate_chain=[chain]
                )
            else:
                config = config.use_elliptic_key_signer(private_key=key)
            target = Path(out) / OMS_FILE
            config.sign(Path(path), target)
            return target.read_bytes()


def hashing_config() -> Any:
    """How OMS bundles hash an artifact: every file, SHA-256, nothing ignored. ``model_signing`` leaves out git
    files (``.gitignore`` …) by default, but a model_ops manifest lists every file, and a file the bundle does not
    cover would be served unsigned. Verifying with ``model_signing``'s own CLI therefore needs
    ``--no-ignore-git-paths`` when an artifact holds such files."""
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[], ignore_git_paths=False)


def signer_from_env() -> Signer | None:
    """The signer ``MODEL_OPS_SIGNING_KEY`` (and ``MODEL_OPS_SIGNING_CERT``) describe, or None when unset."""
    raw = os.environ.get(KEY_ENV) or ""
    if not raw.strip():
        return None
    if not raw.lstrip().startswith("-----BEGIN") and not _looks_like_path(raw):
        return HmacSigner(raw.encode())
    data, source = _read_pem_setting(raw, KEY_ENV)
    password = os.environ.get(PASSWORD_ENV)
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError as e:  # encrypted without a password, or a password for an unencrypted key
        raise UsageError(f"cannot open the private key {source}: {e}", hint=f"set {PASSWORD_ENV}") from None
    except ValueError as e:
        raise UsageError(f"{source} is not a PEM private key model_ops can use: {e}", hint=_GENERATE) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(
            f"{source} holds a {type(key).__name__.lstrip('_')}; OpenSSF Model Signing keys are elliptic-curve keys",
            hint=_GENERATE,
        )
    chain: list[x509.Certificate] = []
    cert = os.environ.get(CERT_ENV) or ""
    if cert.strip():
        cert_data, cert_source = _read_pem_setting(cert, CERT_ENV)
        try:
            chain = x509.load_pem_x509_certificates(cert_data)
        except ValueError as e:
            raise UsageError(f"{cert_source} is not a PEM certificate chain: {e}") from None
    return EcSigner(key, chain)


def generate_key() -> tuple[bytes, bytes, str]:
    """A new P-256 key: (private PEM, public PEM, key id)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public, public_key_id(key.public_key())


# ---------------------------------------------------------------------------------------------------- verifiers


@dataclass
class Verifier:
    """What a signature may be checked against: public keys by id, CA certificates (for certificate chains), and
    shared HMAC secrets. ``source`` says where they came from, for messages."""

    ec_keys: dict[str, ec.EllipticCurvePublicKey] = field(default_factory=dict)
    cas: list[x509.Certificate] = field(default_factory=list)
    hmac_keys: dict[str, bytes] = field(default_factory=dict)
    source: str = ""

    def key_ids(self) -> list[str]:
        return sorted([*self.ec_keys, *self.hmac_keys])

    def describe(self) -> str:
        parts = [f"key {k[:16]}" for k in self.key_ids()]
        parts += [f"CA {c.subject.rfc4514_string()}" for c in self.cas]
        return f"{', '.join(parts) or 'nothing'} from {self.source}"

    def _chain_key(self, chain: list[x509.Certificate], what: str) -> ec.EllipticCurvePublicKey:
        """The leaf's public key, once the chain is shown to lead to one of our CAs and the leaf may sign."""
        from OpenSSL import crypto  # what model_signing's certificate verifier uses; imported only for chains

        store = crypto.X509Store()
        for ca in self.cas:
            store.add_cert(crypto.X509.from_cryptography(ca))
        leaf = chain[0]
        store.set_time(leaf.not_valid_before_utc)  # valid when it signed: as model_signing checks a chain
        try:
            crypto.X509StoreContext(
                store, crypto.X509.from_cryptography(leaf), [crypto.X509.from_cryptography(c) for c in chain[1:]]
            ).verify_certificate()
        except crypto.X509StoreContextError as e:
            raise IntegrityError(
                f"the certificate that signed {what} ({leaf.subject.rfc4514_string()}) does not lead to a trusted "
                f"CA in {self.source}: {e}"
            ) from None
        try:
            if not leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
                raise IntegrityError(f"the certificate that signed {what} may not be used for signatures")
        except x509.ExtensionNotFound:
            pass
        public = leaf.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise IntegrityError(f"the certificate that signed {what} holds no elliptic-curve key")
        return public

    def _public_key(self, block: Mapping[str, Any], what: str) -> ec.EllipticCurvePublicKey:
        kid = str(block.get("key_id") or "")
        certificates = block.get("certificates") or []
        if certificates and self.cas:
            try:
                chain = [x509.load_pem_x509_certificate(str(c).encode()) for c in certificates]
            except ValueError:
                raise IntegrityError(f"the certificates recorded with {what} cannot be read") from None
            public = self._chain_key(chain, what)
            if public_key_id(public) != kid:
                raise IntegrityError(f"{what} names key {kid[:16]}, but its certificate holds another key")
            return public
        if kid in self.ec_keys:
            return self.ec_keys[kid]
        raise IntegrityError(
            f"{what} was signed with another key (key id {kid[:16] or '?'}"
            + (", by certificate" if certificates else "")
            + f"), not with {self.describe()}",
            hint=f"pass the public key (or CA certificate) it was signed with: --public-key PEM or {PUBLIC_KEY_ENV}",
        )

    def verify(self, data: bytes, block: Mapping[str, Any], what: str) -> None:
        """Raise IntegrityError unless ``block["sig"]`` is a signature of ``data`` by a key this verifier trusts."""
        alg = str(block.get("alg") or "")
        sig = _unb64(block.get("sig", ""), f"the signature of {what}")
        if alg == ALGORITHM:
            kid = str(block.get("key_id") or "")
            secret = self.hmac_keys.get(kid)
            if secret is None:
                ours = ", ".join(k[:16] for k in self.key_ids()) or "none"
                raise IntegrityError(
                    f"{what} was signed with another key (key id {kid[:16]}, yours is {ours})",
                    hint=f"set {KEY_ENV} to the secret the registry signs with",
                )
            if not hmac.compare_digest(hmac.new(secret, data, hashlib.sha256).digest(), sig):
                raise IntegrityError(
                    f"the signature of {what} is wrong: what it signs was altered",
                    hint="do not use it; run `model-ops fsck`",
                )
            return
        if not alg.startswith("ecdsa-") or alg[6:] not in _HASHES:
            raise IntegrityError(f"{what} is signed with unsupported algorithm {alg!r}")
        public = self._public_key(block, what)
        try:
            public.verify(sig, data, ec.ECDSA(_HASHES[alg[6:]]()))
        except InvalidSignature:
            raise IntegrityError(
                f"the signature of {what} is wrong: what it signs was altered, or it was copied from elsewhere",
                hint="do not use it; run `model-ops fsck`",
            ) from None

    # ------------------------------------------------------------------ OMS bundles

    def oms_statement(self, bundle: bytes, expected_key: str, what: str) -> dict[str, Any]:
        """The in-toto statement inside an OMS bundle, once its DSSE signature is shown to be by ``expected_key``
        (the key the version record names) under this verifier. Hashes nothing: callers compare the statement's
        resources with a manifest whose files the store verifies on every read."""
        envelope, chain, hint = _parse_bundle(bundle, what)
        if chain:
            block: dict[str, Any] = {
                "key_id": public_key_id(chain[0].public_key()),  # type: ignore[arg-type]
                "certificates": [c.public_bytes(serialization.Encoding.PEM).decode() for c in chain],
            }
        else:
            block = {"key_id": hint}
        if block["key_id"] != expected_key:
            raise IntegrityError(f"{what} was made with key {str(block['key_id'])[:16]}, not the version's key")
        public = self._public_key(block, what)
        payload = open_envelope(envelope, what)
        sig = _unb64((envelope.get("signatures") or [{}])[0].get("sig", ""), what)
        try:
            public.verify(sig, pae(str(envelope.get("payloadType")), payload), ec.ECDSA(_HASHES[_curve_hash(public)]()))
        except InvalidSignature:
            raise IntegrityError(f"the signature in {what} is wrong: the bundle was altered") from None
        statement = _statement(payload, what)
        if statement.get("predicateType") != OMS_PREDICATE:
            raise IntegrityError(f"{what} signs a {statement.get('predicateType')!r}, not a model signature")
        return statement

    def oms_verify(self, path: Path, bundle: bytes, expected_key: str, what: str) -> int:
        """Verify the files at ``path`` against an OMS bundle with ``model_signing`` itself, hashing every file;
        the number of files it covered. Used on a fetched copy, as anyone verifying a downloaded model would."""
        from model_signing import verifying

        statement = self.oms_statement(bundle, expected_key, what)  # key and chain as this verifier trusts them
        with tempfile.TemporaryDirectory(prefix="model_ops_verify_") as tmp:
            sig = Path(tmp) / OMS_FILE
            sig.write_bytes(bundle)
            config = verifying.Config().set_hashing_config(hashing_config())
            by_certificate = "x509CertificateChain" in json.loads(bundle).get("verificationMaterial", {})
            if by_certificate and self.cas:
                cas = Path(tmp) / "ca.pem"
                cas.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.cas))
                config = config.use_certificate_verifier(certificate_chain=[cas])
            elif not by_certificate and expected_key in self.ec_keys:
                pub = Path(tmp) / "pub.pem"
                pub.write_bytes(
                    self.ec_keys[expected_key].public_bytes(
                        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                    )
                )
                config = config.use_elliptic_key_verifier(public_key=pub)
            else:  # a certificate bundle checked against the signer's own key: the statement was checked above
                return _compare_hashes(path, statement, what)
            try:
                config.verify(Path(path), sig)
            except (ValueError, KeyError, InvalidSignature) as e:
                raise IntegrityError(f"{what} does not verify: {e}", hint="do not use these files") from None
        return len(statement.get("predicate", {}).get("resources", []))


def _parse_bundle(bundle: bytes, what: str) -> tuple[dict[str, Any], list[x509.Certificate], str | None]:
    """An OMS bundle's DSSE envelope, certificate chain (leaf first; empty for a bare key) and key hint."""
    try:
        doc = json.loads(bundle)
        if doc.get("mediaType") != OMS_MEDIA_TYPE:
            raise ValueError(f"media type {doc.get('mediaType')!r}")
        envelope = doc["dsseEnvelope"]
        material = doc.get("verificationMaterial") or {}
        raw_chain = (material.get("x509CertificateChain") or {}).get("certificates") or []
        chain = [x509.load_der_x509_certificate(_unb64(c["rawBytes"], what)) for c in raw_chain]
        hint = (material.get("publicKey") or {}).get("hint")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise IntegrityError(f"{what} is not an OpenSSF Model Signing bundle: {e}") from None
    return envelope, chain, hint


def read_oms_statement(bundle: bytes, what: str) -> dict[str, Any]:
    """The statement inside an OMS bundle, its signature not checked: what fsck can still compare with the
    manifest when it has no key to check signatures with."""
    envelope, _, _ = _parse_bundle(bundle, what)
    return _statement(open_envelope(envelope, what), what)


def _compare_hashes(path: Path, statement: Mapping[str, Any], what: str) -> int:
    actual = {rd.identifier: rd.digest.digest_hex for rd in hashing_config().hash(Path(path)).resource_descriptors()}
    expected = oms_resources(statement)
    if actual != expected:
        changed = sorted(k for k in set(actual) | set(expected) if actual.get(k) != expected.get(k))
        raise IntegrityError(
            f"{what} does not match the files: {', '.join(changed[:5])}", hint="do not use these files"
        )
    return len(expected)


def oms_resources(statement: Mapping[str, Any]) -> dict[str, str]:
    """The files an OMS statement signs: name -> SHA-256 (a one-file artifact's only file is named ``.``)."""
    return {
        str(r["name"]): str(r["digest"])
        for r in statement.get("predicate", {}).get("resources", [])
        if r.get("algorithm") == "sha256"
    }


def verifier_from_env(public_key: str | os.PathLike[str] | None = None) -> Verifier | None:
    """What signatures are checked against: ``public_key`` (a PEM file of public keys and/or CA certificates),
    else ``MODEL_OPS_PUBLIC_KEY``, else the signer's own key; None when there is nothing to check with."""
    if public_key is not None:
        return parse_trust(str(public_key), "--public-key")
    raw = os.environ.get(PUBLIC_KEY_ENV) or ""
    if raw.strip():
        return parse_trust(raw, PUBLIC_KEY_ENV)
    signer = signer_from_env()
    return signer.verifier() if signer else None


def parse_trust(value: str, setting: str) -> Verifier:
    data, source = _read_pem_setting(value, setting)
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for block in _pem_blocks(data, "PUBLIC KEY"):
        try:
            public = serialization.load_pem_public_key(block)
        except ValueError as e:
            raise UsageError(f"{source} holds a public key that cannot be read: {e}") from None
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise UsageError(f"{source} holds a {type(public).__name__.lstrip('_')}, not an elliptic-curve key")
        keys[public_key_id(public)] = public
    try:
        cas = x509.load_pem_x509_certificates(data) if b"-----BEGIN CERTIFICATE-----" in data else []
    except ValueError as e:
        raise UsageError(f"{source} holds a certificate that cannot be read: {e}") from None
    if not keys and not cas:
        hint = "give the public key (openssl ec -in key.pem -pubout -out pub.pem), not the private key"
        raise UsageError(f"{source} holds no PEM public key or CA certificate", hint=hint)
    return Verifier(ec_keys=keys, cas=cas, source=source)


# ---------------------------------------------------------------------------------------------------- DSSE


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature covers (the payload and its type)."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def envelope(payload: bytes, signer: Signer, payload_type: str = INTOTO_PAYLOAD) -> dict[str, Any]:
    """A DSSE envelope over ``payload``, signed by ``signer`` (key id in the signature, as DSSE has it)."""
    return {
        "payloadType": payload_type,
        "payload": _b64(payload),
        "signatures": [{"keyid": signer.key_id, "sig": signer.sign(pae(payload_type, payload))}],
    }


def open_envelope(env: Mapping[str, Any], what: str) -> bytes:
    """The payload of a DSSE envelope, unverified (see :func:`verify_envelope`)."""
    if not isinstance(env, Mapping) or env.get("payloadType") != INTOTO_PAYLOAD:
        raise IntegrityError(f"{what} is not a DSSE envelope of an in-toto statement")
    return _unb64(env.get("payload", ""), what)


def verify_envelope(env: Mapping[str, Any], verifier: Verifier, block: Mapping[str, Any], what: str) -> dict:
    """The in-toto statement in ``env`` once one of its signatures is shown to be by the key ``block`` names."""
    payload = open_envelope(env, what)
    data = pae(str(env["payloadType"]), payload)
    sigs = [s for s in env.get("signatures") or [] if s.get("keyid") == block.get("key_id")]
    if not sigs:
        raise IntegrityError(f"{what} carries no signature by key {str(block.get('key_id'))[:16]}")
    verifier.verify(data, {**block, "sig": sigs[0].get("sig", "")}, what)
    return _statement(payload, what)


def _statement(payload: bytes, what: str) -> dict[str, Any]:
    try:
        statement = json.loads(payload)
    except ValueError:
        raise IntegrityError(f"{what} does not hold a JSON statement") from None
    if not isinstance(statement, dict) or statement.get("_type") != "https://in-toto.io/Statement/v1":
        raise IntegrityError(f"{what} does not hold an in-toto v1 statement")
    return statement
