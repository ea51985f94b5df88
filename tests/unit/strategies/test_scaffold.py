"""SCAFFOLD (Karimireddy et al. 2020, Algorithm 1), server side, against hand-computed numbers.

N = 4 hospitals, eta_g = 1, x = [1, 1], c = [0, 0]:
  a: y = [2, 0], delta_c = [0.4, -0.4]     -> Delta y = [1, -1]
  b: y = [4, 2], delta_c = [0.2, 0.2]      -> Delta y = [3, 1]
x <- [1, 1] + (1/2) [4, 0] = [3, 1];   c <- [0, 0] + (1/4) [0.6, -0.2] = [0.15, -0.05]
"""

from __future__ import annotations

import numpy as np
import pytest

from hemafed_aggregator.strategies import Scaffold, build_strategy
from hemafed_aggregator.strategies.base import FitRes
from tests.unit.strategies.helpers import Client, arr


def results() -> list[FitRes]:
    return [
        FitRes("a", [arr(2, 0)], 10, aux={"delta_c": [arr(0.4, -0.4)]}),
        FitRes("b", [arr(4, 2)], 30, aux={"delta_c": [arr(0.2, 0.2)]}),
    ]


def test_round_by_hand() -> None:
    s = Scaffold(num_clients=4)
    x = s.aggregate_train(1, [arr(1, 1)], results(), [])
    np.testing.assert_allclose(x[0], [3.0, 1.0])
    np.testing.assert_allclose(s.c[0], [0.15, -0.05])


def test_server_lr() -> None:
    s = Scaffold(num_clients=4, server_lr=0.5)
    np.testing.assert_allclose(s.aggregate_train(1, [arr(1, 1)], results(), [])[0], [2.0, 1.0])


def test_c_and_flag_in_fitins_and_n_from_client_list() -> None:
    s = Scaffold(fraction_fit=0.5)
    clients = [Client(x) for x in "abcd"]
    first = s.configure_train(1, [arr(1, 1)], clients, np.random.default_rng(0))
    assert len(first) == 2
    for _, ins in first:
        assert ins.config.scaffold is True
        assert ins.config.optimizer == "sgd"  # option II needs plain SGD: set by the strategy itself
        np.testing.assert_array_equal(ins.aux["c"][0], [0.0, 0.0])
    x = s.aggregate_train(1, [arr(1, 1)], results(), [])  # N = 4 from the client list
    np.testing.assert_allclose(s.c[0], [0.15, -0.05])
    second = s.configure_train(2, x, clients, np.random.default_rng(1))
    for _, ins in second:
        np.testing.assert_allclose(ins.aux["c"][0], [0.15, -0.05])


def test_the_default_adam_is_replaced_by_sgd_and_the_rest_kept() -> None:
    from hemafed.schemas import FitConfig

    s = Scaffold(fit_config=FitConfig(optimizer="adam", learning_rate=0.05, local_epochs=3))
    assert (s.fit_config.optimizer, s.fit_config.learning_rate, s.fit_config.local_epochs) == ("sgd", 0.05, 3)
    assert s.fit_config.scaffold is True


def test_n_defaults_to_hospitals_seen() -> None:
    # no client list and no num_clients: N = 2 (the two that answered): c = [0.6, -0.2] / 2
    s = Scaffold()
    s.aggregate_train(1, [arr(1, 1)], results(), [])
    np.testing.assert_allclose(s.c[0], [0.3, -0.1])


def test_c_sent_in_weights_dtype() -> None:
    s = Scaffold()
    w = [np.zeros(2, np.float32)]
    s.initialize(w)
    (_, ins), = s.configure_train(1, w, [Client("a")], np.random.default_rng(0))
    assert ins.aux["c"][0].dtype == np.float32


def test_state_round_trip() -> None:
    a = Scaffold(num_clients=4)
    x1 = a.aggregate_train(1, [arr(1, 1)], results(), [])
    saved = a.state_dict()
    x2a = a.aggregate_train(2, x1, results(), [])
    b = build_strategy("scaffold", num_clients=4)
    b.load_state_dict(saved)
    np.testing.assert_array_equal(x2a[0], b.aggregate_train(2, x1, results(), [])[0])
    np.testing.assert_allclose(b.c[0], [0.3, -0.1])  # two rounds of + [0.15, -0.05]


def test_bad_results() -> None:
    s = Scaffold(num_clients=4)
    with pytest.raises(ValueError, match="delta_c"):
        s.aggregate_train(1, [arr(1, 1)], [FitRes("a", [arr(2, 0)], 1)], [])
    with pytest.raises(ValueError, match="shapes"):
        s.aggregate_train(1, [arr(1, 1)], [FitRes("a", [arr(2, 0)], 1, aux={"delta_c": [arr(1)]})], [])
    assert s.c is None  # nothing was applied
    w = [arr(1)]
    assert s.aggregate_train(1, w, [], []) is w
    with pytest.raises(ValueError):
        Scaffold(server_lr=0)
    with pytest.raises(ValueError):
        Scaffold(num_clients=0)
