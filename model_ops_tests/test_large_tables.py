"""The paths large tables take, held to what the whole-frame paths give: a streamed partition write, the snapshot
split and fingerprint on Arrow, a fit prepared from Arrow, chunked scoring, and histogram gradient boosting on
categories without one-hot columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from model_ops.data import delta, snapshot
from model_ops.data import features as feat
from model_ops.data.delta import PARTITION, Dataset, frame_fingerprint
from model_ops.errors import UsageError
from model_ops.location import resolve_root
from model_ops.ml import flavors, tasks, training
from model_ops.specs.schema import ModelSpec


def spec_for(estimator: dict, partitions: object = "none", **extra: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "large",
            "description": "large-table paths",
            "owner": "team:test",
            "task": "binary_classification",
            "source": {"kind": "delta", "uri": "unused", "time_column": "t", "key_column": "k"},
            "partitions": partitions,
            "features": [
                {"name": "x", "type": "float"},
                {"name": "y", "type": "float"},
                {"name": "c", "type": "category"},
            ],
            "target": {"column": "label"},
            "estimator": estimator,
            **extra,
        }
    )


HGB = {"class": "sklearn.ensemble.HistGradientBoostingClassifier", "params": {"max_iter": 20}}
LOGIT = {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 200}}


def rows(n: int, seed: int = 0, partition: str = "all") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(["a", "b", "c", "rare"], size=n, p=[0.5, 0.3, 0.195, 0.005]).astype(object)
    c[rng.random(n) < 0.02] = None
    x[rng.random(n) < 0.03] = np.nan
    label = (x + (c == "a") - y + rng.normal(scale=0.5, size=n) > 0.5).astype("float64")
    label[rng.random(n) < 0.05] = np.nan  # outcomes not known yet
    keys = np.array([f"k{i:06d}" for i in rng.permutation(n)], dtype=object)
    return pd.DataFrame(
        {
            PARTITION: partition,
            "k": keys,
            "t": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 86400, n), "s"),
            "x": x,
            "y": y,
            "c": c,
            "label": label,
        }
    )


def test_fingerprint_of_a_table_is_the_fingerprint_of_its_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta, "FINGERPRINT_ROWS", 3)  # slices with and without nulls in each column
    table = pa.table(
        {
            "i": pa.array([1, 2, 3, 4, None, 6, 7], pa.int8()),
            "b": pa.array([True, False, True, None, True, True, False]),
            "s": ["a", "b", None, "d", "e", "f", "g"],
            "f": [1.0, None, 3, 4, 5, 6, 7],
            "t": pa.array([1, 2, 3, None, 5, 6, 7], pa.timestamp("us", tz="UTC")),
        }
    )
    assert frame_fingerprint(table) == frame_fingerprint(table.to_pandas())
    assert frame_fingerprint(table.slice(0, 0)) == frame_fingerprint(table.slice(0, 0).to_pandas())
    changed = table.set_column(3, "f", pa.array([1.0, None, 3, 4, 5, 6, 8]))
    assert frame_fingerprint(changed) != frame_fingerprint(table)


def test_split_orders_canonically_and_holds_out_the_newest_rows() -> None:
    spec = spec_for(LOGIT, training={"holdout_fraction": 0.25})
    df = rows(400)
    split = snapshot.split(pa.Table.from_pandas(df.sample(frac=1, random_state=3), preserve_index=False), spec, "all")
    out = split.to_pandas()
    expected = df.sort_values(["t", "k"], kind="stable").reset_index(drop=True)
    assert out["k"].tolist() == expected["k"].tolist()
    assert (out[snapshot.SPLIT] == snapshot.HOLDOUT).sum() == 100
    assert out[snapshot.SPLIT].iloc[-100:].eq(snapshot.HOLDOUT).all()
    hold = snapshot.rows_of(split, snapshot.HOLDOUT).to_pandas()
    assert hold["t"].min() >= out.loc[out[snapshot.SPLIT] == snapshot.TRAIN, "t"].max()


def test_split_by_partition_holds_out_the_named_partition() -> None:
    spec = spec_for(LOGIT, {"cadence": "monthly", "start": "2024-01-01"})
    table = pa.Table.from_pandas(
        pd.concat([rows(50, 1, "2024-02-01"), rows(60, 2, "2024-01-01")]), preserve_index=False
    )
    out = snapshot.split(table, spec, "2024-02-01").to_pandas()
    assert out[PARTITION].tolist() == ["2024-01-01"] * 60 + ["2024-02-01"] * 50
    assert out.groupby(PARTITION)[snapshot.SPLIT].unique().map(list).to_dict() == {
        "2024-01-01": [snapshot.TRAIN],
        "2024-02-01": [snapshot.HOLDOUT],
    }


def test_a_streamed_partition_is_the_table_and_a_bad_batch_commits_nothing(tmp_path: Path) -> None:
    frame = rows(1000)
    ds = Dataset(resolve_root(tmp_path / "features"), "features")
    v = ds.replace_partition("all", feat.to_arrow_stream(frame, rows=128))
    whole = Dataset(resolve_root(tmp_path / "whole"), "whole")
    whole.replace_partition("all", feat.to_arrow(frame))
    assert ds.arrow_schema() == whole.arrow_schema()
    by_key = ["k"]  # the engine may write a stream's batches in another order; the rows are the same
    pd.testing.assert_frame_equal(
        ds.read().sort_values(by_key, ignore_index=True), whole.read().sort_values(by_key, ignore_index=True)
    )
    bad = pd.concat([frame, rows(10, 5, "2024-02-01")], ignore_index=True)  # the last batch is another partition's
    with pytest.raises(ValueError, match="cannot be written into partition all"):
        ds.replace_partition("all", feat.to_arrow_stream(bad, rows=128))
    assert ds.version() == v and len(ds.read()) == 1000


@pytest.mark.parametrize("estimator", [LOGIT, HGB], ids=["logistic", "hist_gradient_boosting"])
def test_a_fit_from_arrow_is_the_fit_from_the_frame(estimator: dict) -> None:
    spec = spec_for(estimator)
    df = rows(3000)
    from_frame = training.fit(df, spec)
    from_table = training.fit(pa.Table.from_pandas(df, preserve_index=False), spec)
    assert flavors.expected_digest(from_frame.model) == flavors.expected_digest(from_table.model)
    shuffled = training.fit(pa.Table.from_pandas(df.sample(frac=1, random_state=1), preserve_index=False), spec)
    assert flavors.expected_digest(shuffled.model) == flavors.expected_digest(from_frame.model)  # order-free
    assert from_frame.rows == int(df["label"].notna().sum())


def test_the_inputs_from_arrow_equal_model_input() -> None:
    spec = spec_for(LOGIT)
    df = rows(500)
    order = training.canonical_order(df, spec)
    from_table = training.table_input(pa.Table.from_pandas(df, preserve_index=False), spec, order)
    from_frame = training.model_input(df.iloc[order].reset_index(drop=True), spec)
    pd.testing.assert_frame_equal(from_table, from_frame)
    assert from_table["c"].map(type).isin([str, type(None)]).all()


def test_hist_gradient_boosting_takes_categories_natively() -> None:
    spec = spec_for(HGB)
    trained = training.fit(rows(3000), spec)
    pre, model = trained.model.steps[0][1], trained.model.steps[-1][1]
    assert [name for name, *_ in pre.transformers] == ["numeric", "categorical"]
    assert model.categorical_features == [2] and model.is_categorical_.tolist() == [False, False, True]
    unseen = pd.DataFrame({"x": [0.1, np.nan], "y": [0.0, 1.0], "c": ["never seen", None]})
    proba = trained.model.predict_proba(training.model_input(unseen, spec))
    assert proba.shape == (2, 2) and np.isfinite(proba).all()
    declared = spec_for({**HGB, "params": {"max_iter": 20, "categorical_features": None}})
    one_hot = training.fit(rows(3000), declared)  # a declaration that says how to treat categories is obeyed
    assert "onehot" in str(one_hot.model.steps[0][1].transformers)


def test_scoring_in_slices_gives_the_scores_of_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_for(HGB)
    trained = training.fit(rows(3000), spec)
    X = training.model_input(rows(1000, 9), spec)
    whole = tasks.predict(trained.model, X, spec)
    monkeypatch.setattr(tasks, "PREDICT_ROWS", 64)
    sliced = tasks.predict(trained.model, X, spec)
    assert np.array_equal(whole.score, sliced.score) and np.array_equal(whole.prediction, sliced.prediction)


def test_a_fit_needs_its_feature_columns() -> None:
    spec = spec_for(LOGIT)
    with pytest.raises(UsageError, match="input lacks feature column"):
        training.fit(pa.Table.from_pandas(rows(100).drop(columns=["y"]), preserve_index=False), spec)


@pytest.mark.parametrize("estimator", [LOGIT, HGB], ids=["logistic", "hist_gradient_boosting"])
def test_fitting_step_by_step_is_fitting_the_pipeline(estimator: dict) -> None:
    spec = spec_for(estimator)
    prepared = training.prepare(rows(2000), spec)
    whole = training.pipeline(spec).fit(prepared.inputs, prepared.y)
    prepared.keep_inputs = False
    stepwise = training.fit(prepared, spec)
    assert prepared.inputs is None  # let go of before the estimator's fit
    assert flavors.expected_digest(stepwise.model) == flavors.expected_digest(whole)


def test_a_hist_gradient_boosting_model_with_categories_is_stored_and_loaded(tmp_path: Path) -> None:
    from model_ops.registry import Registry

    spec = spec_for(HGB)
    trained = training.fit(rows(2000), spec)
    assert flavors.untrusted_types(trained.model) == []
    reg = Registry(resolve_root(tmp_path))
    mv = reg.register_model("large", trained.model, signature=trained.signature)
    X = training.model_input(rows(50, 4), spec)
    assert np.array_equal(reg.load_model(mv.ref).predict_proba(X), trained.model.predict_proba(X))


def test_a_large_read_goes_column_by_column_and_notices_a_rewrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from model_ops.data import sources
    from model_ops.errors import ModelOpsError
    from model_ops.vocab import SourceKind

    frame = rows(500).drop(columns=[PARTITION])
    path = tmp_path / "events"
    path.mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path / "part-0.parquet")
    table = sources.SourceTable(resolve_root(path), SourceKind.PARQUET)
    whole = table.read("t", None)
    monkeypatch.setattr(sources, "COLUMNWISE_ROWS", 100)
    columnwise = table.read("t", None)
    pd.testing.assert_frame_equal(columnwise, whole)
    columnwise.loc[columnwise["x"] > 0, "x"] = 0.0  # an ordinary, writable frame
    scans = {"n": 0}
    real = sources.to_pandas

    def rewritten_midway(scanned: pa.Table) -> pd.DataFrame:
        scans["n"] += 1
        if scans["n"] == 2:  # after the first column's scan: the same rows, other values
            pq.write_table(
                pa.Table.from_pandas(frame.assign(x=frame["x"] + 1), preserve_index=False), path / "part-0.parquet"
            )
        return real(scanned)

    monkeypatch.setattr(sources, "to_pandas", rewritten_midway)
    with pytest.raises(ModelOpsError, match="changed while it was being read"):
        table.read("t", None)


def test_class_labels_are_compared_by_value() -> None:
    from model_ops.registry import semver
    from model_ops.registry.gates import breaking_changes

    as_float = {
        "inputs": [{"name": "x", "type": "float"}],
        "outputs": {"task": "binary_classification", "classes": [0.0, 1.0]},
    }
    as_int = {**as_float, "outputs": {**as_float["outputs"], "classes": [0, 1]}}
    other = {**as_float, "outputs": {**as_float["outputs"], "classes": [0, 2]}}
    assert breaking_changes(as_float, as_int) == []
    assert semver.classify({"signature": as_float}, {"signature": as_int})[0] != "major"
    assert breaking_changes(as_float, other) == ["changes the classes from [0.0, 1.0] to [0, 2]"]
    assert semver.classify({"signature": as_float}, {"signature": other})[0] == "major"
