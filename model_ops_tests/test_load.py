"""``model_ops.load`` and the registry around it: verified loads of every flavor, the local cache by digest (used
when the store is gone, refetched when tampered with), frames checked against the input signature, signatures
taken from the fitted model, and the breaking-change guard on promotion to production."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

import model_ops
from model_ops.artifacts import sklearn_io
from model_ops.cli import main
from model_ops.errors import IntegrityError, NotFoundError, PolicyError, UsageError
from model_ops.loading import LoadedModel, cache_dir
from model_ops.registry import Registry
from model_ops.registry.registry import breaking_changes
from model_ops_tests.helpers import DOUBLE_IT_TYPE, blob_path, flip_byte, pipeline_with_custom_function, training_data
from model_ops_tests.test_flavors import cancer, fitted, preprocessed

KEY = "a-signing-key-of-at-least-16-characters"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("MODEL_OPS_CACHE", str(path))
    return path


def _promote(reg: Registry, ref: str, **kw: object) -> None:
    reg.transition(ref, "staging", reason="evaluated")
    reg.transition(ref, "production", reason="better", **kw)  # type: ignore[arg-type]


def _cached_model_file(cache: Path, digest: str) -> Path:
    files = [p for p in (cache / digest / "files").rglob("*") if p.is_file() and p.name != "flavor.json"]
    assert files, f"nothing cached for {digest}"
    return files[0]


# ---------------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ["sklearn pipeline", "xgboost classifier", "xgboost regressor", "lightgbm classifier"])
def test_load_by_alias_number_and_semver(kind: str, root: Path, reg: Registry) -> None:
    model, X = fitted(kind)
    mv = reg.register_model("churn", model)
    _promote(reg, mv.ref)
    for ref in ("models:/churn@champion", "models:/churn/1", "models:/churn/1.0.0"):
        loaded = model_ops.load(ref, root=root)
        assert isinstance(loaded, LoadedModel)
        assert (loaded.version, loaded.ref, loaded.semver, loaded.flavor) == (1, "models:/churn/1", "1.0.0", mv.flavor)
        assert loaded.signature == mv.signature and loaded.digest == mv.digest
        np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
        if hasattr(model, "predict_proba"):
            np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
            np.testing.assert_array_equal(loaded.classes_, model.classes_)
        else:
            with pytest.raises(UsageError, match="has no predict_proba"):
                loaded.predict_proba(X)
    np.testing.assert_array_equal(reg.load_model(mv.ref).predict(X), model.predict(X))


def test_root_defaults_to_model_ops_root(root: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    model, X = fitted("sklearn pipeline")
    reg.register_model("churn", model)
    monkeypatch.setenv("MODEL_OPS_ROOT", str(root))
    np.testing.assert_array_equal(model_ops.load("models:/churn/1").predict(X), model.predict(X))
    monkeypatch.chdir(root.parent)
    monkeypatch.delenv("MODEL_OPS_ROOT")
    with pytest.raises(NotFoundError):  # ./.model_ops: another, empty registry
        model_ops.load("models:/churn/1")


def test_a_version_of_an_earlier_release_still_loads(reg: Registry, tmp_path: Path) -> None:
    """One .skops file, flavor sklearn-skops: loaded with that release's allow-list (tree types included)."""
    X, y = training_data(3)
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y)
    old = tmp_path / "model.skops"
    old.write_bytes(sklearn_io.dumps(forest))
    mv = reg.register("old", old)
    assert mv.flavor == "sklearn-skops"
    np.testing.assert_array_equal(model_ops.load(mv.ref, registry=reg).predict(X), forest.predict(X))
    custom = tmp_path / "custom.skops"
    custom.write_bytes(sklearn_io.dumps(pipeline_with_custom_function()))
    refused = reg.register("old", custom)
    with pytest.raises(PolicyError, match=DOUBLE_IT_TYPE):
        model_ops.load(refused.ref, registry=reg)
    assert model_ops.load(refused.ref, registry=reg, trusted=[DOUBLE_IT_TYPE]).predict(X).shape == (len(X),)


# ---------------------------------------------------------------------------------------------------- frames


@pytest.fixture
def churn(reg: Registry) -> tuple[LoadedModel, pd.DataFrame, object]:
    model, X = fitted("sklearn pipeline")
    reg.register_model("churn", model)
    return model_ops.load("models:/churn/1", registry=reg), X, model


def test_extra_columns_are_ignored_and_columns_reordered(churn: tuple) -> None:
    loaded, X, model = churn
    shuffled = X[list(reversed(X.columns))].assign(customer_id=np.arange(len(X)), note="x")
    np.testing.assert_array_equal(loaded.predict(shuffled), model.predict(X))
    assert list(loaded.prepare(shuffled).columns) == list(X.columns)
    # numbers held as objects or as nullable floats are numbers; a pandas categorical of text is a category
    loose = X.assign(
        **{
            "mean radius": X["mean radius"].astype(object),
            "mean texture": X["mean texture"].astype("Float64"),
            "size": X["size"].astype("category"),
        }
    )
    np.testing.assert_array_equal(loaded.predict(loose), model.predict(X))
    assert loaded.prepare(loose)["size"].dtype == object


def test_a_missing_column_is_named_with_its_type(churn: tuple) -> None:
    loaded, X, _ = churn
    with pytest.raises(UsageError) as refused:
        loaded.predict(X.drop(columns=["mean texture", "size"]))
    message = refused.value.message
    assert message.startswith(
        "models:/churn/1 cannot score this frame: missing column(s) mean texture (float), size (category)"
    )
    assert "mean radius (float)" in str(refused.value)  # the hint lists every expected column


@pytest.mark.parametrize(
    ("column", "values", "problem"),
    [
        ("mean radius", "text", "column 'mean radius' holds text (str) (dtype object), expected float"),
        ("mean radius", "dates", "column 'mean radius' is datetime64[s], expected float"),
        ("size", 1.5, "column 'size' is float64, expected category (text)"),
        ("size", "mixed", "column 'size' holds text mixed with numbers, expected category (text)"),
    ],
)
def test_a_wrong_typed_column_is_refused_before_the_model_sees_it(
    churn: tuple, column: str, values: object, problem: str
) -> None:
    loaded, X, _ = churn
    bad = X.copy()
    if values == "text":
        bad[column] = "twelve"
    elif values == "dates":
        bad[column] = pd.Timestamp("2024-01-01")
    elif values == "mixed":
        bad[column] = ["a", 1] * (len(X) // 2) + ["a"] * (len(X) % 2)
    else:
        bad[column] = values
    with pytest.raises(UsageError) as refused:
        loaded.predict(bad)
    assert problem in refused.value.message


@pytest.mark.parametrize("framework", ["xgboost", "lightgbm"])
def test_native_categorical_models_take_text_or_categoricals(framework: str, reg: Registry) -> None:
    """A bare XGBoost / LightGBM estimator fitted on a pandas categorical: its signature says category, and text
    is turned into a categorical for it. LightGBM renames "mean radius" to "mean_radius"; both spellings work."""
    import lightgbm
    import xgboost

    X, y = cancer()
    X["size"] = X["size"].astype("category")
    model = (
        xgboost.XGBClassifier(n_estimators=5, enable_categorical=True, random_state=0)
        if framework == "xgboost"
        else lightgbm.LGBMClassifier(n_estimators=5, verbose=-1, random_state=0)
    ).fit(X, y)
    mv = reg.register_model("native", model)
    assert mv.signature["inputs"][-1] == {"name": "size", "type": "category"}
    loaded = model_ops.load(mv.ref, registry=reg)
    expected = model.predict_proba(X)
    np.testing.assert_array_equal(loaded.predict_proba(X), expected)
    np.testing.assert_array_equal(loaded.predict_proba(X.assign(size=X["size"].astype(str))), expected)
    with pytest.raises(UsageError, match="column 'size' is float64, expected category"):
        loaded.predict(X.assign(size=1.0))


def test_a_frame_must_be_a_frame(churn: tuple) -> None:
    loaded, X, model = churn
    with pytest.raises(UsageError, match="takes a pandas DataFrame, not a ndarray"):
        loaded.predict(X.to_numpy())
    rows = X.head(3).to_dict("records")
    np.testing.assert_array_equal(loaded.predict(rows), model.predict(X.head(3)))


# ---------------------------------------------------------------------------------------------------- cache


def test_second_load_is_served_from_the_local_cache(root: Path, reg: Registry, cache: Path) -> None:
    model, X = fitted("xgboost classifier")
    mv = reg.register_model("churn", model)
    model_ops.load(mv.ref, root=root)
    assert (cache / mv.digest / "manifest.json").is_file()
    shutil.rmtree(root / "artifacts")  # the store is gone: only the cache can serve the bytes now
    with pytest.raises(NotFoundError):
        reg.load_model(mv.ref)
    again = model_ops.load(mv.ref, root=root)
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))


def test_a_tampered_cache_entry_is_fetched_again_never_used(root: Path, reg: Registry, cache: Path) -> None:
    model, X = fitted("lightgbm classifier")
    mv = reg.register_model("churn", model)
    model_ops.load(mv.ref, registry=reg)
    cached = _cached_model_file(cache, mv.digest)
    original = cached.read_bytes()
    cached.write_bytes(original.replace(b"tree", b"TREE", 1))
    np.testing.assert_array_equal(model_ops.load(mv.ref, registry=reg).predict(X), model.predict(X))
    assert cached.read_bytes() == original  # repaired from the store

    cached.write_bytes(original[:-10])
    shutil.rmtree(root / "artifacts")
    with pytest.raises(NotFoundError):  # nothing intact to load from: refused, not loaded from the damaged copy
        model_ops.load(mv.ref, registry=reg)
    assert not (cache / mv.digest).exists()


def test_a_tampered_artifact_is_refused_and_not_cached(root: Path, reg: Registry, cache: Path) -> None:
    model, _ = fitted("sklearn pipeline")
    mv = reg.register_model("churn", model)
    skops = next(f for f in reg.artifacts.manifest(mv.digest).files if f.path == "model.skops")
    flip_byte(blob_path(root, skops.sha256))
    with pytest.raises(IntegrityError):
        model_ops.load(mv.ref, registry=reg)
    assert not (cache / mv.digest).exists()
    assert list(cache.glob(".*.part")) == []


def test_the_signature_is_checked_even_when_the_bytes_are_cached(
    root: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_OPS_SIGNING_KEY", KEY)
    model, X = fitted("sklearn pipeline")
    mv = reg.register_model("churn", model)
    np.testing.assert_array_equal(model_ops.load(mv.ref, root=root).predict(X), model.predict(X))
    monkeypatch.setenv("MODEL_OPS_SIGNING_KEY", "another-key-of-sixteen-or-more")
    with pytest.raises(IntegrityError, match="signed with another key"):
        model_ops.load(mv.ref, root=root)


def test_an_unwritable_cache_costs_the_caching_not_the_load(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, X = fitted("sklearn pipeline")
    mv = reg.register_model("churn", model)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache would go")
    monkeypatch.setenv("MODEL_OPS_CACHE", str(blocker / "cache"))
    np.testing.assert_array_equal(model_ops.load(mv.ref, registry=reg).predict(X), model.predict(X))


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MODEL_OPS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == (tmp_path / "xdg" / "model_ops").resolve()
    monkeypatch.setenv("MODEL_OPS_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == (tmp_path / "mine").resolve()


# ---------------------------------------------------------------------------------------------------- signatures


def test_the_signature_comes_from_the_fitted_model_and_names_real_features(reg: Registry) -> None:
    X, y = cancer()
    v1 = reg.register_model("churn", preprocessed(LogisticRegression(max_iter=500), X).fit(X, y))
    assert [i["name"] for i in v1.signature["inputs"]] == list(X.columns)
    assert v1.signature["outputs"] == {"task": "binary_classification", "classes": [0, 1]}
    X2 = X.drop(columns=["mean area"]).assign(bmi=X["mean area"] / 100)
    v2 = reg.register_model("churn", preprocessed(LogisticRegression(max_iter=500), X2).fit(X2, y))
    assert (v2.semver, v2.bump["reason"]) == ("2.0.0", "input signature changed (added bmi; removed mean area)")
    given = {"inputs": [{"name": "x", "type": "float"}]}
    assert (
        reg.register_model("given", LogisticRegression().fit(X[["mean radius"]], y), signature=given).signature == given
    )


# ---------------------------------------------------------------------------------------------------- promotion


def test_breaking_changes() -> None:
    old = {
        "inputs": [{"name": "a", "type": "float"}, {"name": "b", "type": "category"}, {"name": "c"}],
        "outputs": {"task": "binary_classification", "classes": [0, 1]},
    }
    same_plus = {**old, "inputs": [*old["inputs"], {"name": "d", "type": "int"}]}
    assert breaking_changes(old, same_plus) == []  # an added column is not breaking
    assert breaking_changes(old, {**old, "inputs": [{"name": "a", "type": "int"}, {"name": "c", "type": "int"}]}) == [
        "removes input column(s) b",
        "retypes input column(s) a (float -> int)",
    ]
    assert breaking_changes(old, {**old, "outputs": {"task": "binary_classification", "classes": [1, 0]}}) == [
        "changes the classes from [0, 1] to [1, 0]"
    ]
    assert breaking_changes(old, {**old, "outputs": {"task": "regression"}}) == [
        "changes the task from binary_classification to regression"
    ]
    assert breaking_changes(None, old) == [] and breaking_changes(old, None) == []


def test_a_breaking_version_enters_production_only_when_accepted(reg: Registry) -> None:
    X, y = cancer()
    v1 = reg.register_model("churn", preprocessed(LogisticRegression(max_iter=500), X).fit(X, y))
    _promote(reg, v1.ref)
    wider = X.assign(extra=1.0)
    v2 = reg.register_model("churn", preprocessed(LogisticRegression(max_iter=500), wider).fit(wider, y))
    _promote(reg, v2.ref)  # an added column breaks nobody
    narrower = X.drop(columns=["mean texture"])
    v3 = reg.register_model("churn", preprocessed(LogisticRegression(max_iter=500), narrower).fit(narrower, y))
    reg.transition(v3.ref, "staging", reason="evaluated")
    with pytest.raises(PolicyError) as refused:
        reg.transition(v3.ref, "production", reason="better")
    assert refused.value.message == (
        "churn v3 breaks the interface of v2 in production: removes input column(s) extra, mean texture"
    )
    assert "breaking=True" in str(refused.value)
    assert reg.resolve("models:/churn@champion").version == 2 and reg.get("churn", 3).stage == "staging"

    promoted = reg.transition(v3.ref, "production", reason="callers stopped sending those columns", breaking=True)
    assert promoted.stage == "production" and "champion" in promoted.aliases
    entered = [
        e for e in reg.audit("churn") if e.kind == "stage_changed" and e.version == 3 and e.to_value == "production"
    ]
    assert len(entered) == 1 and entered[0].actor == "tester"
    assert entered[0].reason == "callers stopped sending those columns"
    assert entered[0].data["breaking"] == {
        "accepted": True,
        "against": 2,
        "changes": ["removes input column(s) extra, mean texture"],
    }


def test_the_cli_transition_takes_breaking(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_OPS_ROOT", str(root))
    reg = Registry.open(root)
    for task in ("binary_classification", "regression"):
        path = tmp_path / task / "model.bin"
        path.parent.mkdir()
        path.write_bytes(task.encode())
        mv = reg.register("m", path, signature={"inputs": [{"name": "a", "type": "float"}], "outputs": {"task": task}})
        assert main(["transition", mv.ref, "staging", "--reason", "ok"]) == 0
        if task == "regression":
            assert main(["transition", mv.ref, "production", "--reason", "new task"]) == 2
            assert "changes the task from binary_classification to regression" in capsys.readouterr().err
        flags = ["--breaking"] if task == "regression" else []
        assert main(["transition", mv.ref, "production", "--reason", "new task", *flags]) == 0
    assert reg.resolve("models:/m@champion").version == 2
