"""Drift statistics against scipy on known distributions, the verdict rules, and `model-ops drift`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake
from scipy import stats
from scipy.spatial.distance import jensenshannon

from model_ops.cli import main
from model_ops.ml import drift
from model_ops.vocab import DriftStatus

RNG = np.random.default_rng(20130101)


def run(ref: dict, cur: dict, **kw) -> drift.DriftReport:  # type: ignore[no-untyped-def]
    profile = drift.profile(pa.table(ref))
    return drift.compare(profile, drift.profile_like(profile, pa.table(cur)), **kw)


def test_ks_matches_scipy_for_small_references() -> None:
    ref, cur = RNG.standard_normal(800), RNG.standard_normal(5000) + 0.12
    f = run({"x": ref}, {"x": cur}).features[0]
    expected = stats.ks_2samp(ref, cur, method="asymp")
    assert f.method == "ks" and f.statistic == pytest.approx(expected.statistic, abs=1e-6)
    assert f.p_value == pytest.approx(expected.pvalue, rel=1e-6)
    assert f.drift == (expected.pvalue < 0.05)


def test_ks_with_ties_matches_scipy() -> None:
    ref, cur = RNG.integers(0, 40, 600).astype(float), RNG.integers(3, 43, 2000).astype(float)
    f = run({"x": ref}, {"x": cur}).features[0]
    assert f.statistic == pytest.approx(stats.ks_2samp(ref, cur).statistic, abs=1e-9)


def test_chi_square_matches_scipy_for_small_references() -> None:
    ref = RNG.choice(["a", "b", "c"], 700)
    cur = RNG.choice(["a", "b", "c", "d"], 900, p=[0.4, 0.3, 0.2, 0.1])
    f = run({"c": ref}, {"c": cur}).features[0]
    table = np.array([[np.sum(ref == k) for k in "abcd"], [np.sum(cur == k) for k in "abcd"]])
    chi2, p, _, _ = stats.chi2_contingency(table)
    assert f.method == "chi_square" and f.statistic == pytest.approx(chi2) and f.p_value == pytest.approx(p)
    assert f.drift


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (0.3, 1.0), (0.0, 1.5), (1.0, 0.5)])
def test_wasserstein_matches_scipy_for_large_references(shift: float, scale: float) -> None:
    ref, cur = RNG.standard_normal(50_000), RNG.standard_normal(40_000) * scale + shift
    f = run({"x": ref}, {"x": cur}).features[0]
    expected = stats.wasserstein_distance(ref, cur) / np.sqrt((ref.var() + cur.var()) / 2)
    assert f.method == "wasserstein_normed" and f.statistic == pytest.approx(expected, abs=2e-3)
    assert f.drift == (expected >= 0.1)


def test_wasserstein_counts_values_outside_the_reference_range() -> None:
    ref, cur = RNG.uniform(0, 1, 20_000), RNG.uniform(0, 1, 20_000)
    cur[:2000] = 50.0  # 10 % far beyond anything the reference saw
    f = run({"x": ref}, {"x": cur}).features[0]
    expected = stats.wasserstein_distance(ref, cur) / np.sqrt((ref.var() + cur.var()) / 2)
    assert f.statistic == pytest.approx(expected, rel=0.01) and f.drift


def test_jensen_shannon_matches_scipy_and_new_categories_count() -> None:
    ref = RNG.choice(["EWR", "JFK", "LGA"], 30_000, p=[0.4, 0.3, 0.3])
    cur = RNG.choice(["EWR", "JFK", "LGA", "SFO"], 30_000, p=[0.3, 0.3, 0.3, 0.1])
    f = run({"origin": ref}, {"origin": cur}).features[0]
    keys = ["EWR", "JFK", "LGA", "SFO"]
    p = np.array([np.mean(ref == k) for k in keys])
    q = np.array([np.mean(cur == k) for k in keys])
    assert f.method == "jensen_shannon" and f.statistic == pytest.approx(jensenshannon(p, q, base=2), abs=1e-6)


def test_psi_is_reported_on_reference_deciles() -> None:
    ref, cur = RNG.standard_normal(100_000), RNG.standard_normal(100_000) + 0.5
    f = run({"x": ref}, {"x": cur}).features[0]
    edges = np.quantile(ref, np.linspace(0.1, 0.9, 9))
    p = np.bincount(np.searchsorted(edges, ref), minlength=10) / len(ref)
    q = np.bincount(np.searchsorted(edges, cur), minlength=10) / len(cur)
    assert f.psi == pytest.approx(float(np.sum((q - p) * np.log(q / p))), rel=0.02)


def test_distances_are_symmetric() -> None:
    a, b = RNG.standard_normal(30_000), RNG.standard_normal(30_000) * 1.3 + 0.2
    ca, cb = RNG.choice(list("xyz"), 30_000), RNG.choice(list("xyz"), 30_000, p=[0.5, 0.3, 0.2])
    ab = run({"n": a, "c": ca}, {"n": b, "c": cb}).features
    ba = run({"n": b, "c": cb}, {"n": a, "c": ca}).features
    for f, g in zip(ab, ba):
        assert f.statistic == pytest.approx(g.statistic, abs=3e-3), f.feature


def test_no_data_or_too_little_data_is_never_drift() -> None:
    ref = {"x": RNG.standard_normal(5000), "c": RNG.choice(list("ab"), 5000)}
    few = run(ref, {"x": RNG.standard_normal(100) + 5, "c": np.array(["b"] * 100)}, min_rows=500)
    assert few.status == "insufficient_data" and not few.dataset_drift and few.drift_share is None
    assert all(f.status == "insufficient_data" and not f.drift for f in few.features)
    empty = run(ref, {"x": np.array([], dtype=float), "c": np.array([], dtype=str)})
    assert empty.status == "insufficient_data" and not empty.dataset_drift


def test_dataset_drift_needs_half_the_features() -> None:
    ref = {f"f{i}": RNG.standard_normal(20_000) for i in range(4)}
    cur = {f"f{i}": RNG.standard_normal(20_000) + (0.5 if i < 1 else 0) for i in range(4)}
    report = run(ref, cur)
    assert report.drifted == ["f0"] and report.drift_share == 0.25 and not report.dataset_drift
    cur["f1"] = cur["f1"] + 0.5
    assert run(ref, cur).dataset_drift


def test_streaming_profile_equals_the_whole_column(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = {"x": RNG.standard_normal(60_000), "c": RNG.choice(list("abc"), 60_000)}
    table = pa.table(ref)
    monkeypatch.setattr(drift, "SAMPLE_ROWS", 60_000)  # the same sample either way, hence the same bins
    whole = drift.profile(table)
    monkeypatch.setattr(drift, "WHOLE_COLUMN_ROWS", 1000)
    streamed = drift.profile(lambda: iter(table.to_batches(max_chunksize=4096)), rows=60_000)
    assert np.array_equal(np.asarray(whole.columns["x"].counts), np.asarray(streamed.columns["x"].counts))
    assert whole.columns["c"].counts == streamed.columns["c"].counts
    assert drift.Profile.from_json(whole.to_json()).to_json() == whole.to_json()


def test_low_cardinality_numbers_are_categories() -> None:
    report = run({"weekday": RNG.integers(0, 5, 5000).astype(float)}, {"weekday": RNG.integers(0, 5, 5000)})
    assert report.features[0].kind == "categorical" and not report.features[0].drift


def _parquet(path: Path, data: dict) -> str:
    pq.write_table(pa.table(data), path)
    return str(path)


def test_cli_json_contract_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = {"a": RNG.standard_normal(5000), "b": RNG.standard_normal(5000), "k": RNG.choice(list("xy"), 5000)}
    same = {"a": RNG.standard_normal(5000), "b": RNG.standard_normal(5000), "k": RNG.choice(list("xy"), 5000)}
    moved = {**same, "a": same["a"] + 1.0, "b": same["b"] * 3}
    r = _parquet(tmp_path / "ref.parquet", ref)
    write_deltalake(str(tmp_path / "delta"), pa.table(same))
    write_deltalake(str(tmp_path / "delta"), pa.table(moved), mode="overwrite")

    assert main(["drift", "--reference", r, "--current", str(tmp_path / "delta"), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) >= {"features", "drift_share", "dataset_drift"} and doc["dataset_drift"] is True
    assert set(doc["features"][0]) >= {
        "feature",
        "kind",
        "method",
        "statistic",
        "threshold",
        "drift",
        "n_reference",
        "n_current",
    }
    assert [f["feature"] for f in doc["features"] if f["drift"]] == ["a", "b"]

    assert main(["drift", "--reference", r, "--current", str(tmp_path / "delta") + "@0"]) == 0
    out = capsys.readouterr().out
    assert "0 of 3 features drift (share 0.00); dataset drift: no" in out and "FEATURE" in out

    assert main(["drift", "--reference", r, "--current", str(tmp_path / "nope.parquet")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["drift", "--reference", r, "--current", r, "--columns", "a,zz"]) == 2
    assert "no column(s) zz" in capsys.readouterr().err
    assert main(["drift", "--reference", r, "--current", str(tmp_path / "delta") + "@7"]) == 2


def test_a_column_that_goes_missing_has_drifted() -> None:
    rng = np.random.default_rng(0)
    reference = drift.profile(pa.table({"x": rng.normal(size=3000), "y": rng.normal(size=3000)}))
    empty = pa.table({"x": pa.array([None] * 2000, pa.float64()), "y": rng.normal(size=2000)})
    mostly = rng.normal(size=2000)
    mostly[:1900] = np.nan
    sparse = pa.table({"x": pa.array(mostly, from_pandas=True), "y": rng.normal(size=2000)})
    for window, share in ((empty, 1.0), (sparse, 0.95)):
        x = drift.compare(reference, drift.profile_like(reference, window)).features[0]
        assert (x.method, x.status, x.drift) == ("null_share", DriftStatus.DRIFT, True)
        assert (x.null_share_reference, x.null_share_current, x.statistic) == (0.0, share, share)
    same = drift.compare(reference, drift.profile_like(reference, sparse.slice(0, 100))).features[0]
    assert same.status == DriftStatus.INSUFFICIENT_DATA  # 100 rows: too few to call even missingness
    steady = drift.compare(
        reference, drift.profile_like(reference, pa.table({"x": rng.normal(size=2000), "y": rng.normal(size=2000)}))
    )
    assert steady.features[0].null_share_current == 0.0 and steady.features[0].method != "null_share"


def test_infinite_reference_values_are_refused_by_name() -> None:
    values = pa.table({"x": [np.inf, -np.inf, 1.0, 2.0, 3.0, 4.0, 5.0] * 500})
    with pytest.raises(ValueError, match="column 'x' holds infinite values"):
        drift.profile(values)
