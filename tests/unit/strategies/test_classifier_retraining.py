"""Classifier re-training rounds (Kang et al. 2020, cRT; federated) wrapped around FedDyn, against
hand-computed numbers.

FedDyn alpha = 0.1, m = 4 devices, 3 rounds, the last one a classifier round. Weights are two
tensors, [feature, classifier]:
round 1 (FedDyn's): theta_1 = [2, 2], theta_2 = [4, 4] from [1, 1]
    h^1 = -0.1 * (1/4) * (1 + 3) = -0.1 per coordinate; theta^1 = 3 + 1 = [4, 4]
round 2 (FedDyn's): theta_1 = [6, 6], theta_3 = [4, 4]
    h^2 = -0.15; theta^2 = 5 + 1.5 = [6.5, 6.5]
round 3 (classifier round): the hospitals return the feature weight as sent (6.5) and classifiers
    8 (10 examples) and 5 (30 examples): the example-weighted mean is (80 + 150) / 40 = 5.75, so
    theta^3 = [6.5, 5.75]. FedDyn's own rule would have given mean - h/alpha = 7.25 + 1.5 = 8.75 for
    the classifier and 6.5 + 1.5 = 8 for the frozen feature weight, and h would have moved.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from hemafed.schemas import FitConfig
from hemafed_aggregator.app import strategy_of
from hemafed_aggregator.settings import RunConfig
from hemafed_aggregator.strategies import ClassifierRetraining, FedDyn, Scaffold, build_strategy
from hemafed_aggregator.strategies.base import EvaluateRes, FitRes
from tests.unit.strategies.helpers import Client, arr

CLIENTS = [Client(f"h{i}") for i in range(1, 5)]


def _wrapped(**kwargs) -> ClassifierRetraining:
    return ClassifierRetraining(FedDyn(alpha=0.1, num_clients=4, total_rounds=3, **kwargs), rounds=1)


def test_three_rounds_by_hand() -> None:
    s = _wrapped()
    w = [arr(1), arr(1)]
    w = s.aggregate_train(1, w, [FitRes("h1", [arr(2), arr(2)], 10), FitRes("h2", [arr(4), arr(4)], 99)], [])
    np.testing.assert_allclose(w[0], [4.0])
    w = s.aggregate_train(2, w, [FitRes("h1", [arr(6), arr(6)], 1), FitRes("h3", [arr(4), arr(4)], 1)], [])
    np.testing.assert_allclose(w, [[6.5], [6.5]])
    h_before = [h.copy() for h in s.base.h]
    np.testing.assert_allclose(h_before[0], [-0.15])
    w = s.aggregate_train(3, w, [FitRes("h1", [arr(6.5), arr(8)], 10), FitRes("h2", [arr(6.5), arr(5)], 30)], [])
    np.testing.assert_array_equal(w[0], [6.5])  # the frozen feature weight: exactly where it was
    np.testing.assert_allclose(w[1], [5.75])
    for before, after in zip(h_before, s.base.h):  # FedDyn's server state is left alone
        np.testing.assert_array_equal(before, after)


def test_configs_by_round() -> None:
    s = _wrapped(fit_config=FitConfig(proximal_mu=0.3, logit_calibration_tau=1.0))
    assert [s.is_classifier_round(r) for r in (1, 2, 3)] == [False, False, True]
    for rnd in (1, 2):
        chosen = s.configure_train(rnd, [arr(1)], CLIENTS, np.random.default_rng(0))
        assert [c.id for c, _ in chosen] == ["h1", "h2", "h3", "h4"]
        assert all(ins.config.feddyn_alpha == 0.1 and not ins.config.classifier_only for _, ins in chosen)
        assert s.round_report(rnd) == {}
    chosen = s.configure_train(3, [arr(1)], CLIENTS, np.random.default_rng(0))
    assert [c.id for c, _ in chosen] == ["h1", "h2", "h3", "h4"]
    for _, ins in chosen:
        cfg = ins.config
        assert cfg.classifier_only is True
        assert (cfg.feddyn_alpha, cfg.proximal_mu, cfg.scaffold) == (0.0, 0.0, False)
        assert cfg.logit_calibration_tau == 1.0  # a choice of loss: kept
        assert ins.aux == {}
    assert s.round_report(3) == {"classifier_only": True}
    assert s.name == "feddyn"
    assert s.describe() == {**s.base.describe(), "classifier_rounds": 1}


def test_scaffold_rounds_carry_no_control_variate() -> None:
    s = ClassifierRetraining(Scaffold(num_clients=2, fit_config=FitConfig(optimizer="sgd"), total_rounds=2),
                             rounds=1)
    assert all("c" in ins.aux for _, ins in s.configure_train(1, [arr(0)], CLIENTS[:2], np.random.default_rng(0)))
    for _, ins in s.configure_train(2, [arr(0)], CLIENTS[:2], np.random.default_rng(0)):
        assert ins.aux == {} and ins.config.scaffold is False and ins.config.classifier_only


def test_stale_updates_and_empty_rounds() -> None:
    s = ClassifierRetraining(build_strategy("fedavg", total_rounds=2), rounds=1)
    w = [arr(0, 0)]
    stale = FitRes("h2", [arr(9, 9)], 100, metrics={"stale": 1.0})
    out = s.aggregate_train(2, w, [FitRes("h1", [arr(0, 2)], 5), stale], [])
    np.testing.assert_array_equal(out[0], [0, 2])  # the departed hospital's old model is not averaged in
    assert s.aggregate_train(2, w, [stale], []) is w
    assert s.aggregate_train(2, w, [], []) is w


def test_delegates_evaluation_and_state() -> None:
    s = _wrapped()
    s.aggregate_train(1, [arr(1)], [FitRes("h1", [arr(2)], 1), FitRes("h2", [arr(4)], 1)], [])
    saved = s.state_dict()
    assert saved == s.base.state_dict()
    t = _wrapped()
    t.load_state_dict(saved)
    np.testing.assert_array_equal(t.base.h[0], s.base.h[0])
    glob = s.aggregate_evaluate(3, [EvaluateRes("h1", 0.5, 0.8, 10), EvaluateRes("h2", 1.5, 0.4, 30)])
    assert glob == {"val_accuracy_median": pytest.approx(0.6), "val_accuracy_mean": pytest.approx(0.5),
                    "val_loss": pytest.approx(1.25)}
    assert s.configure_evaluate(3, [arr(1)], CLIENTS, np.random.default_rng(0)) == CLIENTS
    assert s.fit_config_for(1).classifier_only is False and s.fit_config_for(3).classifier_only is True


@pytest.mark.parametrize("name", ["dp_fedavg", "median", "trimmed_mean", "krum", "multikrum"])
def test_refuses_dp_and_robust_strategies(name: str) -> None:
    params = {"noise_multiplier": 1.0, "clip_norm": 1.0} if name == "dp_fedavg" else {}
    with pytest.raises(ValueError, match=f"cannot follow {name}"):
        ClassifierRetraining(build_strategy(name, total_rounds=3, **params), rounds=1)


def test_refuses_dp_sgd_and_bad_round_counts() -> None:
    with pytest.raises(ValueError, match="DP-SGD"):
        ClassifierRetraining(build_strategy("fedavg", total_rounds=3,
                                            fit_config=FitConfig(dp_clip_norm=1.0, dp_noise_multiplier=1.0)), rounds=1)
    for rounds in (0, 3, 4):
        with pytest.raises(ValueError, match="at most 2 of the run's 3 rounds .*: the features train first"):
            ClassifierRetraining(build_strategy("fedavg", total_rounds=3), rounds=rounds)
    # from a trained model (INIT_RUN) every round may be a classifier round, but no more than that
    whole = ClassifierRetraining(build_strategy("fedavg", total_rounds=3), rounds=3, trained_start=True)
    assert [whole.is_classifier_round(r) for r in (1, 2, 3)] == [True, True, True]
    for rounds in (0, 4):
        with pytest.raises(ValueError, match="at most 3 of the run's 3 rounds"):
            ClassifierRetraining(build_strategy("fedavg", total_rounds=3), rounds=rounds, trained_start=True)


def test_classifier_rounds_own_settings() -> None:
    """Their own learning rate (constant: the run's cosine schedule does not shrink it), epochs,
    optimizer and augmentation, in the classifier rounds only; unset ones are the round's own."""
    base = FedDyn(alpha=0.1, num_clients=4, total_rounds=4, lr_schedule="cosine", lr_min_fraction=0.0,
                  fit_config=FitConfig(learning_rate=1e-3, local_epochs=2, optimizer="adam", augment=True))
    s = ClassifierRetraining(base, rounds=2, learning_rate=0.05, optimizer="sgd", augment=False)
    assert s.own == {"learning_rate": 0.05, "optimizer": "sgd", "augment": False}
    for rnd in (1, 2):
        cfg = s.fit_config_for(rnd)
        assert cfg == base.fit_config_for(rnd) and cfg.optimizer == "adam" and cfg.augment is True
    assert s.fit_config_for(2).learning_rate == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi / 4)))
    for rnd in (3, 4):
        (_, ins), *_ = s.configure_train(rnd, [arr(1)], CLIENTS, np.random.default_rng(0))
        cfg = ins.config
        assert (cfg.learning_rate, cfg.optimizer, cfg.augment, cfg.local_epochs) == (0.05, "sgd", False, 2)
        assert cfg.classifier_only and cfg.feddyn_alpha == 0.0
    assert s.describe() == {**base.describe(), "classifier_rounds": 2, "classifier_learning_rate": 0.05,
                            "classifier_optimizer": "sgd", "classifier_augment": False}
    # unset: the run's (scheduled) learning rate and the rest as the base sends them
    plain = ClassifierRetraining(base, rounds=2, local_epochs=5)
    assert plain.fit_config_for(4).learning_rate == base.fit_config_for(4).learning_rate
    assert plain.fit_config_for(4).local_epochs == 5 and plain.fit_config_for(4).augment is True
    # checked as a FitConfig: a bad value fails when the strategy is built, not in a round
    for bad in ({"optimizer": "rmsprop"}, {"learning_rate": 20.0}, {"local_epochs": 0}):
        with pytest.raises(ValidationError):
            ClassifierRetraining(base, rounds=1, **bad)


def test_run_config_wraps_and_checks() -> None:
    run = RunConfig(rounds=5, classifier_rounds=2, strategy="feddyn", strategy_params={"alpha": 0.01})
    s = strategy_of(run)
    assert isinstance(s, ClassifierRetraining) and s.first == 4 and s.base.alpha == 0.01
    assert not isinstance(strategy_of(RunConfig(rounds=5)), ClassifierRetraining)
    with pytest.raises(ValidationError, match="CLASSIFIER_ROUNDS \\(5\\) must be fewer than ROUNDS \\(5\\)"):
        RunConfig(rounds=5, classifier_rounds=5)
    # with INIT_RUN (a trained model) every round may be a classifier round
    whole = strategy_of(RunConfig(rounds=5, classifier_rounds=5, init_run="earlier", run_id="now"))
    assert isinstance(whole, ClassifierRetraining) and whole.first == 1
    with pytest.raises(ValidationError, match="CLASSIFIER_ROUNDS \\(6\\) cannot exceed ROUNDS \\(5\\)"):
        RunConfig(rounds=5, classifier_rounds=6, init_run="earlier")
    own = RunConfig(rounds=5, classifier_rounds=2, classifier_learning_rate=0.05, classifier_epochs=3,
                    classifier_optimizer="sgd", classifier_augment="false")
    assert strategy_of(own).own == {"learning_rate": 0.05, "local_epochs": 3, "optimizer": "sgd", "augment": False}
    # compose passes '' for "the run's": unset, as are 0 and ''
    assert RunConfig(rounds=5, classifier_rounds=2, classifier_augment="").classifier_augment is None
    assert strategy_of(RunConfig(rounds=5, classifier_rounds=2)).own == {}
    for field, value, name in (("classifier_learning_rate", 0.05, "CLASSIFIER_LEARNING_RATE"),
                               ("classifier_epochs", 2, "CLASSIFIER_EPOCHS"),
                               ("classifier_optimizer", "sgd", "CLASSIFIER_OPTIMIZER"),
                               ("classifier_augment", False, "CLASSIFIER_AUGMENT")):
        with pytest.raises(ValidationError, match=f"{name} only apply to classifier rounds: set CLASSIFIER_ROUNDS"):
            RunConfig(rounds=5, **{field: value})
    with pytest.raises(ValidationError, match="classifier_optimizer"):
        RunConfig(rounds=5, classifier_rounds=1, classifier_optimizer="rmsprop")
    with pytest.raises(ValidationError, match="INIT_RUN \\(same\\) must be another run than RUN_ID"):
        RunConfig(run_id="same", init_run="same")
    with pytest.raises(ValidationError, match="INIT_RUN with LOCAL_NORM"):
        RunConfig(init_run="earlier", local_norm=True)
    with pytest.raises(ValidationError, match="init_run"):
        RunConfig(init_run="../elsewhere")


def test_fedbabu_freezes_the_classifier_until_the_classifier_rounds() -> None:
    """FREEZE_CLASSIFIER (FedBABU, Oh et al. 2022): every round but the classifier rounds asks the
    hospitals to leave the classifier alone; the classifier rounds lift it. Refused where the
    classifier would move anyway (the server's DP noise) or the hospitals cannot mask (DP-SGD)."""
    run = RunConfig(rounds=4, classifier_rounds=1, freeze_classifier=True, strategy="feddyn",
                    strategy_params={"alpha": 0.01})
    s = strategy_of(run)
    for rnd in (1, 2, 3):
        (_, ins), *_ = s.configure_train(rnd, [arr(1)], CLIENTS, np.random.default_rng(0))
        assert ins.config.frozen_classifier is True and ins.config.classifier_only is False
        assert ins.config.feddyn_alpha == 0.01
    (_, ins), *_ = s.configure_train(4, [arr(1)], CLIENTS, np.random.default_rng(0))
    assert ins.config.frozen_classifier is False and ins.config.classifier_only is True
    # without classifier rounds every round freezes it (the global model keeps its initial classifier)
    alone = strategy_of(RunConfig(rounds=3, freeze_classifier=True))
    assert all(alone.fit_config_for(r).frozen_classifier for r in (1, 2, 3))
    assert strategy_of(RunConfig(rounds=3)).fit_config_for(1).frozen_classifier is False
    with pytest.raises(ValidationError, match="FREEZE_CLASSIFIER under DP-SGD"):
        RunConfig(freeze_classifier=True, dp_clip_norm=1.0, dp_noise_multiplier=1.0)
    with pytest.raises(ValidationError, match="FREEZE_CLASSIFIER with dp_fedavg"):
        RunConfig(freeze_classifier=True, strategy="dp_fedavg")
