"""Signatures that bind the whole version: OpenSSF Model Signing bundles, signed version records and attachments,
signed in-toto provenance, `model-ops verify` with a public key only, and `require_signature` per stage.

The attacker in these tests can write the registry root (events and blobs) through the library, as anyone with
write access to the storage can, but does not hold the signing key; the reader holds only the public key."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import model_ops
from model_ops.artifacts import signing
from model_ops.cli import main
from model_ops.errors import IntegrityError, PolicyError, UsageError
from model_ops.ops import deployment as dep
from model_ops.ops import experiments as ex
from model_ops.registry import Registry, attest
from model_ops.registry import events as ev
from model_ops.registry.policy import default_policy_text
from model_ops.registry.registry import ModelVersion
from model_ops.specs.schema import ModelSpec
from model_ops_tests.helpers import blob_path, flip_byte, tiny_model, training_data

HMAC_SECRET = "a-shared-hmac-secret-of-32-chars!"
PROFILE = "reference_profile"

SPEC = ModelSpec.model_validate(
    {
        "name": "m",
        "description": "signing tests",
        "owner": "team:ops",
        "task": "binary_classification",
        "source": {"kind": "delta", "uri": "/nonexistent/m", "time_column": "ts", "key_column": "id"},
        "partitions": {"cadence": "monthly", "start": "2024-01-01"},
        "features": [{"name": "x", "type": "float"}],
        "target": {"column": "y"},
        "estimator": {"class": "sklearn.linear_model.LogisticRegression"},
    }
)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Two P-256 key pairs: the registry's, and somebody else's."""
    out = {}
    for name in ("key", "other"):
        private, public, _ = signing.generate_key()
        (tmp_path / f"{name}.pem").write_bytes(private)
        (tmp_path / f"{name}.pub.pem").write_bytes(public)
        out[name], out[f"{name}_pub"] = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
    return out


def policy_file(tmp_path: Path, require: list[str]) -> Path:
    text = default_policy_text()
    assert "require_signature: []" in text
    path = tmp_path / f"policy-{'-'.join(require) or 'none'}.yaml"
    path.write_text(text.replace("require_signature: []", f"require_signature: [{', '.join(require)}]"))
    return path


def as_signer(monkeypatch: pytest.MonkeyPatch, key: Path | str) -> None:
    monkeypatch.delenv(signing.PUBLIC_KEY_ENV, raising=False)
    monkeypatch.setenv(signing.KEY_ENV, str(key))


def as_reader(monkeypatch: pytest.MonkeyPatch, public: Path | None) -> None:
    """A process that holds no private key, only (maybe) the public one."""
    monkeypatch.delenv(signing.KEY_ENV, raising=False)
    if public is None:
        monkeypatch.delenv(signing.PUBLIC_KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(signing.PUBLIC_KEY_ENV, str(public))


def commit(reg: Registry, *events: ev.Event) -> None:
    """Append events to the log as anyone who can write the root can (no key needed)."""
    reg._commit(lambda state: (list(events), lambda: None))


def forge_version(
    reg: Registry, model: str, version: int, semver: str, digest: str, record: dict[str, Any]
) -> ModelVersion:
    commit(
        reg,
        reg._event(
            model,
            ev.REGISTERED,
            version=version,
            from_value=reg.policy.initial_stage,
            to_value=semver,
            digest=digest,
            payload=record,
        ),
    )
    return reg.get(model, version)


def refused_everywhere(reg: Registry, mv: ModelVersion, tmp_path: Path) -> list[str]:
    """Where a version is accepted: load_model, model_ops.load, fetch, promotion, fsck, `model-ops verify`."""
    accepted = []
    for where, attempt in (
        ("load_model", lambda: reg.load_model(mv.ref)),
        ("model_ops.load", lambda: model_ops.load(mv.ref, registry=reg)),
    ):
        try:
            attempt()
            accepted.append(where)
        except IntegrityError:
            pass
    dest = tmp_path / f"fetched-{mv.name}-{mv.version}"
    try:
        reg.fetch(mv.ref, dest)
        accepted.append("fetch")
    except IntegrityError:
        assert not dest.exists()
    promoting = Registry.open(reg.root, actor=reg.actor, policy=policy_file(tmp_path, ["staging", "production"]))
    try:
        promoting.transition(mv.ref, "staging", reason="forged")
        accepted.append("transition")
    except PolicyError as e:
        assert f"models:/{mv.name}/{mv.version}" in e.message
    if not any(p.startswith(f"{mv.name} v{mv.version}:") for p in reg.fsck()):  # fsck reads afresh from storage
        accepted.append("fsck")
    if main(["--root", str(reg.root), "verify", mv.ref, "--json"]) != 1:
        accepted.append("verify")
    return accepted


# ---------------------------------------------------------------------------------------------------- signing


def test_a_signed_version_carries_an_oms_bundle_a_record_signature_and_provenance(
    root: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    as_signer(monkeypatch, keys["key"])
    mv = Registry.open(root, actor="trainer").register_model("m", tiny_model(1), dataset="s3://lake/features@7")
    block = mv.record["signing"]
    assert block["alg"] == "ecdsa-sha256" and block["format"] == attest.FORMAT
    assert block["key_id"] == signing.public_key_id(signing.parse_trust(str(keys["key_pub"]), "t").ec_keys.popitem()[1])
    events = [(e.kind, e.key, e.digest) for e in Registry.open(root).audit("m")]
    assert events == [
        (ev.REGISTERED, None, mv.digest),
        (ev.ATTACHMENT, attest.OMS_LABEL, block["oms"]),
        (ev.ATTACHMENT, attest.PROVENANCE_LABEL, block["provenance"]),
    ]

    # The bundle is a plain OpenSSF Model Signing signature: model_signing verifies a fetched copy on its own.
    from model_signing import verifying

    as_reader(monkeypatch, keys["key_pub"])
    reg = Registry.open(root)
    files = reg.fetch(mv.ref, tmp_path / "copy")
    sig = tmp_path / "model.sig"
    sig.write_bytes(reg.attachment("m", 1, attest.OMS_LABEL) or b"")
    verifying.Config().use_elliptic_key_verifier(public_key=keys["key_pub"]).set_hashing_config(
        signing.hashing_config()
    ).verify(files, sig)
    (files / "model.skops").write_bytes(b"tampered")
    with pytest.raises(ValueError):
        verifying.Config().use_elliptic_key_verifier(public_key=keys["key_pub"]).set_hashing_config(
            signing.hashing_config()
        ).verify(files, sig)

    X, _ = training_data()
    np.testing.assert_array_equal(reg.load_model(mv.ref).predict(X), tiny_model(1).predict(X))
    assert model_ops.load(mv.ref, registry=reg).version == 1
    assert reg.fsck() == []


def test_a_one_file_artifact_is_signed_and_verified_too(
    root: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    as_signer(monkeypatch, keys["key"])
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x00\x01model bytes")
    mv = Registry.open(root).register("w", path)
    as_reader(monkeypatch, keys["key_pub"])
    reg = Registry.open(root)
    out = tmp_path / "out"
    out.mkdir()
    assert reg.fetch(mv.ref, out).read_bytes() == path.read_bytes()  # into an existing directory, as before
    assert reg.fetch(mv.ref, tmp_path / "named.bin").read_bytes() == path.read_bytes()
    assert main(["--root", str(root), "verify", mv.ref]) == 0


# ---------------------------------------------------------------------------------------------------- forged records


def _variants(v1: ModelVersion, other_digest: str) -> list[tuple[str, str, int, str, str, Callable[[dict], None]]]:
    """(what, model, version, semver, digest, how the copied record is changed): each a forged version that copies
    v1's digest and signature (or, the last one, v1's signature onto another artifact)."""

    def set_(key: str, value: Any) -> Callable[[dict], None]:
        return lambda r: r.__setitem__(key, value)

    def lineage(r: dict) -> None:
        r["lineage"] = {**r["lineage"], "git_commit": "0" * 40}

    return [
        ("the same record under the next number", "m", 3, v1.semver, v1.digest, lambda r: None),
        ("other params", "m", 4, "9.0.4", v1.digest, set_("params", {"C": 1000.0})),
        ("other metrics", "m", 5, "9.0.5", v1.digest, set_("metrics", {"roc_auc": 0.99})),
        ("other dataset", "m", 6, "9.0.6", v1.digest, set_("dataset", {"uri": "s3://elsewhere", "version": 1})),
        ("other lineage", "m", 7, "9.0.7", v1.digest, lineage),
        ("other parent", "m", 8, "9.0.8", v1.digest, set_("parent", 2)),
        ("other flavor", "m", 9, "9.0.9", v1.digest, set_("flavor", "files")),
        ("other input signature", "m", 10, "9.0.10", v1.digest, set_("signature", {"inputs": []})),
        ("other description", "m", 11, "9.0.11", v1.digest, set_("description", "approved by the CISO")),
        ("the same record in another model", "other", 1, v1.semver, v1.digest, lambda r: None),
        ("v1's signature on another artifact", "m", 12, "9.0.12", other_digest, lambda r: None),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ecdsa", "hmac"])
def test_a_forged_version_with_a_copied_digest_and_signature_is_refused(
    root: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    as_signer(monkeypatch, keys["key"] if kind == "ecdsa" else HMAC_SECRET)
    owner = Registry.open(root, actor="trainer")
    v1 = owner.register_model("m", tiny_model(1))
    v2 = owner.register_model("m", tiny_model(2))
    if kind == "ecdsa":
        as_reader(monkeypatch, keys["key_pub"])
    else:  # the shared secret both signs and verifies: the reader holds it too
        monkeypatch.delenv(signing.PUBLIC_KEY_ENV, raising=False)
    attacker = Registry.open(root, actor="trainer")
    assert attacker.load_model(v1.ref) is not None  # the genuine versions load

    tried, accepted = 0, {}
    for what, model, number, semver, digest, change in _variants(v1, v2.digest):
        record = copy.deepcopy(dict(v1.record))
        change(record)
        forged = forge_version(attacker, model, number, semver, digest, record)
        tried += 1
        found = refused_everywhere(attacker, forged, tmp_path)
        if found:
            accepted[what] = found
    # another actor writing v1's very record as the next version: the registering actor is signed too
    mallory = Registry.open(root, actor="mallory")
    forged = forge_version(mallory, "m", 13, "9.0.13", v1.digest, copy.deepcopy(dict(v1.record)))
    tried += 1
    if refused_everywhere(mallory, forged, tmp_path):
        accepted["another actor"] = refused_everywhere(mallory, forged, tmp_path)
    # a copied semver in the event, the record untouched
    forged = forge_version(attacker, "m", 14, "1.0.1", v2.digest, copy.deepcopy(dict(v2.record)))
    tried += 1
    if refused_everywhere(attacker, forged, tmp_path):
        accepted["v2 under another number and semver"] = refused_everywhere(attacker, forged, tmp_path)

    assert tried == 13
    assert accepted == {}, f"{len(accepted)} of {tried} forged versions accepted: {accepted}"
    assert attacker.load_model(v2.ref) is not None
    assert attacker.fsck() and not any(p.startswith(("m v1:", "m v2:")) for p in attacker.fsck())
    # a bad version can still be moved out of the way (into a stage that requires nothing)
    assert attacker.transition("models:/m/3", "archived", reason="forged").stage == "archived"


def test_a_version_stripped_of_its_signature_is_refused_where_signatures_are_required(
    root: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    as_signer(monkeypatch, keys["key"])
    v1 = Registry.open(root).register_model("m", tiny_model(1))
    as_reader(monkeypatch, keys["key_pub"])
    strict = Registry.open(root, policy=policy_file(tmp_path, ["development", "staging", "production"]))
    stripped = {k: v for k, v in dict(v1.record).items() if k != "signing"}
    forged = forge_version(strict, "m", 2, "1.0.1", v1.digest, stripped)
    assert refused_everywhere(strict, forged, tmp_path) == []
    with pytest.raises(IntegrityError, match="not signed"):
        strict.load_model(forged.ref)
    # An earlier release's signature of the digest alone is what the forgery copies: it counts as unsigned.
    legacy = {**stripped, "artifact_signature": {"alg": "hmac-sha256", "key_id": "k", "value": "00"}}
    forged = forge_version(strict, "m", 3, "1.0.2", v1.digest, legacy)
    with pytest.raises(IntegrityError, match="earlier release"):
        strict.load_model(forged.ref)


# ---------------------------------------------------------------------------------------------------- attachments


@pytest.mark.slow
def test_a_swapped_attachment_is_refused(root: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    as_signer(monkeypatch, keys["key"])
    owner = Registry.open(root)
    v1, v2 = owner.register_model("m", tiny_model(1)), owner.register_model("m", tiny_model(2))
    n1 = owner.register_model("n", tiny_model(3))
    for mv, data in ((v1, b"profile of v1"), (v2, b"profile of v2"), (n1, b"profile of n v1")):
        owner.attach(mv.name, mv.version, PROFILE, data)
    as_reader(monkeypatch, keys["key_pub"])
    reg = Registry.open(root)
    assert reg.attachment("m", 2, PROFILE) == b"profile of v2"
    events = {(e.model, e.version, e.key): e for e in reg.audit() if e.kind == ev.ATTACHMENT}

    def swap(model: str, version: int, label: str, source: ev.Event, payload: dict | None = None) -> None:
        commit(
            reg,
            reg._event(
                model,
                ev.ATTACHMENT,
                version=version,
                key=label,
                digest=source.digest,
                reason="swapped",
                payload=source.data if payload is None else payload,
            ),
        )

    tried = 0
    for model, version, label, source, payload in (
        ("m", 2, PROFILE, events[("m", 1, PROFILE)], None),  # another version's, its signature copied
        ("m", 1, PROFILE, events[("n", 1, PROFILE)], None),  # another model's
        ("m", 2, PROFILE, events[("m", 1, PROFILE)], {"bytes": 13}),  # signature stripped
        ("m", 1, attest.PROVENANCE_LABEL, events[("m", 2, attest.PROVENANCE_LABEL)], None),
        ("m", 1, attest.OMS_LABEL, events[("m", 2, attest.OMS_LABEL)], None),
    ):
        swap(model, version, label, source, payload)
        tried += 1
        with pytest.raises(IntegrityError):
            reg.attachment(model, version, label)
        assert any(p.startswith(f"{model} v{version}:") and label in p for p in reg.fsck())
    assert tried == 5
    assert main(["--root", str(root), "verify", "models:/m/1"]) == 1  # its attachments are checked too
    assert reg.attachment("n", 1, PROFILE) == b"profile of n v1"  # untouched ones still read


def test_attaching_to_a_signed_version_needs_the_key_and_reserved_labels_are_refused(
    root: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    as_signer(monkeypatch, keys["key"])
    reg = Registry.open(root)
    reg.register_model("m", tiny_model(1))
    with pytest.raises(UsageError, match="kept for the signatures"):
        reg.attach("m", 1, attest.PROVENANCE_LABEL, b"{}")
    as_reader(monkeypatch, keys["key_pub"])
    with pytest.raises(PolicyError, match="must be signed"):
        Registry.open(root).attach("m", 1, PROFILE, b"unsigned")
    assert [e.kind for e in reg.audit("m")].count(ev.ATTACHMENT) == 2


# ---------------------------------------------------------------------------------------------------- verify


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.mark.slow
def test_verify_needs_only_the_public_key_and_a_read_only_root(
    root: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    as_signer(monkeypatch, keys["key"])
    reg = Registry.open(root)
    mv = reg.register_model("m", tiny_model(1))
    reg.attach("m", 1, PROFILE, b"profile")
    as_reader(monkeypatch, None)  # neither key in the environment: only what is passed

    before = _tree(root)
    capsys.readouterr()
    assert main(["--root", str(root), "verify", mv.ref, "--public-key", str(keys["key_pub"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is True
    assert {c["check"] for c in report["checks"]} >= {"record", "oms", "provenance", "files", f"attachment:{PROFILE}"}
    assert _tree(root) == before  # nothing written under the root

    assert main(["--root", str(root), "verify", mv.ref, "--public-key", str(keys["other_pub"])]) == 1
    assert "signed with another key" in capsys.readouterr().out
    assert main(["--root", str(root), "verify", mv.ref]) == 2  # no key at all: a usage error, not a pass
    assert main(["--root", str(root), "verify", mv.ref, "--public-key", str(keys["key"])]) == 2  # a private key

    # As a process that cannot write the root at all: uid 0 without any capability, on files without write bits.
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop the capabilities that bypass file permissions")
    view = Path(tempfile.mkdtemp(prefix="model_ops_ro_"))
    try:
        shutil.copytree(root, view / "root")
        shutil.copy(keys["key_pub"], view / "pub.pem")
        subprocess.run(["chmod", "-R", "a-w", str(view)], check=True)
        drop = [
            "setpriv",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--securebits=+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked",
        ]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(view), "MODEL_OPS_PROGRESS": "0"}
        cannot = subprocess.run(
            [*drop, sys.executable, "-c", f"open({str(view / 'root' / 'probe')!r}, 'w')"], env=env, capture_output=True
        )
        assert cannot.returncode != 0 and b"Permission denied" in cannot.stderr
        cli = [*drop, sys.executable, "-m", "model_ops.cli", "--root", str(view / "root")]
        ok = subprocess.run(
            [*cli, "verify", mv.ref, "--public-key", str(view / "pub.pem")], env=env, capture_output=True
        )
        assert ok.returncode == 0, ok.stderr.decode()
        assert b"model_signing verified 2 file(s) of a fetched copy" in ok.stdout
        prov = subprocess.run(
            [*cli, "provenance", mv.ref, "--json"],
            env={**env, "MODEL_OPS_PUBLIC_KEY": str(view / "pub.pem")},
            capture_output=True,
        )
        assert prov.returncode == 0, prov.stderr.decode()
        assert json.loads(prov.stdout)["verified"] is True
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(view)], check=False)
        shutil.rmtree(view, ignore_errors=True)


def test_verify_finds_altered_files_in_the_fetched_copy(
    root: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    as_signer(monkeypatch, keys["key"])
    mv = Registry.open(root).register_model("m", tiny_model(1))
    as_reader(monkeypatch, keys["key_pub"])
    reg = Registry.open(root)
    skops = next(f for f in reg.artifacts.manifest(mv.digest).files if f.path == "model.skops")
    flip_byte(blob_path(root, skops.sha256))
    assert main(["--root", str(root), "verify", mv.ref]) == 1
    assert "NOT verified" in capsys.readouterr().out


def test_certificate_signing_is_verified_against_the_ca(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, leaf_key, rogue_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))

    def cert(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=not ca,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=ca,
                    crl_sign=ca,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        return builder.sign(signer, hashes.SHA256())

    ca = cert("model_ops test CA", ca_key, "model_ops test CA", ca_key, True)
    rogue = cert("rogue CA", rogue_key, "rogue CA", rogue_key, True)
    leaf = cert("trainer", leaf_key, "model_ops test CA", ca_key, False)
    pem = serialization.Encoding.PEM
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp_path / "leaf.crt").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(pem))
    (tmp_path / "rogue.crt").write_bytes(rogue.public_bytes(pem))

    as_signer(monkeypatch, tmp_path / "leaf.key")
    monkeypatch.setenv(signing.CERT_ENV, str(tmp_path / "leaf.crt"))
    mv = Registry.open(root).register_model("m", tiny_model(1))
    assert mv.record["signing"]["certificates"]
    monkeypatch.delenv(signing.CERT_ENV)
    as_reader(monkeypatch, tmp_path / "ca.crt")
    reg = Registry.open(root)
    assert reg.load_model(mv.ref) is not None
    assert reg.fetch(mv.ref, tmp_path / "copy").is_dir()  # model_signing's certificate verifier on the copy
    capsys.readouterr()
    assert main(["--root", str(root), "verify", mv.ref, "--public-key", str(tmp_path / "ca.crt")]) == 0
    assert main(["--root", str(root), "verify", mv.ref, "--public-key", str(tmp_path / "rogue.crt")]) == 1
    assert "does not lead to a trusted CA" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- policy


def test_require_signature_is_enforced_at_load_promotion_and_deployment(
    root: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under the shipped policy: unsigned v1, v2 in staging; then signed v3 (staging) and v4 (development).
    as_reader(monkeypatch, None)
    lax = Registry.open(root)
    for seed in (1, 2):
        lax.register_model("m", tiny_model(seed))
        lax.transition(f"models:/m/{seed}", "staging", reason="before signatures were required")
    dep.apply(lax, SPEC, "deploy", version=1)  # v1 production (unsigned, from before)
    as_signer(monkeypatch, keys["key"])
    lax.register_model("m", tiny_model(3))
    lax.transition("models:/m/3", "staging", reason="signed")
    lax.register_model("m", tiny_model(4))

    as_reader(monkeypatch, keys["key_pub"])
    reg = Registry.open(root, policy=policy_file(tmp_path, ["staging", "production"]))
    events = len(reg.audit("m"))
    # promotion: the unsigned version is refused by name, with what is missing; nothing is written
    with pytest.raises(PolicyError) as refused:
        reg.transition("models:/m/2", "production", reason="promote unsigned")
    assert "models:/m/2 is not signed" in refused.value.message and "production" in refused.value.message
    # load and fetch: an unsigned version in a stage that requires signatures
    with pytest.raises(IntegrityError, match="models:/m/2 is not signed"):
        reg.load_model("models:/m/2")
    with pytest.raises(IntegrityError):
        model_ops.load("models:/m/2", registry=reg)
    with pytest.raises(IntegrityError):
        reg.fetch("models:/m/2", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    # deployment: a canary of an unsigned staging version, a shadow, a rollback to unsigned: refused before anything
    for action, version in (("deploy", 2), ("shadow_on", 2)):
        with pytest.raises(PolicyError, match="cannot be deployed"):
            dep.apply(reg, SPEC, action, version=version)
    with pytest.raises(PolicyError, match="cannot be deployed"):
        reg.record("m", "deployment", version=2, details={"manifest": {"production": 1, "canary": 2}})
    ab = ex.ExperimentConfig("ab", "m", (ex.ArmConfig(3, 0.5), ex.ArmConfig(2, 0.5)), "correct", max_sample=1_000)
    with pytest.raises(PolicyError, match="models:/m/2 .*cannot be deployed"):
        ex.start(reg, ab, "correct")  # an A/B arm answers production traffic, as a canary does
    assert len(reg.audit("m")) == events and "canary" not in reg.get("m", 2).aliases
    # a signed version goes through: into production, then deployed as canary beside it
    dep.apply(reg, SPEC, "promote", version=3)
    assert reg.get("m", 3).stage == "production"
    assert reg.load_model("models:/m@champion") is not None
    with pytest.raises(PolicyError, match="rolled back|cannot be deployed"):
        dep.apply(reg, SPEC, "rollback_production")  # back to unsigned v1: refused
    with pytest.raises(PolicyError, match="models:/m/1 is not signed"):
        reg.rollback("m", reason="the registry's own rollback checks too")
    assert reg.get("m", 3).stage == "production"
    # development is not listed: an unsigned version there loads, a signed one is still checked
    assert reg.load_model("models:/m/4") is not None
    # without the public key nothing signed can be shown to be signed where it must be
    as_reader(monkeypatch, None)
    with pytest.raises(IntegrityError, match="no public key"):
        Registry.open(root, policy=policy_file(tmp_path, ["staging", "production"])).load_model("models:/m/3")


def test_require_signature_names_real_stages(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="require_signature names 'prod'"):
        Registry.open(tmp_path / "r", policy=policy_file(tmp_path, ["prod"]))


def test_registering_where_signatures_are_required_needs_the_key(
    root: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    as_reader(monkeypatch, keys["key_pub"])
    reg = Registry.open(root, policy=policy_file(tmp_path, ["development"]))
    with pytest.raises(UsageError, match="MODEL_OPS_SIGNING_KEY is not set"):
        reg.register_model("m", tiny_model(1))
    as_signer(monkeypatch, keys["key"])
    assert reg.register_model("m", tiny_model(1)).record["signing"]


# ---------------------------------------------------------------------------------------------------- provenance


def test_provenance_names_data_code_environment_and_run_and_is_verified(
    root: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    lock = tmp_path / "uv.lock"
    lock.write_text("version = 1\n")
    monkeypatch.setenv(attest.LOCKFILE_ENV, str(lock))
    as_signer(monkeypatch, keys["key"])
    mv = Registry.open(root).register_model(
        "m",
        tiny_model(1),
        dataset={"uri": "s3://lake/m/training_set", "version": 12, "schema_hash": "abc"},
        lineage={
            "git_commit": "1" * 40 + "-dirty",
            "code_version": "cv7",
            "dagster_run_id": "run-42",
            "dagster_job": "m__retrain",
            "snapshot_fingerprint": "f" * 64,
        },
        run_id="run-42",
    )
    as_reader(monkeypatch, keys["key_pub"])
    capsys.readouterr()
    assert main(["--root", str(root), "provenance", mv.ref, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is True and report["problems"] == []
    statement = report["statement"]
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"][0] == {
        "name": "models:/m",
        "digest": {"sha256": mv.digest},
        "annotations": {"model_ops": "manifest"},
    }
    build = statement["predicate"]["buildDefinition"]
    deps = {d["name"]: d for d in build["resolvedDependencies"]}
    assert deps["dataset"]["uri"] == "s3://lake/m/training_set"
    assert deps["dataset"]["annotations"] == {
        "delta_version": 12,
        "schema_hash": "abc",
        "snapshot_fingerprint": "f" * 64,
    }
    assert deps["code"]["digest"] == {"gitCommit": "1" * 40}
    assert deps["code"]["annotations"] == {"code_version": "cv7", "dirty": True}
    assert deps["environment"]["annotations"] == mv.lineage["environment"]
    assert deps["uv.lock"]["digest"]["sha256"] == __import__("hashlib").sha256(lock.read_bytes()).hexdigest()
    run = statement["predicate"]["runDetails"]
    assert run["builder"]["id"] == attest.BUILDER_DAGSTER and run["metadata"] == {"invocationId": "run-42"}
    assert build["internalParameters"]["dagster_job"] == "m__retrain"
    assert main(["--root", str(root), "provenance", mv.ref]) == 0
    human = capsys.readouterr().out
    assert "provenance verified" in human and "run run-42, job m__retrain" in human and "delta_version 12" in human


def test_provenance_whose_subject_is_another_version_is_refused(
    root: Path, tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A key holder who reuses v1's (validly signed) provenance for v2 — claiming v2 was built from v1's data and
    code — signs a record that verifies, and an envelope that verifies; the subject check is what refuses it."""
    as_signer(monkeypatch, keys["key"])
    owner = Registry.open(root)
    v1 = owner.register_model("m", tiny_model(1), dataset="s3://lake/audited@1")
    model = tiny_model(2)
    signer = signing.signer_from_env()
    assert signer is not None
    with tempfile.TemporaryDirectory() as tmp:
        from model_ops.ml import flavors

        flavors.save(model, Path(tmp) / "a")
        stored = owner.artifacts.put(Path(tmp) / "a")
    record = {**copy.deepcopy(dict(v1.record)), "parent": 1}
    record["signing"] = attest.sign_version(
        signer,
        oms=None,
        provenance=v1.record["signing"]["provenance"],
        model="m",
        version=2,
        semver="1.0.1",
        digest=stored.digest,
        created_by=owner.actor,
        run_id=None,
        record=record,
    )
    forged = forge_version(owner, "m", 2, "1.0.1", stored.digest, record)
    as_reader(monkeypatch, keys["key_pub"])
    reg = Registry.open(root)
    capsys.readouterr()
    assert main(["--root", str(root), "provenance", forged.ref, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is False
    assert any("not the version's digest" in p for p in report["problems"])
    with pytest.raises(IntegrityError, match="not the version's digest"):
        reg.load_model(forged.ref)
    assert any(p.startswith("m v2:") and "subject" in p for p in reg.fsck())
    assert main(["--root", str(root), "provenance", v1.ref]) == 0


def test_an_unsigned_version_shows_its_derived_provenance_and_fails(
    root: Path, reg: Registry, capsys: pytest.CaptureFixture
) -> None:
    mv = reg.register_model("m", tiny_model(1), dataset="s3://lake/x@3")
    capsys.readouterr()
    assert main(["--root", str(root), "provenance", mv.ref, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["signed"] is False and report["statement"]["subject"][0]["digest"]["sha256"] == mv.digest
    assert reg.fsck() == []  # nothing requires signatures here


# ---------------------------------------------------------------------------------------------------- keys


def test_keygen_makes_a_key_pair_that_signs_and_verifies(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    key = tmp_path / "k.pem"
    assert main(["keygen", str(key), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert (key.stat().st_mode & 0o777) == 0o600 and Path(made["public_key"]) == tmp_path / "k.pub.pem"
    assert main(["keygen", str(key)]) == 2  # never overwritten
    as_signer(monkeypatch, key)
    mv = Registry.open(root).register_model("m", tiny_model(1))
    assert mv.record["signing"]["key_id"] == made["key_id"]
    as_reader(monkeypatch, None)
    assert main(["--root", str(root), "verify", mv.ref, "--public-key", made["public_key"]]) == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/nonexistent/key.pem", "cannot read the key file"),
        ("short", "too short"),
    ],
)
def test_a_signing_key_setting_that_cannot_be_used_is_refused(
    root: Path, monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv(signing.KEY_ENV, value)
    with pytest.raises(UsageError, match=message):
        Registry.open(root).register_model("m", tiny_model(1))


def test_an_rsa_key_is_refused_with_how_to_make_an_ec_key(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "rsa.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    monkeypatch.setenv(signing.KEY_ENV, str(path))
    with pytest.raises(UsageError, match="elliptic-curve"):
        Registry.open(root).register_model("m", tiny_model(1))


def test_a_version_registered_for_a_business_window_is_signed_with_it(
    tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run for a partition stamps its writes with the window; the signed record includes it, so the version
    verifies and loads like any other."""
    root = tmp_path / "root"
    as_signer(monkeypatch, keys["key"])
    reg = Registry.open(root, actor="trainer")
    reg.business_window = "2013-07-01"
    mv = reg.register_model("m", tiny_model(1), dataset="s3://lake/features@7")
    assert mv.record["business_window"] == "2013-07-01"
    as_reader(monkeypatch, keys["key_pub"])
    reader = Registry.open(root)
    assert reader.fsck() == []
    assert reader.load_model(mv.ref) is not None
    assert [e.business_window for e in reader.audit("m")] == ["2013-07-01"] * len(reader.audit("m"))
