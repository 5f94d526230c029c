"""Artifacts are verified, content-addressed and deduplicated; damage is detected, never loaded; signatures and
the skops type allow-list are enforced."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from model_ops.artifacts import ArtifactStore, sklearn_io
from model_ops.artifacts.signing import key_id
from model_ops.errors import IntegrityError, NotFoundError, PolicyError, UsageError
from model_ops.registry import Registry
from model_ops.registry.policy import default_policy_text
from model_ops_tests.helpers import (
    DOUBLE_IT_TYPE,
    blob_path,
    delete,
    flip_byte,
    local_blobs,
    local_temporaries,
    pipeline_with_custom_function,
    read_tree,
    skops_calling,
    tiny_model,
    training_data,
    truncate,
    write_file,
    write_tree,
)

KEY_A = "a-signing-key-of-at-least-16-characters"
KEY_B = "another-signing-key-of-16-or-more-chars"


def _file_blob(reg: Registry, digest: str) -> str:
    """The blob of the artifact's model file (a model's artifact also holds its flavor.json)."""
    files = reg.artifacts.manifest(digest).files
    (entry,) = [f for f in files if f.path.endswith(".skops")] if len(files) > 1 else files
    return entry.sha256


# ---------------------------------------------------------------------------------------------------- damage


DAMAGE = {"flip": flip_byte, "truncate": truncate, "delete": delete}
EXPECTED = {"flip": IntegrityError, "truncate": IntegrityError, "delete": NotFoundError}


@pytest.mark.parametrize("target", ["model file", "manifest"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_blob_is_refused_and_reported(
    reg: Registry, root: Path, tmp_path: Path, target: str, damage: str
) -> None:
    X, _ = training_data()
    damaged = reg.register_model("m", tiny_model(1))
    intact = reg.register_model("m", tiny_model(2))
    shared = reg.register_model("other", tiny_model(1))  # same bytes, another model: the very same blobs
    assert shared.digest == damaged.digest
    victim = damaged.digest if target == "manifest" else _file_blob(reg, damaged.digest)
    DAMAGE[damage](blob_path(root, victim))

    error = EXPECTED[damage]
    dest = tmp_path / "out" / "model"
    with pytest.raises(error):
        reg.fetch("models:/m/1", dest)
    assert not dest.exists()
    if dest.parent.exists():
        assert list(dest.parent.iterdir()) == [], "a refused fetch left a file behind"
    with pytest.raises(error):
        reg.load_model("models:/m/1")
    with pytest.raises(error):
        reg.load_model("models:/other/1")

    problems = reg.fsck()
    assert any(p.startswith("m v1:") and victim in p for p in problems), problems
    assert any(p.startswith("other v1:") and victim in p for p in problems), problems
    assert not any(p.startswith("m v2:") for p in problems), problems
    # The intact version is untouched by its neighbour's damage.
    np.testing.assert_array_equal(reg.load_model("models:/m/2").predict(X), tiny_model(2).predict(X))
    assert (reg.fetch(f"models:/m/{intact.version}", tmp_path / "ok") / "model.skops").read_bytes() == sklearn_io.dumps(
        tiny_model(2)
    )


def test_damaged_file_in_a_directory_artifact_leaves_no_partial_copy(reg: Registry, root: Path, tmp_path: Path) -> None:
    files = {"a.bin": b"a" * 1000, "sub/b.bin": b"b" * 1000, "sub/c.bin": b"c" * 1000}
    mv = reg.register("d", write_tree(tmp_path / "src", files))
    manifest = reg.artifacts.manifest(mv.digest)
    flip_byte(blob_path(root, next(f.sha256 for f in manifest.files if f.path == "sub/c.bin")))
    dest = tmp_path / "out" / "artifact"
    with pytest.raises(IntegrityError):
        reg.fetch("models:/d/1", dest)
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == [], "staging files of the refused fetch were left behind"
    assert any(p.startswith("d v1: file sub/c.bin") for p in reg.fsck())


# ---------------------------------------------------------------------------------------------------- round trips


def test_directory_artifact_round_trip(reg: Registry, tmp_path: Path) -> None:
    files = {
        "model.json": b'{"kind": "tree"}',
        "weights/layer0.npy": os.urandom(50_000),
        "weights/deeper/layer1.npy": os.urandom(3_000),
        "README": b"read me",
        "empty.txt": b"",
    }
    src = write_tree(tmp_path / "src", files)
    (src / "an-empty-dir").mkdir()  # holds no file: not part of the artifact
    mv = reg.register("tree", src)
    assert mv.flavor == "files" and mv.record["files"] == len(files)
    assert mv.record["size"] == sum(len(b) for b in files.values())

    out = reg.fetch("models:/tree/1", tmp_path / "fetched")
    assert read_tree(out) == files
    (tmp_path / "empty-dest").mkdir()
    assert read_tree(reg.fetch("models:/tree/1", tmp_path / "empty-dest")) == files
    with pytest.raises(UsageError):
        reg.fetch("models:/tree/1", tmp_path / "fetched")  # not empty: never merged into or overwritten
    assert read_tree(tmp_path / "fetched") == files


def test_model_file_round_trip_and_fetch_into_a_directory(reg: Registry, tmp_path: Path) -> None:
    X, _ = training_data()
    model = tiny_model(3)
    mv = reg.register_model("m", model)
    assert mv.flavor == "sklearn"
    np.testing.assert_array_equal(reg.load_model(mv.ref).predict(X), model.predict(X))
    (tmp_path / "dir").mkdir()
    got = reg.fetch(mv.ref, tmp_path / "dir")
    assert got == tmp_path / "dir" and sorted(p.name for p in got.iterdir()) == ["flavor.json", "model.skops"]
    assert (got / "model.skops").read_bytes() == sklearn_io.dumps(model)
    with pytest.raises(UsageError):
        reg.fetch(mv.ref, got)  # not empty: never merged into or overwritten


# ---------------------------------------------------------------------------------------------------- dedup


def test_identical_bytes_are_stored_once(reg: Registry, root: Path, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    a = reg.register("a", write_file(tmp_path / "1", "model.bin", data))
    blobs = local_blobs(root)
    assert len(blobs) == 2  # the file and the manifest

    # The same file under another model name: the same manifest, nothing new stored.
    b = reg.register("b", write_file(tmp_path / "2", "model.bin", data))
    assert b.digest == a.digest and local_blobs(root) == blobs

    # The same bytes under another file name: a new manifest, the file blob shared.
    c = reg.register("c", write_file(tmp_path / "3", "renamed.bin", data))
    assert c.digest != a.digest
    assert len(local_blobs(root) - blobs) == 1
    assert _file_blob(reg, c.digest) == _file_blob(reg, a.digest)

    # Inside a directory, next to other files: still the one blob for those bytes.
    d = reg.register("d", write_tree(tmp_path / "4", {"x/model.bin": data, "other.bin": b"other"}))
    assert _file_blob(reg, a.digest) in {f.sha256 for f in reg.artifacts.manifest(d.digest).files}
    assert len(local_blobs(root) - blobs) == 3  # renamed manifest, d's manifest, other.bin

    stored = ArtifactStore.open(root).put(write_file(tmp_path / "5", "model.bin", data))
    assert stored.digest == a.digest and stored.new_bytes == 0
    assert local_temporaries(root) == []
    assert reg.fsck() == []


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", ["empty file", "missing path", "empty directory", "directory of empty dirs"])
def test_bad_input_is_refused_and_writes_nothing(reg: Registry, root: Path, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "input"
    if kind == "empty file":
        path.write_bytes(b"")
    elif kind == "empty directory":
        path.mkdir()
    elif kind == "directory of empty dirs":
        (path / "a" / "b").mkdir(parents=True)
    with pytest.raises(UsageError):
        reg.register("m", path)
    with pytest.raises(UsageError):
        ArtifactStore.open(root).put(path)
    assert local_blobs(root) == set() and local_temporaries(root) == []
    assert reg.audit() == [] and reg.models() == []


# ---------------------------------------------------------------------------------------------------- signing


@pytest.fixture
def signed_policy(tmp_path: Path) -> Path:
    text = default_policy_text()
    assert "require_signed_artifacts: false" in text
    path = tmp_path / "signed-policy.yaml"
    path.write_text(text.replace("require_signed_artifacts: false", "require_signed_artifacts: true"))
    return path


def test_signed_registry(root: Path, tmp_path: Path, signed_policy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    X, _ = training_data()
    model = tiny_model(4)
    reg = Registry.open(root, policy=signed_policy)

    monkeypatch.delenv("MODEL_OPS_SIGNING_KEY", raising=False)
    with pytest.raises(UsageError):
        reg.register_model("m", model)
    assert local_blobs(root) == set() and reg.audit() == []

    monkeypatch.setenv("MODEL_OPS_SIGNING_KEY", KEY_A)
    mv = reg.register_model("m", model)
    # A shared secret (not a PEM key) keeps signing as before, now the whole version record (model_ops.registry.attest)
    assert mv.record["signing"]["key_id"] == key_id(KEY_A.encode())
    assert mv.record["signing"]["alg"] == "hmac-sha256"
    np.testing.assert_array_equal(reg.load_model(mv.ref).predict(X), model.predict(X))
    assert (reg.fetch(mv.ref, tmp_path / "a") / "model.skops").read_bytes() == sklearn_io.dumps(model)
    assert Registry.open(root, policy=signed_policy).fsck() == []

    for key in (KEY_B, None):  # another key, then no key at all
        if key is None:
            monkeypatch.delenv("MODEL_OPS_SIGNING_KEY")
        else:
            monkeypatch.setenv("MODEL_OPS_SIGNING_KEY", key)
        with pytest.raises(IntegrityError):
            reg.load_model(mv.ref)
        dest = tmp_path / f"refused-{key is None}.skops"
        with pytest.raises(IntegrityError):
            reg.fetch(mv.ref, dest)
        assert not dest.exists()
        assert any("m v1" in p for p in reg.fsck())


def test_unsigned_version_is_refused_once_signatures_are_required(
    root: Path, tmp_path: Path, signed_policy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unsigned = Registry.open(root).register_model("m", tiny_model(5))  # registered under the default policy
    monkeypatch.setenv("MODEL_OPS_SIGNING_KEY", KEY_A)
    reg = Registry.open(root, policy=signed_policy)
    with pytest.raises(IntegrityError):
        reg.load_model(unsigned.ref)
    with pytest.raises(IntegrityError):
        reg.fetch(unsigned.ref, tmp_path / "x.skops")
    assert any("m v1" in p for p in reg.fsck())


# ---------------------------------------------------------------------------------------------------- skops types


def test_untrusted_type_is_refused_until_trusted(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    X, _ = training_data(7)
    model = pipeline_with_custom_function()
    mv = reg.register_model("p", model)
    with pytest.raises(PolicyError) as refused:
        reg.load_model(mv.ref)
    assert DOUBLE_IT_TYPE in refused.value.message
    with pytest.raises(PolicyError):
        reg.load_model(mv.ref, trusted=["model_ops_tests.helpers.something_else"])
    loaded = reg.load_model(mv.ref, trusted=[DOUBLE_IT_TYPE])
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    monkeypatch.setenv("MODEL_OPS_TRUSTED_TYPES", DOUBLE_IT_TYPE)
    np.testing.assert_array_equal(reg.load_model(mv.ref).predict(X), model.predict(X))


@pytest.mark.parametrize("kind", ["logistic regression", "random forest", "histogram gradient boosting"])
def test_common_scikit_learn_models_load_without_extra_trust(reg: Registry, kind: str) -> None:
    """The allow-list must not get in the way of ordinary models (their tree types included)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    X, y = training_data(11)
    model = {
        "logistic regression": LogisticRegression(max_iter=200),
        "random forest": RandomForestClassifier(n_estimators=3, random_state=0),
        "histogram gradient boosting": HistGradientBoostingClassifier(max_iter=3),
    }[kind].fit(X, y)
    mv = reg.register_model("clf", model)
    np.testing.assert_array_equal(reg.load_model(mv.ref).predict(X), model.predict(X))


CODE_RUNNERS = {
    "builtins.exec": ("builtins", "exec", lambda marker: [f"open({str(marker)!r}, 'w').write('ran')"]),
    "sklearn.utils._testing.assert_run_python_script_without_output": (
        "sklearn.utils._testing",
        "assert_run_python_script_without_output",
        lambda marker: [f"open({str(marker)!r}, 'w').write('ran')"],
    ),
}


@pytest.mark.parametrize("runner", list(CODE_RUNNERS))
def test_a_model_file_cannot_run_code_when_loaded(reg: Registry, tmp_path: Path, runner: str) -> None:
    """A skops file is data from whoever wrote it: callables that run code (here, named as the constructor of the
    top-level object) are not trusted just because they live in builtins or sklearn."""
    module, name, args = CODE_RUNNERS[runner]
    marker = tmp_path / "code-ran"
    mv = reg.register("evil", write_file(tmp_path, "model.skops", skops_calling(module, name, args(marker))))
    assert mv.flavor == "sklearn-skops"  # one bare .skops file: the format of earlier releases
    try:
        with pytest.raises(PolicyError) as refused:
            reg.load_model(mv.ref)
        assert runner in refused.value.message
    finally:
        assert not marker.exists(), f"loading the model ran code through {runner}"


def test_links_inside_a_directory_artifact_are_refused_not_dropped(reg: Registry, tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "shard-0.bin").write_bytes(b"w" * 100)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    os.symlink(weights, model / "weights")  # the weights live elsewhere, linked in
    with pytest.raises(UsageError, match="weights is a symbolic link to a directory"):
        reg.register("linked", model)
    os.unlink(model / "weights")
    os.symlink(weights / "shard-0.bin", model / "shard-0.bin")
    with pytest.raises(UsageError, match="shard-0.bin is a symbolic link"):
        reg.register("linked", model)
    with pytest.raises(NotFoundError):
        reg.get("linked", 1)  # nothing was registered


def _crafted_skops() -> dict[str, bytes]:
    import io
    import zipfile

    from sklearn.tree import DecisionTreeClassifier

    good = sklearn_io.dumps(DecisionTreeClassifier(random_state=0).fit([[0], [1]], [0, 1]))

    def rewrite(change) -> bytes:  # type: ignore[no-untyped-def]
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                dst.writestr(info, change(info.filename, src.read(info)))
        return out.getvalue()

    node = '{"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "content": {"x": '
    deep = (node * 5000 + "{}" + "}}" * 5000).encode()

    def pickled(name: str, data: bytes) -> bytes:
        if not name.endswith(".npy"):
            return data
        buf = io.BytesIO()
        np.save(buf, np.array([object()], dtype=object), allow_pickle=True)
        return buf.getvalue()

    return {
        "BadZipFile": b"hello, not a zip",
        "RecursionError": rewrite(lambda name, data: deep if name == "schema.json" else data),
        "allow_pickle=False": rewrite(pickled),
    }


@pytest.mark.parametrize("cause", ["BadZipFile", "RecursionError", "allow_pickle=False"])
def test_crafted_skops_files_are_integrity_errors(cause: str) -> None:
    with pytest.raises(IntegrityError, match=f"not a valid scikit-learn \\(skops\\) artifact: .*{cause}"):
        sklearn_io.loads(_crafted_skops()[cause])
