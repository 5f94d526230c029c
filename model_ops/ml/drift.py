"""Drift statistics: is the current window's data distributed like the reference?

The method follows the sample size, because p-values shrink to nothing on large samples (every feature "drifts")
and distances are noisy on small ones:

- reference ≤ 1000 rows: two-sample Kolmogorov-Smirnov (numeric) or chi-square (categorical), drift if p < 0.05;
- reference > 1000 rows: Wasserstein distance normalised by the pooled standard deviation (numeric) or
  Jensen-Shannon distance (categorical, base 2), drift if ≥ 0.1; PSI over reference-decile bins is reported for
  every numeric feature (0.1 warn, 0.25 alert) and is the verdict for no method;
- a current window with fewer than ``min_rows`` values gets the verdict "insufficient data", never "drift" on its
  values; but a feature whose share of missing values moved by ``NULL_SHARE_JUMP`` or more over at least
  ``min_rows`` rows has drifted (method ``null_share``): a column that went empty is the plainest drift of all;
- dataset drift when at least half of the features with enough data drift.

Numeric features with at most five distinct reference values are treated as categorical.

Symmetry: KS, chi-square, JS and the pooled-normalised Wasserstein give the same number when reference and current
swap. PSI does not, because its bins are the reference's deciles; it is reported, not used for verdicts.

Everything is computed from a :class:`Profile`: per numeric feature a fine uniform histogram over the reference's
central range plus exact tail sums, per categorical feature the counts. A profile is built in one bounded-memory
pass over Arrow record batches (after a sampled pass for the bin edges) and stored with a model version, so
monitoring never rereads the training data; the current window is profiled on the reference's bins the same way.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from model_ops.vocab import DriftStatus

SMALL_REFERENCE = 1000
P_VALUE = 0.05
DISTANCE = 0.1
PSI_WARN, PSI_ALERT = 0.1, 0.25
DRIFT_SHARE = 0.5
MIN_ROWS = 500
NULL_SHARE_JUMP = 0.1  # a feature whose share of missing values moves this much has drifted, whatever its values
FINE_BINS = 2048
TAIL_QUANTILE = 0.001
SAMPLE_ROWS = 50_000
WHOLE_COLUMN_ROWS = 16_000_000  # 128 MB of float64: above this a column is streamed
CATEGORICAL_MAX_UNIQUE = 5
EPS = 1e-4
PROFILE_VERSION = 1


@dataclass
class NumericProfile:
    """Counts on a uniform grid over the reference's [0.1 %, 99.9 %] range, tails kept exactly as sums."""

    lo: float
    hi: float
    counts: list[int]
    n: int = 0
    nulls: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    below: int = 0
    below_sum: float = 0.0  # Σ (lo - x) over x < lo
    above: int = 0
    above_sum: float = 0.0  # Σ (x - hi) over x > hi
    deciles: list[int] = field(default_factory=list)  # indices into the fine grid where reference deciles fall
    values: list[float] | None = None  # the sorted reference values themselves, kept when there are few (KS)
    ks_counts: list[list[int]] | None = None  # current only: counts below / at-or-below each reference value

    def add(self, x: np.ndarray) -> None:
        if np.isnan(x).any():
            x = x[~np.isnan(x)]
        if not len(x):
            return
        self.n += len(x)
        self.total += float(x.sum())
        self.total_sq += float(np.dot(x, x))
        low, high = x < self.lo, x > self.hi
        n_low, n_high = int(np.count_nonzero(low)), int(np.count_nonzero(high))
        idx = ((x - self.lo) * (FINE_BINS / (self.hi - self.lo))).astype(np.intp)
        np.clip(idx, 0, FINE_BINS - 1, out=idx)
        counts = np.bincount(idx, minlength=FINE_BINS)
        counts[0] -= n_low  # the tails were clipped into the outer bins; they are kept as sums instead
        counts[-1] -= n_high
        self.counts = np.asarray(self.counts, dtype=np.int64) + counts
        if n_low:
            self.below += n_low
            self.below_sum += float((self.lo - x[low]).sum())
        if n_high:
            self.above += n_high
            self.above_sum += float((x[high] - self.hi).sum())

    @property
    def std(self) -> float:
        if self.n < 2:
            return 0.0
        mean = self.total / self.n
        return math.sqrt(max(self.total_sq / self.n - mean * mean, 0.0))

    def empty_like(self) -> NumericProfile:
        return NumericProfile(self.lo, self.hi, [0] * FINE_BINS, deciles=self.deciles)


@dataclass
class CategoricalProfile:
    counts: dict[str, int] = field(default_factory=dict)
    nulls: int = 0

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def add(self, values: dict[str, int]) -> None:
        for k, v in values.items():
            self.counts[k] = self.counts.get(k, 0) + int(v)

    def empty_like(self) -> CategoricalProfile:
        return CategoricalProfile()


@dataclass
class Profile:
    """The distribution of every column of a dataset, enough to judge drift without the data."""

    rows: int
    columns: dict[str, NumericProfile | CategoricalProfile]

    def to_json(self) -> str:
        def plain(p: NumericProfile | CategoricalProfile) -> dict[str, Any]:
            d = asdict(p)
            if isinstance(p, NumericProfile):
                d["counts"] = np.asarray(p.counts).tolist()
            return {"kind": "numeric" if isinstance(p, NumericProfile) else "categorical", **d}

        return json.dumps(
            {
                "version": PROFILE_VERSION,
                "rows": self.rows,
                "columns": {name: plain(p) for name, p in self.columns.items()},
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Profile:
        data = json.loads(text)
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"drift profile version {data.get('version')} is not {PROFILE_VERSION}")
        columns: dict[str, NumericProfile | CategoricalProfile] = {}
        for name, p in data["columns"].items():
            kind = p.pop("kind")
            columns[name] = NumericProfile(**p) if kind == "numeric" else CategoricalProfile(**p)
        return cls(data["rows"], columns)


@dataclass
class FeatureDrift:
    feature: str
    kind: str
    method: str
    statistic: float | None
    threshold: float
    drift: bool
    n_reference: int
    n_current: int
    status: DriftStatus
    psi: float | None = None
    p_value: float | None = None
    # the share of rows without a value, in the reference and in the current window: missingness drifts too
    null_share_reference: float | None = None
    null_share_current: float | None = None


@dataclass
class DriftReport:
    features: list[FeatureDrift]
    drift_share: float | None
    dataset_drift: bool
    status: DriftStatus
    min_rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": [asdict(f) for f in self.features],
            "drift_share": self.drift_share,
            "dataset_drift": self.dataset_drift,
            "status": self.status,
            "min_rows": self.min_rows,
        }

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.drift]


# ---------------------------------------------------------------------------------------------------- profiling


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _numbers(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Float64 values, nulls as NaN; zero-copy (read-only) for float64 columns without nulls.

    Read straight from the Arrow buffers: ``Array.to_numpy`` imports pandas on first use, a quarter of a second
    that a drift check on a small window would otherwise spend before reading anything.
    """
    if not pa.types.is_float64(col.type):
        col = col.cast(pa.float64())
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n, offset = len(col), col.offset
    if n == 0:
        return np.empty(0)
    validity, data = col.buffers()[:2]
    values = np.frombuffer(data, dtype=np.float64, count=offset + n)[offset:]
    if col.null_count:
        valid = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")[offset : offset + n]
        values = np.where(valid.astype(bool), values, np.nan)
    return values


def _counts(col: pa.ChunkedArray | pa.Array) -> tuple[dict[str, int], int]:
    """Category counts; whole-valued floats count as integers so 3.0 and 3 are one category."""
    if pa.types.is_floating(col.type) and _whole(col):
        col = col.cast(pa.int64())
    col = col.cast(pa.string()) if not pa.types.is_string(col.type) else col
    vc = col.value_counts()
    out: dict[str, int] = {}
    nulls = 0
    for value, count in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
        if value is None:
            nulls += count
        else:
            out[value] = count
    return out, nulls


def _each(fn: Any, columns: list[str]) -> list[Any]:
    """``fn`` over the columns on a few threads: Arrow and numpy release the GIL for the heavy parts."""
    workers = min(len(columns), os.cpu_count() or 1, 4)
    if workers <= 1:
        return [fn(c) for c in columns]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, columns))


def _column_chunks(source: _BatchSource, column: str) -> Iterator[pa.Array]:
    for batch in source.batches([column]):
        yield batch.column(0)


def _numeric_column(source: _BatchSource, column: str, rows: int) -> tuple[np.ndarray | None, np.ndarray]:
    """(the whole column, when small enough to hold) and a strided sample of at most ``SAMPLE_ROWS`` values."""
    if rows <= WHOLE_COLUMN_ROWS:
        x = np.concatenate([_numbers(c) for c in _column_chunks(source, column)] or [np.empty(0)])
        x = x[~np.isnan(x)] if np.isnan(x).any() else x
        return x, x[:: max(1, math.ceil(len(x) / SAMPLE_ROWS))]
    stride = math.ceil(rows / SAMPLE_ROWS)
    parts, offset = [], 0
    for chunk in _column_chunks(source, column):
        x = _numbers(chunk)[(-offset) % stride :: stride]
        parts.append(x[~np.isnan(x)])
        offset += len(chunk)
    return None, np.concatenate(parts) if parts else np.empty(0)


def _quantiles(ordered: np.ndarray, qs: Any) -> np.ndarray:
    """``np.quantile`` (linear method) of an already sorted sample, without sorting it again."""
    h = (len(ordered) - 1) * np.asarray(qs, dtype=np.float64)
    lo = np.floor(h).astype(np.intp)
    hi = np.minimum(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def _grid(ordered: np.ndarray) -> NumericProfile:
    """The fine grid of a column from a sorted sample of it."""
    if not len(ordered):
        return NumericProfile(0.0, 1.0, [0] * FINE_BINS)
    lo, hi = (float(v) for v in _quantiles(ordered, [TAIL_QUANTILE, 1 - TAIL_QUANTILE]))
    if hi <= lo:
        lo, hi = float(ordered[0]), float(ordered[-1])
    if hi <= lo:
        hi = lo + 1.0
    width = (hi - lo) / FINE_BINS
    deciles = _quantiles(ordered, np.linspace(0.1, 0.9, 9))
    idx = sorted({int(np.clip(round((d - lo) / width), 0, FINE_BINS)) for d in deciles})
    return NumericProfile(lo, hi, [0] * FINE_BINS, deciles=idx)


def _fill(
    p: NumericProfile | CategoricalProfile, source: _BatchSource, column: str, whole: np.ndarray | None = None
) -> None:
    if isinstance(p, NumericProfile) and whole is not None:
        p.add(whole)
        return
    for chunk in _column_chunks(source, column):
        if isinstance(p, NumericProfile):
            p.nulls += chunk.null_count
            p.add(_numbers(chunk))
        else:
            counts, nulls = _counts(chunk)
            p.add(counts)
            p.nulls += nulls


def profile(batches: Any, *, columns: list[str] | None = None, rows: int | None = None) -> Profile:
    """Profile a dataset given as a ``pyarrow.dataset.Dataset``, a Table, or a factory of record batches.

    One column at a time: a column of up to ``WHOLE_COLUMN_ROWS`` values is read once and held; a longer one is
    streamed twice (a strided sample for the bins, then the counts), so memory stays bounded whatever the size.
    """
    source = _BatchSource(batches, columns)
    names, types = source.schema_columns()
    n = source.count_rows(rows)

    def one(c: str) -> NumericProfile | CategoricalProfile:
        if _is_numeric(types[c]):
            whole, sample = _numeric_column(source, c, n)
            if np.isinf(sample).any() or (whole is not None and np.isinf(whole).any()):
                raise ValueError(
                    f"column {c!r} holds infinite values, which drift cannot put in bins: replace them with nulls "
                    "upstream, or leave the column out of drift (monitoring.drift_exclude)"
                )
            ordered = np.sort(sample)
            distinct = int(np.count_nonzero(np.diff(ordered))) + 1 if len(ordered) else 0
            if distinct > CATEGORICAL_MAX_UNIQUE:
                p = _grid(ordered)
                if whole is not None:
                    p.nulls = n - len(whole)
                _fill(p, source, c, whole)
                if whole is not None and n <= SMALL_REFERENCE:
                    p.values = sorted(float(v) for v in whole)
                return p
        cat = CategoricalProfile()
        _fill(cat, source, c)
        return cat

    cols = dict(zip(names, _each(one, names)))
    return Profile(n, cols)


def profile_like(reference: Profile, batches: Any) -> Profile:
    """Profile the current window on the reference's bins and categories (one pass, bounded memory)."""
    source = _BatchSource(batches, list(reference.columns))
    source.schema_columns()
    cols = {c: p.empty_like() for c, p in reference.columns.items()}
    list(_each(lambda c: _fill(cols[c], source, c), list(cols)))
    if any(isinstance(p, NumericProfile) and p.values is not None for p in reference.columns.values()):
        _keep_values_for_ks(reference, source, cols)
    return Profile(source.count_rows(None), cols)


def _keep_values_for_ks(reference: Profile, source: _BatchSource, cols: dict[str, Any]) -> None:
    """KS needs the current sample's counts at each reference value: bounded by the reference size (≤ 1000)."""
    for c, ref in reference.columns.items():
        if isinstance(ref, NumericProfile) and ref.values is not None:
            edges = np.unique(np.asarray(ref.values))
            # x < edge_j  <=>  searchsorted(edges, x, "right") <= j;  x <= edge_j  <=>  searchsorted(..., "left") <= j
            below = np.zeros(len(edges) + 1, dtype=np.int64)
            at_or_below = np.zeros(len(edges) + 1, dtype=np.int64)
            for chunk in _column_chunks(source, c):
                x = _numbers(chunk)
                x = x[~np.isnan(x)]
                below += np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1)
                at_or_below += np.bincount(np.searchsorted(edges, x, side="left"), minlength=len(edges) + 1)
            cols[c].ks_counts = [np.cumsum(below)[:-1].tolist(), np.cumsum(at_or_below)[:-1].tolist()]


def _whole(col: pa.ChunkedArray | pa.Array) -> bool:
    x = _numbers(col)
    x = x[~np.isnan(x)]
    return bool(np.all(x == np.round(x)))


class _BatchSource:
    """Record batches from a dataset, a table or a callable returning an iterator, re-readable for two passes."""

    def __init__(self, data: Any, columns: list[str] | None) -> None:
        self.data = data
        self.columns = columns

    def schema_columns(self) -> tuple[list[str], dict[str, pa.DataType]]:
        schema = self.data.schema if hasattr(self.data, "schema") else next(iter(self.batches())).schema
        names = self.columns or [f.name for f in schema]
        missing = [c for c in names if c not in schema.names]
        if missing:
            raise ValueError(f"no column(s) {', '.join(missing)} in the data")
        return names, {c: schema.field(c).type for c in names}

    def count_rows(self, rows: int | None) -> int:
        if rows is not None:
            return rows
        if isinstance(self.data, pa.Table):
            return self.data.num_rows
        if hasattr(self.data, "count_rows"):
            return int(self.data.count_rows())
        return sum(b.num_rows for b in self.batches())

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        columns = columns or self.columns
        if isinstance(self.data, pa.Table):
            return iter(self.data.select(columns).to_batches() if columns else self.data.to_batches())
        if hasattr(self.data, "to_batches"):
            return iter(self.data.to_batches(columns=columns))
        return (b.select(columns) if columns else b for b in self.data())


# ---------------------------------------------------------------------------------------------------- statistics


def psi(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Population stability index of two histograms on the same bins (empty bins floored at 1e-4)."""
    p = np.clip(p_counts / max(p_counts.sum(), 1), EPS, None)
    q = np.clip(q_counts / max(q_counts.sum(), 1), EPS, None)
    return float(np.sum((q - p) * np.log(q / p)))


def jensen_shannon(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two count vectors over the same categories."""
    p = p_counts / max(p_counts.sum(), 1)
    q = q_counts / max(q_counts.sum(), 1)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return math.sqrt(max((kl(p) + kl(q)) / 2, 0.0))


def _coarse(p: NumericProfile) -> np.ndarray:
    """Fine counts folded into the reference-decile bins, tails included in the outer bins."""
    fine = np.asarray(p.counts, dtype=np.int64)
    edges = [0, *p.deciles, FINE_BINS]
    out = np.array([fine[a:b].sum() for a, b in zip(edges[:-1], edges[1:])], dtype=np.int64)
    out[0] += p.below
    out[-1] += p.above
    return out


def wasserstein_normed(ref: NumericProfile, cur: NumericProfile) -> float:
    """W1 between the two distributions from their shared grid, over the pooled standard deviation.

    Inside the grid the CDFs are compared at every fine edge; in the tails only the mean excess beyond the grid
    is known, so the tail contribution is |E_ref[excess] - E_cur[excess]| (exact when one tail dominates).
    """
    width = (ref.hi - ref.lo) / FINE_BINS
    rc = np.asarray(ref.counts, dtype=np.float64)
    cc = np.asarray(cur.counts, dtype=np.float64)
    f_ref = (ref.below + np.cumsum(rc)) / max(ref.n, 1)
    f_cur = (cur.below + np.cumsum(cc)) / max(cur.n, 1)
    inside = float(np.sum(np.abs(f_ref - f_cur)) * width)
    tails = abs(ref.below_sum / max(ref.n, 1) - cur.below_sum / max(cur.n, 1)) + abs(
        ref.above_sum / max(ref.n, 1) - cur.above_sum / max(cur.n, 1)
    )
    pooled = math.sqrt((ref.std**2 + cur.std**2) / 2)
    return (inside + tails) / max(pooled, 1e-3)


def ks_from_counts(
    reference: list[float], cur_below: list[int], cur_at_or_below: list[int], n_cur: int
) -> tuple[float, float]:
    """Exact two-sample KS statistic from the reference values and the current counts at each distinct one;
    p-value as scipy's asymptotic two-sample formula."""
    ref = np.sort(np.asarray(reference))
    values = np.unique(ref)  # the current counts are given at each distinct reference value
    n_ref = len(ref)
    f_ref_right = np.searchsorted(ref, values, side="right") / n_ref  # F_ref at each value
    f_ref_left = np.searchsorted(ref, values, side="left") / n_ref  # F_ref just before it
    f_cur_right = np.asarray(cur_at_or_below) / n_cur
    f_cur_left = np.asarray(cur_below) / n_cur
    # Between reference values F_ref is flat and F_cur only rises, so the supremum is at a reference value,
    # just before one, or past the last one (where F_ref = 1 and F_cur <= 1).
    d = max(
        float(np.max(np.abs(f_ref_right - f_cur_right))),
        float(np.max(np.abs(f_ref_left - f_cur_left))),
        1.0 - f_cur_right[-1] if len(f_cur_right) else 0.0,
        f_cur_left[0] if len(f_cur_left) else 0.0,
    )
    en = n_ref * n_cur / (n_ref + n_cur)
    from scipy.stats import kstwo  # imported here: scipy.stats takes most of a second to import

    p = float(kstwo.sf(d, np.round(en))) if en >= 1 else 1.0
    return d, min(max(p, 0.0), 1.0)


def compare(
    reference: Profile,
    current: Profile,
    *,
    min_rows: int = MIN_ROWS,
    threshold: float | None = None,
    p_value: float = P_VALUE,
    drift_share: float = DRIFT_SHARE,
) -> DriftReport:
    """Per-feature verdicts and the dataset verdict of ``current`` against ``reference``."""
    small = reference.rows <= SMALL_REFERENCE
    out: list[FeatureDrift] = []
    for name, ref in reference.columns.items():
        cur = current.columns[name]
        n_ref, n_cur = ref.n, cur.n
        numeric = isinstance(ref, NumericProfile)
        kind = "numeric" if numeric else "categorical"
        if small:
            method, limit = ("ks" if numeric else "chi_square"), p_value
        else:
            method, limit = ("wasserstein_normed" if numeric else "jensen_shannon"), threshold or DISTANCE
        rows_ref, rows_cur = n_ref + ref.nulls, n_cur + cur.nulls
        nulls_ref = round(ref.nulls / rows_ref, 6) if rows_ref else None
        nulls_cur = round(cur.nulls / rows_cur, 6) if rows_cur else None
        shares = {"null_share_reference": nulls_ref, "null_share_current": nulls_cur}
        if (
            nulls_ref is not None
            and nulls_cur is not None
            and rows_cur >= min_rows
            and abs(nulls_cur - nulls_ref) >= NULL_SHARE_JUMP
        ):
            jump = round(abs(nulls_cur - nulls_ref), 6)
            out.append(
                FeatureDrift(
                    name, kind, "null_share", jump, NULL_SHARE_JUMP, True, n_ref, n_cur, DriftStatus.DRIFT, **shares
                )
            )
            continue
        if n_cur < min_rows or n_ref == 0:
            out.append(
                FeatureDrift(
                    name, kind, method, None, limit, False, n_ref, n_cur, DriftStatus.INSUFFICIENT_DATA, **shares
                )
            )
            continue
        stat, p, psi_value = None, None, None
        if numeric:
            assert isinstance(cur, NumericProfile)
            psi_value = psi(_coarse(ref), _coarse(cur))
            if small and ref.values is not None and cur.ks_counts is not None:
                stat, p = ks_from_counts(ref.values, cur.ks_counts[0], cur.ks_counts[1], n_cur)
            else:
                if small:  # a reference without its values (profiled elsewhere): fall back to the distance
                    method, limit = "wasserstein_normed", threshold or DISTANCE
                stat = wasserstein_normed(ref, cur)
        else:
            assert isinstance(ref, CategoricalProfile) and isinstance(cur, CategoricalProfile)
            cats = sorted(set(ref.counts) | set(cur.counts))
            rc = np.array([ref.counts.get(k, 0) for k in cats], dtype=np.float64)
            cc = np.array([cur.counts.get(k, 0) for k in cats], dtype=np.float64)
            if small:
                keep = (rc + cc) > 0
                if keep.sum() < 2:
                    stat, p = 0.0, 1.0
                else:
                    from scipy.stats import chi2_contingency

                    stat, p, _, _ = chi2_contingency(np.vstack([rc[keep], cc[keep]]))
                    stat, p = float(stat), float(p)
            else:
                stat = jensen_shannon(rc, cc)
        drifted = (p < limit) if method in ("ks", "chi_square") else (stat >= limit)
        out.append(
            FeatureDrift(
                name,
                kind,
                method,
                round(float(stat), 6),
                limit,
                bool(drifted),
                n_ref,
                n_cur,
                DriftStatus.DRIFT if drifted else DriftStatus.NO_DRIFT,
                None if psi_value is None else round(psi_value, 6),
                None if p is None else float(p),
                **shares,
            )
        )
    return dataset_verdict(out, min_rows=min_rows, drift_share=drift_share)


def dataset_verdict(
    features: list[FeatureDrift], *, min_rows: int = MIN_ROWS, drift_share: float = DRIFT_SHARE
) -> DriftReport:
    """The dataset verdict over ``features``: drift when at least ``drift_share`` of the judged ones drift."""
    judged = [f for f in features if f.status != DriftStatus.INSUFFICIENT_DATA]
    if not judged:
        return DriftReport(features, None, False, DriftStatus.INSUFFICIENT_DATA, min_rows)
    share = sum(f.drift for f in judged) / len(judged)
    dataset = share >= drift_share
    return DriftReport(
        features, round(share, 6), dataset, DriftStatus.DRIFT if dataset else DriftStatus.NO_DRIFT, min_rows
    )
