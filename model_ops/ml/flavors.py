"""One flavor per framework: how a fitted model becomes the files of an artifact, and how it comes back, never
through pickle.

- ``sklearn``: any fitted scikit-learn estimator or Pipeline, as canonical skops bytes (``model.skops``).
- ``xgboost``: an XGBoost scikit-learn estimator, alone or as the final step of a Pipeline: the booster in
  XGBoost's own JSON format (``model.json``), the preprocessing steps before it in skops (``preprocess.skops``).
- ``lightgbm``: likewise with LightGBM's text format (``model.txt``); it comes back as a small scikit-learn
  estimator over the booster (:class:`LightGBMClassifier` / :class:`LightGBMRegressor`).

Every artifact holds ``flavor.json`` (canonical JSON: flavor, estimator class, framework versions, and the skops
types found in its skops file when it was written). On load a skops type is accepted only when it was recorded at
save time *and* is a class of scikit-learn, NumPy or SciPy outside their file, test and build modules; anything
else (a function, the team's own code, a type the record does not list) is refused by name unless the caller
trusts it by exact name (``trusted=`` or ``MODEL_OPS_TRUSTED_TYPES``). The record alone is never enough, because
whoever writes an artifact writes its ``flavor.json`` too.

Identical training gives identical files (skops canonicalised, XGBoost's JSON as written, LightGBM's text with
the thread count, the one machine-dependent line, normalised), so :func:`expected_digest` lets ``reproduce``
compare a rebuilt model with a registered one byte for byte. LightGBM is byte-stable across machines only with
``LIGHTGBM_DETERMINISTIC`` among its parameters (LightGBM's own advice); on one machine it is stable anyway.

Heavy imports (skops, XGBoost, LightGBM) happen inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier, is_regressor

from model_ops.artifacts import sklearn_io, tree_check
from model_ops.artifacts.manifest import FLAVOR_SKOPS
from model_ops.errors import IntegrityError, ModelOpsError, PolicyError, UsageError
from model_ops.jsonable import plain
from model_ops.ml import booster_check

SKLEARN, XGBOOST, LIGHTGBM = "sklearn", "xgboost", "lightgbm"
FLAVORS = (SKLEARN, XGBOOST, LIGHTGBM)
FORMAT = "model_ops.flavor/1"
INFO_FILE = "flavor.json"
SKOPS_FILE = "model.skops"
PREPROCESS_FILE = "preprocess.skops"
BOOSTER_FILE = {XGBOOST: "model.json", LIGHTGBM: "model.txt"}
# LightGBM's advice for results that do not depend on the thread count (and so on the machine).
LIGHTGBM_DETERMINISTIC = {"deterministic": True, "force_row_wise": True}

# Recorded skops types are honoured only inside these packages (or named exactly here) ...
_AUTO_PACKAGES = frozenset({"sklearn", "numpy", "scipy"})
# functools.partial is rebuilt by skops from a function that must itself be trusted; check_array is scikit-learn's
# input validation, which histogram gradient boosting with categorical features keeps as partial(check_array).
_AUTO_EXACT = frozenset({"collections.OrderedDict", "functools.partial", "sklearn.utils.validation.check_array"})
# ... and never in modules that read or write files, run scripts or exist for tests and builds.
_DENIED_PARTS = frozenset(
    {
        "testing",
        "_testing",
        "tests",
        "conftest",
        "externals",
        "f2py",
        "distutils",
        "ctypeslib",
        "io",
        "datasets",
        "_datasource",
        "npyio",
        "_npyio_impl",
        "_build_utils",
    }
)
_DENIED = frozenset({"numpy.memmap", "numpy.DataSource", "scipy.LowLevelCallable"})
# The estimator's own parameters that change its predictions (the booster file holds everything else).
_XGB_PREDICT_PARAMS = ("missing", "enable_categorical")
_XGB_CLASSES = frozenset(
    {
        "xgboost.sklearn.XGBClassifier",
        "xgboost.sklearn.XGBRegressor",
        "xgboost.sklearn.XGBRFClassifier",
        "xgboost.sklearn.XGBRFRegressor",
    }
)
_LGB_KINDS = ("classifier", "regressor")
_THREADS_LINE = re.compile(r"^\[num_threads: -?\d+\]$", re.MULTILINE)
_CATEGORICAL_LINE = re.compile(r"^\[categorical_feature: ([^\]]*)\]$", re.MULTILINE)
_MAX_INFO_DEPTH = 16  # flavor.json nests 3 levels; the JSON parser recurses once per level


# ---------------------------------------------------------------------------------------------------- public API


def flavor_of(model: Any) -> str:
    """The flavor that stores ``model``; a UsageError for anything unfitted or unsupported."""
    final = model.steps[-1][1] if _is_pipeline(model) else model
    if _framework(final) == XGBOOST:
        _check_fitted(model)
        return XGBOOST
    if _framework(final) == LIGHTGBM or isinstance(final, _LightGBMBase):
        _check_fitted(model)
        return LIGHTGBM
    if not isinstance(model, BaseEstimator):
        raise UsageError(
            f"cannot store a {_qualname(model)}: not a scikit-learn, XGBoost or LightGBM model",
            hint="register a fitted scikit-learn estimator or Pipeline (XGBoost and LightGBM "
            "estimators alone or as a Pipeline's final step), or files with register()",
        )
    _check_fitted(model)
    return SKLEARN


def save(model: Any, directory: str | os.PathLike[str]) -> str:
    """Write ``model`` as the files of its flavor into ``directory`` (created; must not hold files yet).
    Returns the flavor name, which is also the artifact manifest's flavor."""
    flavor = flavor_of(model)
    out = Path(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists and is not an empty directory", hint="save into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    try:
        info = {SKLEARN: _save_sklearn, XGBOOST: _save_xgboost, LIGHTGBM: _save_lightgbm}[flavor](model, out)
        (out / INFO_FILE).write_bytes(_canonical({"format": FORMAT, "flavor": flavor, **info}))
    except BaseException:
        for child in out.iterdir():  # nothing half-written stays behind
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    return flavor


def load(
    source: str | os.PathLike[str] | Mapping[str, bytes],
    *,
    trusted: Iterable[str] = (),
    flavor: str | None = None,
    what: str = "the model",
) -> Any:
    """The model in ``source``: a directory written by :func:`save`, its files as ``{name: bytes}`` (e.g. verified
    blobs), or the single ``.skops`` file of an earlier release (flavor ``sklearn-skops``, loaded with that
    release's default allow-list, ``sklearn_io.DEFAULT_TRUSTED``).

    ``flavor`` is the manifest's flavor when known; an artifact whose ``flavor.json`` says otherwise is refused.
    ``what`` names the model in messages (e.g. its registry reference).

    The files are data from whoever registered them (their digest proves only that they are what was
    registered), so nothing in them may crash the process or escape as anything but a ModelOpsError: tree models
    are checked before they are returned (:mod:`~model_ops.artifacts.tree_check`, :mod:`~model_ops.ml.booster_check`),
    and whatever else the frameworks raise while reading them is an IntegrityError."""
    try:
        return _load(source, tuple(trusted), flavor, what)
    except ModelOpsError:
        raise
    except Exception as e:
        raise IntegrityError(
            f"{what}: its artifact cannot be loaded: {type(e).__name__}: {str(e)[:300] or 'no detail'}",
            hint=tree_check.HINT,
        ) from None


def _load(
    source: str | os.PathLike[str] | Mapping[str, bytes], trusted: tuple[str, ...], flavor: str | None, what: str
) -> Any:
    if flavor == FLAVOR_SKOPS or (not isinstance(source, Mapping) and Path(source).is_file()):
        return sklearn_io.loads(_single_file(source, what), trusted=tuple(trusted), what=f"{what}: its .skops file")
    if flavor is not None and flavor not in FLAVORS:
        raise UsageError(
            f"{what} is a {flavor!r} artifact, not a model model_ops can load", hint="use fetch() to get its files"
        )
    files = _Files(source, what)
    info = _read_info(files.get(INFO_FILE), what)
    if flavor is not None and info["flavor"] != flavor:
        raise IntegrityError(
            f"{what}: its manifest says flavor {flavor!r} but its {INFO_FILE} says {info['flavor']!r}",
            hint="it was assembled by hand or altered; do not load it",
        )
    if info["flavor"] == SKLEARN:
        return load_skops(files.get(SKOPS_FILE), info["trusted_types"], trusted, what)
    if info["flavor"] == XGBOOST:
        return _load_xgboost(files, info, trusted, what)
    return _load_lightgbm(files, info, trusted, what)


def expected_digest(model: Any) -> str:
    """The digest the registry would give ``model``'s artifact, computed without registering anything: the model
    is saved and stored in a throw-away artifact store, so the digest comes from the very code that registers."""
    from model_ops.artifacts import ArtifactStore
    from model_ops.location import Location

    with tempfile.TemporaryDirectory(prefix="model_ops_digest_") as tmp:
        artifact = Path(tmp) / "artifact"
        flavor = save(model, artifact)
        return ArtifactStore(Location(str(Path(tmp) / "store"))).put(artifact, flavor).digest


def untrusted_types(model: Any, trusted: Iterable[str] = ()) -> list[str]:
    """The skops types in ``model``'s artifact that :func:`load` would refuse unless trusted by name (a custom
    function or transformer, say): training can refuse such a model before anything is written."""
    part = _preprocessing(model)[0] if flavor_of(model) != SKLEARN else model
    if part is None:
        return []
    import skops.io as sio

    data = _skops_bytes(part)
    explicit = set(trusted) | set(sklearn_io.trusted_extra())
    return [t for t in sorted(sio.get_untrusted_types(data=data)) if t not in explicit and _why_untrusted(t)]


def signature_of(model: Any) -> dict[str, Any] | None:
    """The input and output signature a fitted model knows about itself, in the registry's format
    (``{"inputs": [{"name", "type"}], "outputs": {"task", "classes"}}``); None when it knows neither.

    Inputs are the columns the model was fitted on (``feature_names_in_``) minus those a ColumnTransformer only
    drops; a type is given where the fitted model shows it (an encoder's categories, a numeric transformer or
    estimator, XGBoost's feature types) and left out where it does not (passthrough, a custom function)."""
    outputs: dict[str, Any] = {}
    if is_classifier(model) and hasattr(model, "classes_"):
        classes = [plain(c) for c in np.asarray(model.classes_).tolist()]
        outputs = {
            "task": "binary_classification" if len(classes) == 2 else "multiclass_classification",
            "classes": classes,
        }
    elif is_regressor(model):
        outputs = {"task": "regression"}
    names = _feature_names(model)
    sig: dict[str, Any] = {}
    if names is not None:
        types = _input_types(model, names)
        sig["inputs"] = [
            {"name": n, **({"type": types[n]} if types.get(n) else {})} for n in names if types.get(n) != _DROPPED
        ]
    if outputs:
        sig["outputs"] = outputs
    return sig or None


def load_skops(data: bytes, recorded: Iterable[str], trusted: Iterable[str], what: str, name: str = SKOPS_FILE) -> Any:
    """skops bytes (the artifact's file ``name``), accepting a type only when the caller trusts it by name, or when
    it was recorded at save time and is a class of scikit-learn, NumPy or SciPy (see the module docstring). A file
    skops cannot read, or a tree model in it that is malformed, is an IntegrityError naming the file."""
    where = f"{what}: {name}"
    found = sklearn_io.found_types(data, where)
    explicit = set(trusted) | set(sklearn_io.trusted_extra())
    known = set(recorded)
    refused = []
    for type_name in found:
        if type_name in explicit:
            continue
        why = "not recorded when the model was saved" if type_name not in known else _why_untrusted(type_name)
        if why:
            refused.append(f"{type_name} ({why})")
    if refused:
        names = [r.split(" (", 1)[0] for r in refused]
        raise PolicyError(
            f"{what} holds type(s) that are not trusted: " + "; ".join(refused),
            hint="load them only if you trust their code: pass trusted=[...] or set "
            f"{sklearn_io.TRUSTED_ENV}=" + ",".join(names),
        )
    return sklearn_io.load_checked(data, found, where)


# ---------------------------------------------------------------------------------------------------- the flavors


def _save_sklearn(model: Any, out: Path) -> dict[str, Any]:
    data = _skops_bytes(model)
    (out / SKOPS_FILE).write_bytes(data)
    return {
        "estimator": _qualname(model),
        "trusted_types": _found_types(data),
        "versions": _versions("scikit-learn", "skops", "numpy"),
    }


def _refuse_custom_objective(est: Any, framework: str, examples: str) -> None:
    """A Python objective function lives outside the framework's own model format, so it cannot be stored."""
    if callable(getattr(est, "objective", None)):
        article = "an" if framework[0] in "AEIOUX" else "a"
        raise UsageError(
            f"{article} {framework} model with a custom objective function cannot be stored in {framework}'s format",
            hint=f"use a built-in objective (e.g. {examples})",
        )


def _save_xgboost(model: Any, out: Path) -> dict[str, Any]:
    _require(XGBOOST)
    pre, step, est = _preprocessing(model)
    _refuse_custom_objective(est, "XGBoost", "'binary:logistic', 'reg:squarederror'")
    est.save_model(str(out / BOOSTER_FILE[XGBOOST]))
    params = {k: v for k, v in est.get_params(deep=False).items() if k in _XGB_PREDICT_PARAMS}
    info = {
        "estimator": _qualname(est),
        "params": _encode_params(params),
        "versions": _versions("xgboost", "scikit-learn", "skops", "numpy"),
    }
    return {**info, **_save_preprocessing(pre, step, out)}


def _save_lightgbm(model: Any, out: Path) -> dict[str, Any]:
    _require(LIGHTGBM)
    pre, step, est = _preprocessing(model)
    _refuse_custom_objective(est, "LightGBM", "'binary', 'multiclass', 'regression'")
    booster = est.booster_
    # The thread count is written among the parameters, and by default it is the machine's core count.
    text = _THREADS_LINE.sub("[num_threads: 0]", booster.model_to_string())
    (out / BOOSTER_FILE[LIGHTGBM]).write_bytes(text.encode("utf-8"))
    info: dict[str, Any] = {
        "estimator": getattr(est, "saved_from_", None) or _qualname(est),
        "kind": "classifier" if is_classifier(est) else "regressor",
        "n_features": int(booster.num_feature()),
        "versions": _versions("lightgbm", "scikit-learn", "skops", "numpy"),
    }
    if info["kind"] == "classifier":
        classes = np.asarray(est.classes_)
        info["classes"] = [plain(c) for c in classes.tolist()]
        info["classes_dtype"] = classes.dtype.str if classes.dtype.kind in "biuf" else "object"
    names = getattr(est, "feature_names_in_", None)
    if names is not None:
        info["feature_names"] = [str(n) for n in names]
    return {**info, **_save_preprocessing(pre, step, out)}


def _load_xgboost(files: _Files, info: dict, trusted: tuple[str, ...], what: str) -> Any:
    xgb = _require(XGBOOST, what)
    name = str(info.get("estimator"))
    if name not in _XGB_CLASSES:  # a class name from the artifact is never imported unless it is one of these
        raise IntegrityError(f"{what}: {INFO_FILE} names estimator {name!r}, which is not an XGBoost estimator")
    est = getattr(xgb, name.rsplit(".", 1)[1])(**_decode_params(info.get("params") or {}, _XGB_PREDICT_PARAMS))
    data = files.get(BOOSTER_FILE[XGBOOST])
    with _booster_file(what, BOOSTER_FILE[XGBOOST], "XGBoost"):
        booster_check.xgboost_json(data)
        est.load_model(bytearray(data))
    return _attach(files, info, est, trusted, what)


def _load_lightgbm(files: _Files, info: dict, trusted: tuple[str, ...], what: str) -> Any:
    lgb = _require(LIGHTGBM, what)
    kind = info.get("kind")
    if kind not in _LGB_KINDS:
        raise IntegrityError(f"{what}: {INFO_FILE} names an unknown LightGBM model kind {kind!r}")
    data = files.get(BOOSTER_FILE[LIGHTGBM])
    with _booster_file(what, BOOSTER_FILE[LIGHTGBM], "LightGBM"):
        booster = lgb.Booster(model_str=booster_check.lightgbm_text(data.decode("utf-8")))
    est: _LightGBMBase = LightGBMClassifier() if kind == "classifier" else LightGBMRegressor()
    est.booster_, est.saved_from_ = booster, str(info.get("estimator"))
    est.n_features_in_ = int(info.get("n_features") or booster.num_feature())
    if info.get("feature_names") is not None:
        est.feature_names_in_ = np.asarray(info["feature_names"], dtype=object)
    if isinstance(est, LightGBMClassifier):
        dtype = info.get("classes_dtype") or "object"
        est.classes_ = np.asarray(info.get("classes") or [], dtype=object if dtype == "object" else np.dtype(dtype))
        n_classes = max(booster.num_model_per_iteration(), 2)
        if len(est.classes_) != n_classes:
            raise IntegrityError(
                f"{what}: its {INFO_FILE} lists {len(est.classes_)} classes for a booster that predicts {n_classes}",
                hint=tree_check.HINT,
            )
    return _attach(files, info, est, trusted, what)


@contextlib.contextmanager
def _booster_file(what: str, name: str, framework: str) -> Iterator[None]:
    """A booster file that :mod:`~model_ops.ml.booster_check` or the framework's own loader refuses, as one
    IntegrityError naming the file: its bytes matched their digest, so it was registered this way."""
    try:
        yield
    except ModelOpsError:
        raise
    except Exception as e:
        detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise IntegrityError(
            f"{what}: {name} is not a valid {framework} model: {detail}", hint=tree_check.HINT
        ) from None


class _LightGBMBase(BaseEstimator):
    """A trained LightGBM booster as a scikit-learn estimator (what the ``lightgbm`` flavor loads): it predicts
    exactly as the estimator it was saved from, and fits in a Pipeline. It holds a model, not a recipe, so it has
    no hyper-parameters and cannot be refitted."""

    booster_: Any
    n_features_in_: int
    saved_from_: str  # the estimator class it was saved from, kept so saving it again gives the same bytes

    def __init__(self) -> None:  # no hyper-parameters: see the class docstring
        pass

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "booster_")

    def fit(self, X: Any, y: Any = None) -> Any:
        raise UsageError(
            f"{type(self).__name__} is a loaded LightGBM model and cannot be refitted",
            hint="fit a lightgbm.LGBMClassifier / LGBMRegressor instead",
        )


class LightGBMClassifier(ClassifierMixin, _LightGBMBase):
    classes_: np.ndarray

    def predict_proba(self, X: Any) -> np.ndarray:
        raw = np.asarray(self.booster_.predict(X))
        return np.column_stack([1.0 - raw, raw]) if raw.ndim == 1 else raw

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


class LightGBMRegressor(RegressorMixin, _LightGBMBase):
    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.booster_.predict(X))


# ---------------------------------------------------------------------------------------------------- pipelines


def _preprocessing(model: Any) -> tuple[Any, str | None, Any]:
    """(the Pipeline before the final estimator, with that step as "passthrough"; the step's name; the final
    estimator). The first is None for a bare estimator."""
    if not _is_pipeline(model):
        return None, None, model
    step, est = model.steps[-1]
    if len(model.steps) == 1:
        return None, None, est
    pre = copy.copy(model)  # shallow: the fitted steps are shared, only the list of steps is new
    pre.steps = [*model.steps[:-1], (step, "passthrough")]
    return pre, step, est


def _save_preprocessing(pre: Any, step: str | None, out: Path) -> dict[str, Any]:
    if pre is None:
        return {"step": None, "trusted_types": []}
    data = _skops_bytes(pre)
    (out / PREPROCESS_FILE).write_bytes(data)
    return {"step": step, "trusted_types": _found_types(data)}


def _attach(files: _Files, info: dict, est: Any, trusted: tuple[str, ...], what: str) -> Any:
    """The estimator alone, or behind the preprocessing Pipeline it was saved with."""
    step = info.get("step")
    if step is None:
        return est
    pre = load_skops(files.get(PREPROCESS_FILE), info.get("trusted_types") or [], trusted, what, PREPROCESS_FILE)
    if not _is_pipeline(pre) or pre.steps[-1] != (step, "passthrough"):
        raise IntegrityError(
            f"{what}: {PREPROCESS_FILE} is not the preprocessing Pipeline its {INFO_FILE} "
            f"describes (a final step {step!r} left as 'passthrough')"
        )
    pre.steps = [*pre.steps[:-1], (step, est)]
    return pre


# ---------------------------------------------------------------------------------------------------- signatures

_DROPPED = "__dropped__"
_NUMERIC_TRANSFORMERS = (
    "StandardScaler",
    "MinMaxScaler",
    "MaxAbsScaler",
    "RobustScaler",
    "Normalizer",
    "PowerTransformer",
    "QuantileTransformer",
    "KBinsDiscretizer",
    "PolynomialFeatures",
    "SplineTransformer",
    "Binarizer",
    "KNNImputer",
    "IterativeImputer",
)
_ENCODERS = ("OneHotEncoder", "OrdinalEncoder", "TargetEncoder")


def _feature_names(model: Any) -> list[str] | None:
    try:
        names = model.feature_names_in_
    except AttributeError:
        return None
    return [str(n) for n in names] if names is not None else None


def _input_types(model: Any, names: list[str]) -> dict[str, str | None]:
    steps = [s for _, s in model.steps] if _is_pipeline(model) else [model]
    first, final = steps[0], steps[-1]
    if type(first).__name__ == "ColumnTransformer" and hasattr(first, "transformers_"):
        index = getattr(first, "_transformer_to_input_indices", {})
        types: dict[str, str | None] = {}
        for tname, transformer, _ in first.transformers_:
            columns = [names[i] for i in index.get(tname, []) if i < len(names)]
            if isinstance(transformer, str) and transformer == "drop":
                for column in columns:
                    types.setdefault(column, _DROPPED)
                continue
            for column, kind in zip(columns, _column_kinds(transformer, len(columns)), strict=True):
                before = types.get(column, _DROPPED)  # a column used twice keeps a type only if both agree
                types[column] = kind if before == _DROPPED or before == kind else None
        return types
    if first is final:
        return dict(zip(names, _estimator_kinds(final, len(names)), strict=True))
    return dict(zip(names, _column_kinds(first, len(names)), strict=True))


def _column_kinds(transformer: Any, n: int) -> list[str | None]:
    """What a (fitted) transformer shows about the type of each of its ``n`` input columns."""
    chain = [s for _, s in transformer.steps] if _is_pipeline(transformer) else [transformer]
    for step in chain:
        name = type(step).__name__
        if name in _ENCODERS and len(getattr(step, "categories_", [])) == n:
            return [_kind_of_values(np.asarray(c)) for c in step.categories_]
        if name in _NUMERIC_TRANSFORMERS:
            return ["float"] * n
        if name == "SimpleImputer" and not getattr(step, "add_indicator", False):
            if step.strategy in ("mean", "median"):
                return ["float"] * n
            continue  # keeps its columns as they are: the next step tells
        break
    return [None] * n


def _estimator_kinds(est: Any, n: int) -> list[str | None]:
    framework = _framework(est)
    if framework == XGBOOST:
        kinds = {"float": "float", "q": "float", "int": "int", "i": "bool", "c": "category"}
        types = est.get_booster().feature_types or []
        return [kinds.get(t) for t in types] if len(types) == n else [None] * n
    if framework == LIGHTGBM:
        if not est.booster_.pandas_categorical:
            return ["float"] * n
        found = _CATEGORICAL_LINE.search(est.booster_.model_to_string())
        indices = [p.strip() for p in found.group(1).split(",")] if found else []
        if not all(i.isdigit() for i in indices):
            return [None] * n
        return ["category" if str(i) in indices else "float" for i in range(n)]
    categorical = getattr(est, "is_categorical_", None)
    if categorical is not None:
        return [None if c else "float" for c in categorical]
    return ["float"] * n  # scikit-learn estimators take numbers


def _kind_of_values(values: np.ndarray) -> str | None:
    return {"O": "category", "U": "category", "S": "category", "b": "bool", "i": "int", "u": "int", "f": "float"}.get(
        values.dtype.kind
    )


# ---------------------------------------------------------------------------------------------------- helpers


def _single_file(source: str | os.PathLike[str] | Mapping[str, bytes], what: str) -> bytes:
    if not isinstance(source, Mapping):
        path = Path(source)
        return path.read_bytes() if path.is_file() else _Files(path, what).get(SKOPS_FILE)
    if len(source) != 1:
        raise IntegrityError(f"{what}: a {FLAVOR_SKOPS} artifact holds one file, this one {len(source)}")
    return next(iter(source.values()))


class _Files:
    """The files of an artifact, from a directory or a ``{name: bytes}`` mapping."""

    def __init__(self, source: str | os.PathLike[str] | Mapping[str, bytes], what: str) -> None:
        self.source, self.what = source, what

    def get(self, name: str) -> bytes:
        if isinstance(self.source, Mapping):
            data = self.source.get(name)
        else:
            path = Path(self.source) / name
            data = path.read_bytes() if path.is_file() else None
        if data is None:
            raise IntegrityError(
                f"{self.what}: its artifact has no {name}",
                hint="it was not written by model_ops' flavors, or a file was removed",
            )
        return data


def _read_info(data: bytes, what: str) -> dict[str, Any]:
    try:
        if sklearn_io.json_depth(data) > _MAX_INFO_DEPTH:
            raise ValueError(f"it nests deeper than {_MAX_INFO_DEPTH} levels")
        info = json.loads(data)
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise ValueError(f"format {info.get('format') if isinstance(info, dict) else None!r}, not {FORMAT!r}")
        if info.get("flavor") not in FLAVORS:
            raise ValueError(f"unknown flavor {info.get('flavor')!r}")
        types = info.get("trusted_types")
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise ValueError("trusted_types must be a list of type names")
    except ValueError as e:
        raise IntegrityError(f"{what}: its {INFO_FILE} is not valid: {e}") from None
    return info


def _why_untrusted(name: str) -> str | None:
    """Why a recorded type is not trusted without the caller naming it; None when it may be."""
    if name in _AUTO_EXACT:
        return None
    module, _, attr = name.rpartition(".")
    parts = module.split(".")
    if parts[0] not in _AUTO_PACKAGES:
        return "outside scikit-learn, NumPy and SciPy: code that is trusted only by name"
    if name in _DENIED or any(p in _DENIED_PARTS for p in parts[1:]):
        return "from a module that reads or writes files or exists for tests and builds"
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return "not found in the installed packages"
    if not isinstance(obj, type):
        return "a function, not a class: code that would run when the model is loaded or used"
    if issubclass(obj, np.memmap):
        return "maps files into memory"
    if obj.__name__ == "LowLevelCallable":
        return "wraps a raw function pointer"
    return None


def _skops_bytes(model: Any) -> bytes:
    try:
        return _zero_padding(sklearn_io.dumps(model))
    except UsageError as e:
        raise UsageError(
            f"{_qualname(model)} cannot be stored with skops: {e.message}",
            hint="XGBoost and LightGBM estimators are supported alone or as a Pipeline's final "
            "step, not nested elsewhere",
        ) from None


def _zero_padding(data: bytes) -> bytes:
    """Canonical skops bytes with the padding of structured arrays zeroed.

    A decision tree's node records (``sklearn.tree._tree.NODE_DTYPE``: 57 bytes of fields in 64) are saved as raw
    memory, so their padding holds whatever the allocator left there: a model loaded and saved again, or one
    fitted in another process, could differ in those bytes alone. Arrays without padding are left untouched."""
    with zipfile.ZipFile(io.BytesIO(data)) as zin:
        entries = {name: zin.read(name) for name in zin.namelist()}
    changed = False
    for name, raw in entries.items():
        if not name.endswith(".npy"):
            continue
        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError:
            continue
        fields = array.dtype.fields
        if not fields or sum(f[0].itemsize for f in fields.values()) == array.dtype.itemsize:
            continue
        clean = np.zeros(array.shape, array.dtype)
        for field in array.dtype.names or ():
            clean[field] = array[field]
        buf = io.BytesIO()
        np.save(buf, clean, allow_pickle=False)
        changed = changed or buf.getvalue() != raw
        entries[name] = buf.getvalue()
    if not changed:
        return data
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zout:
        for name, raw in entries.items():
            zout.writestr(name, raw)
    return sklearn_io.canonicalize(out.getvalue())


def _found_types(data: bytes) -> list[str]:
    import skops.io as sio

    return sorted(sio.get_untrusted_types(data=data))


def _framework(obj: Any) -> str | None:
    top = type(obj).__module__.split(".", 1)[0]
    if top == XGBOOST:
        import xgboost

        return XGBOOST if isinstance(obj, xgboost.XGBModel) else None
    if top == LIGHTGBM:
        import lightgbm

        return LIGHTGBM if isinstance(obj, lightgbm.LGBMModel) else None
    return None


def _require(framework: str, what: str | None = None) -> Any:
    try:
        return importlib.import_module(framework)
    except ImportError as e:
        whose = f"{what} is a {framework} model; " if what else ""
        raise UsageError(
            f"{whose}{framework} cannot be imported: {e}", hint=f"pip install 'model_ops[{framework}]'"
        ) from None


def _check_fitted(model: Any) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(model)
    except NotFittedError:
        raise UsageError(
            f"the {_qualname(model)} is not fitted", hint="fit it before saving or registering it"
        ) from None
    except TypeError as e:
        raise UsageError(f"cannot store a {_qualname(model)}: {e}") from None


def _is_pipeline(model: Any) -> bool:
    from sklearn.pipeline import Pipeline

    return isinstance(model, Pipeline)


def _qualname(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


@functools.lru_cache(maxsize=16)
def _installed(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _versions(*dists: str) -> dict[str, str]:
    return {dist: _installed(dist) for dist in dists}


def _encode_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Scalar parameters as JSON, NaN and infinities spelled out (``{"float": "nan"}``); others are left out."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        value = plain(value)
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = {"float": repr(value)}
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
    return out


def _decode_params(params: Mapping[str, Any], allowed: Iterable[str]) -> dict[str, Any]:
    """The recorded parameters named in ``allowed`` (an artifact chooses no other constructor argument)."""

    def decode(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"float"} and value["float"] in ("nan", "inf", "-inf"):
            return float(value["float"])
        return value

    return {k: decode(v) for k, v in params.items() if k in set(allowed)}


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
