"""Krum / Multi-Krum (Blanchard et al. 2017) against hand-computed numbers.

n = 5, f = 1 -> each score sums the n - f - 2 = 2 smallest squared distances.
Points 0, 1, 2.5, 3, 100 (in the first coordinate; the second is 0):
  s(0)   = 1 + 6.25       = 7.25
  s(1)   = 1 + 2.25       = 3.25
  s(2.5) = 0.25 + 2.25    = 2.5
  s(3)   = 0.25 + 4       = 4.25
  s(100) = 97^2 + 97.5^2  = 18915.25
"""

from __future__ import annotations

import numpy as np
import pytest

from hemafed_aggregator.aggregation import krum_scores
from hemafed_aggregator.strategies import Krum, MultiKrum, build_strategy
from hemafed_aggregator.strategies.base import FitRes
from tests.unit.strategies.helpers import arr


def five() -> list[FitRes]:
    return [FitRes(h, [arr(v), arr(0)], 1) for h, v in zip(["p0", "p1", "p25", "p3", "p100"], (0, 1, 2.5, 3, 100))]


def test_scores_by_hand() -> None:
    np.testing.assert_allclose(krum_scores([r.weights for r in five()], 1), [7.25, 3.25, 2.5, 4.25, 18915.25])


def test_krum_picks_lowest_score() -> None:
    s = Krum(num_byzantine=1)
    out = s.aggregate_train(1, [arr(0), arr(0)], five(), [])
    np.testing.assert_allclose(out[0], [2.5])
    assert s.last_selected == ["p25"]


def test_multi_krum_m3() -> None:
    # lowest three: 2.5, 1, 3 -> mean 6.5 / 3
    s = Krum(num_byzantine=1, num_selected=3)
    np.testing.assert_allclose(s.aggregate_train(1, [arr(0), arr(0)], five(), [])[0], [6.5 / 3])
    assert s.last_selected == ["p25", "p1", "p3"]


def test_multikrum_default_is_n_minus_f() -> None:
    # m = 5 - 1 = 4: 2.5, 1, 3, 0 -> 6.5 / 4; the outlier 100 is dropped
    s = build_strategy("multikrum", num_byzantine=1)
    assert isinstance(s, MultiKrum)
    np.testing.assert_allclose(s.aggregate_train(1, [arr(0), arr(0)], five(), [])[0], [1.625])


def test_distance_spans_all_tensors() -> None:
    # f = 0, n = 3, 1 neighbour: u1 = (0 | 0), u2 = (3 | 4), u3 = (0 | 4)
    # d2(1,2) = 25, d2(1,3) = 16, d2(2,3) = 9 -> scores 16, 9, 9
    u = [[arr(0), arr(0)], [arr(3), arr(4)], [arr(0), arr(4)]]
    np.testing.assert_allclose(krum_scores(u, 0), [16.0, 9.0, 9.0])


def test_too_few_updates_for_f() -> None:
    s = Krum(num_byzantine=1)
    with pytest.raises(ValueError, match=r"n > 2f \+ 2"):
        s.aggregate_train(1, [arr(0), arr(0)], five()[:4], [])
    with pytest.raises(ValueError):
        krum_scores([[arr(0)], [arr(1)]], 0)  # n = 2 <= 2


def test_min_fit_clients_raised_and_validation() -> None:
    assert Krum(num_byzantine=2).min_fit_clients == 7
    assert Krum(num_byzantine=0, min_fit_clients=10).min_fit_clients == 10
    with pytest.raises(ValueError):
        Krum(num_byzantine=-1)
    with pytest.raises(ValueError):
        Krum(num_selected=0)
    with pytest.raises(ValueError):  # m larger than n
        Krum(num_byzantine=1, num_selected=6).aggregate_train(1, [arr(0), arr(0)], five(), [])
    w = [arr(0)]
    assert Krum().aggregate_train(1, w, [], []) is w
    assert Krum(num_byzantine=1, num_selected=2).describe()["num_selected"] == 2
