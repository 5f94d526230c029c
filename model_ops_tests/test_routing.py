"""Routing's shortcut with no canary (nothing to hash) sends every row where hashing each key at weight 0 does."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from model_ops.ops import routing
from model_ops.ops.deployment import Manifest
from model_ops.vocab import Arm


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.one_of(st.integers(), st.text(max_size=6)), max_size=30))
def test_no_canary_routes_every_row_to_production_as_hashing_at_weight_zero_does(keys) -> None:
    series = pd.Series(keys, dtype=object)
    hashed = routing.assign_arms(series, 0.0, salt="m")
    for manifest in (Manifest("m", production=3), Manifest("m", production=3, canary=4, canary_weight=0.0)):
        plan = routing.plan(series, manifest, salt="m")
        expected = np.flatnonzero(hashed == Arm.PRODUCTION.value)
        assert [(a, v) for a, v, _ in plan] == ([(Arm.PRODUCTION, 3)] if keys else [])
        assert (plan[0][2] if plan else np.array([], dtype=int)).tolist() == expected.tolist()
    assert routing.plan(series, Manifest("m", production=None), salt="m") == []
    assert routing.plan(series, Manifest("m", production=None, canary=4, canary_weight=0.0), salt="m") == []
    # positions, whatever the keys' index or container (the batch path passes a Series indexed by its rows)
    shifted = pd.Series(keys, index=np.arange(len(keys)) + 1000, dtype=object)
    array = np.asarray(keys, dtype=object)
    for given_keys in (shifted, array):
        plan = routing.plan(given_keys, Manifest("m", production=3), salt="m")
        assert (plan[0][2].tolist() if plan else []) == list(range(len(keys)))
