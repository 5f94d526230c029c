"""Fitting a spec's scikit-learn pipeline, reproducibly.

The pipeline is fixed by the spec alone (imputation and scaling for numbers, one-hot for categories, then the
named estimator with the spec's parameters and seed), rows are put in a canonical order before fitting, and the
model is serialised canonically, so the same spec on the same snapshot gives byte-identical artifacts.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from model_ops.errors import UsageError
from model_ops.specs.schema import ModelSpec

# Version of this module's recipe (pipeline layout, row ordering). Bump it when a change here alters the model
# fitted from the same data: it is part of every candidate model's code version.
RECIPE_VERSION = "1"


@dataclass(frozen=True)
class Trained:
    pipeline: Pipeline
    params: dict[str, Any]
    signature: dict[str, Any]
    rows: int
    positives: int


def estimator(spec: ModelSpec) -> Any:
    module_name, _, cls_name = spec.estimator.class_.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    params = dict(spec.estimator.params)
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UsageError(f"model spec {spec.name}: {spec.estimator.class_} has no parameter(s) {', '.join(unknown)}",
                         hint="check estimator.params against the scikit-learn documentation")
    if "random_state" in accepted and "random_state" not in params:
        params["random_state"] = spec.seed
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"model spec {spec.name}: invalid estimator params: {exc}") from exc


def pipeline(spec: ModelSpec) -> Pipeline:
    numeric = [f.name for f in spec.features if f.type != "category"]
    categorical = [f.name for f in spec.features if f.type == "category"]
    transformers = []
    if numeric:
        transformers.append(("numeric", Pipeline([("impute", SimpleImputer(strategy="median")),
                                                   ("scale", StandardScaler())]), numeric))
    if categorical:
        transformers.append(("categorical", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
            ("onehot", OneHotEncoder(handle_unknown="ignore", min_frequency=20, sparse_output=False)),
        ]), categorical))
    return Pipeline([("features", ColumnTransformer(transformers)), ("model", estimator(spec))])


def model_input(df: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The feature columns, typed the way the pipeline was fitted (categories as objects, numbers as floats)."""
    missing = [c for c in spec.feature_names if c not in df.columns]
    if missing:
        raise UsageError(f"input lacks feature column(s) {', '.join(missing)} required by {spec.name}")
    out = pd.DataFrame(index=df.index)
    for f in spec.features:
        col = df[f.name]
        out[f.name] = col.astype(object).where(col.notna(), None) if f.type == "category" else col.astype("float64")
    return out


def labelled(df: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """Rows with a known outcome, in canonical (flight id) order so row order never changes the fit."""
    rows = df[df[spec.target.name].notna()]
    return rows.sort_values("flight_id", kind="stable").reset_index(drop=True)


def signature(spec: ModelSpec, classes: list[int]) -> dict[str, Any]:
    """Inputs and outputs: a change here is a MAJOR version in the registry."""
    return {"inputs": [{"name": f.name, "type": f.type} for f in spec.features],
            "outputs": {"task": spec.task, "classes": classes, "score": f"P({spec.target.name}=1)"}}


def fit(train: pd.DataFrame, spec: ModelSpec) -> Trained:
    rows = labelled(train, spec)
    y = rows[spec.target.name].astype("int64").to_numpy()
    if len(rows) == 0 or len(np.unique(y)) < 2:
        raise UsageError(f"cannot train {spec.name}: the training window has {len(rows)} labelled rows and "
                         f"{len(np.unique(y))} class(es); both classes are needed",
                         hint="materialize more months of features or widen the training window")
    pipe = pipeline(spec)
    pipe.fit(model_input(rows, spec), y)
    params = {k: _plain(v) for k, v in pipe.named_steps["model"].get_params().items()}
    classes = [int(c) for c in pipe.classes_]
    return Trained(pipe, params, signature(spec, classes), len(rows), int(y.sum()))


def predict_scores(model: Any, df: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """P(positive) per row."""
    proba = model.predict_proba(model_input(df, spec))
    return proba[:, list(model.classes_).index(1)]


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)
