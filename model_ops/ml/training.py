"""Fitting a model from its declaration, reproducibly, for every task.

The model is fixed by the declaration alone: a bare estimator is fitted behind the default preprocessing (median
imputation and scaling for numbers, one-hot for categories), a declared ``sklearn.pipeline.Pipeline`` is built
exactly as written (every ``{class, params}`` mapping nested in its params becomes an object), and a ``trainer``
function of the team's own gets the rows, the declaration and the seed. Rows are put in a canonical order (by key)
before fitting and every flavor serialises canonically, so the same declaration on the same snapshot gives
byte-identical artifacts.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from model_ops.data.arrow import to_pandas
from model_ops.errors import UsageError
from model_ops.jsonable import plain
from model_ops.specs.schema import ModelSpec
from model_ops.vocab import FeatureType, Task

# Version of this module's recipe (pipeline layout, row ordering). Bump it when a change here alters the model
# fitted from the same data: it is part of every candidate model's code version.
RECIPE_VERSION = "3"
SEED_PARAMS = ("random_state", "seed")


@dataclass(frozen=True)
class Trained:
    model: Any
    params: dict[str, Any]
    signature: dict[str, Any]
    rows: int
    summary: dict[str, Any] = field(default_factory=dict)  # class counts, or the target's mean
    trainer: dict[str, str] | None = None  # qualified name and source digest of a custom trainer


def build(value: Any, seed: int, where: str = "estimator") -> Any:
    """An object from a ``{class, params}`` tree; lists and tuples are walked; a seed parameter the class accepts
    and the declaration leaves out is set to ``seed``."""
    if isinstance(value, dict) and "class" in value:
        module_name, _, cls_name = str(value["class"]).rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name)
        params = {k: build(v, seed, f"{where}.params.{k}") for k, v in (value.get("params") or {}).items()}
        try:
            accepted = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            accepted = {}
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        if open_ended:
            # XGBoost and LightGBM take **kwargs (their native parameters): names are theirs to check, and the
            # seed parameter is among what get_params() lists
            try:
                accepted = {**accepted, **dict.fromkeys(cls().get_params())}
            except Exception:  # noqa: BLE001 - a class that cannot be built bare: let its own check speak
                pass
        unknown = sorted(set(params) - set(accepted)) if accepted and not open_ended else []
        if unknown:
            raise UsageError(
                f"{where}: {value['class']} has no parameter(s) {', '.join(unknown)}",
                hint=f"accepted: {', '.join(sorted(accepted))}",
            )
        for name in SEED_PARAMS:
            if name in accepted and name not in params:
                params[name] = seed
                break
        try:
            return cls(**params)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{where}: invalid params for {value['class']}: {exc}") from exc
    if (
        isinstance(value, list)
        and len(value) in (2, 3)
        and isinstance(value[0], str)
        and (isinstance(value[1], dict) and "class" in value[1] or value[1] in ("drop", "passthrough"))
    ):
        # a Pipeline step (name, estimator) or a ColumnTransformer entry (name, transformer, columns)
        return tuple([value[0], build(value[1], seed, f"{where}[{value[0]}]"), *value[2:]])
    if isinstance(value, (list, tuple)):
        return [build(v, seed, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def native_categories(model: Any) -> bool:
    """Whether the default preprocessing hands categories to the estimator as category codes rather than one-hot
    columns: scikit-learn's histogram gradient boosting splits on categories itself, needs neither imputation
    nor scaling of numbers, and one-hot columns would multiply its input's size. A declaration that sets
    ``categorical_features`` itself gets the one-hot preprocessing."""
    return (
        isinstance(model, (HistGradientBoostingClassifier, HistGradientBoostingRegressor))
        and model.categorical_features == "from_dtype"
    )


def preprocessing(spec: ModelSpec, model: Any = None) -> ColumnTransformer:
    """The default preprocessing in front of a bare estimator (``model``, when given, chooses the variant)."""
    numeric = [f.name for f in spec.features if spec.feature_type(f.name).numeric]
    categorical = [f.name for f in spec.features if not spec.feature_type(f.name).numeric]
    transformers: list[tuple[str, Any, list[str]]] = []
    if model is not None and native_categories(model):
        if numeric:
            transformers.append(("numeric", "passthrough", numeric))  # missing values are split on natively
        if categorical:
            transformers.append(
                (
                    "categorical",
                    OrdinalEncoder(
                        handle_unknown="use_encoded_value",
                        unknown_value=np.nan,
                        encoded_missing_value=np.nan,
                        min_frequency=20,
                        max_categories=model.max_bins,
                    ),
                    categorical,
                )
            )
        return ColumnTransformer(transformers)
    if numeric:
        transformers.append(
            ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), numeric)
        )
    if categorical:
        transformers.append(
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", min_frequency=20, sparse_output=False)),
                    ]
                ),
                categorical,
            )
        )
    return ColumnTransformer(transformers)


def estimator(spec: ModelSpec) -> Any:
    """The declared estimator (or Pipeline), unfitted."""
    assert spec.estimator is not None
    return build({"class": spec.estimator.class_, "params": dict(spec.estimator.params)}, spec.seed)


def pipeline(spec: ModelSpec) -> Any:
    """What is fitted: the declared Pipeline as it is, or the default preprocessing and the estimator."""
    model = estimator(spec)
    if isinstance(model, Pipeline):
        return model
    pre = preprocessing(spec, model)
    if native_categories(model):
        numeric = sum(1 for f in spec.features if spec.feature_type(f.name).numeric)
        categorical = len(spec.features) - numeric
        model.set_params(categorical_features=list(range(numeric, numeric + categorical)) or None)
    return Pipeline([("features", pre), ("model", model)])


def model_input(df: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The feature columns, typed the way the model was fitted (categories as objects, numbers as floats).

    Float columns are taken as they are (not copied): the model only reads them."""
    missing = [c for c in spec.feature_names if c not in df.columns]
    if missing:
        raise UsageError(f"input lacks feature column(s) {', '.join(missing)} required by {spec.name}")
    out: dict[str, Any] = {}
    for f in spec.features:
        col = df[f.name]
        if spec.feature_type(f.name) is FeatureType.CATEGORY:
            values = col.to_numpy(dtype=object, copy=True)
            values[pd.isna(values)] = None
            out[f.name] = values
        else:
            out[f.name] = pd.to_numeric(col, errors="coerce").astype("float64", copy=False).to_numpy()
    return pd.DataFrame(out, index=df.index, copy=False)


def table_input(table: pa.Table, spec: ModelSpec, order: np.ndarray | None = None) -> pd.DataFrame:
    """:func:`model_input` of an Arrow table's rows ``order`` (all, in table order, when None), built column by
    column from Arrow: numbers straight into one float64 block, categories through a dictionary so equal values
    share one Python object, and no frame of every column in between. One block for the numbers lets the
    preprocessing read them without copying them again."""
    missing = [c for c in spec.feature_names if c not in table.column_names]
    if missing:
        raise UsageError(f"input lacks feature column(s) {', '.join(missing)} required by {spec.name}")
    n = table.num_rows if order is None else len(order)
    numeric = [f.name for f in spec.features if spec.feature_type(f.name) is not FeatureType.CATEGORY]
    block = np.empty((n, len(numeric)), dtype="float64", order="F")  # column j is contiguous, as pandas keeps it
    categories: dict[str, np.ndarray] = {}
    for f in spec.features:
        col = table.column(f.name)
        if order is not None:
            col = col.take(order)
        if f.name not in numeric:
            encoded = pc.dictionary_encode(col).combine_chunks()
            levels = encoded.dictionary.to_numpy(zero_copy_only=False).astype(object)
            codes = encoded.indices
            values = levels[codes.fill_null(0).to_numpy()] if len(levels) else np.full(len(codes), None, object)
            values[codes.is_null().to_numpy(zero_copy_only=False)] = None
            categories[f.name] = values
        elif (
            pa.types.is_integer(col.type)
            or pa.types.is_floating(col.type)
            or pa.types.is_boolean(col.type)
            or pa.types.is_null(col.type)
        ):
            block[:, numeric.index(f.name)] = pc.cast(col, pa.float64()).to_numpy()
        else:  # a number stored as text: as model_input coerces it
            block[:, numeric.index(f.name)] = pd.to_numeric(col.to_pandas(), errors="coerce").astype("float64")
        del col
    out = pd.DataFrame(block, columns=numeric, copy=False)
    for position, f in enumerate(spec.features):
        if f.name in categories:
            out.insert(position, f.name, categories.pop(f.name))
    return out


def version_spec(spec: ModelSpec, signature: dict[str, Any] | None) -> ModelSpec:
    """The declaration as a registered version saw it: the features of its input signature (a version trained
    before a feature was added or removed keeps being scored, and compared, on its own inputs)."""
    inputs = (signature or {}).get("inputs") or []
    if not inputs or [i.get("name") for i in inputs] == spec.feature_names:
        return spec
    data = spec.model_dump(by_alias=True)
    declared = {f["name"]: f for f in data["features"]}
    data["features"] = [
        {
            **declared.get(i["name"], {"name": i["name"]}),
            "type": i.get("type")
            if i.get("type") in set(FeatureType)
            else (declared.get(i["name"], {}).get("type") or "float"),
        }
        for i in inputs
    ]
    names = {f["name"] for f in data["features"]}
    data["monitoring"]["drift_exclude"] = [n for n in data["monitoring"]["drift_exclude"] if n in names]
    data["alerts"] = [a for a in data.get("alerts", []) if a.get("feature") in (None, *names)]
    return ModelSpec.model_validate(data)


def canonical_order(rows: pd.DataFrame | pa.Table, spec: ModelSpec) -> np.ndarray:
    """Positions of the rows with a known outcome, in canonical (key) order, so row order never changes the fit."""
    if isinstance(rows, pa.Table):
        known = np.flatnonzero(rows.column(spec.label).is_valid().to_numpy(zero_copy_only=False))
        keys: Any = rows.column(spec.key_column).take(known)
    else:
        known = np.flatnonzero(rows[spec.label].notna().to_numpy())
        try:
            keys = pa.array(rows[spec.key_column].to_numpy()[known], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # keys of mixed Python types: pandas compares them
            by_key = rows[spec.key_column].iloc[known].reset_index(drop=True)
            return known[by_key.sort_values(kind="stable").index.to_numpy()]
    return known[pc.sort_indices(keys).to_numpy()]  # a stable sort, nulls last, as pandas sorts


def with_outcome(frame: pd.DataFrame, spec: ModelSpec, *, required: bool = True) -> pd.DataFrame:
    """The rows of ``frame`` whose outcome (label) is known, in their order. Without a label column: an error, or
    every row when the outcome is not ``required`` (a drift reference of rows that never carried one)."""
    if spec.label not in frame.columns:
        if not required:
            return frame
        raise ValueError(f"the rows have no label column {spec.label!r}")
    return frame[frame[spec.label].notna()].reset_index(drop=True)


def labelled(rows: pd.DataFrame | pa.Table, spec: ModelSpec) -> pd.DataFrame:
    """Rows with a known outcome, in canonical (key) order."""
    order = canonical_order(rows, spec)
    if isinstance(rows, pa.Table):
        return to_pandas(rows.take(order))
    out = rows.take(order)
    out.index = pd.RangeIndex(len(out))
    return out


def target(rows: pd.DataFrame | pd.Series, spec: ModelSpec) -> np.ndarray:
    y = rows if isinstance(rows, pd.Series) else rows[spec.label]
    if spec.task is Task.REGRESSION:
        return y.astype("float64").to_numpy()
    if spec.target.derived or pd.api.types.is_integer_dtype(y):
        return y.astype("int64").to_numpy()
    return y.to_numpy()


def signature(spec: ModelSpec, classes: list[Any] | None) -> dict[str, Any]:
    """Inputs and outputs: a change here is a MAJOR version in the registry."""
    outputs: dict[str, Any] = {"task": str(spec.task)}
    if classes is not None:
        outputs["classes"] = classes
    outputs["score"] = {
        Task.BINARY: f"P({spec.label}={classes[-1] if classes else 1})",
        Task.MULTICLASS: f"P(predicted {spec.label})",
        Task.REGRESSION: f"predicted {spec.label}",
    }[spec.task]
    return {
        "inputs": [{"name": f.name, "type": str(spec.feature_type(f.name))} for f in spec.features],
        "outputs": outputs,
    }


def trainer_function(spec: ModelSpec) -> tuple[Any, dict[str, str]]:
    """The declared trainer and what lineage records of it: its qualified name and a digest of its source."""
    assert spec.trainer is not None
    module, _, attr = spec.trainer.partition(":")
    fn = getattr(importlib.import_module(module), attr)
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = repr(fn)
    return fn, {"name": spec.trainer, "source_sha256": hashlib.sha256(source.encode()).hexdigest()}


@dataclass
class Prepared:
    """What a fit needs of its rows, in canonical (key) order: the model input, the target, and the labelled rows
    themselves only for a team's own trainer (which is handed a frame). Built apart from :func:`fit` so a caller
    can let go of the rows before the fit starts (see :func:`model_ops.ml.candidates.train_and_register`)."""

    inputs: pd.DataFrame | None
    y: np.ndarray
    rows: pd.DataFrame | None = None
    # False: the fit lets go of ``inputs`` once the default preprocessing has transformed them, so the estimator
    # fits beside its own input only (the caller rebuilds them if it needs them again)
    keep_inputs: bool = True

    def __len__(self) -> int:
        return len(self.y)


def prepare(rows: pd.DataFrame | pa.Table, spec: ModelSpec, permutation_seed: int | None = None) -> Prepared:
    """The labelled rows of ``rows`` as a fit takes them; ``permutation_seed`` shuffles the labels among them (the
    demo's deliberately broken candidate), reproducibly."""
    order = canonical_order(rows, spec)
    if isinstance(rows, pa.Table):
        label = rows.column(spec.label).take(order).to_pandas()
    else:
        label = rows[spec.label].iloc[order].reset_index(drop=True)
    if permutation_seed is not None:
        label = pd.Series(np.random.default_rng(permutation_seed).permutation(label.to_numpy()), dtype=label.dtype)
    y = target(label, spec)
    frame = None
    if spec.trainer is not None:
        frame = labelled(rows, spec)
        frame[spec.label] = label.to_numpy()
        X = model_input(frame, spec)
    elif isinstance(rows, pa.Table):
        X = table_input(rows, spec, order)
    else:
        X = model_input(rows.take(order).reset_index(drop=True), spec)
    return Prepared(X, y, frame)


def fit(train: pd.DataFrame | pa.Table | Prepared, spec: ModelSpec) -> Trained:
    """The declared model fitted on the labelled rows of ``train``."""
    prepared = train if isinstance(train, Prepared) else prepare(train, spec)
    X, y = prepared.inputs, prepared.y
    if len(y) == 0:
        raise UsageError(
            f"cannot train {spec.name}: the training window has no labelled rows",
            hint="materialize more partitions of features or widen the training window",
        )
    if spec.task.is_classification and len(np.unique(y)) < 2:
        raise UsageError(
            f"cannot train {spec.name}: the training window has {len(y)} labelled rows of a single "
            f"class ({np.unique(y)[0]!r}); at least two classes are needed",
            hint="materialize more partitions of features or widen the training window",
        )
    if spec.task is Task.BINARY and len(np.unique(y)) > 2:
        raise UsageError(
            f"cannot train {spec.name} as binary_classification: {spec.label} has "
            f"{len(np.unique(y))} classes ({', '.join(map(str, np.unique(y)[:6]))})",
            hint="declare task: multiclass_classification, or derive a two-class target with "
            "target: {column: ..., op: ..., threshold: ...}",
        )
    recorded_trainer = None
    if spec.trainer is not None:
        fn, recorded_trainer = trainer_function(spec)
        model = fn(prepared.rows, spec, spec.seed)
        if not hasattr(model, "predict"):
            raise UsageError(
                f"trainer {spec.trainer} returned {type(model).__name__}, which has no predict()",
                hint="return a fitted scikit-learn, XGBoost or LightGBM model",
            )
    else:
        model = pipeline(spec)
        try:
            if isinstance(estimator(spec), Pipeline):
                model.fit(X, y)
            else:  # what Pipeline.fit does, step by step, so the untransformed input can go before the estimator fits
                pre, final = model.steps[0][1], model.steps[-1][1]
                Xt = pre.fit_transform(X, y)
                if not prepared.keep_inputs:
                    prepared.inputs = X = None
                final.fit(Xt, y)
                del Xt
        except ValueError as exc:
            if "Invalid classes inferred" not in str(exc):
                raise
            raise UsageError(
                f"cannot train {spec.name}: {spec.estimator.class_ if spec.estimator else 'the model'} "
                f"needs its classes coded 0..K-1, and {spec.label} holds {sorted(map(str, set(y)))}",
                hint="code the target as integers in the source, or use a scikit-learn "
                "classifier, which takes any labels",
            ) from exc
    final = model.steps[-1][1] if isinstance(model, Pipeline) else model
    params = {k: _json_param(v) for k, v in final.get_params().items()} if hasattr(final, "get_params") else {}
    classes = (
        [_json_param(c) for c in model.classes_] if spec.task.is_classification and hasattr(model, "classes_") else None
    )
    if spec.task.is_classification:
        values, counts = np.unique(y, return_counts=True)
        summary: dict[str, Any] = {"class_counts": {str(_json_param(v)): int(c) for v, c in zip(values, counts)}}
        if spec.task is Task.BINARY:
            summary["positive_rate"] = float(np.mean(y == values.max()))
    else:
        summary = {"target_mean": float(np.mean(y)), "target_std": float(np.std(y))}
    return Trained(model, params, signature(spec, classes), len(y), summary, recorded_trainer)


def _json_param(value: Any) -> Any:
    """A parameter as JSON can hold it (NaN, e.g. XGBoost's ``missing``, as the string ``"nan"``)."""
    value = plain(value)
    if isinstance(value, float) and not np.isfinite(value):
        return repr(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
