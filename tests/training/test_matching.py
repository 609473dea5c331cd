"""The one Hungarian solver (gpjobs/training/models/matching.py) that DETR's and MaX-DeepLab's matching use."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gpjobs.training.models.matching import linear_sum_assignment


def test_hungarian_solver_finds_the_minimum_cost_assignment():
    rng = np.random.default_rng(0)
    for trial in range(80):
        n, m = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        cost = rng.random((n, m))
        if trial % 3 == 0:
            cost = np.round(cost * 3)  # ties
        rows, cols = linear_sum_assignment(cost)
        k = min(n, m)
        assert len(rows) == k and len(set(rows)) == k and len(set(cols)) == k and list(rows) == sorted(rows)
        best = min(
            sum(cost[i, j] for i, j in zip(r, c))
            for r in itertools.combinations(range(n), k)
            for c in itertools.permutations(range(m), k)
        )
        assert cost[rows, cols].sum() == pytest.approx(best)
    with pytest.raises(ValueError, match="NaN"):
        linear_sum_assignment(np.array([[np.nan, 1.0]]))
