"""Sticky traffic routing: the same key always lands in the same arm for a given canary weight.

A key's bucket is a hash of the key (not a random draw), so a flight scored twice is served by the same model,
and raising the canary weight only moves keys from production to canary, never back and forth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from model_ops.vocab import Arm

if TYPE_CHECKING:
    from model_ops.ops.deployment import Manifest
    from model_ops.ops.experiments import Experiment


def buckets(keys: pd.Series, salt: str = "") -> np.ndarray:
    """A uniform number in [0, 1) per key, identical on every call and machine."""

    def one(k: str) -> float:
        return int.from_bytes(hashlib.blake2b(f"{salt}{k}".encode(), digest_size=8).digest(), "big") / 2**64

    return np.fromiter((one(k) for k in keys.astype(str)), dtype="float64", count=len(keys))


def assign_arms(keys: pd.Series, canary_weight: float, salt: str = "") -> np.ndarray:
    """``canary`` for keys whose bucket is below the weight, ``production`` for the rest."""
    if not 0.0 <= canary_weight <= 1.0:
        raise ValueError(f"canary weight must be within [0, 1], got {canary_weight}")
    return np.where(buckets(keys, salt) < canary_weight, Arm.CANARY.value, Arm.PRODUCTION.value)


def assign_weighted(keys: pd.Series, arms: Sequence[str], weights: Sequence[float], salt: str = "") -> np.ndarray:
    """Each key's arm among ``arms`` at fixed ``weights`` (normalised to sum to 1), by the same bucket as
    :func:`assign_arms`: the arm whose cumulative-weight interval holds the key's bucket. Two arms
    ``[canary, production]`` at ``[w, 1 - w]`` give exactly ``assign_arms(keys, w)``, so an A/B experiment and the
    canary route a key the same way on the server and in the batch path."""
    w = np.asarray(weights, dtype="float64")
    if len(arms) != len(w) or len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"need one positive weight per arm, got arms {list(arms)} and weights {list(weights)}")
    edges = np.cumsum(w) / w.sum()
    index = np.minimum(np.searchsorted(edges, buckets(keys, salt), side="right"), len(w) - 1)
    return np.asarray(list(arms), dtype=object)[index]


def plan(
    keys: pd.Series | np.ndarray, manifest: Manifest, experiment: Experiment | None = None, salt: str = ""
) -> list[tuple[Arm, int, np.ndarray]]:
    """Which version serves which keys (positions into ``keys``), as ``(arm, version, positions)`` for each served
    arm with keys: the one routing rule of the live server and the batch path.

    Without an experiment: production, and the canary at its weight (:func:`assign_arms`, salted with the model's
    name). While an experiment runs, its sticky weighted assignment (:meth:`Experiment.assign`, salted with the
    experiment) decides every served row and the canary takes no traffic (its weight would otherwise change the
    experiment's split); rows of the arm that is the production version are logged as ``production`` (production
    monitoring keeps judging them), the other arms' rows as ``experiment`` (their version names the arm). The
    shadow is not part of the plan: it is scored on every row, served by nobody, in or out of an experiment."""
    series = keys if isinstance(keys, pd.Series) else pd.Series(np.asarray(keys, dtype=object), dtype=object)
    out: list[tuple[Arm, int, np.ndarray]] = []
    if experiment is not None:
        names = experiment.assign(series)
        for a in experiment.config.arms:
            idx = np.flatnonzero(names == a.name)
            if len(idx):
                out.append((Arm.PRODUCTION if a.version == manifest.production else Arm.EXPERIMENT, a.version, idx))
        return out
    if manifest.canary is None or manifest.canary_weight == 0.0:  # every bucket is >= 0: production takes all
        if manifest.production is None or not len(series):
            return []
        return [(Arm.PRODUCTION, manifest.production, np.arange(len(series)))]
    arms = assign_arms(series, manifest.canary_weight, salt=salt)
    for served, version in ((Arm.PRODUCTION, manifest.production), (Arm.CANARY, manifest.canary)):
        idx = np.flatnonzero(arms == served.value)
        if version is not None and len(idx):
            out.append((served, version, idx))
    return out
