"""Coordinate-wise beta-trimmed mean (Yin et al. 2018) against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from hemafed_aggregator.strategies import TrimmedMean, build_strategy
from hemafed_aggregator.strategies.base import FitRes
from tests.unit.strategies.helpers import arr


def five() -> list[FitRes]:
    # coordinate 0: {1, 2, 3, 4, 100}; coordinate 1: {-50, 0, 1, 2, 3}
    vals = [(1, 3), (2, -50), (3, 0), (4, 1), (100, 2)]
    return [FitRes(h, [arr(*v)], 1) for h, v in zip("abcde", vals)]


def test_by_hand() -> None:
    # beta = 0.2, n = 5 -> drop floor(1.0) = 1 each side: mean(2, 3, 4) = 3, mean(0, 1, 2) = 1
    out = TrimmedMean(beta=0.2).aggregate_train(1, [arr(0, 0)], five(), [])
    np.testing.assert_allclose(out[0], [3.0, 1.0])


def test_small_beta_trims_nothing() -> None:
    # beta = 0.1, n = 5 -> floor(0.5) = 0: plain mean (110/5, -44/5)
    out = TrimmedMean(beta=0.1).aggregate_train(1, [arr(0, 0)], five(), [])
    np.testing.assert_allclose(out[0], [22.0, -8.8])
    np.testing.assert_allclose(TrimmedMean(beta=0.0).aggregate_train(1, [arr(0, 0)], five(), [])[0], [22.0, -8.8])


def test_large_beta() -> None:
    # beta = 0.4, n = 5 -> drop 2 each side: the median
    np.testing.assert_allclose(TrimmedMean(beta=0.4).aggregate_train(1, [arr(0, 0)], five(), [])[0], [3.0, 1.0])


def test_edges() -> None:
    for beta in (-0.1, 0.5, 0.7):
        with pytest.raises(ValueError):
            TrimmedMean(beta=beta)
    s = build_strategy("trimmed_mean", beta=0.25)
    assert s.describe()["beta"] == 0.25
    w = [arr(1)]
    assert s.aggregate_train(1, w, [], []) is w
    with pytest.raises(ValueError):
        s.aggregate_train(1, [arr(0, 0)], [FitRes("a", [arr(1)], 1)], [])
