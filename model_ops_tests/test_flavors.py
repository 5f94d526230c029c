"""Model flavors: scikit-learn (skops), XGBoost (its JSON) and LightGBM (its text format) round-trip exactly, give
identical bytes for identical training, and load only the skops types recorded at save time that are safe to trust
without being named."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from model_ops.errors import IntegrityError, PolicyError, UsageError
from model_ops.ml import flavors
from model_ops.registry import Registry
from model_ops_tests.helpers import DOUBLE_IT_TYPE, pipeline_with_custom_function, skops_calling, training_data

# ---------------------------------------------------------------------------------------------------- real data


def cancer(columns: int = 6) -> tuple[pd.DataFrame, np.ndarray]:
    """Breast-cancer features with a categorical column made from one of them (binary target)."""
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    X = X.iloc[:, :columns].copy()
    X["size"] = np.where(X["mean radius"] > 14.0, "large", "small")
    return X, y.to_numpy()


def wine() -> tuple[pd.DataFrame, np.ndarray]:
    X, y = load_wine(return_X_y=True, as_frame=True)
    return X, y.to_numpy()


def diabetes() -> tuple[pd.DataFrame, np.ndarray]:
    X, y = load_diabetes(return_X_y=True, as_frame=True)
    return X, y.to_numpy()


def preprocessed(estimator: Any, X: pd.DataFrame) -> Pipeline:
    """The layout training uses for a bare estimator: impute + scale numbers, impute + one-hot categories."""
    numeric = [c for c in X.columns if X[c].dtype != object]
    categorical = [c for c in X.columns if X[c].dtype == object]
    transformers: list[tuple[str, Any, list[str]]] = [
        ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), numeric)
    ]
    if categorical:
        transformers.append(
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical,
            )
        )
    return Pipeline([("features", ColumnTransformer(transformers)), ("model", estimator)])


def xgb_classifier(seed: int = 0) -> Any:
    import xgboost

    return xgboost.XGBClassifier(n_estimators=15, max_depth=3, subsample=0.8, colsample_bytree=0.8, random_state=seed)


def lgbm_classifier(seed: int = 0, **params: Any) -> Any:
    import lightgbm

    return lightgbm.LGBMClassifier(
        n_estimators=15,
        num_leaves=8,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        random_state=seed,
        verbose=-1,
        **flavors.LIGHTGBM_DETERMINISTIC,
        **params,
    )


def fitted(kind: str, seed: int = 0) -> tuple[Any, pd.DataFrame]:
    """A freshly fitted model of each kind the flavors support, and the frame it takes."""
    import lightgbm
    import xgboost

    if kind == "sklearn pipeline":
        X, y = cancer()
        return preprocessed(LogisticRegression(max_iter=500, random_state=seed), X).fit(X, y), X
    if kind == "sklearn forest":
        X, y = wine()
        return RandomForestClassifier(n_estimators=5, random_state=seed).fit(X, y), X
    if kind == "xgboost classifier":
        X, y = cancer()
        return preprocessed(xgb_classifier(seed), X).fit(X, y), X
    if kind == "xgboost multiclass":
        X, y = wine()
        return xgb_classifier(seed).fit(X, y), X
    if kind == "xgboost regressor":
        X, y = diabetes()
        return xgboost.XGBRegressor(n_estimators=15, max_depth=3, random_state=seed).fit(X, y), X
    if kind == "lightgbm classifier":
        X, y = wine()
        return preprocessed(lgbm_classifier(seed), X).fit(X, y), X
    if kind == "lightgbm binary":
        X, y = cancer()
        return lgbm_classifier(seed).fit(X.drop(columns="size"), y), X.drop(columns="size")
    if kind == "lightgbm regressor":
        X, y = diabetes()
        return lightgbm.LGBMRegressor(
            n_estimators=15, num_leaves=8, random_state=seed, verbose=-1, **flavors.LIGHTGBM_DETERMINISTIC
        ).fit(X, y), X
    raise AssertionError(kind)


KINDS = {
    "sklearn pipeline": "sklearn",
    "sklearn forest": "sklearn",
    "xgboost classifier": "xgboost",
    "xgboost multiclass": "xgboost",
    "xgboost regressor": "xgboost",
    "lightgbm classifier": "lightgbm",
    "lightgbm binary": "lightgbm",
    "lightgbm regressor": "lightgbm",
}
FILES = {
    "sklearn": {"flavor.json", "model.skops"},
    "xgboost": {"flavor.json", "model.json"},
    "lightgbm": {"flavor.json", "model.txt"},
}


def assert_same_predictions(a: Any, b: Any, X: pd.DataFrame) -> None:
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    if hasattr(b, "predict_proba"):
        np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
        np.testing.assert_array_equal(a.classes_, b.classes_)


# ---------------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", list(KINDS))
def test_round_trip_predicts_exactly_as_the_fitted_model(kind: str, tmp_path: Path) -> None:
    model, X = fitted(kind)
    flavor = flavors.save(model, tmp_path / "artifact")
    assert flavor == flavors.flavor_of(model) == KINDS[kind]
    names = {p.name for p in (tmp_path / "artifact").iterdir()}
    expected = FILES[flavor] | ({"preprocess.skops"} if isinstance(model, Pipeline) and flavor != "sklearn" else set())
    assert names == expected
    info = json.loads((tmp_path / "artifact" / "flavor.json").read_bytes())
    assert info["flavor"] == flavor and info["format"] == flavors.FORMAT
    final = model.steps[-1][1] if isinstance(model, Pipeline) else model
    assert (
        info["estimator"] == f"{type(model if flavor == 'sklearn' else final).__module__}."
        f"{type(model if flavor == 'sklearn' else final).__qualname__}"
    )
    assert {"scikit-learn", "skops", "numpy"} <= set(info["versions"])

    loaded = flavors.load(tmp_path / "artifact")
    assert_same_predictions(loaded, model, X)
    if flavor == "xgboost":  # XGBoost's own estimator comes back, not a stand-in
        assert type(loaded.steps[-1][1] if isinstance(loaded, Pipeline) else loaded) is type(final)
    if flavor == "lightgbm":
        assert hasattr(loaded, "predict_proba") == hasattr(model, "predict_proba")
        with pytest.raises(UsageError, match="cannot be refitted"):
            (loaded.steps[-1][1] if isinstance(loaded, Pipeline) else loaded).fit(X, np.zeros(len(X)))
    # A loaded model saves to the very same bytes: registering a fetched model again finds its version.
    assert flavors.expected_digest(loaded) == flavors.expected_digest(model)


@pytest.mark.parametrize(
    "kind", ["sklearn pipeline", "xgboost classifier", "lightgbm classifier", "lightgbm regressor"]
)
def test_identical_training_gives_identical_bytes(kind: str, reg: Registry) -> None:
    first, _ = fitted(kind)
    again, _ = fitted(kind)
    other, _ = fitted(kind, seed=1)
    assert flavors.expected_digest(first) == flavors.expected_digest(again)
    assert flavors.expected_digest(first) != flavors.expected_digest(other)
    # ... and it is the digest the registry gives: reproduce compares against exactly this.
    mv = reg.register_model("m", first)
    assert mv.digest == flavors.expected_digest(again) and mv.flavor == KINDS[kind]
    assert reg.register_model("m", again).version == mv.version  # idempotent


def test_lightgbm_bytes_do_not_depend_on_the_thread_count() -> None:
    """LightGBM writes its thread count (by default the machine's cores) among the parameters of its model text."""
    X, y = cancer()
    X = X.drop(columns="size")
    one = lgbm_classifier(n_jobs=1).fit(X, y)
    two = lgbm_classifier(n_jobs=2).fit(X, y)
    assert "[num_threads: 1]" in one.booster_.model_to_string()
    assert flavors.expected_digest(one) == flavors.expected_digest(two)


def test_xgboost_prediction_parameters_are_kept(tmp_path: Path) -> None:
    """``missing`` lives on the estimator, not in the booster file: a value of 0 must survive the round trip."""
    import xgboost

    X, y = wine()
    model = xgboost.XGBClassifier(n_estimators=10, max_depth=3, missing=0.0, random_state=0).fit(X, y)
    flavors.save(model, tmp_path / "a")
    loaded = flavors.load(tmp_path / "a")
    assert loaded.missing == 0.0
    holes = X.copy()
    holes.iloc[::3, 2] = 0.0
    np.testing.assert_array_equal(loaded.predict_proba(holes), model.predict_proba(holes))


def test_unsupported_or_unfitted_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not fitted"):
        flavors.save(LogisticRegression(), tmp_path / "a")
    with pytest.raises(UsageError, match="not fitted"):
        flavors.save(xgb_classifier(), tmp_path / "b")
    with pytest.raises(UsageError, match="not a scikit-learn, XGBoost or LightGBM model"):
        flavors.save({"weights": [1, 2]}, tmp_path / "c")
    X, y = wine()
    with pytest.raises(UsageError, match="custom objective"):
        flavors.save(lgbm_classifier(objective=lambda y_true, y_pred: (y_pred, y_pred)).fit(X, y == 0), tmp_path / "d")
    assert not (tmp_path / "a").exists() and list((tmp_path / "d").iterdir()) == []  # nothing half-written


def test_a_missing_framework_names_the_extra_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xgb_model, _ = fitted("xgboost regressor")
    lgb_model, _ = fitted("lightgbm regressor")
    flavors.save(xgb_model, tmp_path / "x")
    flavors.save(lgb_model, tmp_path / "l")
    for module, path in (("xgboost", tmp_path / "x"), ("lightgbm", tmp_path / "l")):
        monkeypatch.setitem(sys.modules, module, None)  # what an absent package looks like to `import`
        with pytest.raises(UsageError) as refused:
            flavors.load(path, what="models:/m/1")
        assert f"pip install 'model_ops[{module}]'" in str(refused.value)
        assert f"models:/m/1 is a {module} model" in refused.value.message
        monkeypatch.delitem(sys.modules, module)


# ---------------------------------------------------------------------------------------------------- trusted types


def _rewrite_info(directory: Path, **changes: Any) -> None:
    info = json.loads((directory / "flavor.json").read_bytes())
    info.update(changes)
    (directory / "flavor.json").write_text(json.dumps(info))


def test_the_recorded_types_are_exactly_those_in_the_skops_file(tmp_path: Path) -> None:
    import skops.io as sio

    model, X = fitted("sklearn forest")
    flavors.save(model, tmp_path / "a")
    info = json.loads((tmp_path / "a" / "flavor.json").read_bytes())
    found = sio.get_untrusted_types(data=(tmp_path / "a" / "model.skops").read_bytes())
    assert info["trusted_types"] == sorted(found) and "sklearn.tree._tree.Tree" in found
    assert (tmp_path / "a" / "flavor.json").read_bytes() == json.dumps(
        info, sort_keys=True, separators=(",", ":")
    ).encode()


def test_a_type_outside_the_recorded_set_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, X = fitted("sklearn forest")
    flavors.save(model, tmp_path / "a")
    _rewrite_info(tmp_path / "a", trusted_types=["numpy.dtype"])  # the tree type no longer recorded
    with pytest.raises(PolicyError) as refused:
        flavors.load(tmp_path / "a", what="models:/forest/2")
    assert "sklearn.tree._tree.Tree (not recorded when the model was saved)" in refused.value.message
    assert refused.value.message.startswith("models:/forest/2 holds")
    # The explicit opt-in still works, by exact name only.
    with pytest.raises(PolicyError):
        flavors.load(tmp_path / "a", trusted=["sklearn.tree._tree"])
    assert_same_predictions(flavors.load(tmp_path / "a", trusted=["sklearn.tree._tree.Tree"]), model, X)
    monkeypatch.setenv("MODEL_OPS_TRUSTED_TYPES", "sklearn.tree._tree.Tree")
    assert_same_predictions(flavors.load(tmp_path / "a"), model, X)


def test_custom_code_is_recorded_but_loads_only_when_trusted_by_name(tmp_path: Path) -> None:
    X, _ = training_data(7)
    model = pipeline_with_custom_function()
    flavors.save(model, tmp_path / "a")
    assert DOUBLE_IT_TYPE in json.loads((tmp_path / "a" / "flavor.json").read_bytes())["trusted_types"]
    assert flavors.untrusted_types(model) == [DOUBLE_IT_TYPE]
    assert flavors.untrusted_types(model, trusted=[DOUBLE_IT_TYPE]) == []
    with pytest.raises(PolicyError) as refused:
        flavors.load(tmp_path / "a")
    assert f"{DOUBLE_IT_TYPE} (outside scikit-learn, NumPy and SciPy" in refused.value.message
    np.testing.assert_array_equal(flavors.load(tmp_path / "a", trusted=[DOUBLE_IT_TYPE]).predict(X), model.predict(X))


CODE_RUNNERS = {
    "builtins.exec": ("builtins", "exec"),
    "os.system": ("os", "system"),
    "subprocess.check_output": ("subprocess", "check_output"),
    "sklearn.utils._testing.assert_run_python_script_without_output": (
        "sklearn.utils._testing",
        "assert_run_python_script_without_output",
    ),
    "numpy.memmap": ("numpy", "memmap"),
    "numpy._core.memmap.memmap": ("numpy._core.memmap", "memmap"),  # the same class by its defining module
    "scipy.io._netcdf.netcdf_file": ("scipy.io._netcdf", "netcdf_file"),
}


@pytest.mark.parametrize("runner", list(CODE_RUNNERS))
def test_a_dangerous_callable_recorded_in_flavor_json_is_still_refused(tmp_path: Path, runner: str) -> None:
    """Whoever writes an artifact writes its flavor.json: recording a callable there must not make it trusted."""
    module, name = CODE_RUNNERS[runner]
    marker = tmp_path / "code-ran"
    args = {
        "os": [f"touch {marker}"],
        "subprocess": [f"touch {marker}"],
        "numpy": [str(marker), "uint8", "w+"],
        "numpy._core.memmap": [str(marker), "uint8", "w+"],
        "scipy.io._netcdf": [str(marker), "w"],
    }
    artifact = tmp_path / "evil"
    artifact.mkdir()
    (artifact / "model.skops").write_bytes(
        skops_calling(module, name, args.get(module, [f"open({str(marker)!r}, 'w').write('ran')"]))
    )
    (artifact / "flavor.json").write_text(
        json.dumps(
            {"format": flavors.FORMAT, "flavor": "sklearn", "estimator": "x", "trusted_types": [runner], "versions": {}}
        )
    )
    try:
        with pytest.raises(PolicyError) as refused:
            flavors.load(artifact)
        assert runner in refused.value.message
    finally:
        assert not marker.exists(), f"loading the model ran code through {runner}"


def test_xgboost_estimator_class_from_flavor_json_is_never_imported_blindly(tmp_path: Path) -> None:
    model, _ = fitted("xgboost regressor")
    flavors.save(model, tmp_path / "a")
    _rewrite_info(tmp_path / "a", estimator="os.system")
    with pytest.raises(IntegrityError, match="not an XGBoost estimator"):
        flavors.load(tmp_path / "a")


def test_a_manifest_flavor_that_disagrees_with_flavor_json_is_refused(tmp_path: Path) -> None:
    model, _ = fitted("sklearn pipeline")
    flavors.save(model, tmp_path / "a")
    files = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    with pytest.raises(IntegrityError, match="flavor"):
        flavors.load(files, flavor="xgboost")
    with pytest.raises(IntegrityError, match="has no model.skops"):
        flavors.load({"flavor.json": files["flavor.json"]}, flavor="sklearn")
    with pytest.raises(UsageError, match="not a model"):
        flavors.load(files, flavor="files")


# ---------------------------------------------------------------------------------------------------- signatures


def test_signature_of_a_pipeline_names_its_columns_and_types() -> None:
    X, y = cancer(columns=3)
    X["unused"] = 1.0
    X["grade"] = (X["mean texture"] > 19).astype(int) + 1  # integer categories
    ct = ColumnTransformer(
        [
            (
                "numeric",
                Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]),
                ["mean radius", "mean texture"],
            ),
            (
                "text",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value="?")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                ["size"],
            ),
            ("codes", OrdinalEncoder(), ["grade"]),
            ("as_is", "passthrough", ["mean perimeter"]),
        ],
        remainder="drop",
    )
    model = Pipeline([("features", ct), ("model", LogisticRegression(max_iter=500))]).fit(X, y)
    assert flavors.signature_of(model) == {
        "inputs": [
            {"name": "mean radius", "type": "float"},
            {"name": "mean texture", "type": "float"},
            {"name": "mean perimeter"},
            {"name": "size", "type": "category"},
            {"name": "grade", "type": "int"},
        ],  # 'unused' is only dropped: not an input
        "outputs": {"task": "binary_classification", "classes": [0, 1]},
    }


@pytest.mark.parametrize("kind", ["xgboost multiclass", "lightgbm regressor", "sklearn forest"])
def test_signature_of_bare_estimators(kind: str) -> None:
    model, X = fitted(kind)
    sig = flavors.signature_of(model)
    assert sig is not None
    assert sig["inputs"] == [{"name": c, "type": "float"} for c in X.columns]
    assert sig["outputs"] == (
        {"task": "regression"}
        if kind == "lightgbm regressor"
        else {"task": "multiclass_classification", "classes": [0, 1, 2]}
    )


def test_signature_of_a_model_fitted_on_an_array_has_outputs_only() -> None:
    X, y = diabetes()
    assert flavors.signature_of(Ridge().fit(X.to_numpy(), y)) == {"outputs": {"task": "regression"}}
