"""What a version's signatures cover, its provenance statement, and the checks of both.

A signed version carries, in its registration record, a ``signing`` block: the algorithm and key id (and the
certificate chain, when signed by certificate), the digests of two attachments committed with it, and one
signature over the canonical JSON of the whole version (:func:`version_document`):

- model name, version number, semver, artifact digest, who registered it and in which run;
- the record: params, metrics, dataset, input/output signature, lineage (code version, git commit, environment,
  seed …), parent, flavor, size, file count, description, semver bump;
- the signing block itself (key, and the digests of the OMS bundle and the provenance envelope).

Not covered: the registration timestamp (assigned by the commit, after the signature; the audit log's hash chain
covers it) and what changes later by design (stage, aliases, tags). Copying another version's digest and
signature into a forged record therefore fails: the signature is over the version, not over the digest.

The two attachments, stored beside the artifact in the content-addressed store and kept by gc like any other:

- ``oms-signature`` (``model.sig``): the OpenSSF Model Signing bundle of the artifact's files, made by
  ``model_signing`` from the registered files, verifiable with ``model_signing`` alone;
- ``provenance`` (``provenance.intoto.json``): a DSSE envelope over an in-toto Statement v1 with a SLSA
  provenance v1 predicate (:func:`provenance_statement`): subjects the manifest and each file by SHA-256;
  resolved dependencies the dataset (URI, Delta version, schema hash, snapshot fingerprint), the code (git commit,
  code version), the environment (digest of the recorded Python and package versions) and a lockfile when there
  is one; builder the Dagster run and job. Signed with the same key.

Other attachments (a drift reference profile …) carry a signature of their own over (model, version, the
version's digest, label, attachment digest, size), so an attachment swapped in from another version, or another
model, is refused on read.

When a check applies: where the policy requires signatures for the version's stage (``require_signature``, or
``require_signed_artifacts`` for every stage), always, and a version that is unsigned or has no key to be checked
with is refused. Elsewhere a signed version is checked whenever a key is at hand (``MODEL_OPS_PUBLIC_KEY``, or the
signer's own), and an unsigned one passes. Versions signed by earlier releases (``artifact_signature``: an HMAC of
the digest alone) count as unsigned, since that form is exactly what a forged record can copy.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_ops import __version__
from model_ops.artifacts import signing
from model_ops.artifacts.manifest import Manifest
from model_ops.artifacts.signing import Signer, Verifier
from model_ops.errors import IntegrityError, ModelOpsError, NotFoundError, PolicyError, UsageError
from model_ops.registry import events as ev

if TYPE_CHECKING:
    from model_ops.registry.registry import ModelVersion, Registry
    from model_ops.registry.state import ModelState, VersionState

FORMAT = "model_ops.signing/v1"
VERSION_TYPE = "https://model_ops/signed-version/v1"
ATTACHMENT_TYPE = "https://model_ops/signed-attachment/v1"
OMS_LABEL = "oms-signature"
PROVENANCE_LABEL = "provenance"
PROVENANCE_FILE = "provenance.intoto.json"
RESERVED_LABELS = frozenset({OMS_LABEL, PROVENANCE_LABEL})
ATTACHED_REASON = {
    OMS_LABEL: "OpenSSF Model Signing bundle of the artifact's files (model.sig), signed at registration",
    PROVENANCE_LABEL: "in-toto SLSA provenance statement, signed at registration",
}
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:model_ops:build:registration:v1"
BUILDER_DAGSTER = "urn:model_ops:builder:dagster"
BUILDER_LOCAL = "urn:model_ops:builder:library"
LOCKFILE_ENV = "MODEL_OPS_LOCKFILE"
LOCKFILES = ("uv.lock", "pylock.toml", "poetry.lock", "requirements.lock")
_KEY_HINT = f"set {signing.PUBLIC_KEY_ENV} (or pass --public-key) to the registry's public key or CA certificate"


# ---------------------------------------------------------------------------------------------------- signing


def version_document(
    *,
    model: str,
    version: int,
    semver: str,
    digest: str,
    created_by: str,
    run_id: str | None,
    record: Mapping[str, Any],
    block: Mapping[str, Any],
) -> bytes:
    """The bytes a version signature covers (see the module docstring)."""
    return signing.canonical(
        {
            "_type": VERSION_TYPE,
            "model": model,
            "version": version,
            "semver": semver,
            "digest": digest,
            "created_by": created_by,
            "run_id": run_id,
            "record": {k: v for k, v in record.items() if k != "signing"},
            "signing": {k: v for k, v in block.items() if k != "sig"},
        }
    )


def sign_version(signer: Signer, *, oms: str | None, provenance: str | None, **fields: Any) -> dict[str, Any]:
    """The ``signing`` block of a version record: called inside the registry's compare-and-swap loop, once per
    attempt, because the version number and semver it covers are assigned there (one ECDSA signature: cheap)."""
    block: dict[str, Any] = {"format": FORMAT, **signer.block(), "oms": oms, "provenance": provenance}
    block["sig"] = signer.sign(version_document(block=block, **fields))
    return block


def _version_bytes(mv: ModelVersion) -> bytes:
    record = dict(mv.record)
    return version_document(
        model=mv.name,
        version=mv.version,
        semver=mv.semver,
        digest=mv.digest,
        created_by=mv.created_by,
        run_id=mv.run_id,
        record=record,
        block=record["signing"],
    )


def attachment_document(*, model: str, version: int, version_digest: str, label: str, digest: str, size: int) -> bytes:
    return signing.canonical(
        {
            "_type": ATTACHMENT_TYPE,
            "model": model,
            "version": version,
            "version_digest": version_digest,
            "label": label,
            "digest": digest,
            "bytes": size,
        }
    )


def sign_attachment(signer: Signer, **fields: Any) -> dict[str, Any]:
    block: dict[str, Any] = {"format": FORMAT, **signer.block()}
    block["sig"] = signer.sign(attachment_document(**fields))
    return block


def oms_bundle(signer: Signer, path: Path, manifest: Manifest) -> bytes | None:
    """The OMS bundle of the files at ``path`` (as registered), checked against the manifest just stored from the
    same files: a file changed between the two would otherwise leave a bundle that never verifies."""
    bundle = signer.oms_bundle(Path(path))
    if bundle is None:
        return None
    signed = signing.oms_resources(signing.read_oms_statement(bundle, "the new OMS bundle"))
    if signed != manifest_resources(manifest):
        raise UsageError(
            f"the files under {path} changed while they were being registered; nothing was registered",
            hint="register them again once nothing writes to them",
        )
    return bundle


def manifest_resources(manifest: Manifest) -> dict[str, str]:
    """A manifest's files as an OMS statement names them (``model_signing`` calls a lone file ``.``)."""
    if manifest.kind == "file":
        return {".": manifest.files[0].sha256}
    return {f.path: f.sha256 for f in manifest.files}


# ---------------------------------------------------------------------------------------------------- provenance


def lockfile() -> dict[str, Any] | None:
    """The lockfile the environment was installed from, as a resolved dependency: ``$MODEL_OPS_LOCKFILE``, else
    the first of ``uv.lock``, ``pylock.toml``, ``poetry.lock``, ``requirements.lock`` in the working directory."""
    named = os.environ.get(LOCKFILE_ENV)
    candidates = [Path(named)] if named else [Path(n) for n in LOCKFILES]
    for path in candidates:
        try:
            data = path.read_bytes()
        except OSError:
            if named:
                raise UsageError(f"{LOCKFILE_ENV} names {path}, which cannot be read") from None
            continue
        return {
            "name": path.name,
            "uri": path.resolve().as_uri(),
            "digest": {"sha256": hashlib.sha256(data).hexdigest()},
        }
    return None


def _present(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def provenance_statement(
    *,
    model: str,
    digest: str,
    manifest: Manifest,
    params: Mapping[str, Any],
    dataset: Mapping[str, Any] | None,
    lineage: Mapping[str, Any],
    flavor: str,
    run_id: str | None,
    actor: str,
    lock: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An in-toto Statement v1 with a SLSA provenance v1 predicate: what was built (subjects), from what
    (resolved dependencies), with which parameters, by which run. Everything in it comes from the version record
    and the manifest, so it can be built before the version number is known and signed once."""
    env = lineage.get("environment") or {}
    deps: list[dict[str, Any]] = []
    if dataset:
        deps.append(
            {
                "name": "dataset",
                "uri": str(dataset["uri"]),
                "annotations": _present(
                    {
                        "delta_version": dataset.get("version"),
                        "schema_hash": dataset.get("schema_hash") or lineage.get("schema_hash"),
                        "rows": dataset.get("rows"),
                        "snapshot_fingerprint": lineage.get("snapshot_fingerprint"),
                        "source": lineage.get("source"),
                        "window": lineage.get("window"),
                    }
                ),
            }
        )
    commit = lineage.get("git_commit")
    code_version = lineage.get("code_version")
    if commit or code_version:
        code: dict[str, Any] = {"name": "code"}
        if commit:
            code["digest"] = {"gitCommit": str(commit).removesuffix("-dirty")}
        else:
            code["uri"] = f"urn:model_ops:code-version:{code_version}"
        code["annotations"] = _present(
            {"code_version": code_version, "dirty": str(commit).endswith("-dirty") if commit else None}
        )
        deps.append(code)
    if env:
        deps.append(
            {
                "name": "environment",
                "digest": {"sha256": hashlib.sha256(signing.canonical(env)).hexdigest()},
                "annotations": env,
            }
        )
    if lock:
        deps.append(dict(lock))
    dagster_run = lineage.get("dagster_run_id") or run_id
    packages = env.get("packages") or {}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": f"models:/{model}", "digest": {"sha256": digest}, "annotations": {"model_ops": "manifest"}},
            *({"name": f.path, "digest": {"sha256": f.sha256}} for f in manifest.files),
        ],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": _present(
                    {
                        "model": model,
                        "params": dict(params or {}),
                        "flavor": flavor,
                        "code_version": code_version,
                        "seed": lineage.get("seed"),
                        "estimator": lineage.get("estimator"),
                        "trainer": lineage.get("trainer"),
                    }
                ),
                "internalParameters": _present({"actor": actor, "dagster_job": lineage.get("dagster_job")}),
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER_DAGSTER
                    if lineage.get("dagster_run_id") or lineage.get("dagster_job")
                    else BUILDER_LOCAL,
                    "version": _present({"model_ops": __version__, "dagster": packages.get("dagster")}),
                },
                **({"metadata": {"invocationId": str(dagster_run)}} if dagster_run else {}),
            },
        },
    }


def provenance_problems(statement: Mapping[str, Any], model: str, digest: str, manifest: Manifest | None) -> list[str]:
    """What is wrong with a provenance statement for the version of ``model`` with ``digest``: it must be SLSA
    provenance whose manifest subject is that digest, and whose file subjects are the manifest's files."""
    problems = []
    if statement.get("predicateType") != SLSA_PROVENANCE:
        problems.append(f"it is a {statement.get('predicateType')!r} statement, not SLSA provenance")
    subjects = statement.get("subject") or []
    main = [s for s in subjects if (s.get("annotations") or {}).get("model_ops") == "manifest"]
    got = main[0].get("digest", {}).get("sha256") if main else None
    if got != digest:
        problems.append(
            f"its subject is sha256:{str(got)[:12]}, not the version's digest sha256:{digest[:12]}"
            + (f" (it names {main[0].get('name')})" if main else "")
        )
    elif main[0].get("name") != f"models:/{model}":
        problems.append(f"its subject is {main[0].get('name')!r}, not models:/{model}")
    if manifest is not None and not problems:
        files = {str(s.get("name")): s.get("digest", {}).get("sha256") for s in subjects if s not in main}
        if files != {f.path: f.sha256 for f in manifest.files}:
            problems.append("its file subjects are not the artifact's files")
    return problems


# ---------------------------------------------------------------------------------------------------- checking


@dataclass
class Check:
    """One finding about one thing a version's signatures cover. ``ok`` is None when it could not be checked
    (no key) and False when it failed."""

    check: str
    ok: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def not_signed(mv: ModelVersion) -> str:
    if mv.record.get("artifact_signature"):
        return (
            f"{mv.ref} carries only an earlier release's signature of its digest, which does not bind the version "
            "record, so it counts as unsigned"
        )
    return f"{mv.ref} is not signed"


def _read(reg: Registry, digest: str | None, name: str, what: str) -> bytes:
    if not digest:
        raise IntegrityError(f"the version record names no {what}")
    try:
        return reg.artifacts.read_file(digest, name)
    except NotFoundError:
        raise IntegrityError(f"the {what} ({digest[:12]}) is missing from the artifact store") from None


def version_checks(
    reg: Registry, mv: ModelVersion, verifier: Verifier | None, *, manifest: Manifest | None = None
) -> list[Check]:
    """Every check of a signed version that needs no copy of its files: the record signature, the OMS bundle
    (its signature, its key, and that it signs exactly the manifest's files) and the provenance envelope (its
    signature and subjects). With no ``verifier`` the structure is still checked and each signature is reported
    unchecked (``ok`` None). The artifact's own bytes are verified against the manifest by the store on read."""
    block = mv.record.get("signing")
    if not isinstance(block, Mapping):
        return [Check("record", False, not_signed(mv))]
    out: list[Check] = []
    what = f"the version record of {mv.ref}"
    if verifier is None:
        out.append(Check("record", None, "signature not checked: no public key"))
    else:
        try:
            verifier.verify(_version_bytes(mv), block, what)
            out.append(Check("record", True, f"{block.get('alg')} signature by key {str(block.get('key_id'))[:16]}"))
        except IntegrityError as e:
            out.append(Check("record", False, e.message))
    try:
        manifest = manifest or reg.artifacts.manifest(mv.digest)
    except ModelOpsError as e:
        return [*out, Check("artifact", False, e.message)]
    if block.get("alg") != signing.ALGORITHM:
        out.append(_check_oms(reg, mv, block, manifest, verifier))
    out.append(_check_provenance(reg, mv, block, manifest, verifier))
    return out


def _check_oms(
    reg: Registry, mv: ModelVersion, block: Mapping[str, Any], manifest: Manifest, verifier: Verifier | None
) -> Check:
    what = f"the OMS bundle of {mv.ref}"
    try:
        bundle = _read(reg, block.get("oms"), signing.OMS_FILE, "OMS bundle")
        if verifier is None:
            statement = signing.read_oms_statement(bundle, what)
        else:
            statement = verifier.oms_statement(bundle, str(block.get("key_id")), what)
    except IntegrityError as e:
        return Check("oms", False, e.message)
    if signing.oms_resources(statement) != manifest_resources(manifest):
        return Check("oms", False, f"{what} signs other files than the artifact's manifest lists")
    if verifier is None:
        return Check("oms", None, f"bundle lists the {len(manifest.files)} file(s); signature not checked: no key")
    return Check("oms", True, f"bundle signs the {len(manifest.files)} file(s) of the manifest")


def _check_provenance(
    reg: Registry, mv: ModelVersion, block: Mapping[str, Any], manifest: Manifest, verifier: Verifier | None
) -> Check:
    what = f"the provenance of {mv.ref}"
    try:
        envelope = json.loads(_read(reg, block.get("provenance"), PROVENANCE_FILE, "provenance statement"))
        if verifier is None:
            statement = signing._statement(signing.open_envelope(envelope, what), what)
        else:
            statement = signing.verify_envelope(envelope, verifier, block, what)
    except (IntegrityError, ValueError) as e:
        return Check("provenance", False, e.message if isinstance(e, IntegrityError) else f"{what} is not JSON")
    problems = provenance_problems(statement, mv.name, mv.digest, manifest)
    if problems:
        return Check("provenance", False, f"{what}: " + "; ".join(problems))
    if verifier is None:
        return Check("provenance", None, "subject matches the version's digest; signature not checked: no key")
    return Check("provenance", True, "in-toto SLSA provenance, signed; its subject is the version's digest")


def enforce(
    reg: Registry,
    mv: ModelVersion,
    *,
    purpose: str,
    stage: str | None = None,
    error: type[ModelOpsError] = IntegrityError,
) -> Verifier | None:
    """Refuse ``mv`` (raising ``error``: IntegrityError where something is about to be used, PolicyError where a
    request is refused) unless its signatures hold, per the rules in the module docstring; ``stage`` is the one
    whose requirement applies (default the version's own). Returns the verifier when the signatures were
    checked, so a fetch can verify the fetched copy with it too."""
    stage = stage or mv.stage
    required = reg.policy.signature_required(stage)
    if not isinstance(mv.record.get("signing"), Mapping):
        if required:
            raise error(
                f"{not_signed(mv)}, and the policy requires signatures in {stage}: it {purpose}",
                hint="versions are signed when they are registered with MODEL_OPS_SIGNING_KEY set; "
                "register a new version with the key, or lift require_signature for this stage in the policy",
            )
        return None
    verifier = signing.verifier_from_env()
    if verifier is None:
        if required:
            raise error(
                f"{mv.ref} {purpose}: the policy requires signatures in {stage}, and there is no public key to "
                "check its signature with",
                hint=_KEY_HINT,
            )
        return None
    failed = [c for c in version_checks(reg, mv, verifier) if c.ok is False]
    if failed:
        raise error(
            f"{mv.ref} {purpose}: " + "; ".join(c.detail for c in failed),
            hint="do not use it; `model-ops verify " + mv.ref + "` lists every check, `model-ops fsck` the registry",
        )
    return verifier


def deployment_versions(version: int | None, details: Mapping[str, Any] | None, served: set[int]) -> list[int]:
    """The versions a deployment record puts in front of traffic: those its manifest serves (production, canary,
    shadow) that are not serving already by the registry's own account (``served``: never the record's own claim
    of what served before), or the version it names when it carries no manifest."""
    details = details or {}
    after = details.get("manifest")
    if not isinstance(after, Mapping):
        return [version] if version else []
    roles = ("production", "canary", "shadow")
    named: dict[str, Any] = {r: after[r] for r in roles if after.get(r) is not None}
    bad = [r for r, v in named.items() if type(v) is not int or v < 1]
    if bad:
        raise UsageError(
            "a deployment manifest names versions by number: " + ", ".join(f"{r}={after.get(r)!r}" for r in bad),
            hint="pass version numbers as integers (or null for none)",
        )
    return sorted({int(v) for v in named.values() if v not in served})


def require_deployable(reg: Registry, name: str, version: int) -> None:
    """A deployment puts a version in front of production traffic, whatever stage it is in (a canary is in
    staging), so it is held to the production stage's requirement as well as its own."""
    mv = reg.get(name, version)
    production = reg.policy.production.stage
    stage = production if reg.policy.signature_required(production) else mv.stage
    enforce(reg, mv, purpose="cannot be deployed", stage=stage, error=PolicyError)


def check_attachment(reg: Registry, mv: ModelVersion, event: ev.Event, verifier: Verifier | None) -> Check:
    """The signature of one attachment event (``ok`` None when it is unsigned, or when there is no key)."""
    label = str(event.key)
    name = f"attachment:{label}"
    block = (mv.record.get("signing") or {}) if isinstance(mv.record.get("signing"), Mapping) else {}
    if label in RESERVED_LABELS:
        expected = block.get("oms" if label == OMS_LABEL else "provenance")
        if not block:
            return Check(name, False, f"{mv.ref} is not signed, so it has no {label} attachment of its own")
        if event.digest != expected:
            return Check(name, False, f"the {label} attachment of {mv.ref} is not the one its signed record names")
        return Check(name, True, "the one the signed version record names")
    sig = event.data.get("signing")
    if not isinstance(sig, Mapping):
        return Check(name, None, f"attachment {label!r} of {mv.ref} is not signed")
    if verifier is None:
        return Check(name, None, "signature not checked: no public key")
    try:
        verifier.verify(
            attachment_document(
                model=mv.name,
                version=mv.version,
                version_digest=mv.digest,
                label=label,
                digest=str(event.digest),
                size=int(event.data.get("bytes") or 0),
            ),
            sig,
            f"attachment {label!r} of {mv.ref}",
        )
    except IntegrityError as e:
        return Check(name, False, e.message)
    return Check(name, True, f"signed by key {str(sig.get('key_id'))[:16]}, bound to {mv.ref}")


def enforce_attachment(reg: Registry, mv: ModelVersion, event: ev.Event) -> None:
    """Refuse to serve an attachment whose signature fails; or that is unsigned where the version's stage requires
    signatures, or where its version is signed and a key is at hand (an attacker would simply strip it)."""
    required = reg.policy.signature_required(mv.stage)
    version_signed = isinstance(mv.record.get("signing"), Mapping)
    signed = isinstance(event.data.get("signing"), Mapping) or event.key in RESERVED_LABELS
    if not (required or version_signed or signed):
        return
    verifier = signing.verifier_from_env()
    found = check_attachment(reg, mv, event, verifier)
    if found.ok is False:
        raise IntegrityError(found.detail, hint="do not use it; run `model-ops fsck`")
    if found.ok is None and (required or (verifier is not None and (version_signed or signed))):
        why = found.detail if verifier is not None else f"attachment {event.key!r} of {mv.ref}: {found.detail}"
        raise IntegrityError(why, hint=_KEY_HINT if verifier is None else "attach it again with the signing key set")


# ---------------------------------------------------------------------------------------------------- fsck


class FsckSignatures:
    """fsck's signature checks, for every version: its signatures where it is signed (structure always, the
    cryptography when a key is at hand), its absence where the policy requires one, and its attachments."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.problems: list[str] = []
        try:
            self.verifier = signing.verifier_from_env()
        except UsageError as e:
            self.verifier = None
            self.problems.append(f"signatures cannot be checked: {e.message}")
        self._attachments: dict[tuple[str, int], dict[str, ev.Event]] | None = None

    def attachments(self, model: str, version: int) -> dict[str, ev.Event]:
        if self._attachments is None:
            self._attachments = {}
            for e in self.registry.audit():
                if e.kind == ev.ATTACHMENT and e.version is not None and e.key:
                    self._attachments.setdefault((e.model, e.version), {})[e.key] = e  # the newest wins
        return self._attachments.get((model, version), {})

    def check(self, m: ModelState, vs: VersionState) -> list[str]:
        reg = self.registry
        mv = reg._mv(m, vs)
        where = f"{m.name} v{vs.version}"
        required = reg.policy.signature_required(vs.stage)
        signed = isinstance(vs.record.get("signing"), Mapping)
        out = [p for p in self.problems]
        self.problems = []
        if not signed:
            if required:
                out.append(f"{where}: {not_signed(mv)}, and the policy requires signatures in {vs.stage}")
            checks: list[Check] = []
        else:
            checks = version_checks(reg, mv, self.verifier)
        for label, event in sorted(self.attachments(m.name, vs.version).items()):
            if signed or required or isinstance(event.data.get("signing"), Mapping) or label in RESERVED_LABELS:
                checks.append(check_attachment(reg, mv, event, self.verifier))
        for c in checks:
            if c.ok is False:
                out.append(f"{where}: {c.detail}")
            elif c.ok is None and (required or (self.verifier is not None and signed)):
                out.append(f"{where}: {c.check} {c.detail}" + ("" if self.verifier else f" ({_KEY_HINT})"))
        return out


# ---------------------------------------------------------------------------------------------------- reports


def verify_report(reg: Registry, ref: str, verifier: Verifier) -> dict[str, Any]:
    """Everything ``model-ops verify`` checks, on a read-only root: the record, the OMS bundle with
    ``model_signing`` against a fetched copy of the files (in a temporary directory), the provenance, and every
    attachment. ``verified`` is True only when every check passed."""
    import tempfile

    mv = reg.resolve(ref)
    block = mv.record.get("signing") if isinstance(mv.record.get("signing"), Mapping) else None
    checks = version_checks(reg, mv, verifier)
    if block and block.get("alg") != signing.ALGORITHM and all(c.ok for c in checks):
        with tempfile.TemporaryDirectory(prefix="model_ops_verify_") as tmp:
            try:
                path = reg.artifacts.fetch(mv.digest, Path(tmp) / "artifact")
                bundle = reg.artifacts.read_file(str(block["oms"]), signing.OMS_FILE)
                n = verifier.oms_verify(path, bundle, str(block["key_id"]), f"the OMS bundle of {mv.ref}")
                checks.append(Check("files", True, f"model_signing verified {n} file(s) of a fetched copy"))
            except ModelOpsError as e:
                checks.append(Check("files", False, e.message))
    if block:
        for _, event in sorted(_attachment_events(reg, mv).items()):
            found = check_attachment(reg, mv, event, verifier)
            checks.append(Check(found.check, False, found.detail) if found.ok is None else found)
    return {
        "ref": mv.ref,
        "semver": mv.semver,
        "digest": mv.digest,
        "stage": mv.stage,
        "verified": bool(block) and all(c.ok for c in checks),
        "alg": block.get("alg") if block else None,
        "key_id": block.get("key_id") if block else None,
        "trusted": verifier.describe(),
        "checks": [c.to_dict() for c in checks],
    }


def _attachment_events(reg: Registry, mv: ModelVersion) -> dict[str, ev.Event]:
    found: dict[str, ev.Event] = {}
    for e in reg.audit(mv.name):
        if e.kind == ev.ATTACHMENT and e.version == mv.version and e.key:
            found[e.key] = e
    return found


def provenance_report(reg: Registry, ref: str, verifier: Verifier | None) -> dict[str, Any]:
    """A version's provenance statement, with whether its signature holds and its subject is the version's
    digest. An unsigned version gets the statement its record implies, marked unsigned (and not verified)."""
    mv = reg.resolve(ref)
    block = mv.record.get("signing") if isinstance(mv.record.get("signing"), Mapping) else None
    manifest = reg.artifacts.manifest(mv.digest)
    out: dict[str, Any] = {"ref": mv.ref, "digest": mv.digest, "signed": bool(block), "verified": False}
    if not block:
        out["problems"] = [not_signed(mv) + ": the statement below is derived from its record and signed by no one"]
        out["statement"] = provenance_statement(
            model=mv.name,
            digest=mv.digest,
            manifest=manifest,
            params=mv.params,
            dataset=mv.dataset,
            lineage=mv.lineage,
            flavor=mv.flavor,
            run_id=mv.run_id,
            actor=mv.created_by,
        )
        return out
    if verifier is None:
        raise UsageError(
            f"{mv.ref}'s provenance is signed, and there is no public key to check it with", hint=_KEY_HINT
        )
    what = f"the provenance of {mv.ref}"
    problems: list[str] = []
    try:
        envelope = json.loads(_read(reg, block.get("provenance"), PROVENANCE_FILE, "provenance statement"))
        statement = signing.verify_envelope(envelope, verifier, block, what)
        out["envelope_digest"] = block.get("provenance")
    except (IntegrityError, ValueError) as e:
        out["problems"] = [e.message if isinstance(e, IntegrityError) else f"{what} is not JSON"]
        return out
    problems += provenance_problems(statement, mv.name, mv.digest, manifest)
    record = next((c for c in version_checks(reg, mv, verifier, manifest=manifest) if c.check == "record"), None)
    if record is not None and record.ok is not True:
        problems.append(record.detail)
    out.update({"statement": statement, "problems": problems, "verified": not problems, "key_id": block.get("key_id")})
    return out
