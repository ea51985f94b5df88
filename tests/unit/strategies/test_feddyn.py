"""FedDyn (Acar et al. 2021, Algorithm 1), server side, against hand-computed numbers.

alpha = 0.1, m = 4 devices, theta^0 = [1]:
round 1: theta_1 = 2, theta_2 = 4 -> sum(theta_k - theta^0) = 1 + 3 = 4
         h^1 = 0 - 0.1 * (1/4) * 4 = -0.1;  theta^1 = mean(2, 4) - h^1 / 0.1 = 3 + 1 = 4
round 2: theta_1 = 6, theta_3 = 4 -> sum = 2 + 0 = 2
         h^2 = -0.1 - 0.1 * (1/4) * 2 = -0.15;  theta^2 = 5 + 1.5 = 6.5
"""

from __future__ import annotations

import numpy as np
import pytest

from hemafed_aggregator.strategies import FedDyn, build_strategy
from hemafed_aggregator.strategies.base import FitRes
from tests.unit.strategies.helpers import Client, arr


def test_two_rounds_by_hand() -> None:
    s = FedDyn(alpha=0.1, num_clients=4)
    x1 = s.aggregate_train(1, [arr(1)], [FitRes("h1", [arr(2)], 10), FitRes("h2", [arr(4)], 99)], [])
    np.testing.assert_allclose(s.h[0], [-0.1])
    np.testing.assert_allclose(x1[0], [4.0])  # unweighted: example counts do not matter
    x2 = s.aggregate_train(2, x1, [FitRes("h1", [arr(6)], 1), FitRes("h3", [arr(4)], 1)], [])
    np.testing.assert_allclose(s.h[0], [-0.15])
    np.testing.assert_allclose(x2[0], [6.5])


def test_m_is_all_clients_not_participants() -> None:
    # with m = 2 instead of 4: h^1 = -0.1 * (1/2) * 4 = -0.2; theta^1 = 3 + 2 = 5
    s = FedDyn(alpha=0.1, num_clients=2)
    x1 = s.aggregate_train(1, [arr(1)], [FitRes("h1", [arr(2)], 1), FitRes("h2", [arr(4)], 1)], [])
    np.testing.assert_allclose(x1[0], [5.0])


def test_m_from_configure_train_and_alpha_in_fitins() -> None:
    s = FedDyn(alpha=0.1, fraction_fit=0.5)
    clients = [Client(f"h{i}") for i in range(1, 5)]
    chosen = s.configure_train(1, [arr(1)], clients, np.random.default_rng(0))
    assert len(chosen) == 2
    assert all(ins.config.feddyn_alpha == 0.1 for _, ins in chosen)
    assert s.total_clients() == 4
    x1 = s.aggregate_train(1, [arr(1)], [FitRes("h1", [arr(2)], 1), FitRes("h2", [arr(4)], 1)], [])
    np.testing.assert_allclose(x1[0], [4.0])


def test_state_round_trip() -> None:
    a = FedDyn(alpha=0.1, num_clients=4)
    x1 = a.aggregate_train(1, [arr(1)], [FitRes("h1", [arr(2)], 1), FitRes("h2", [arr(4)], 1)], [])
    saved = a.state_dict()
    r2 = [FitRes("h1", [arr(6)], 1), FitRes("h3", [arr(4)], 1)]
    x2a = a.aggregate_train(2, x1, r2, [])
    b = build_strategy("feddyn", alpha=0.1, num_clients=4)
    b.load_state_dict(saved)
    np.testing.assert_array_equal(x2a[0], b.aggregate_train(2, x1, r2, [])[0])
    assert b.state_dict()["known_ids"] == ["h1", "h2", "h3"]


def test_float32_multi_tensor_and_edges() -> None:
    s = FedDyn(alpha=1.0, num_clients=1)
    # theta = [2], [[3]] from [0], [[0]]: h = -[2], -[[3]]; theta^1 = mean + (-h) = [4], [[6]]
    out = s.aggregate_train(1, [np.zeros(1, np.float32), np.zeros((1, 1), np.float32)],
                            [FitRes("a", [np.full(1, 2, np.float32), np.full((1, 1), 3, np.float32)], 1)], [])
    assert out[0].dtype == np.float32
    np.testing.assert_allclose(out[0], [4.0])
    np.testing.assert_allclose(out[1], [[6.0]])
    w = [arr(1)]
    assert FedDyn().aggregate_train(1, w, [], []) is w
    with pytest.raises(ValueError):
        FedDyn(alpha=0.0)
    with pytest.raises(ValueError):
        FedDyn(num_clients=0)
    with pytest.raises(ValueError):
        FedDyn().aggregate_train(1, [arr(0, 0)], [FitRes("a", [arr(1)], 1)], [])
    assert FedDyn(alpha=0.2).describe()["alpha"] == 0.2
