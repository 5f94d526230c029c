"""The registry both sides of bench_search.py hold: MODELS models x PER_MODEL versions, with the tags, metrics,
run ids, stages and aliases the queries ask about. Standard library only: the MLflow peer script imports it too
(run with the peers' Python), so both registries are built from the same function."""

from __future__ import annotations

TEAMS = [f"team{i:02d}" for i in range(19)] + ["fraud"]
OWNERS = 50
PRODUCTION_EVERY = 10  # every 10th model has version PRODUCTION_VERSION in production (alias champion follows it)
PRODUCTION_VERSION = 40


def model_name(i: int) -> str:
    return f"m{i:04d}"


def run_id(i: int) -> str:
    return f"{(i * 2654435761) % (1 << 32):08x}{i:024x}"


def tags(i: int, v: int) -> dict[str, str]:
    return {"team": TEAMS[i % len(TEAMS)], "owner": f"user{(i * 7 + v) % OWNERS}"}


def roc_auc(i: int, v: int) -> float:
    return round(0.5 + ((i * 31 + v * 17) % 500) / 1000, 4)


def in_production(i: int, v: int) -> bool:
    return i % PRODUCTION_EVERY == 0 and v == PRODUCTION_VERSION


def queries(models: int) -> list[tuple[str, str, str | None]]:
    """(label, model_ops query, MLflow filter string or None where MLflow has no equivalent)."""
    probe = model_name(min(42, models - 1))
    return [
        ("a tag (1 in 20 versions)", "tags.team = fraud", "tags.team = 'fraud'"),
        ("one model's versions", f"name = {probe}", f"name = '{probe}'"),
        ("name glob (5% of models)", 'name like "m00*"', "name LIKE 'm00%'"),
        ("model and tag", f"name = {probe} and tags.owner = user3", f"name = '{probe}' and tags.owner = 'user3'"),
        ("run id", f"run_id = {run_id(min(7, models - 1))}", f"run_id = '{run_id(min(7, models - 1))}'"),
        ("stage, metric and tag", "stage = production and metrics.roc_auc > 0.7 and tags.team = fraud", None),
        ("metric range, ordered by it", "metrics.roc_auc >= 0.99", None),
    ]
