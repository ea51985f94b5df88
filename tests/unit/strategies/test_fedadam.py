"""FedAdam (Reddi et al. 2021, Algorithm 2) against hand-computed numbers.

Round 1: x0 = [0, 0]; hospital a returns [2, -2] (1 example), b [0, -2] (3 examples)
-> weighted mean [0.5, -2], Delta_1 = [0.5, -2].
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hemafed_aggregator.strategies import FedAdam, build_strategy
from hemafed_aggregator.strategies.base import FitRes
from tests.unit.strategies.helpers import arr


def round1() -> list[FitRes]:
    return [FitRes("a", [arr(2, -2)], 1), FitRes("b", [arr(0, -2)], 3)]


def shifted(x: list[np.ndarray], by: np.ndarray) -> list[FitRes]:
    return [FitRes("a", [x[0] + by], 1), FitRes("b", [x[0] + by], 1)]


def test_two_rounds_by_hand() -> None:
    s = FedAdam(server_lr=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3, initial_v=0.0)
    x1 = s.aggregate_train(1, [arr(0, 0)], round1(), [])
    # m1 = 0.1 * [0.5, -2] = [0.05, -0.2];  v1 = 0.01 * [0.25, 4] = [0.0025, 0.04];  sqrt(v1) = [0.05, 0.2]
    np.testing.assert_allclose(s.m[0], [0.05, -0.2])
    np.testing.assert_allclose(s.v[0], [0.0025, 0.04])
    np.testing.assert_allclose(x1[0], [0.1 * 0.05 / 0.051, 0.1 * -0.2 / 0.201])
    # round 2: Delta_2 = [0.5, 0];  m2 = [0.045 + 0.05, -0.18] ;  v2 = [0.002475 + 0.0025, 0.0396]
    x2 = s.aggregate_train(2, x1, shifted(x1, arr(0.5, 0)), [])
    np.testing.assert_allclose(s.m[0], [0.095, -0.18])
    np.testing.assert_allclose(s.v[0], [0.004975, 0.0396])
    np.testing.assert_allclose(
        x2[0], x1[0] + [0.1 * 0.095 / (math.sqrt(0.004975) + 1e-3), 0.1 * -0.18 / (math.sqrt(0.0396) + 1e-3)]
    )
    assert s.state_dict()["step"] == 2


def test_default_initial_v_is_tau_squared_and_defaults() -> None:
    s = FedAdam()
    assert (s.server_lr, s.beta_1, s.beta_2, s.tau) == (1e-2, 0.9, 0.99, 1e-3)
    s.aggregate_train(1, [arr(0, 0)], round1(), [])
    # v1 = 0.99 * 1e-6 + 0.01 * [0.25, 4]
    np.testing.assert_allclose(s.state_dict()["v"][0], [0.99e-6 + 0.0025, 0.99e-6 + 0.04])


def test_unweighted_pseudo_gradient() -> None:
    # plain mean of [2, -2] and [0, -2] = [1, -2]; m1 = [0.1, -0.2]; v1 = 0.01 * [1, 4]; sqrt = [0.1, 0.2]
    s = FedAdam(server_lr=0.1, initial_v=0.0, weighted=False)
    x1 = s.aggregate_train(1, [arr(0, 0)], round1(), [])
    np.testing.assert_allclose(x1[0], [0.1 * 0.1 / 0.101, 0.1 * -0.2 / 0.201])


def test_state_round_trip_gives_identical_next_update() -> None:
    a = FedAdam(server_lr=0.1)
    x1 = a.aggregate_train(1, [arr(0, 0)], round1(), [])
    saved = a.state_dict()
    x2a = a.aggregate_train(2, x1, shifted(x1, arr(0.5, 0.25)), [])  # must not alter `saved`
    b = build_strategy("fedadam", server_lr=0.1)
    b.load_state_dict(saved)
    x2b = b.aggregate_train(2, x1, shifted(x1, arr(0.5, 0.25)), [])
    np.testing.assert_array_equal(x2a[0], x2b[0])
    assert a.state_dict()["step"] == b.state_dict()["step"] == 2
    np.testing.assert_array_equal(a.state_dict()["v"][0], b.state_dict()["v"][0])


def test_no_results_changes_nothing() -> None:
    s = FedAdam()
    w = [arr(1, 2)]
    assert s.aggregate_train(1, w, [], []) is w
    assert s.state_dict() == {"step": 0, "m": None, "v": None}


def test_keeps_dtype_and_validates() -> None:
    s = FedAdam()
    out = s.aggregate_train(1, [np.zeros(2, np.float32)], [FitRes("a", [np.ones(2, np.float32)], 1)], [])
    assert out[0].dtype == np.float32
    for bad in ({"beta_1": 1.0}, {"beta_2": -0.1}, {"tau": 0}, {"server_lr": 0}, {"initial_v": -1.0}):
        with pytest.raises(ValueError):
            FedAdam(**bad)
    assert FedAdam().describe()["name"] == "fedadam"
