"""Contracts a batch must meet before it may be stored, trained on or scored.

Each check returns a :class:`CheckOutcome` whose message names the columns and rows at fault, because "the
batch is bad" without saying where sends someone on a hunt. A batch that fails any contract is kept out of the
datasets (see the Dagster layer), so training and scoring only ever see batches that passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pandas.api import types as ptypes

from model_ops.specs.schema import ModelSpec

MAX_ROWS_SHOWN = 5


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def _rows(index: pd.Index) -> str:
    shown = ", ".join(str(i) for i in list(index[:MAX_ROWS_SHOWN]))
    more = len(index) - MAX_ROWS_SHOWN
    return f"rows {shown}" + (f" and {more} more" if more > 0 else "")


def _kind_ok(series: pd.Series, kind: str) -> bool:
    if kind == "int":
        return ptypes.is_integer_dtype(series) or (ptypes.is_float_dtype(series) and _whole(series))
    if kind == "float":
        return ptypes.is_numeric_dtype(series) and not ptypes.is_bool_dtype(series)
    if kind == "bool":
        return ptypes.is_bool_dtype(series) or (ptypes.is_numeric_dtype(series) and series.dropna().isin([0, 1]).all())
    if kind == "category":
        return (
            ptypes.is_string_dtype(series)
            or ptypes.is_object_dtype(series)
            or isinstance(series.dtype, pd.CategoricalDtype)
        )
    if kind == "timestamp":
        return ptypes.is_datetime64_any_dtype(series)
    if kind == "string":
        return ptypes.is_string_dtype(series) or ptypes.is_object_dtype(series)
    raise ValueError(kind)


def _whole(series: pd.Series) -> bool:
    values = series.dropna()
    return bool(((values % 1) == 0).all())


def _bad_values(series: pd.Series, kind: str) -> pd.Index:
    """Rows whose values do not parse as ``kind`` (for the message naming them)."""
    present = series.dropna()
    if kind in ("int", "float"):
        parsed = pd.to_numeric(present, errors="coerce")
        return present.index[parsed.isna()]
    if kind == "timestamp":
        parsed = pd.to_datetime(present, errors="coerce", utc=True)
        return present.index[parsed.isna()]
    return present.index[~present.map(lambda v: isinstance(v, str))]


def schema_contract(
    df: pd.DataFrame, columns: dict[str, str], what: str, present: list[str] | None = None
) -> CheckOutcome:
    """Every expected column is present with a compatible type (``present``: also these, of any type)."""
    expected = list(dict.fromkeys([*(present or []), *columns]))
    missing = [c for c in expected if c not in df.columns]
    wrong: list[str] = []
    for col, kind in columns.items():
        if col in df.columns and not _kind_ok(df[col], kind):
            bad = _bad_values(df[col], kind)
            where = f", e.g. {_rows(bad)} (value {df[col].loc[bad[0]]!r})" if len(bad) else ""
            wrong.append(f"{col} is {df[col].dtype}, expected {kind}{where}")
    problems = ([f"missing column(s): {', '.join(missing)}"] if missing else []) + wrong
    if problems:
        return CheckOutcome(
            "schema_contract", False, f"{what}: " + "; ".join(problems), {"missing": missing, "wrong_types": wrong}
        )
    return CheckOutcome(
        "schema_contract",
        True,
        f"{what}: all {len(expected)} expected columns present with the expected types",
        {"columns": len(expected)},
    )


def nulls(df: pd.DataFrame, limits: dict[str, float], what: str) -> CheckOutcome:
    """Null fraction per column at most its limit (0 means no nulls at all)."""
    if df.empty:
        return CheckOutcome("no_unexpected_nulls", True, f"{what}: no rows to check")
    problems, fractions = [], {}
    for col, limit in limits.items():
        if col not in df.columns:
            continue
        isnull = df[col].isna()
        frac = float(isnull.mean())
        fractions[col] = round(frac, 6)
        if frac > limit:
            problems.append(
                f"{col} is null in {int(isnull.sum())} of {len(df)} rows ({frac:.1%} > allowed "
                f"{limit:.1%}): {_rows(df.index[isnull])}"
            )
    if problems:
        return CheckOutcome(
            "no_unexpected_nulls", False, f"{what}: " + "; ".join(problems), {"null_fraction": fractions}
        )
    return CheckOutcome(
        "no_unexpected_nulls", True, f"{what}: null fractions within limits", {"null_fraction": fractions}
    )


def value_ranges(df: pd.DataFrame, spec: ModelSpec, what: str) -> CheckOutcome:
    """Numeric features inside [min, max] and categorical features inside ``allowed`` where the spec says so."""
    problems = []
    for f in spec.features:
        if f.name not in df.columns:
            continue
        col = df[f.name]
        if f.type is None or not f.type.numeric:
            if f.allowed is None:
                continue
            bad = col.notna() & ~col.isin(f.allowed)
            if bad.any():
                values = sorted(map(str, col[bad].unique()))[:5]
                problems.append(f"{f.name} has values outside {f.allowed}: {values} in {_rows(df.index[bad])}")
            continue
        numeric = pd.to_numeric(col, errors="coerce")
        bad = pd.Series(False, index=df.index)
        if f.min is not None:
            bad |= numeric < f.min
        if f.max is not None:
            bad |= numeric > f.max
        if bad.any():
            problems.append(
                f"{f.name} outside [{f.min}, {f.max}] in {int(bad.sum())} rows "
                f"(e.g. {numeric[bad].iloc[0]}): {_rows(df.index[bad])}"
            )
    if problems:
        return CheckOutcome("values_in_range", False, f"{what}: " + "; ".join(problems))
    return CheckOutcome("values_in_range", True, f"{what}: every value inside the spec's ranges")


def unique(df: pd.DataFrame, column: str, what: str) -> CheckOutcome:
    """Each value of ``column`` (the key) appears once."""
    if column not in df.columns or df.empty:
        return CheckOutcome(
            "keys_unique",
            column in df.columns,
            f"{what}: " + ("no rows to check" if column in df.columns else f"no key column {column!r}"),
        )
    dup = df[column].duplicated(keep=False) & df[column].notna()
    if dup.any():
        values = sorted(map(str, df.loc[dup, column].unique()))[:5]
        return CheckOutcome(
            "keys_unique",
            False,
            f"{what}: {int(df.loc[dup, column].nunique())} {column} value(s) "
            f"appear more than once, e.g. {values}: {_rows(df.index[dup])}",
            {"duplicated_rows": int(dup.sum())},
        )
    return CheckOutcome("keys_unique", True, f"{what}: every {column} is unique")


def row_count(df: pd.DataFrame, minimum: int, what: str) -> CheckOutcome:
    n = len(df)
    if n < minimum:
        return CheckOutcome(
            "row_count",
            False,
            f"{what}: {n} rows, the spec requires at least {minimum} per partition (an empty or truncated delivery?)",
            {"rows": n, "minimum": minimum},
        )
    return CheckOutcome("row_count", True, f"{what}: {n} rows (minimum {minimum})", {"rows": n, "minimum": minimum})


def summary(outcomes: list[CheckOutcome]) -> str:
    failed = [o for o in outcomes if not o.passed]
    return "; ".join(o.message for o in failed) if failed else "all checks passed"
