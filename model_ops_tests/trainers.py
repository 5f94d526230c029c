"""Trainers of a team's own, named by declarations in the tests (``trainer: model_ops_tests.trainers:NAME``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def ridge(rows: pd.DataFrame, spec: Any, seed: int) -> Any:
    """A scaled ridge regression on the declared features: what a team's own training code might return."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = rows[spec.feature_names].astype("float64")
    return make_pipeline(StandardScaler(), Ridge(alpha=1.0, random_state=seed)).fit(X, rows[spec.label])


def double(x: Any) -> Any:
    return np.asarray(x, dtype="float64") * 2.0


def with_custom_function(rows: pd.DataFrame, spec: Any, seed: int) -> Any:
    """A pipeline holding a function of this module: a type skops does not trust, so it must be refused."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = rows[spec.feature_names].astype("float64")
    return make_pipeline(FunctionTransformer(double), Ridge(random_state=seed)).fit(X, rows[spec.label])
