"""FedAdagrad (Reddi et al. 2021, Algorithm 2) against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hemafed_aggregator.strategies import FedAdagrad, build_strategy
from hemafed_aggregator.strategies.base import FitRes
from tests.unit.strategies.helpers import arr


def round1() -> list[FitRes]:
    # weighted mean [0.5, -2] -> Delta_1 = [0.5, -2] from x0 = [0, 0]
    return [FitRes("a", [arr(2, -2)], 1), FitRes("b", [arr(0, -2)], 3)]


def shifted(x: list[np.ndarray], by: np.ndarray) -> list[FitRes]:
    return [FitRes("a", [x[0] + by], 1)]


def test_two_rounds_by_hand() -> None:
    s = FedAdagrad(server_lr=0.1, beta_1=0.9, tau=1e-3, initial_v=0.0)
    x1 = s.aggregate_train(1, [arr(0, 0)], round1(), [])
    # m1 = [0.05, -0.2]; v1 = [0.25, 4]; sqrt = [0.5, 2]
    np.testing.assert_allclose(s.v[0], [0.25, 4.0])
    np.testing.assert_allclose(x1[0], [0.1 * 0.05 / 0.501, 0.1 * -0.2 / 2.001])
    # round 2: Delta_2 = [0.5, 0]; m2 = [0.095, -0.18]; v2 = [0.5, 4]
    x2 = s.aggregate_train(2, x1, shifted(x1, arr(0.5, 0)), [])
    np.testing.assert_allclose(s.v[0], [0.5, 4.0])
    np.testing.assert_allclose(x2[0], x1[0] + [0.1 * 0.095 / (math.sqrt(0.5) + 1e-3), 0.1 * -0.18 / 2.001])


def test_without_momentum_and_default_v() -> None:
    # beta_1 = 0: m = Delta; v1 = tau^2 + Delta^2 = 1e-6 + [0.25, 4]
    s = FedAdagrad(server_lr=0.1, beta_1=0.0)
    x1 = s.aggregate_train(1, [arr(0, 0)], round1(), [])
    np.testing.assert_allclose(s.v[0], [0.250001, 4.000001])
    np.testing.assert_allclose(x1[0], [0.1 * 0.5 / (math.sqrt(0.250001) + 1e-3), 0.1 * -2 / (math.sqrt(4.000001) + 1e-3)])


def test_multiple_tensors() -> None:
    s = FedAdagrad(server_lr=1.0, beta_1=0.0, tau=1.0, initial_v=0.0)
    # Delta = [3], [[-4]]: x + Delta / (|Delta| + 1) = [0.75], [[-0.8]]
    out = s.aggregate_train(1, [arr(0), np.zeros((1, 1))], [FitRes("a", [arr(3), np.array([[-4.0]])], 1)], [])
    np.testing.assert_allclose(out[0], [0.75])
    np.testing.assert_allclose(out[1], [[-0.8]])


def test_state_round_trip_gives_identical_next_update() -> None:
    a = FedAdagrad(server_lr=0.1)
    x1 = a.aggregate_train(1, [arr(0, 0)], round1(), [])
    saved = a.state_dict()
    x2a = a.aggregate_train(2, x1, shifted(x1, arr(0.5, 0.25)), [])
    b = build_strategy("fedadagrad", server_lr=0.1)
    b.load_state_dict(saved)
    np.testing.assert_array_equal(x2a[0], b.aggregate_train(2, x1, shifted(x1, arr(0.5, 0.25)), [])[0])


def test_no_results_and_validation() -> None:
    s = FedAdagrad()
    w = [arr(1)]
    assert s.aggregate_train(1, w, [], []) is w
    with pytest.raises(ValueError):
        FedAdagrad(tau=-1)
