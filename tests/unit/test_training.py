"""LocalTrainer: reproducibility, FedProx's proximal term, linear corrections (SCAFFOLD / FedDyn)
and the DP-SGD step (per-example clipping, noise scale, vectorized vs loop), on a tiny CNN."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hemafed.schemas import FitConfig

pytest.importorskip("tensorflow")

from hemafed.models import build_model, get_exchanged, set_exchanged  # noqa: E402
from hemafed.training import LocalTrainer, UnsupportedConfig, make_dataset  # noqa: E402

SIZE, N = 16, 16
RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(0, 255, (N, SIZE, SIZE, 3)).astype(np.float32)
LABELS = np.array([0, 1] * (N // 2), dtype=np.int64)


def sgd(**kw) -> FitConfig:
    base = {"local_epochs": 1, "batch_size": N, "learning_rate": 0.1, "optimizer": "sgd", "augment": False}
    return FitConfig(**{**base, **kw})


def flat(ws) -> np.ndarray:
    return np.concatenate([np.asarray(w, np.float64).ravel() for w in ws])


class Runner:
    """One trainer reused across runs (as on a hospital): every run starts from the same weights."""

    def __init__(self, *, dropout: bool = True, per_example: str = "auto") -> None:
        model = build_model("cnn", 2, SIZE, seed=0)
        if not dropout:  # per-example and batched forward passes then see the same network
            model.get_layer("dropout").rate = 0.0
        self.trainer = LocalTrainer(model, per_example=per_example)
        self.w0 = get_exchanged(model)

    def delta(self, config: FitConfig, *, seed: int = 1, **kw):
        set_exchanged(self.trainer.model, self.w0)
        result = self.trainer.fit(IMAGES, LABELS, config, seed=seed, num_classes=2, **kw)
        return flat(get_exchanged(self.trainer.model)) - flat(self.w0), result


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner()


@pytest.fixture(scope="module")
def runner_nodrop() -> Runner:
    return Runner(dropout=False)


def test_fit_is_reproducible_for_a_seed(runner):
    cfg = sgd(batch_size=4, learning_rate=0.05)  # 4 steps, dropout on, shuffled
    a, res = runner.delta(cfg, seed=1)
    b, _ = runner.delta(cfg, seed=1)
    c, _ = runner.delta(cfg, seed=2)
    assert res.steps == 4 and res.num_examples == N and res.per_example is None
    np.testing.assert_array_equal(a, b)  # same seed: same shuffle, same dropout masks
    assert np.abs(a - c).max() > 1e-4  # another seed: another trajectory
    assert np.linalg.norm(a) > 1e-3


def test_fedprox_huge_mu_keeps_the_weights_near_the_global_model(runner, runner_nodrop):
    # Adam (the default client optimizer), 10 full-batch steps, mu = 1e4: the proximal gradient
    # dominates, the weights only oscillate around the global model (measured: 0.14x the drift)
    adam = {"local_epochs": 10, "batch_size": N, "learning_rate": 1e-3, "optimizer": "adam", "augment": False}
    free, _ = runner.delta(FitConfig(**adam))
    prox, res = runner.delta(FitConfig(**adam, proximal_mu=1e4))
    assert res.steps == 10
    assert np.linalg.norm(free) > 0.5
    assert 0 < np.linalg.norm(prox) < 0.2 * np.linalg.norm(free)
    # SGD with lr * mu = 1: each step lands one gradient step from the global model,
    # w - w_g <- (1 - lr mu)(w - w_g) - lr grad = -lr grad: the drift cannot accumulate (measured: 0.11x)
    free, _ = runner_nodrop.delta(sgd(local_epochs=10, learning_rate=0.005))
    prox, _ = runner_nodrop.delta(sgd(local_epochs=10, learning_rate=0.005, proximal_mu=200.0))
    assert np.linalg.norm(free) > 0.05
    assert 0 < np.linalg.norm(prox) < 0.2 * np.linalg.norm(free)


def test_corrections_shift_one_sgd_step_by_exactly_minus_lr_times_c(runner):
    c = [RNG.normal(0, 0.01, w.shape).astype(np.float32) for w in runner.w0]
    plain, _ = runner.delta(sgd(learning_rate=0.1))  # one step on the whole batch
    corrected, res = runner.delta(sgd(learning_rate=0.1), corrections=c)
    assert res.steps == 1
    np.testing.assert_allclose(corrected - plain, -0.1 * flat(c), atol=2e-7)
    with pytest.raises(ValueError, match="corrections"):
        runner.trainer.fit(IMAGES, LABELS, sgd(), seed=1, num_classes=2, corrections=c[:-1])


@pytest.mark.parametrize("mode", ["vectorized", "loop"])
def test_dp_step_without_clipping_or_noise_is_the_plain_step(runner_nodrop, mode):
    dp_runner = runner_nodrop if mode == "vectorized" else Runner(dropout=False, per_example="loop")
    plain, _ = runner_nodrop.delta(sgd(learning_rate=1.0))
    dp, res = dp_runner.delta(sgd(learning_rate=1.0, dp_clip_norm=1e6))  # C never binds, z = 0
    assert res.per_example == mode
    assert np.linalg.norm(plain) > 1.0
    np.testing.assert_allclose(dp, plain, atol=5e-6)  # mean of per-example gradients == batch gradient


def test_dp_per_example_clipping_bounds_the_update(runner_nodrop):
    clip = 0.01
    # lr 1, SGD, one step on a batch of 16, no noise: ||dw|| = ||sum_i clip(g_i)|| / 16 <= C
    plain, _ = runner_nodrop.delta(sgd(learning_rate=1.0))
    clipped, res = runner_nodrop.delta(sgd(learning_rate=1.0, dp_clip_norm=clip))
    assert res.steps == 1 and res.per_example == "vectorized"
    assert np.linalg.norm(plain) > 100 * clip  # the clip binds
    assert 0 < np.linalg.norm(clipped) <= clip * (1 + 1e-5)
    # one example per step: its gradient (norm >> C) is scaled to norm exactly C
    single, res1 = runner_nodrop.delta(sgd(learning_rate=1.0, batch_size=1, max_steps_per_epoch=1,
                                           dp_clip_norm=clip))
    assert res1.steps == 1
    assert np.linalg.norm(single) == pytest.approx(clip, rel=1e-5)
    # the microbatch loop clips the same way
    loop, res2 = Runner(dropout=False, per_example="loop").delta(sgd(learning_rate=1.0, dp_clip_norm=clip))
    assert res2.per_example == "loop"
    # each delta is a difference of float32 weights, so it carries their rounding: allow a few units
    # in the last place of the largest weight (the two paths sum the clipped gradients in another
    # order, and one ulp of a weight above 0.125 is already 1.5e-8)
    ulp = float(np.spacing(np.float32(np.abs(flat(runner_nodrop.w0)).max())))
    np.testing.assert_allclose(loop, clipped, rtol=0, atol=4 * ulp)


def test_dp_noise_is_added_with_std_z_c_over_batch(runner):
    lr, clip, z = 0.01, 1.0, 1.0
    cfg = sgd(learning_rate=lr, dp_clip_norm=clip, dp_noise_multiplier=z)
    a, res = runner.delta(cfg, seed=1, noise_seed=1)
    b, _ = runner.delta(cfg, seed=1, noise_seed=2)
    a_again, _ = runner.delta(cfg, seed=1, noise_seed=1)
    np.testing.assert_array_equal(a, a_again)  # the mechanism is reproducible given its noise seed
    # same data, start and dropout: one step differs only by lr (n_a - n_b) / B, n ~ N(0, (zC)^2 I_P)
    p = a.size
    expected = lr * z * clip * np.sqrt(2 * p) / N
    assert np.linalg.norm(a - b) == pytest.approx(expected, rel=0.03)
    # without noise_seed the noise comes from the OS: two runs differ as much
    c, _ = runner.delta(cfg, seed=1)
    d, _ = runner.delta(cfg, seed=1)
    assert np.linalg.norm(c - d) == pytest.approx(expected, rel=0.03)
    # z = 0: identical runs for identical seeds, whatever the noise seed
    no_noise = sgd(learning_rate=lr, dp_clip_norm=clip)
    e, _ = runner.delta(no_noise, seed=1, noise_seed=1)
    f, _ = runner.delta(no_noise, seed=1, noise_seed=2)
    np.testing.assert_array_equal(e, f)
    assert res.steps == 1 and np.linalg.norm(e) > 0


def test_dp_falls_back_to_the_microbatch_loop(monkeypatch, caplog):
    import tensorflow as tf

    def broken(*_a, **_k):
        raise ValueError("cannot vectorize")

    monkeypatch.setattr(tf, "vectorized_map", broken)
    r = Runner(dropout=False)
    with caplog.at_level(logging.WARNING, logger="hemafed.training"):
        dw, res = r.delta(sgd(learning_rate=1.0, dp_clip_norm=0.01))
    assert res.per_example == "loop"
    assert "microbatches of one example" in caplog.text
    assert 0 < np.linalg.norm(dw) <= 0.01 * (1 + 1e-5)


def test_dp_refuses_batchnorm_models():
    trainer = LocalTrainer(build_model("cnn-bn", 2, SIZE, seed=0))
    with pytest.raises(UnsupportedConfig, match="BatchNormalization"):
        trainer.fit(IMAGES, LABELS, sgd(dp_clip_norm=1.0, dp_noise_multiplier=1.0), seed=1, num_classes=2)
    with pytest.raises(ValueError, match="per_example"):
        LocalTrainer(trainer.model, per_example="jacobian")


def test_optimizer_state_resets_each_round_unless_kept():
    trainer = LocalTrainer(build_model("cnn", 2, SIZE, seed=0))
    cfg = FitConfig(local_epochs=1, batch_size=4, learning_rate=1e-3, optimizer="adam", augment=False)
    trainer.fit(IMAGES, LABELS, cfg, seed=1, num_classes=2)
    trainer.fit(IMAGES, LABELS, cfg, seed=2, num_classes=2)
    assert int(trainer._optimizer.iterations.numpy()) == 4  # a hospital round: a fresh Adam each time
    moments = [v.numpy().copy() for v in trainer._optimizer.variables if "momentum" in v.path]
    assert moments and any(np.abs(m).max() > 0 for m in moments)
    trainer.fit(IMAGES, LABELS, cfg.model_copy(update={"learning_rate": 5e-4}), seed=3, num_classes=2,
                reset_optimizer=False)
    assert int(trainer._optimizer.iterations.numpy()) == 8  # centralized epochs: one continuous Adam run
    assert float(trainer._optimizer.learning_rate.numpy()) == pytest.approx(5e-4)  # the epoch's rate applies


def _batches(ds, n=None):
    return [(x.numpy(), y.numpy()) for x, y, _ in (ds if n is None else ds.take(n))]


def _dataset(augment: bool, **kw):
    """13 images in batches of 4: 4 batches a pass, the last of 1 image."""
    return make_dataset(IMAGES[:13], np.arange(13) % 5, batch_size=4, shuffle=True, augment=augment, seed=7,
                        **kw)


@pytest.mark.parametrize("augment", [False, True])
def test_passes_are_fresh_passes_one_after_another(augment):
    """``passes=3``: the batches of three fresh iterations over the one-pass dataset, in order
    (each reshuffled from the same seed; augmented alike): the trainer's epochs from one iterator."""
    one = _dataset(augment)
    expected = [b for _ in range(3) for b in _batches(one)]
    got = _batches(_dataset(augment, passes=3))
    assert [y.tolist() for _, y in got] == [y.tolist() for _, y in expected] and len(got) == 12
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(got, expected))
    assert got[0][1].tolist() != got[4][1].tolist()  # each pass reshuffled


@pytest.mark.parametrize("augment", [False, True])
def test_a_cut_pass_is_the_start_of_a_fresh_pass_and_does_not_depend_on_the_prefetch(augment):
    """``batches_per_pass=2``: each pass the first two batches of a fresh pass (the same order);
    cut before augmentation, so two builds give the same images (a pass cut after the prefetch
    had augmented a timing-dependent number of batches ahead)."""
    one = _dataset(augment)
    expected = [b for _ in range(3) for b in _batches(one, 2)]
    runs = [_batches(_dataset(augment, batches_per_pass=2, passes=3)) for _ in range(3)]
    for got in runs:
        assert [y.tolist() for _, y in got] == [y.tolist() for _, y in expected]
        assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(got, runs[0]))
        if not augment:
            assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(got, expected))


def test_a_reset_optimizer_trains_as_a_new_one():
    """A hospital's second round (its optimizer's slots and step count zeroed in place) moves the
    weights exactly as a trainer that never trained before."""
    cfg = FitConfig(local_epochs=2, batch_size=4, learning_rate=1e-3, optimizer="adam", augment=False)
    used = LocalTrainer(build_model("cnn", 2, SIZE, seed=0))
    w0 = get_exchanged(used.model)
    used.fit(IMAGES, LABELS, cfg, seed=1, num_classes=2)
    set_exchanged(used.model, w0)
    used.fit(IMAGES, LABELS, cfg, seed=2, num_classes=2)
    fresh = LocalTrainer(build_model("cnn", 2, SIZE, seed=0))
    fresh.fit(IMAGES, LABELS, cfg, seed=2, num_classes=2)
    assert int(used._optimizer.iterations.numpy()) == 8
    np.testing.assert_array_equal(flat(get_exchanged(used.model)), flat(get_exchanged(fresh.model)))


def test_fedlc_offsets_by_hand():
    from hemafed.training import ABSENT_CLASS_OFFSET, calibration_offsets

    labels = np.array([0] * 16 + [1])  # n = (16, 1, 0)
    np.testing.assert_allclose(calibration_offsets(labels, 3, 2.0), [1.0, 2.0, ABSENT_CLASS_OFFSET])  # 2*16^-1/4, 2*1
    np.testing.assert_array_equal(calibration_offsets(labels, 3, 0.0), [0.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def three_classes():
    model = build_model("cnn", 3, SIZE, seed=0)
    model.get_layer("dropout").rate = 0.0  # the training forward pass equals predict()
    trainer = LocalTrainer(model)
    return trainer, get_exchanged(model)


def test_fedlc_loss_is_the_calibrated_cross_entropy_and_absent_classes_are_not_pushed_down(three_classes):
    trainer, w0 = three_classes
    labels = np.array([0] * 12 + [1] * 4)  # class 2 absent locally
    bias = [i for i, v in enumerate(trainer.model.trainable_variables) if v.path.endswith("classifier/bias")][0]

    def one_step(tau: float):
        set_exchanged(trainer.model, w0)
        probs = trainer.predict(IMAGES)
        res = trainer.fit(IMAGES, labels, sgd(logit_calibration_tau=tau), seed=1, num_classes=3)
        b = trainer.model.trainable_variables[bias].numpy() - w0_bias
        return probs, res, b

    w0_bias = np.zeros(3)
    set_exchanged(trainer.model, w0)
    w0_bias = trainer.model.trainable_variables[bias].numpy().copy()

    probs, res, plain_db = one_step(0.0)
    assert res.steps == 1
    np.testing.assert_allclose(res.train_loss, -np.mean(np.log(probs[np.arange(N), labels])), rtol=1e-4)
    assert plain_db[2] < -1e-4  # plain cross-entropy: the absent class's bias goes down (lr * mean p_2)

    probs, res, cal_db = one_step(2.0)
    z = np.log(np.clip(probs, 1e-7, 1)) - np.array([2 * 12 ** -0.25, 2 * 4 ** -0.25, 1e4])
    p_cal = np.exp(z - z.max(1, keepdims=True))
    p_cal /= p_cal.sum(1, keepdims=True)
    np.testing.assert_allclose(res.train_loss, -np.mean(np.log(p_cal[np.arange(N), labels])), rtol=1e-4)
    assert abs(cal_db[2]) < 1e-7  # out of the local softmax: no gradient on its score (float32 rounding)
    # SGD on the bias: delta_b = -lr * mean(p_cal - onehot), by hand
    onehot = np.eye(3)[labels]
    np.testing.assert_allclose(cal_db, -0.1 * (p_cal - onehot).mean(0), atol=2e-6)


def test_fedlc_and_dp_sgd_together_are_refused(three_classes):
    trainer, w0 = three_classes
    set_exchanged(trainer.model, w0)
    with pytest.raises(UnsupportedConfig, match="FedLC"):
        trainer.fit(IMAGES, LABELS, sgd(logit_calibration_tau=1.0, dp_clip_norm=1.0), seed=1, num_classes=3)


# ----------------------------------------------------------------- per-step rates, weight averaging, TTA

def test_step_learning_rates_replace_the_configured_rate(runner_nodrop):
    cfg = sgd(batch_size=4)  # 4 steps at 0.1
    plain, _ = runner_nodrop.delta(cfg)
    same, _ = runner_nodrop.delta(cfg, step_learning_rates=[0.1] * 4)
    np.testing.assert_array_equal(same, plain)
    # the last entry holds for later steps: [0.1] == [0.1] * 4
    np.testing.assert_array_equal(runner_nodrop.delta(cfg, step_learning_rates=[0.1])[0], plain)
    tiny, _ = runner_nodrop.delta(cfg, step_learning_rates=[1e-9])
    assert np.abs(tiny).max() < 1e-6 < np.abs(plain).max()
    # only the first step at 0.1, then (almost) nothing: the change is one SGD step's
    one, _ = runner_nodrop.delta(sgd(batch_size=4, max_steps_per_epoch=1))
    first, _ = runner_nodrop.delta(cfg, step_learning_rates=[0.1, 1e-9])
    np.testing.assert_allclose(first, one, atol=1e-6)
    for bad in ([], [0.1, 0.0], [float("nan")]):
        with pytest.raises(ValueError, match="step_learning_rates"):
            runner_nodrop.delta(cfg, step_learning_rates=bad)


def test_moving_average_follows_its_definition_step_by_step():
    model = build_model("cnn", 2, SIZE, seed=0)
    model.get_layer("dropout").rate = 0.0
    decay = 0.9
    trainer = LocalTrainer(model, ema_decay=decay)
    cfg = sgd(batch_size=4, max_steps_per_epoch=1)
    average = [v.numpy().astype(np.float64) for v in model.trainable_variables]  # starts at the initial weights
    for t in range(1, 6):
        trainer.fit(IMAGES, LABELS, cfg, seed=t, num_classes=2, reset_optimizer=False)
        d = min(decay, (1 + t) / (10 + t))  # 0.18, 0.25, ... then capped at 0.9
        average = [d * a + (1 - d) * v.numpy() for a, v in zip(average, model.trainable_variables)]
    assert trainer.ema_updates == 5
    trained = [v.numpy().copy() for v in model.trainable_variables]
    with trainer.averaged() as m:
        assert m is model
        for v, a in zip(model.trainable_variables, average):
            np.testing.assert_allclose(v.numpy(), a, rtol=1e-5, atol=1e-6)
        assert not all(np.allclose(v.numpy(), w) for v, w in zip(model.trainable_variables, trained))
    # the trained weights are back after the block
    for v, w in zip(model.trainable_variables, trained):
        np.testing.assert_array_equal(v.numpy(), w)


def test_without_moving_average_averaged_is_the_model_itself(runner):
    assert runner.trainer.ema_updates == 0
    before = [v.numpy().copy() for v in runner.trainer.model.trainable_variables]
    with runner.trainer.averaged() as m:
        assert m is runner.trainer.model
        for v, w in zip(m.trainable_variables, before):
            np.testing.assert_array_equal(v.numpy(), w)
    with pytest.raises(ValueError, match="ema_decay"):
        LocalTrainer(runner.trainer.model, ema_decay=1.0)


def test_dihedral_views_and_rotation_invariant_tta(runner):
    from hemafed.training import dihedral_views

    x = RNG.uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    views = dihedral_views(x)
    assert len(views) == 8 and np.array_equal(views[0], x)
    # 8 different images of the same pixels, and every symmetry of the square among them
    assert len({v.tobytes() for v in views}) == 8
    assert all(np.array_equal(np.sort(v, axis=None), np.sort(x, axis=None)) for v in views)
    as_bytes = {v.tobytes() for v in views}
    assert np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2))).tobytes() in as_bytes
    assert np.ascontiguousarray(x[:, ::-1]).tobytes() in as_bytes  # an up-down mirror too
    with pytest.raises(ValueError, match="square"):
        dihedral_views(x[:, :, :-1])
    trainer = runner.trainer
    plain = trainer.predict(x)
    per_view = trainer.predict_views(x)
    np.testing.assert_allclose(per_view[0], plain, rtol=1e-6)
    tta = trainer.predict(x, tta=True)
    np.testing.assert_allclose(tta, np.mean(per_view, axis=0), rtol=1e-6)
    np.testing.assert_allclose(tta.sum(axis=1), 1.0, atol=1e-5)
    # the mean over all 8 views does not change when the image is turned or mirrored
    np.testing.assert_allclose(trainer.predict(np.rot90(x, 1, axes=(1, 2)), tta=True), tta, atol=1e-6)
    np.testing.assert_allclose(trainer.predict(np.ascontiguousarray(x[:, :, ::-1]), tta=True), tta, atol=1e-6)


def test_classifier_only_moves_the_classifier_alone_and_as_the_plain_step_does(runner_nodrop):
    from hemafed.training import classifier_mask

    model = runner_nodrop.trainer.model
    heads = classifier_mask(model)
    assert heads[-2:] == [True, True] and sum(heads) == 2  # the last Dense layer's kernel and bias
    plain, _ = runner_nodrop.delta(sgd())  # one full-batch SGD step from w0
    head, result = runner_nodrop.delta(sgd(classifier_only=True))
    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
    on_head = np.concatenate([np.full(n, h) for n, h in zip(sizes, heads)])
    assert result.steps == 1
    np.testing.assert_array_equal(head[~on_head], 0.0)  # the feature extractor: bit for bit as sent
    assert np.abs(head[on_head]).max() > 0
    # at the same point the classifier's gradient is the same: the step equals the plain step's
    np.testing.assert_allclose(head[on_head], plain[on_head], rtol=1e-5, atol=1e-7)


def test_classifier_only_holds_under_adam_corrections_and_kept_optimizer_state(runner_nodrop):
    from hemafed.training import classifier_mask

    trainer = runner_nodrop.trainer
    heads = classifier_mask(trainer.model)
    adam = FitConfig(local_epochs=2, batch_size=4, learning_rate=1e-2, optimizer="adam", augment=False,
                     proximal_mu=0.5)
    runner_nodrop.delta(adam)  # leaves non-zero Adam moments for every variable
    set_exchanged(trainer.model, runner_nodrop.w0)
    before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    corrections = [np.full(v.shape, 0.3, np.float32) for v in trainer.model.trainable_variables]
    trainer.fit(IMAGES, LABELS, adam.model_copy(update={"classifier_only": True}), seed=3, num_classes=2,
                corrections=corrections, reset_optimizer=False)
    after = [v.numpy() for v in trainer.model.trainable_variables]
    for b, a, h in zip(before, after, heads):
        if h:
            assert np.abs(a - b).max() > 0
        else:
            np.testing.assert_array_equal(a, b)


def test_classifier_only_refusals(runner_nodrop):
    import keras

    from hemafed.training import classifier_mask

    with pytest.raises(UnsupportedConfig, match="not run under DP-SGD"):
        runner_nodrop.trainer.fit(IMAGES, LABELS, sgd(classifier_only=True, dp_clip_norm=1.0), seed=1, num_classes=2)
    inputs = keras.Input((4,))
    headless = keras.Model(inputs, keras.layers.Dense(2, name="out")(inputs), name="headless")
    with pytest.raises(UnsupportedConfig, match="no layer named 'classifier'"):
        classifier_mask(headless)


def test_frozen_classifier_trains_everything_but_the_classifier(runner_nodrop):
    """FedBABU: the classifier comes back bit for bit; the rest takes the plain step (one full-batch
    SGD step from the same point has the same gradient for it), and over several Adam steps with
    corrections the classifier still never moves."""
    from hemafed.training import classifier_mask

    model = runner_nodrop.trainer.model
    heads = classifier_mask(model)
    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
    on_head = np.concatenate([np.full(n, h) for n, h in zip(sizes, heads)])
    plain, _ = runner_nodrop.delta(sgd())
    body, result = runner_nodrop.delta(sgd(frozen_classifier=True))
    assert result.steps == 1
    np.testing.assert_array_equal(body[on_head], 0.0)
    np.testing.assert_allclose(body[~on_head], plain[~on_head], rtol=1e-5, atol=1e-7)
    assert np.abs(body[~on_head]).max() > 0
    adam = FitConfig(local_epochs=2, batch_size=4, learning_rate=1e-2, optimizer="adam", augment=False,
                     proximal_mu=0.5, frozen_classifier=True)
    corrections = [np.full(v.shape, 0.3, np.float32) for v in model.trainable_variables]
    moved, _ = runner_nodrop.delta(adam, corrections=corrections)
    np.testing.assert_array_equal(moved[on_head], 0.0)
    assert np.abs(moved[~on_head]).max() > 0


def test_frozen_classifier_refusals(runner_nodrop):
    with pytest.raises(UnsupportedConfig, match="FedBABU.*not run under DP-SGD"):
        runner_nodrop.trainer.fit(IMAGES, LABELS, sgd(frozen_classifier=True, dp_clip_norm=1.0), seed=1,
                                  num_classes=2)
    with pytest.raises(UnsupportedConfig, match="would train nothing"):
        runner_nodrop.trainer.fit(IMAGES, LABELS, sgd(frozen_classifier=True, classifier_only=True), seed=1,
                                  num_classes=2)


def test_classifier_only_leaves_batchnorm_statistics_alone():
    model = build_model("cnn-bn", 2, SIZE, seed=0)
    trainer = LocalTrainer(model)
    weights = [v for v in model.variables if "seed_generator" not in v.path]  # not the dropout RNG state
    before = [v.numpy().copy() for v in weights]
    trainer.fit(IMAGES, LABELS, sgd(batch_size=4, classifier_only=True), seed=1, num_classes=2)
    moved = [v.path for v, b in zip(weights, before) if not np.array_equal(v.numpy(), b)]
    assert sorted(moved) == ["classifier/bias", "classifier/kernel"]
    assert any("moving" in v.path for v in weights)  # there were statistics to leave alone
