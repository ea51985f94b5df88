"""Server-side weight averaging (SWA: Izmailov et al. 2018; FedAvg + SWA, Caldarola et al. 2022)
wrapped around FedAvg and FedAvgM, against hand-computed numbers.

FedAvg, 4 rounds, SWA_ROUNDS = 3 (window: rounds 2..4), one-coordinate weights:
round 1: hospitals 2 and 4 (1 example each)      -> 3            (outside the window)
round 2: 5 and 7 (1 each)                          -> 6            sum 6,    1 model
round 3: 8 (1 example) and 10 (3 examples)         -> 38/4 = 9.5   sum 15.5, 2 models
round 4: 1 and 3 (1 each)                          -> 2            sum 17.5, 3 models
    the global model of round 4 is 17.5 / 3 = 5.8333..., not the round's own 2; rounds 3 and 4
    trained from the wrapped strategy's models (6 and 9.5), not from running means.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from hemafed_aggregator import checkpoint
from hemafed_aggregator.aggregation import uniform_mean
from hemafed_aggregator.app import strategy_of
from hemafed_aggregator.settings import RunConfig
from hemafed_aggregator.strategies import ClassifierRetraining, FedAvgM, ServerSWA, build_strategy
from hemafed_aggregator.strategies.base import EvaluateRes, FitRes
from tests.unit.strategies.helpers import Client, arr

CLIENTS = [Client("h1"), Client("h2")]
ROUNDS = {1: [(2, 1), (4, 1)], 2: [(5, 1), (7, 1)], 3: [(8, 1), (10, 3)], 4: [(1, 1), (3, 1)]}


def _results(rnd: int) -> list[FitRes]:
    return [FitRes(f"h{i + 1}", [np.array([v], dtype=np.float32)], n) for i, (v, n) in enumerate(ROUNDS[rnd])]


def _run(s: ServerSWA, rounds=range(1, 5), w=None) -> tuple[list, list]:
    """The server's loop, reduced: the weights each round trains from, and each round's global model."""
    w = w if w is not None else [np.array([0.0], dtype=np.float32)]
    sent, glob = [], []
    for rnd in rounds:
        (_, ins), *_ = s.configure_train(rnd, w, CLIENTS, np.random.default_rng(0))
        sent.append(float(ins.weights[0][0]))
        w = s.aggregate_train(rnd, w, _results(rnd), [])
        glob.append(w)
    return sent, glob


def test_four_rounds_by_hand() -> None:
    s = ServerSWA(build_strategy("fedavg", total_rounds=4), rounds=3)
    assert (s.first, s.last) == (2, 4) and [s.in_window(r) for r in (1, 2, 3, 4)] == [False, True, True, True]
    sent, glob = _run(s)
    assert sent == [0.0, 3.0, 6.0, 9.5]  # every round trains from the wrapped strategy's model
    np.testing.assert_allclose([g[0][0] for g in glob], [3.0, 6.0, 9.5, 17.5 / 3], rtol=1e-6)
    assert glob[-1][0].dtype == np.float32  # the average comes back in the model's dtype
    assert s.count == 3
    assert [s.round_report(r) for r in (1, 2, 4)] == [
        {}, {"swa": {"window": [2, 4], "collected": 3, "global_is_average": False}},
        {"swa": {"window": [2, 4], "collected": 3, "global_is_average": True}}]
    assert s.name == "fedavg"
    assert s.describe() == {**s.base.describe(), "swa_rounds": 3, "swa_window": [2, 4]}


def test_momentum_state_is_the_wrapped_strategys_and_resumes_mid_window() -> None:
    """FedAvgM (server lr 1, momentum 0.5) under SWA over rounds 3..4: interrupted after round 3
    and resumed into a fresh wrapper through the checkpoint's tensor/JSON split, round 4 gives the
    same average as an uninterrupted run.
    FedAvgM by hand from 0: r1 delta 3, v 3 -> 3; r2 delta 3, v 4.5 -> 7.5; r3 delta 2, v 4.25 -> 11.75;
    r4 delta -9.75, v -7.625 -> 4.125; SWA = (11.75 + 4.125) / 2 = 7.9375."""
    def make() -> ServerSWA:
        return ServerSWA(FedAvgM(server_lr=1.0, server_momentum=0.5, total_rounds=4), rounds=2)

    whole = make()
    _, glob = _run(whole)
    np.testing.assert_allclose([g[0][0] for g in glob], [3.0, 7.5, 11.75, 7.9375])
    first = make()
    _, glob3 = _run(first, rounds=range(1, 4))
    tensors, rest = checkpoint.split_state(first.state_dict())
    assert rest["swa_count"] == 1 and set(tensors) == {"swa_total", "v"}  # the sum beside FedAvgM's momentum
    resumed = make()
    resumed.load_state_dict(checkpoint.join_state(tensors, rest))
    _, glob4 = _run(resumed, rounds=[4], w=glob3[-1])
    np.testing.assert_allclose(glob4[-1][0], [7.9375])
    # before the window opens there is no sum to keep
    fresh = make()
    assert fresh.state_dict() == {**fresh.base.state_dict(), "swa_window": [3, 4], "swa_count": 0}
    with pytest.raises(ValueError, match="count but no sum"):
        fresh.load_state_dict({**fresh.base.state_dict(), "swa_window": [3, 4], "swa_count": 2})
    # a checkpoint of another window, or of a run without averaging, is not resumed into this one
    with pytest.raises(ValueError, match=r"the checkpoint averaged rounds 2\.\.4, this run averages rounds 3\.\.4"):
        fresh.load_state_dict({**fresh.base.state_dict(), "swa_window": [2, 4], "swa_count": 0})
    with pytest.raises(ValueError, match="the checkpoint was written without SWA_ROUNDS, this run averages"):
        fresh.load_state_dict(fresh.base.state_dict())


def test_with_classifier_rounds_the_window_ends_before_them() -> None:
    """ROUNDS 4, CLASSIFIER_ROUNDS 1, SWA_ROUNDS 2: the window is rounds 2..3, and the classifier
    round starts from the average (its example-weighted mean of what the hospitals send back)."""
    run = RunConfig(rounds=4, classifier_rounds=1, swa_rounds=2)
    s = strategy_of(run)
    assert isinstance(s, ClassifierRetraining) and isinstance(s.base, ServerSWA)
    assert (s.base.first, s.base.last) == (2, 3)
    sent, glob = _run(s)
    np.testing.assert_allclose([g[0][0] for g in glob[:3]], [3.0, 6.0, (6.0 + 9.5) / 2])
    assert sent[3] == pytest.approx(7.75)  # the classifier round trains from the average
    np.testing.assert_allclose(glob[3][0], [2.0])  # and is the plain example-weighted mean
    assert s.round_report(4) == {"classifier_only": True}
    assert s.describe()["swa_rounds"] == 2 and s.describe()["classifier_rounds"] == 1


def test_delegates_every_other_hook() -> None:
    s = ServerSWA(build_strategy("fedavg", total_rounds=3, fraction_fit=0.5), rounds=2)
    assert s.num_fit_clients(4) == s.base.num_fit_clients(4) == 2
    assert s.fit_config_for(2) == s.base.fit_config_for(2)
    assert s.configure_evaluate(1, [arr(1)], CLIENTS, np.random.default_rng(0)) == CLIENTS
    glob = s.aggregate_evaluate(2, [EvaluateRes("h1", 0.5, 0.8, 10), EvaluateRes("h2", 1.5, 0.4, 30)])
    assert glob == {"val_accuracy_median": pytest.approx(0.6), "val_accuracy_mean": pytest.approx(0.5),
                    "val_loss": pytest.approx(1.25)}
    w = [arr(1)]
    assert s.initialize(w) is w


def test_uniform_mean_and_bad_windows() -> None:
    out = uniform_mean([arr(3, 6), np.array([7.0])], 3, [np.zeros(2, np.float32), np.array([9], np.int64)])
    np.testing.assert_allclose(out[0], [1, 2])
    assert out[0].dtype == np.float32 and out[1].tolist() == [9]  # a non-float tensor: the latest model's
    with pytest.raises(ValueError, match="no models"):
        uniform_mean([arr(1)], 0, [arr(1)])
    with pytest.raises(ValueError, match="shapes"):
        uniform_mean([arr(1, 2)], 1, [arr(1)])
    base = build_strategy("fedavg", total_rounds=4)
    for rounds in (0, 1, 5):
        with pytest.raises(ValueError, match="at least 2 and at most 4 rounds"):
            ServerSWA(base, rounds=rounds)
    with pytest.raises(ValueError, match="within the run's 4 rounds"):
        ServerSWA(base, rounds=2, last_round=5)


@pytest.mark.parametrize("values, message", [
    ({"rounds": 5, "swa_rounds": 1}, r"SWA_ROUNDS \(1\) must be 0 or from 2 to the 5 round"),
    ({"rounds": 5, "swa_rounds": 6}, r"SWA_ROUNDS \(6\) must be 0 or from 2 to the 5 round"),
    ({"rounds": 5, "classifier_rounds": 2, "swa_rounds": 4}, r"from 2 to the 3 round\(s\)"),
    ({"rounds": 3, "classifier_rounds": 3, "init_run": "prev", "swa_rounds": 2}, r"from 2 to the 0 round\(s\)"),
])
def test_run_config_refuses_windows_outside_the_whole_network_rounds(values, message) -> None:
    with pytest.raises(ValidationError, match=message):
        RunConfig(**values)
    assert RunConfig(rounds=5, classifier_rounds=2, swa_rounds=3).swa_rounds == 3
    assert not isinstance(strategy_of(RunConfig(rounds=5)), ServerSWA)  # 0 = off
