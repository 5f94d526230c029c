"""Outputs and metrics per task on real data (scikit-learn's bundled breast-cancer, wine and diabetes sets), with
scikit-learn's own metric functions as the reference. The data helpers here are shared by test_evaluation and
test_monitoring."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn import datasets
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from model_ops.ml import tasks
from model_ops.ml.tasks import Predicted
from model_ops.ml.training import model_input
from model_ops.specs.schema import LIVE_METRICS, METRICS, ModelSpec
from model_ops.vocab import Task

# ------------------------------------------------------------------------------------------- shared helpers

ESTIMATOR = {
    Task.BINARY: "sklearn.linear_model.LogisticRegression",
    Task.MULTICLASS: "sklearn.linear_model.LogisticRegression",
    Task.REGRESSION: "sklearn.linear_model.Ridge",
}


def make_spec(
    task: Task, frame: pd.DataFrame, label: str = "target", *, categories: tuple[str, ...] = (), **attributes: Any
) -> ModelSpec:
    """A spec over ``frame``'s columns (all but the label, the key ``id`` and the time ``ts``)."""
    features = [
        {"name": c, "type": "category" if c in categories else "float"}
        for c in frame.columns
        if c not in (label, "id", "ts")
    ]
    return ModelSpec.model_validate(
        {
            "name": "example",
            "description": "a test model",
            "owner": "team:test",
            "task": str(task),
            "source": {"kind": "parquet", "uri": "/nonexistent", "time_column": "ts", "key_column": "id"},
            "partitions": "none",
            "features": features,
            "target": {"column": label},
            "estimator": {"class": ESTIMATOR[task]},
            **attributes,
        }
    )


def _frame(loader: Any) -> pd.DataFrame:
    df = loader(as_frame=True).frame
    df = df.rename(columns=lambda c: c.replace(" ", "_").replace("(", "").replace(")", "").replace("/", "_"))
    return df.assign(id=np.arange(len(df)))


def cancer() -> pd.DataFrame:
    """Binary: 569 tumours, target 1 = benign (357), 0 = malignant (212)."""
    return _frame(datasets.load_breast_cancer)


def wine() -> pd.DataFrame:
    """Multiclass: 178 wines of three cultivars (0: 59, 1: 71, 2: 48)."""
    return _frame(datasets.load_wine)


def diabetes() -> pd.DataFrame:
    """Regression: 442 patients, disease progression after a year (25 to 346)."""
    return _frame(datasets.load_diabetes)


def fit(frame: pd.DataFrame, spec: ModelSpec) -> Any:
    X, y = model_input(frame, spec), frame[spec.label]
    if spec.task is Task.REGRESSION:
        return make_pipeline(StandardScaler(), Ridge()).fit(X, y)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.05)).fit(X, y)


@pytest.fixture(scope="module")
def binary() -> tuple[pd.DataFrame, ModelSpec, Any]:
    df = cancer()
    spec = make_spec(Task.BINARY, df, deployment={"decision_threshold": 0.3})
    return df, spec, fit(df, spec)


@pytest.fixture(scope="module")
def multiclass() -> tuple[pd.DataFrame, ModelSpec, Any]:
    df = wine()
    spec = make_spec(Task.MULTICLASS, df)
    return df, spec, fit(df, spec)


@pytest.fixture(scope="module")
def regression() -> tuple[pd.DataFrame, ModelSpec, Any]:
    df = diabetes()
    spec = make_spec(Task.REGRESSION, df)
    return df, spec, fit(df, spec)


# ------------------------------------------------------------------------------------------------- binary


def test_binary_score_is_p_positive_and_prediction_uses_the_spec_threshold(binary) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = binary
    p = tasks.predict(model, model_input(df, spec), spec)
    proba = model.predict_proba(model_input(df, spec))
    assert p.classes == (0, 1) and p.positive == 1
    assert np.allclose(p.score, proba[:, 1])
    assert np.array_equal(p.prediction, (proba[:, 1] >= 0.3).astype(int))
    assert (
        p.prediction.dtype == np.int64 and (p.prediction == 1).sum() > (model.predict(model_input(df, spec)) == 1).sum()
    )


def test_binary_metrics_match_scikit_learn(binary) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = binary
    y = df["target"].to_numpy()
    p = tasks.predict(model, model_input(df, spec), spec)
    q = tasks.quality(y, p, spec)
    assert set(q) >= METRICS[Task.BINARY] | {"positive_rate", "predicted_positive_rate"}
    pred = (p.score >= 0.3).astype(int)
    assert q["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert q["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert q["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert q["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert q["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p.score))
    assert q["log_loss"] == pytest.approx(skm.log_loss(y, p.score))
    assert q["brier"] == pytest.approx(skm.brier_score_loss(y, p.score))
    assert q["positive_rate"] == pytest.approx(y.mean()) and q["predicted_positive_rate"] == pytest.approx(pred.mean())
    assert 0 <= q["ece"] < 0.1


@pytest.mark.parametrize(
    "encode, positive",
    [
        (lambda y: y.astype(bool), True),
        (lambda y: np.where(y == 1, "benign", "malignant").astype(object), "malignant"),  # the later name is positive
        (lambda y: y.astype("float64"), 1.0),
    ],
)
def test_the_positive_class_is_the_larger_whatever_the_label_type(encode, positive) -> None:  # type: ignore[no-untyped-def]
    df = cancer()
    df["target"] = encode(df["target"].to_numpy())
    spec = make_spec(Task.BINARY, df)
    model = fit(df, spec)
    p = tasks.predict(model, model_input(df, spec), spec)
    assert p.positive == positive
    truth = (df["target"] == positive).to_numpy()
    assert np.allclose(p.score, model.predict_proba(model_input(df, spec))[:, list(model.classes_).index(positive)])
    q = tasks.quality(df["target"].to_numpy(), p, spec)
    assert q["roc_auc"] == pytest.approx(skm.roc_auc_score(truth, p.score))
    assert q["positive_rate"] == pytest.approx(truth.mean())
    assert set(p.prediction.tolist()) <= set(df["target"].tolist())  # predictions are class labels
    assert pa.Table.from_pandas(p.frame()).schema.field("prediction").type in (pa.bool_(), pa.string(), pa.float64())


def test_one_class_or_no_rows_is_nan_never_a_crash(binary) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = binary
    ones = df[df["target"] == 1]
    q = tasks.quality(ones["target"].to_numpy(), tasks.predict(model, model_input(ones, spec), spec), spec)
    assert math.isnan(q["roc_auc"]) and q["positive_rate"] == 1.0 and 0 < q["log_loss"] < 1
    assert not math.isnan(q["recall"]) and not math.isnan(q["brier"])
    empty = tasks.quality(np.array([]), tasks.predict(model, model_input(df.head(0), spec), spec), spec)
    assert all(math.isnan(v) for v in empty.values())


def test_precision_without_predicted_positives_is_undefined(binary) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = binary
    strict = spec.model_copy(update={"deployment": spec.deployment.model_copy(update={"decision_threshold": 0.999999})})
    zeros = df[df["target"] == 0]
    q = tasks.quality(zeros["target"].to_numpy(), tasks.predict(model, model_input(zeros, strict), strict), strict)
    assert math.isnan(q["precision"]) and math.isnan(q["recall"]) and q["accuracy"] == 1.0


# --------------------------------------------------------------------------------------------- multiclass


def test_multiclass_prediction_is_the_most_probable_class(multiclass) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = multiclass
    X = model_input(df, spec)
    p = tasks.predict(model, X, spec)
    proba = model.predict_proba(X)
    assert p.classes == (0, 1, 2)
    assert np.array_equal(p.prediction, model.predict(X)) and np.allclose(p.score, proba.max(axis=1))
    cols = p.columns()
    assert list(cols) == ["prediction", "score", "proba_0", "proba_1", "proba_2"]
    assert np.allclose(cols["proba_2"], proba[:, 2])


def test_multiclass_metrics_match_scikit_learn(multiclass) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = multiclass
    # hold out some rows so the model is not perfect
    train, test = df.iloc[::2], df.iloc[1::2]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.001, max_iter=500)).fit(
        model_input(train, spec)[["alcohol", "malic_acid"]], train["target"]
    )
    narrow = make_spec(Task.MULTICLASS, test[["alcohol", "malic_acid", "target", "id"]])
    X = model_input(test, narrow)
    p = tasks.predict(model, X, narrow)
    y = test["target"].to_numpy()
    q = tasks.quality(y, p, narrow)
    pred = model.predict(X)
    assert set(q) == METRICS[Task.MULTICLASS] | {"recall_0", "recall_1", "recall_2"}
    assert q["accuracy"] == pytest.approx(skm.accuracy_score(y, pred)) and q["accuracy"] < 0.95
    assert q["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert q["f1_weighted"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert q["log_loss"] == pytest.approx(skm.log_loss(y, model.predict_proba(X), labels=[0, 1, 2]))
    for c, r in zip((0, 1, 2), skm.recall_score(y, pred, average=None)):
        assert q[f"recall_{c}"] == pytest.approx(r)


def test_multiclass_is_robust_to_absent_and_unknown_classes(multiclass) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = multiclass
    two = df[df["target"] != 2]
    p = tasks.predict(model, model_input(two, spec), spec)
    q = tasks.quality(two["target"].to_numpy(), p, spec)
    assert math.isnan(q["recall_2"]) and q["recall_0"] > 0.9
    assert q["log_loss"] == pytest.approx(skm.log_loss(two["target"], p.proba, labels=[0, 1, 2]))
    one = df[df["target"] == 1]
    q1 = tasks.quality(one["target"].to_numpy(), tasks.predict(model, model_input(one, spec), spec), spec)
    assert q1["accuracy"] > 0.9 and math.isnan(q1["recall_0"])
    # a label the model never saw: wrong, and as costly as probability 0 (clipped), but no exception
    strange = np.array([0, 1, 7], dtype=object)
    q2 = tasks.quality(strange, tasks.predict(model, model_input(df.iloc[[0, 60, 70]], spec), spec), spec)
    assert q2["accuracy"] == pytest.approx(2 / 3) and q2["log_loss"] > 10


def test_string_classes_name_their_columns_and_metrics() -> None:
    df = wine()
    df["target"] = np.array(["barolo", "grignolino", "barbera d'alba"], dtype=object)[df["target"]]
    spec = make_spec(Task.MULTICLASS, df)
    p = tasks.predict(fit(df, spec), model_input(df, spec), spec)
    assert p.classes == ("barbera d'alba", "barolo", "grignolino")
    assert [c for c in p.columns() if c.startswith("proba_")] == [
        "proba_barbera_d_alba",
        "proba_barolo",
        "proba_grignolino",
    ]
    q = tasks.quality(df["target"].to_numpy(), p, spec)
    assert {"recall_barbera_d_alba", "recall_barolo", "recall_grignolino"} <= set(q)
    schema = pa.Table.from_pandas(p.frame()).schema
    assert schema.field("prediction").type == pa.string() and schema.field("proba_barolo").type == pa.float64()


# --------------------------------------------------------------------------------------------- regression


def test_regression_metrics_match_scikit_learn(regression) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = regression
    X = model_input(df, spec)
    p = tasks.predict(model, X, spec)
    y = df["target"].to_numpy()
    assert np.allclose(p.prediction, model.predict(X)) and np.array_equal(p.prediction, p.score)
    assert p.classes is None and list(p.columns()) == ["prediction", "score"]
    q = tasks.quality(y, p, spec)
    assert set(q) == METRICS[Task.REGRESSION] | {"mean_residual"}
    assert q["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, p.prediction)))
    assert q["mae"] == pytest.approx(skm.mean_absolute_error(y, p.prediction))
    assert q["r2"] == pytest.approx(skm.r2_score(y, p.prediction))
    assert q["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, p.prediction))
    assert q["mean_residual"] == pytest.approx(np.mean(p.prediction - y))


def test_mape_with_a_zero_target_and_r2_of_a_constant_target_are_undefined() -> None:
    p = Predicted(Task.REGRESSION, np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]))
    spec = make_spec(Task.REGRESSION, diabetes())
    q = tasks.quality(np.array([0.0, 2.0, 4.0]), p, spec)
    assert math.isnan(q["mape"]) and q["mae"] == pytest.approx(2 / 3)
    assert tasks.mape_note([0.0, 2.0, 4.0]) == "mape is not defined: 1 target(s) are 0 (it divides by the target)"
    assert math.isnan(tasks.quality(np.array([5.0, 5.0, 5.0]), p, spec)["r2"])


# ---------------------------------------------------------------------------------------------- direction


@pytest.mark.parametrize(
    "metric, candidate, baseline, worse",
    [
        ("roc_auc", 0.70, 0.75, 0.05),
        ("accuracy", 0.9, 0.8, -0.1),
        ("f1_macro", 0.5, 0.6, 0.1),
        ("r2", 0.3, 0.5, 0.2),
        ("recall_2", 0.8, 0.9, 0.1),
        ("log_loss", 0.6, 0.5, 0.1),
        ("brier", 0.1, 0.2, -0.1),
        ("rmse", 60.0, 55.0, 5.0),
        ("mae", 40.0, 45.0, -5.0),
        ("mape", 0.4, 0.3, 0.1),
        ("mean_residual", -3.0, 1.0, 2.0),
    ],
)
def test_worse_by_follows_each_metrics_better_direction(
    metric: str, candidate: float, baseline: float, worse: float
) -> None:
    assert tasks.worse_by(metric, candidate, baseline) == pytest.approx(worse)


def test_every_live_metric_has_a_direction() -> None:
    for task in Task:
        for metric in LIVE_METRICS[task]:
            assert not math.isnan(tasks.worse_by(metric, 1.0, 2.0))
    with pytest.raises(ValueError, match="no better direction"):
        tasks.worse_by("positive_rate", 0.3, 0.2)


# --------------------------------------------------------------------------------- the prediction log round trip


@pytest.mark.parametrize("which", ["binary", "multiclass", "regression"])
def test_outputs_written_to_a_log_score_the_same_when_read_back(which: str, request) -> None:  # type: ignore[no-untyped-def]
    df, spec, model = request.getfixturevalue(which)
    p = tasks.predict(model, model_input(df, spec), spec)
    log = pa.Table.from_pandas(p.frame().assign(id=df["id"].to_numpy())).to_pandas()  # as a Delta log stores it
    back = Predicted.from_log(log, spec)  # without the version's classes
    y = df["target"].to_numpy()
    direct, logged = tasks.quality(y, p, spec), tasks.quality(y, back, spec)
    assert direct.keys() == logged.keys()
    for k in direct:
        assert logged[k] == pytest.approx(direct[k], nan_ok=True), k
    with_classes = Predicted.from_log(log, spec, p.classes)
    assert tasks.quality(y, with_classes, spec) == pytest.approx(direct, nan_ok=True)


def test_a_binary_log_with_every_score_on_one_side_still_scores() -> None:
    spec = make_spec(Task.BINARY, cancer())
    log = pd.DataFrame({"score": [0.1, 0.2, 0.3], "prediction": [0, 0, 0]})
    back = Predicted.from_log(log, spec)
    assert back.positive == 1
    q = tasks.quality(np.array([0, 1, 0]), back, spec)
    assert q["accuracy"] == pytest.approx(2 / 3) and q["positive_rate"] == pytest.approx(1 / 3)
    flags = Predicted.from_log(pd.DataFrame({"score": [0.1, 0.2], "prediction": [False, False]}), spec)
    assert flags.classes == (False, True) and flags.positive is True
    floats = Predicted.from_log(pd.DataFrame({"score": [0.9], "prediction": [1.0]}), spec)
    assert floats.classes == (0.0, 1.0) and floats.positive == 1.0
    strings = Predicted.from_log(pd.DataFrame({"score": [0.9, 0.8], "prediction": ["yes", "yes"]}), spec)
    assert tasks.quality(np.array(["yes", "no"], dtype=object), strings, spec)["accuracy"] == 0.5


def test_labels_match_their_class_whatever_their_type() -> None:
    assert tasks.class_index(np.array([1.0, 0.0, 2.0]), [0, 1]).tolist() == [1, 0, -1]
    assert tasks.class_index(np.array(["1", "0", None], dtype=object), [0, 1]).tolist() == [1, 0, -1]
    assert tasks.class_index(np.array([1, 0]), [False, True]).tolist() == [1, 0]
    assert tasks.class_index(np.array(["a b", "c"], dtype=object), ["a_b", "c"]).tolist() == [0, 1]
