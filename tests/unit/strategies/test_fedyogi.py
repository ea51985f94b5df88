"""FedYogi (Reddi et al. 2021, Algorithm 2) against hand-computed numbers (same rounds as FedAdam)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hemafed_aggregator.strategies import FedYogi, build_strategy
from hemafed_aggregator.strategies.base import FitRes
from tests.unit.strategies.helpers import arr


def round1() -> list[FitRes]:
    # weighted mean [0.5, -2] -> Delta_1 = [0.5, -2] from x0 = [0, 0]
    return [FitRes("a", [arr(2, -2)], 1), FitRes("b", [arr(0, -2)], 3)]


def shifted(x: list[np.ndarray], by: np.ndarray) -> list[FitRes]:
    return [FitRes("a", [x[0] + by], 1)]


def test_two_rounds_by_hand() -> None:
    s = FedYogi(server_lr=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3, initial_v=0.0)
    x1 = s.aggregate_train(1, [arr(0, 0)], round1(), [])
    # v1 = 0 - 0.01 * [0.25, 4] * sign(0 - [0.25, 4]) = [0.0025, 0.04]
    np.testing.assert_allclose(s.v[0], [0.0025, 0.04])
    np.testing.assert_allclose(x1[0], [0.1 * 0.05 / 0.051, 0.1 * -0.2 / 0.201])
    # round 2: Delta_2 = [0.5, 0], Delta^2 = [0.25, 0]; sign(v1 - Delta^2) = [-1, +1]
    # v2 = [0.0025 + 0.01 * 0.25, 0.04 - 0] = [0.005, 0.04]  (Adam would give [0.004975, 0.0396])
    x2 = s.aggregate_train(2, x1, shifted(x1, arr(0.5, 0)), [])
    np.testing.assert_allclose(s.m[0], [0.095, -0.18])
    np.testing.assert_allclose(s.v[0], [0.005, 0.04])
    np.testing.assert_allclose(x2[0], x1[0] + [0.1 * 0.095 / (math.sqrt(0.005) + 1e-3), 0.1 * -0.18 / (0.2 + 1e-3)])


def test_sign_zero_leaves_v() -> None:
    # v_{-1} = tau^2 = 0.01 and Delta^2 = 0.01 -> sign 0 -> v1 = 0.01
    s = FedYogi(server_lr=1.0, tau=0.1)
    s.aggregate_train(1, [arr(0)], [FitRes("a", [arr(0.1)], 1)], [])
    np.testing.assert_allclose(s.v[0], [0.01])


def test_default_initial_v_is_tau_squared() -> None:
    s = FedYogi()
    s.aggregate_train(1, [arr(0, 0)], round1(), [])
    # v1 = 1e-6 + 0.01 * [0.25, 4]  (sign(1e-6 - Delta^2) = -1)
    np.testing.assert_allclose(s.state_dict()["v"][0], [1e-6 + 0.0025, 1e-6 + 0.04])


def test_state_round_trip_gives_identical_next_update() -> None:
    a = FedYogi(server_lr=0.1)
    x1 = a.aggregate_train(1, [arr(0, 0)], round1(), [])
    saved = a.state_dict()
    x2a = a.aggregate_train(2, x1, shifted(x1, arr(0.5, 0.25)), [])
    b = build_strategy("fedyogi", server_lr=0.1)
    b.load_state_dict(saved)
    np.testing.assert_array_equal(x2a[0], b.aggregate_train(2, x1, shifted(x1, arr(0.5, 0.25)), [])[0])


def test_no_results_and_validation() -> None:
    s = FedYogi()
    w = [arr(1)]
    assert s.aggregate_train(1, w, [], []) is w and s.step == 0
    with pytest.raises(ValueError):
        FedYogi(beta_2=1.0)
