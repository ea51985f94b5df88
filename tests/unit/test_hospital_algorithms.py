"""The hospital's side of FedDyn, SCAFFOLD and DP-SGD: state kept across rounds, the update rules
checked by hand from what went out and came back, refusals, and the reported epsilon."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hemafed.data.synthetic import CLASSES
from hemafed.exchange import ModelExchange
from hemafed.privacy import dpsgd_epsilon
from hemafed.schemas import FitConfig, FitInstructions, TaskSpec
from hemafed_hospital.agent import AgentError, HospitalAgent
from hemafed_hospital.settings import HospitalSettings
from tests.unit.helpers import synthetic_folder

pytest.importorskip("tensorflow")

TASK = TaskSpec(model="cnn", image_size=16, classes=list(CLASSES[:2]), seed=5)
LR = 0.05


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return synthetic_folder(tmp_path_factory.mktemp("h1"), n_per_class=8, size=16, classes=CLASSES[:2])


@pytest.fixture
def agent(data_dir) -> HospitalAgent:
    return HospitalAgent(HospitalSettings(hospital_id="h1", data_dir=data_dir))


@pytest.fixture(scope="module")
def initial() -> list[np.ndarray]:
    from hemafed.models import build_model, get_exchanged

    return get_exchanged(build_model("cnn", 2, 16, seed=5))


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """What the agent hands to LocalTrainer.fit (config and corrections), round by round."""
    from hemafed.training import LocalTrainer

    recorded: list[dict] = []
    original = LocalTrainer.fit

    def spy(self, images, labels, config, **kw):
        recorded.append({"config": config, "corrections": kw.get("corrections")})
        return original(self, images, labels, config, **kw)

    monkeypatch.setattr(LocalTrainer, "fit", spy)
    return recorded


def config(**kw) -> FitConfig:
    base = {"local_epochs": 1, "batch_size": 4, "learning_rate": LR, "optimizer": "sgd", "augment": False}
    return FitConfig(**{**base, **kw})


def fit(agent: HospitalAgent, weights, rnd: int, cfg: FitConfig, task: TaskSpec = TASK,
        aux=None, omit_unchanged: bool = False) -> ModelExchange:
    ins = FitInstructions(task=task, config=cfg, omit_unchanged=omit_unchanged)
    body = ModelExchange(weights=weights, round=rnd, extra={"instructions": ins.model_dump(mode="json")},
                         aux=aux or {}).to_bytes()
    return ModelExchange.from_bytes(agent.fit(body))


def f64(ws) -> list[np.ndarray]:
    return [np.asarray(w, np.float64) for w in ws]


# --------------------------------------------------------------------------- FedDyn


def test_feddyn_keeps_g_and_updates_it_by_the_rule(agent, initial, calls):
    alpha = 0.5
    cfg = config(feddyn_alpha=alpha)
    assert agent.state(TASK) is None
    r1 = fit(agent, initial, 1, cfg)
    # round 1: g = 0, so the correction is 0 and the quadratic coefficient is alpha
    assert calls[0]["config"].proximal_mu == alpha
    assert all(np.all(c == 0) for c in calls[0]["corrections"])
    g1 = agent.state(TASK).feddyn_g
    assert agent.state(TASK).round == 1
    for g, y, x in zip(g1, f64(r1.weights), f64(initial)):  # g <- 0 - alpha (theta_k - theta_global)
        np.testing.assert_allclose(g, -alpha * (y - x), rtol=0, atol=1e-12)
    assert max(np.abs(g).max() for g in g1) > 1e-5

    # round 2 from another global model: minimises L - <g1, t> + alpha/2 ||t - x2||^2 (correction -g1)
    x2 = [(w + 0.01).astype(np.float32) for w in r1.weights]
    r2 = fit(agent, x2, 2, cfg)
    assert calls[1]["config"].proximal_mu == alpha
    for c, g in zip(calls[1]["corrections"], g1):
        np.testing.assert_array_equal(c, -g)
    g2 = agent.state(TASK).feddyn_g
    for new, old, y, x in zip(g2, g1, f64(r2.weights), f64(x2)):
        np.testing.assert_allclose(new, old - alpha * (y - x), rtol=0, atol=1e-12)
    assert [g.shape for g in g2] == [w.shape for w in initial]
    assert set(r2.metrics) == {"train_loss", "train_accuracy", "fit_seconds", "steps", "local_val_accuracy",
                               "local_val_loss"}
    assert r2.aux == {}

    # round 2 sent again: starts again from g1, not g2
    fit(agent, x2, 2, cfg)
    for c, g in zip(calls[2]["corrections"], g1):
        np.testing.assert_array_equal(c, -g)
    # round 1 after round 2: a new run, g starts again from 0
    fit(agent, initial, 1, cfg)
    assert all(np.all(c == 0) for c in calls[3]["corrections"])
    # the state is per task
    assert agent.state(TASK.model_copy(update={"seed": 6})) is None


def test_feddyn_with_fedprox_adds_both_quadratics(agent, initial, calls):
    fit(agent, initial, 1, config(feddyn_alpha=0.5, proximal_mu=0.25))
    assert calls[0]["config"].proximal_mu == 0.75


# --------------------------------------------------------------------------- SCAFFOLD


def test_scaffold_refusals(agent, initial):
    rng = np.random.default_rng(1)
    c = [rng.normal(0, 0.01, w.shape).astype(np.float32) for w in initial]
    with pytest.raises(AgentError, match="plain SGD") as e:
        fit(agent, initial, 1, config(scaffold=True, optimizer="adam"), aux={"c": c})
    assert e.value.status == 422
    with pytest.raises(AgentError, match="choose one") as e:
        fit(agent, initial, 1, config(scaffold=True, feddyn_alpha=0.1), aux={"c": c})
    assert e.value.status == 422
    with pytest.raises(AgentError, match=r"aux\['c'\] is missing") as e:
        fit(agent, initial, 1, config(scaffold=True))
    assert e.value.status == 422
    with pytest.raises(AgentError, match=r"tensor 0: shape") as e:
        fit(agent, initial, 1, config(scaffold=True), aux={"c": [c[0][..., :1], *c[1:]]})
    assert e.value.status == 422
    with pytest.raises(AgentError, match="expected 20 tensors, got 19") as e:
        fit(agent, initial, 1, config(scaffold=True), aux={"c": c[:-1]})
    assert e.value.status == 422
    assert agent.state(TASK) is None  # nothing trained, nothing kept


def test_scaffold_option_ii_control_variates(agent, initial, calls):
    rng = np.random.default_rng(2)
    c = [rng.normal(0, 0.01, w.shape).astype(np.float32) for w in initial]
    cfg = config(scaffold=True)
    r1 = fit(agent, initial, 1, cfg, aux={"c": c})
    k = int(r1.metrics["steps"])
    assert k == int(np.ceil(r1.num_examples / 4)) and k >= 3
    # round 1: c_i = 0, correction c - 0
    for corr, ck in zip(calls[0]["corrections"], c):
        np.testing.assert_allclose(corr, ck, rtol=0, atol=0)
    dc1 = r1.aux["delta_c"]
    assert set(r1.aux) == {"delta_c"}
    assert [(d.shape, d.dtype) for d in dc1] == [(w.shape, w.dtype) for w in initial]
    # option II: delta_c = c_i+ - c_i = -c + (x - y) / (K lr)
    for d, ck, x, y in zip(dc1, f64(c), f64(initial), f64(r1.weights)):
        np.testing.assert_allclose(d, -ck + (x - y) / (k * LR), rtol=1e-5, atol=1e-7)
    c_i1 = agent.state(TASK).scaffold_c
    for ci, d in zip(c_i1, dc1):  # c_i was 0: c_i+ = delta_c
        np.testing.assert_allclose(ci, d, rtol=1e-6, atol=1e-9)

    # round 2: correction c - c_i1; c_i2 = c_i1 + delta_c2 = c_i1 - c + (x2 - y2) / (K lr)
    x2 = r1.weights
    r2 = fit(agent, x2, 2, cfg, aux={"c": c})
    for corr, ck, ci in zip(calls[1]["corrections"], f64(c), c_i1):
        np.testing.assert_allclose(corr, ck - ci, rtol=0, atol=1e-12)
    c_i2 = agent.state(TASK).scaffold_c
    for new, old, ck, x, y, d in zip(c_i2, c_i1, f64(c), f64(x2), f64(r2.weights), r2.aux["delta_c"]):
        np.testing.assert_allclose(new, old - ck + (x - y) / (k * LR), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(d, new - old, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- DP-SGD


def test_dp_sgd_reports_and_logs_epsilon(agent, initial, caplog):
    z, delta = 1.1, 1e-5
    cfg = config(dp_clip_norm=1.0, dp_noise_multiplier=z, dp_delta=delta)
    with caplog.at_level(logging.INFO, logger="hemafed.hospital"):
        r1 = fit(agent, initial, 1, cfg)
    n, steps = r1.num_examples, int(r1.metrics["steps"])
    assert n == 14 and steps == 4  # 16 images less 2 held out (one per class); ceil(14 / 4) steps
    eps1 = dpsgd_epsilon(n, 4, 1, z, delta, max_steps_per_epoch=4)
    assert {"dp_epsilon", "dp_epsilon_round", "dp_delta"} <= set(r1.metrics)
    assert r1.metrics["dp_epsilon"] == pytest.approx(eps1, rel=1e-9)
    assert r1.metrics["dp_epsilon_round"] == pytest.approx(eps1, rel=1e-9)
    assert r1.metrics["dp_delta"] == delta
    assert 1.0 < eps1 < 20.0
    assert f"epsilon {eps1:.3f} this round, {eps1:.3f} in total" in caplog.text
    # round 2: the hospital's total composes both rounds' 8 steps
    r2 = fit(agent, r1.weights, 2, cfg)
    eps2 = dpsgd_epsilon(n, 4, 2, z, delta, max_steps_per_epoch=4)
    assert r2.metrics["dp_epsilon"] == pytest.approx(eps2, rel=1e-9)
    assert r2.metrics["dp_epsilon_round"] == pytest.approx(eps1, rel=1e-9)
    assert eps2 > eps1
    # clipping without noise: no epsilon to report
    r3 = fit(agent, r2.weights, 3, config(dp_clip_norm=1.0))
    assert "dp_epsilon" not in r3.metrics


def test_dp_sgd_refused_for_batchnorm_models(agent):
    from hemafed.models import build_model, get_exchanged

    task = TASK.model_copy(update={"model": "cnn-bn"})
    weights = get_exchanged(build_model("cnn-bn", 2, 16, seed=5))
    with pytest.raises(AgentError, match="BatchNormalization") as e:
        fit(agent, weights, 1, config(dp_clip_norm=1.0, dp_noise_multiplier=1.0), task=task)
    assert e.value.status == 422


# --------------------------------------------------------------------------- FedLC


def test_fedlc_tau_reaches_the_trainer_and_dp_sgd_with_it_is_refused(agent, initial, calls):
    r1 = fit(agent, initial, 1, config(logit_calibration_tau=1.0))
    assert calls[0]["config"].logit_calibration_tau == 1.0
    assert np.isfinite(r1.metrics["train_loss"]) and r1.metrics["steps"] > 0
    assert [w.shape for w in r1.weights] == [w.shape for w in initial]
    with pytest.raises(AgentError, match="FedLC") as e:
        fit(agent, r1.weights, 2, config(logit_calibration_tau=1.0, dp_clip_norm=1.0, dp_noise_multiplier=1.0))
    assert e.value.status == 422


# --------------------------------------------------------------------------- classifier re-training


def test_replies_leave_out_the_tensors_training_did_not_change(agent, initial):
    """With ``omit_unchanged`` a classifier round's reply carries the classifier alone, a FedBABU
    round's everything but it, a plain round's every tensor; the positions left out are listed, and
    filling them from what was sent gives the full model. Without it: every tensor, no list."""
    from hemafed.exchange import fill_unchanged
    from hemafed.models import build_model
    from hemafed.training import classifier_mask

    heads = classifier_mask(build_model("cnn", 2, 16, seed=5))
    body_positions = [i for i, h in enumerate(heads) if not h]
    head_positions = [i for i, h in enumerate(heads) if h]
    assert body_positions and head_positions
    crt = fit(agent, initial, 1, config(classifier_only=True), omit_unchanged=True)
    assert crt.extra == {"hospital_id": "h1", "unchanged": body_positions, "accepts": ["held"]}
    assert len(crt.weights) == len(head_positions) and crt.num_examples > 0
    full = fill_unchanged(initial, crt.weights, crt.extra["unchanged"])
    for i, (sent, back) in enumerate(zip(initial, full)):
        if i in head_positions:
            assert np.abs(back - sent).max() > 0
        else:
            assert back is sent
    babu = fit(agent, initial, 2, config(frozen_classifier=True), omit_unchanged=True)
    assert babu.extra["unchanged"] == head_positions
    assert [w.shape for w in babu.weights] == [initial[i].shape for i in body_positions]
    plain = fit(agent, initial, 3, config(), omit_unchanged=True)
    assert "unchanged" not in plain.extra and len(plain.weights) == len(initial)
    legacy = fit(agent, initial, 4, config(classifier_only=True))  # not asked: the full model, as before
    assert "unchanged" not in legacy.extra and len(legacy.weights) == len(initial)
    assert crt.nbytes == sum(initial[i].nbytes for i in head_positions) < legacy.nbytes / 10


def test_classifier_round_keeps_feddyn_state_and_returns_the_features_as_sent(agent, initial, calls):
    from hemafed.models import build_model
    from hemafed.training import classifier_mask

    heads = classifier_mask(build_model("cnn", 2, 16, seed=5))
    r1 = fit(agent, initial, 1, config(feddyn_alpha=0.5))
    g1 = [g.copy() for g in agent.state(TASK).feddyn_g]
    r2 = fit(agent, r1.weights, 2, config(classifier_only=True))
    assert calls[1]["config"].classifier_only is True and calls[1]["corrections"] is None
    for sent, back, head in zip(r1.weights, r2.weights, heads):
        if head:
            assert np.abs(back - sent).max() > 0
        else:
            np.testing.assert_array_equal(back, sent)
    for kept, g in zip(agent.state(TASK).feddyn_g, g1):  # FedDyn's g_k waits for the next FedDyn round
        np.testing.assert_array_equal(kept, g)
    with pytest.raises(AgentError, match="not run under DP-SGD") as e:
        fit(agent, r2.weights, 3, config(classifier_only=True, dp_clip_norm=1.0, dp_noise_multiplier=1.0))
    assert e.value.status == 422


def test_fedbabu_round_returns_the_classifier_as_sent(agent, initial, calls):
    """FedBABU (frozen_classifier) under FedDyn: the classifier comes back bit for bit, the rest
    trained; FedDyn's g_k stays 0 on the classifier (t - global is 0 there); DP-SGD with it is a 422."""
    from hemafed.models import build_model
    from hemafed.training import classifier_mask

    heads = classifier_mask(build_model("cnn", 2, 16, seed=5))
    r1 = fit(agent, initial, 1, config(feddyn_alpha=0.5, frozen_classifier=True))
    assert calls[0]["config"].frozen_classifier is True
    for sent, back, head, g in zip(initial, r1.weights, heads, agent.state(TASK).feddyn_g):
        if head:
            np.testing.assert_array_equal(back, sent)
            np.testing.assert_array_equal(g, 0.0)
        else:
            assert np.abs(back - sent).max() > 0
    with pytest.raises(AgentError, match="FedBABU") as e:
        fit(agent, r1.weights, 2, config(frozen_classifier=True, dp_clip_norm=1.0, dp_noise_multiplier=1.0))
    assert e.value.status == 422
