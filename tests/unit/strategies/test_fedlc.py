"""FedLC (Zhang et al. 2022): tau reaches the hospitals, the server aggregates as FedAvg, or with
server momentum when asked (the calibrated loss itself is tested in tests/unit/test_training.py)."""

from __future__ import annotations

import numpy as np
import pytest

from hemafed.schemas import FitConfig
from hemafed_aggregator.strategies import FedAvg, FedLC, build_strategy
from hemafed_aggregator.strategies.base import FitRes
from tests.unit.strategies.helpers import Client, arr


def test_tau_reaches_fitins_and_other_config_is_kept() -> None:
    cfg = FitConfig(local_epochs=3, learning_rate=0.05, proximal_mu=0.0)
    s = FedLC(tau=0.5, fit_config=cfg)
    chosen = s.configure_train(1, [arr(0)], [Client("a"), Client("b")], np.random.default_rng(0))
    assert [c.id for c, _ in chosen] == ["a", "b"]
    for _, ins in chosen:
        assert ins.config.logit_calibration_tau == 0.5
        assert ins.config.local_epochs == 3 and ins.config.learning_rate == 0.05
    assert cfg.logit_calibration_tau == 0.0  # the caller's config is not modified


def test_aggregation_equals_fedavg_by_hand() -> None:
    results = [FitRes("a", [arr(2, 0)], 3), FitRes("b", [arr(-2, 4)], 1)]
    out = FedLC().aggregate_train(1, [arr(0, 0)], results, [])
    np.testing.assert_allclose(out[0], [1.0, 1.0])  # (3*[2,0] + 1*[-2,4]) / 4
    np.testing.assert_allclose(out[0], FedAvg().aggregate_train(1, [arr(0, 0)], results, [])[0], rtol=0, atol=1e-15)
    # server_lr: x + 2 (avg - x) from x = [0.5, 0.5]
    out = FedLC(server_lr=2.0).aggregate_train(1, [arr(0.5, 0.5)], results, [])
    np.testing.assert_allclose(out[0], [1.5, 1.5])


def test_server_momentum_by_hand() -> None:
    s = FedLC(tau=1.0, server_momentum=0.5)
    results = [FitRes("a", [arr(2, 0)], 3), FitRes("b", [arr(-2, 4)], 1)]
    x1 = s.aggregate_train(1, [arr(0, 0)], results, [])  # Delta = [1, 1]; v = [1, 1]; x = [1, 1]
    np.testing.assert_allclose(x1[0], [1.0, 1.0])
    # round 2 from x = [1, 1]: avg = [1, 1], Delta = [0, 0]; v = 0.5 [1, 1]; x = [1.5, 1.5]
    x2 = s.aggregate_train(2, x1, results, [])
    np.testing.assert_allclose(x2[0], [1.5, 1.5])
    np.testing.assert_allclose(s.state_dict()["v"][0], [0.5, 0.5])
    with pytest.raises(ValueError, match="server_momentum"):
        FedLC(server_momentum=1.0)


def test_tau_must_be_in_range() -> None:
    for tau in (0.0, -1.0, 101.0):
        with pytest.raises(ValueError, match="tau"):
            FedLC(tau=tau)


def test_registry_and_describe() -> None:
    s = build_strategy("fedlc", tau=1.5, fraction_fit=0.5)
    assert isinstance(s, FedLC)
    d = s.describe()
    assert d["tau"] == 1.5 and d["fraction_fit"] == 0.5 and d["server_lr"] == 1.0 and d["server_momentum"] == 0.0
    assert s.aggregate_train(1, w := [arr(1)], [], []) is w
