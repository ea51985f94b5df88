"""FedAvg (McMahan et al. 2017, Algorithm 1) against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from hemafed_aggregator.strategies import FedAvg, build_strategy
from hemafed_aggregator.strategies.base import EvaluateRes, Failure, FitRes
from tests.unit.strategies.helpers import Client, arr


def res(hid: str, weights: list[np.ndarray], n: int = 1) -> FitRes:
    return FitRes(hospital_id=hid, weights=weights, num_examples=n)


CLIENTS = [Client(f"h{i:02d}") for i in range(10)]


# --------------------------------------------------------------------------- aggregation


def test_weighted_by_examples() -> None:
    # (1*[1, 2] + 3*[4, 8]) / 4 = [13/4, 26/4]; second tensor (1*10 + 3*20)/4 = 17.5
    s = FedAvg()
    out = s.aggregate_train(1, [arr(0, 0), arr(0)], [res("a", [arr(1, 2), arr(10)], 1), res("b", [arr(4, 8), arr(20)], 3)], [])
    np.testing.assert_allclose(out[0], [3.25, 6.5])
    np.testing.assert_allclose(out[1], [17.5])


def test_unweighted_mean() -> None:
    s = FedAvg(weighted=False)
    out = s.aggregate_train(1, [arr(0, 0)], [res("a", [arr(1, 2)], 1), res("b", [arr(4, 8)], 3)], [])
    np.testing.assert_allclose(out[0], [2.5, 5.0])


def test_server_lr() -> None:
    # x = [1, 1]; avg = [3.25, 6.5]; x + 0.5 * (avg - x) = [1 + 0.5*2.25, 1 + 0.5*5.5]
    s = FedAvg(server_lr=0.5)
    out = s.aggregate_train(1, [arr(1, 1)], [res("a", [arr(1, 2)], 1), res("b", [arr(4, 8)], 3)], [])
    np.testing.assert_allclose(out[0], [2.125, 3.75])


def test_keeps_float32() -> None:
    w = [np.zeros(2, dtype=np.float32)]
    out = FedAvg().aggregate_train(1, w, [res("a", [np.array([1, 3], dtype=np.float32)], 2)], [])
    assert out[0].dtype == np.float32
    np.testing.assert_array_equal(out[0], [1, 3])


def test_no_results_keeps_weights() -> None:
    w = [arr(1, 2)]
    out = FedAvg(server_lr=0.5).aggregate_train(3, w, [], [Failure("a", "timeout", "late")])
    assert out is w


def test_failures_are_ignored() -> None:
    out = FedAvg().aggregate_train(1, [arr(0)], [res("a", [arr(2)], 5)], [Failure("b", "error", "boom")])
    np.testing.assert_allclose(out[0], [2.0])


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        FedAvg(server_lr=0)
    with pytest.raises(ValueError):
        FedAvg(fraction_fit=0)
    with pytest.raises(ValueError):  # all hospitals report 0 examples
        FedAvg().aggregate_train(1, [arr(0)], [res("a", [arr(1)], 0)], [])
    with pytest.raises(ValueError):  # shape mismatch between hospitals
        FedAvg().aggregate_train(1, [arr(0, 0)], [res("a", [arr(1, 2)]), res("b", [arr(1, 2, 3)])], [])


# --------------------------------------------------------------------------- client selection


@pytest.mark.parametrize(
    ("fraction", "min_fit", "expected"),
    [(0.25, 1, 3), (0.25, 5, 5), (0.1, 1, 1), (0.01, 1, 1), (0.5, 20, 10), (1.0, 1, 10)],
)
def test_number_of_clients(fraction: float, min_fit: int, expected: int) -> None:
    # m = max(ceil(C K), min_fit_clients), at most K:  ceil(0.25 * 10) = 3, ceil(0.1 * 10) = 1
    s = FedAvg(fraction_fit=fraction, min_fit_clients=min_fit)
    chosen = s.configure_train(1, [arr(0)], CLIENTS, np.random.default_rng(0))
    ids = [c.id for c, _ in chosen]
    assert len(ids) == expected
    assert len(set(ids)) == expected  # distinct
    assert ids == sorted(ids)


def test_selection_deterministic_with_rng_and_varies_with_seed() -> None:
    s = FedAvg(fraction_fit=0.3)
    pick = lambda seed: [c.id for c, _ in s.configure_train(1, [arr(0)], CLIENTS, np.random.default_rng(seed))]
    assert pick(7) == pick(7)
    assert len({tuple(pick(seed)) for seed in range(20)}) > 1


def test_fitins_carries_weights_and_config() -> None:
    s = FedAvg()
    w = [arr(1, 2)]
    chosen = s.configure_train(1, w, CLIENTS[:2], np.random.default_rng(0))
    assert [c.id for c, _ in chosen] == ["h00", "h01"]
    for _, ins in chosen:
        assert ins.weights is w
        assert ins.config is s.fit_config
        assert ins.config.proximal_mu == 0.0 and not ins.config.scaffold
        assert ins.aux == {}


# --------------------------------------------------------------------------- evaluation


def test_aggregate_evaluate_median_and_weighted_mean() -> None:
    # accuracies 0.5, 0.7, 0.9 with examples 1, 1, 2: median 0.7, mean (0.5 + 0.7 + 1.8) / 4 = 0.75
    # losses 1, 2, 3: (1 + 2 + 6) / 4 = 2.25
    r = [EvaluateRes("a", 1.0, 0.5, 1), EvaluateRes("b", 2.0, 0.7, 1), EvaluateRes("c", 3.0, 0.9, 2)]
    out = FedAvg().aggregate_evaluate(1, r)
    assert out["val_accuracy_median"] == pytest.approx(0.7)
    assert out["val_accuracy_mean"] == pytest.approx(0.75)
    assert out["val_loss"] == pytest.approx(2.25)


def test_aggregate_evaluate_even_count_median_and_zero_examples() -> None:
    # median of 0.2, 0.6 = 0.4; no examples reported -> plain mean
    r = [EvaluateRes("a", 1.0, 0.2, 0), EvaluateRes("b", 3.0, 0.6, 0)]
    out = FedAvg().aggregate_evaluate(1, r)
    assert out["val_accuracy_median"] == pytest.approx(0.4)
    assert out["val_accuracy_mean"] == pytest.approx(0.4)
    assert out["val_loss"] == pytest.approx(2.0)


def test_aggregate_evaluate_empty() -> None:
    assert FedAvg().aggregate_evaluate(1, []) == {"val_accuracy_median": None, "val_accuracy_mean": None, "val_loss": None}


def test_configure_evaluate_fraction() -> None:
    s = FedAvg(fraction_evaluate=0.5)
    assert len(s.configure_evaluate(1, [arr(0)], CLIENTS, np.random.default_rng(0))) == 5
    assert FedAvg().configure_evaluate(1, [arr(0)], CLIENTS, np.random.default_rng(0)) == CLIENTS


def test_registry_describe_and_report() -> None:
    s = build_strategy("FedAvg", server_lr=0.5, weighted=False)
    assert isinstance(s, FedAvg)
    assert s.describe() == {"name": "fedavg", "fraction_fit": 1.0, "min_fit_clients": 1, "server_lr": 0.5, "weighted": False}
    assert s.round_report(1) == {}
    assert s.state_dict() == {}
    with pytest.raises(ValueError, match="unknown strategy"):
        build_strategy("nope")


# --------------------------------------------------------------------------- the hospitals' learning rate by round


def test_cosine_learning_rate_by_round_reaches_every_hospital_and_subclass() -> None:
    from hemafed.schemas import FitConfig

    # base 0.1, 3 rounds, floor 0.1 * 0.1: round t gets 0.01 + 0.09 (1 + cos(pi (t-1)/3)) / 2
    want = {1: 0.1, 2: 0.01 + 0.09 * 0.75, 3: 0.01 + 0.09 * 0.25}
    for name, params in (("fedavg", {}), ("fedprox", {"mu": 0.1}), ("feddyn", {"alpha": 0.01}), ("fedlc", {"tau": 1.0})):
        s = build_strategy(name, fit_config=FitConfig(learning_rate=0.1), lr_schedule="cosine",
                           lr_min_fraction=0.1, total_rounds=3, **params)
        for rnd, lr in want.items():
            pairs = s.configure_train(rnd, [arr(0.0)], CLIENTS[:2], np.random.default_rng(0))
            assert [p[1].config.learning_rate for p in pairs] == pytest.approx([lr, lr]), (name, rnd)
        assert s.fit_config.learning_rate == 0.1  # the base config is never changed


def test_constant_learning_rate_is_the_configured_one_and_bad_schedules_fail_at_construction() -> None:
    from hemafed.schemas import FitConfig

    s = FedAvg(fit_config=FitConfig(learning_rate=0.05), total_rounds=4)
    assert all(s.fit_config_for(r).learning_rate == 0.05 for r in range(1, 6))
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear'"):
        FedAvg(lr_schedule="linear", total_rounds=4)
