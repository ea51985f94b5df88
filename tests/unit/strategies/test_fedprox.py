"""FedProx (Li et al. 2020): mu reaches the hospitals, the server aggregates as FedAvg."""

from __future__ import annotations

import numpy as np
import pytest

from hemafed.schemas import FitConfig
from hemafed_aggregator.strategies import FedAvg, FedProx, build_strategy
from hemafed_aggregator.strategies.base import FitRes
from tests.unit.strategies.helpers import Client, arr


def test_mu_reaches_fitins_and_other_config_is_kept() -> None:
    cfg = FitConfig(local_epochs=3, learning_rate=0.05)
    s = FedProx(mu=0.1, fit_config=cfg)
    chosen = s.configure_train(1, [arr(0)], [Client("a"), Client("b")], np.random.default_rng(0))
    assert len(chosen) == 2
    for _, ins in chosen:
        assert ins.config.proximal_mu == 0.1
        assert ins.config.local_epochs == 3 and ins.config.learning_rate == 0.05
    assert cfg.proximal_mu == 0.0  # the caller's config is not modified


def test_aggregation_equals_fedavg_by_hand() -> None:
    results = [FitRes("a", [arr(1, 2)], 1), FitRes("b", [arr(4, 8)], 3)]
    out = FedProx(mu=1.0).aggregate_train(1, [arr(0, 0)], results, [])
    np.testing.assert_allclose(out[0], [3.25, 6.5])  # (1*[1,2] + 3*[4,8]) / 4
    np.testing.assert_array_equal(out[0], FedAvg().aggregate_train(1, [arr(0, 0)], results, [])[0])
    # server_lr and weighted pass through to FedAvg: x + 0.5 (avg - x) from x = [1, 1]
    out = FedProx(mu=1.0, server_lr=0.5).aggregate_train(1, [arr(1, 1)], results, [])
    np.testing.assert_allclose(out[0], [2.125, 3.75])


def test_mu_must_be_positive() -> None:
    for mu in (0.0, -0.1):
        with pytest.raises(ValueError):
            FedProx(mu=mu)


def test_registry_and_describe() -> None:
    s = build_strategy("fedprox", mu=0.5, fraction_fit=0.5)
    assert isinstance(s, FedProx)
    assert s.describe()["mu"] == 0.5 and s.describe()["fraction_fit"] == 0.5
    assert s.aggregate_train(1, w := [arr(1)], [], []) is w
