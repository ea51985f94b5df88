"""Coordinate-wise median (Yin et al. 2018) against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from hemafed_aggregator.strategies import CoordinateMedian, build_strategy
from hemafed_aggregator.strategies.base import FitRes
from tests.unit.strategies.helpers import arr


def test_odd_count_by_hand() -> None:
    # coordinate 0: {1, 2, 100} -> 2;  coordinate 1: {10, 20, -5} -> 10;  second tensor {0, 7, 3} -> 3
    r = [FitRes("a", [arr(1, 10), arr(0)], 1), FitRes("b", [arr(2, 20), arr(7)], 1), FitRes("c", [arr(100, -5), arr(3)], 50)]
    out = CoordinateMedian().aggregate_train(1, [arr(0, 0), arr(0)], r, [])
    np.testing.assert_allclose(out[0], [2.0, 10.0])
    np.testing.assert_allclose(out[1], [3.0])


def test_even_count_is_mean_of_middle_two() -> None:
    r = [FitRes(h, [arr(v)], 1) for h, v in zip("abcd", (1, 2, 3, 100))]
    np.testing.assert_allclose(CoordinateMedian().aggregate_train(1, [arr(0)], r, [])[0], [2.5])


def test_one_outlier_cannot_move_it() -> None:
    honest = [FitRes(h, [arr(1.0, 1.0)], 1) for h in "abcd"]
    attacked = honest + [FitRes("evil", [arr(1e9, -1e9)], 10**6)]
    np.testing.assert_allclose(CoordinateMedian().aggregate_train(1, [arr(0, 0)], attacked, [])[0], [1.0, 1.0])


def test_edges() -> None:
    s = build_strategy("median")
    w = [np.zeros(2, np.float32)]
    assert s.aggregate_train(1, w, [], []) is w
    out = s.aggregate_train(1, w, [FitRes("a", [np.array([1, 2], np.float32)], 1)], [])
    assert out[0].dtype == np.float32
    np.testing.assert_array_equal(out[0], [1, 2])
    with pytest.raises(ValueError):
        s.aggregate_train(1, w, [FitRes("a", [arr(1, 2, 3)], 1)], [])
    assert s.describe()["name"] == "median"
