"""FedAvgM (Hsu et al. 2019, server momentum) against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from hemafed_aggregator.strategies import FedAvg, FedAvgM, build_strategy
from hemafed_aggregator.strategies.base import FitRes
from tests.unit.strategies.helpers import arr


def round1() -> list[FitRes]:
    # weighted mean [0.5, -2] -> Delta_1 = [0.5, -2] from x0 = [0, 0]; plain mean [1, -2]
    return [FitRes("a", [arr(2, -2)], 1), FitRes("b", [arr(0, -2)], 3)]


def shifted(x: list[np.ndarray], by: np.ndarray) -> list[FitRes]:
    return [FitRes("a", [x[0] + by], 1)]


def test_two_rounds_by_hand() -> None:
    s = FedAvgM()  # beta 0.9, eta 1.0
    assert (s.server_momentum, s.server_lr) == (0.9, 1.0)
    x1 = s.aggregate_train(1, [arr(0, 0)], round1(), [])
    np.testing.assert_allclose(x1[0], [0.5, -2.0])  # v1 = Delta_1
    # v2 = 0.9 * [0.5, -2] + [0.5, 0] = [0.95, -1.8]; x2 = x1 + v2
    x2 = s.aggregate_train(2, x1, shifted(x1, arr(0.5, 0)), [])
    np.testing.assert_allclose(s.v[0], [0.95, -1.8])
    np.testing.assert_allclose(x2[0], [1.45, -3.8])


def test_server_lr() -> None:
    s = FedAvgM(server_lr=0.5, server_momentum=0.9)
    x1 = s.aggregate_train(1, [arr(0, 0)], round1(), [])
    np.testing.assert_allclose(x1[0], [0.25, -1.0])
    x2 = s.aggregate_train(2, x1, shifted(x1, arr(0.5, 0)), [])
    np.testing.assert_allclose(x2[0], [0.25 + 0.5 * 0.95, -1.0 + 0.5 * -1.8])


def test_unweighted() -> None:
    out = FedAvgM(weighted=False).aggregate_train(1, [arr(0, 0)], round1(), [])
    np.testing.assert_allclose(out[0], [1.0, -2.0])


def test_zero_momentum_is_fedavg_with_server_lr() -> None:
    x = [arr(1, 1)]
    a = FedAvgM(server_lr=0.5, server_momentum=0.0).aggregate_train(1, x, round1(), [])
    b = FedAvg(server_lr=0.5).aggregate_train(1, x, round1(), [])
    np.testing.assert_allclose(a[0], b[0])


def test_state_round_trip_gives_identical_next_update() -> None:
    a = FedAvgM()
    x1 = a.aggregate_train(1, [arr(0, 0)], round1(), [])
    saved = a.state_dict()
    x2a = a.aggregate_train(2, x1, shifted(x1, arr(0.5, 0.25)), [])
    b = build_strategy("fedavgm")
    b.load_state_dict(saved)
    np.testing.assert_array_equal(x2a[0], b.aggregate_train(2, x1, shifted(x1, arr(0.5, 0.25)), [])[0])
    assert b.state_dict()["step"] == 2


def test_no_results_and_validation() -> None:
    s = FedAvgM()
    w = [arr(1)]
    assert s.aggregate_train(1, w, [], []) is w
    assert s.state_dict() == {"step": 0, "v": None}
    with pytest.raises(ValueError):
        FedAvgM(server_momentum=1.0)
    with pytest.raises(ValueError):
        FedAvgM(server_lr=-1)
    assert FedAvgM().describe()["server_momentum"] == 0.9
