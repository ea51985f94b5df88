"""Local training and evaluation (TensorFlow). Used by the hospital agent, the aggregator's
final test evaluation and the centralized baseline.

One custom training step covers the local objectives of the strategies:

    loss = CE(y, f(x; w)) + (mu / 2) * ||w - w_global||^2          (FedProx, FedDyn's quadratic)
    grad += linear_correction                                      (SCAFFOLD's c - c_i, FedDyn's -g_k)

With ``FitConfig.logit_calibration_tau = tau > 0`` (FedLC, Zhang et al. 2022, Eq. 7) the
cross-entropy is taken over the calibrated logits ``log p_c(x) - tau * n_c^(-1/4)`` (``n_c``: the
local training examples of class ``c``; log-probabilities differ from the logits by a constant per
example, which the softmax cancels); a class with ``n_c = 0`` has an infinite offset, so it drops
out of the local softmax and the hospital does not push its score down. Only training is
calibrated: predictions and evaluation use the plain model.

The client optimizer is fresh each round (its slots are reset), as in FedAvg / TFF.

With ``FitConfig.classifier_only`` (classifier re-training rounds) the forward pass runs in
inference mode (the features the model predicts with) and only the variables of the layer named
``classifier`` get a gradient and an optimizer update (nothing is back-propagated into the feature
extractor); the feature extractor comes back bit for bit as sent. With
``FitConfig.frozen_classifier`` (FedBABU, Oh et al. 2022) it is the other way round: training-mode
forward pass, the classifier gets no gradient and comes back as sent, everything else trains.

A second compiled step does sample-level DP-SGD (Abadi et al. 2016, Algorithm 1) when
``FitConfig.dp_clip_norm > 0``: per-example gradients of the data loss (``tf.vectorized_map``
over the batch, or a loop over microbatches of one example where the model does not vectorize),
each clipped to L2 norm <= C over all variables together, summed, plus Gaussian noise
N(0, (z C)^2 I) (z = ``dp_noise_multiplier``; clipping only when z = 0), divided by the batch
size; the data-independent terms (the proximal gradient mu (w - w_global) and the linear
correction) are added after the noise, then the optimizer steps. The noise is drawn from a
fresh OS-random seed unless the caller passes ``noise_seed`` (tests only: a seed the aggregator
could guess lets it subtract the noise). Models that normalise with batch statistics
(trainable BatchNormalization) are refused: per-example gradients are not defined for them
(use the GroupNorm ``cnn``, as Opacus asks for GroupNorm). Costs: the vectorized step holds one
gradient per example (batch x model size in memory); in it, random layers (dropout) draw one mask
per batch, shared by its examples (pfor runs the seed update once), while the loop draws one per
example; the masks never depend on the data, so the privacy guarantee is the same.

Optional, for one long training run (the centralized baseline): ``fit(step_learning_rates=...)``
sets the rate before every step (a linear warm-up, :func:`hemafed.lr.warmup_rates`), and
``LocalTrainer(ema_decay=d)`` keeps an exponential moving average of the trainable weights
(Polyak averaging; ``decay_t = min(d, (1 + t) / (10 + t))`` as ``tf.train.ExponentialMovingAverage``
with ``num_updates``), which ``with trainer.averaged():`` swaps into the model for evaluation and
saving. ``predict(tta=True)`` averages the softmax over the 8 dihedral views (4 rotations by 90
degrees, each also mirrored): a blood cell on a slide has no orientation.

``fit`` is deterministic for a given ``seed`` (shuffling, augmentation and the model's dropout
seeds all derive from it), apart from DP noise drawn without ``noise_seed``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from hemafed.models import leaf_layers  # noqa: E402
from hemafed.schemas import FitConfig  # noqa: E402

log = logging.getLogger("hemafed.training")
PER_EXAMPLE_MODES = ("auto", "vectorized", "loop")


class UnsupportedConfig(ValueError):
    """A FitConfig this trainer cannot honour for its model (e.g. DP-SGD with BatchNorm)."""


def configure_threads(intra_op: int, inter_op: int = 1) -> None:
    """Cap TensorFlow's CPU threads (call before the first op runs; later calls are ignored)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:  # already initialised: the first setting stays
        pass


def augmentation_pipeline(seed: int) -> keras.Sequential:
    """On-the-fly augmentation with the PBC study's settings: rotation +-20 deg, horizontal and
    vertical flips, 10% shifts, shear, 10% zoom, brightness x[0.2, 1.0] (multiplicative)."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
            keras.layers.RandomRotation(20.0 / 360.0, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomShear(x_factor=0.1, y_factor=0.1, fill_mode="reflect", seed=seed + 3),
            keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 4),
        ],
        name="augment",
    )


def _brightness(x: tf.Tensor, low: float, seed: int) -> tf.Tensor:
    factor = tf.random.stateless_uniform(
        tf.stack([tf.shape(x)[0], 1, 1, 1]), seed=[seed, 7], minval=low, maxval=1.0
    )
    return tf.clip_by_value(x * factor, 0.0, 255.0)


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool,
    augment: bool,
    seed: int,
    sample_weights: np.ndarray | None = None,
    brightness_low: float = 0.2,
    batches_per_pass: int = 0,
    passes: int = 1,
) -> tf.data.Dataset:
    """Batches of ``(image, label, sample weight)``; ``passes`` passes over the data one after
    another (each reshuffled, as a fresh iteration over a one-pass dataset would be), each cut at
    ``batches_per_pass`` batches when that is > 0. The cut comes before augmentation, so no image
    is augmented that is not trained on and the augmentations drawn do not depend on how far the
    prefetch got."""
    x = images.astype(np.float32, copy=False) if images.dtype != np.float32 else images
    sw = np.ones(len(labels), np.float32) if sample_weights is None else sample_weights.astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, labels.astype(np.int32), sw))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if batches_per_pass > 0:
        ds = ds.take(batches_per_pass)
    if passes > 1:
        ds = ds.repeat(passes)
    if augment:
        aug = augmentation_pipeline(seed)
        ds = ds.map(
            lambda a, b, c: (_brightness(aug(a, training=True), brightness_low, seed), b, c),
            num_parallel_calls=1,
        )
    return ds.prefetch(2)


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-sample weights n / (K * n_c) for the classes present (balanced weighting)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    w[present] = len(labels) / (present.sum() * counts[present])
    return w[labels].astype(np.float32)


#: the offset of a class absent from the local data: exp(-1e4) is 0, so it leaves the softmax
ABSENT_CLASS_OFFSET = 1e4


def classifier_mask(model: keras.Model) -> list[bool]:
    """For each of ``model.trainable_variables``: is it a variable of the layer named ``classifier``
    (the last Dense layer of every HemaFed model)? Raises :class:`UnsupportedConfig` without one."""
    try:
        head = model.get_layer("classifier")
    except ValueError:
        raise UnsupportedConfig(f"model {model.name} has no layer named 'classifier' to re-train") from None
    ids = {id(v) for v in head.trainable_variables}
    if not ids:
        raise UnsupportedConfig(f"the classifier layer of {model.name} has no trainable variables")
    return [id(v) in ids for v in model.trainable_variables]


def calibration_offsets(labels: np.ndarray, num_classes: int, tau: float) -> np.ndarray:
    """FedLC's per-class logit offsets ``tau * n_c^(-1/4)`` from the local label counts (a class
    with no local example: ``ABSENT_CLASS_OFFSET``, i.e. out of the softmax); zeros for tau = 0."""
    if tau == 0:
        return np.zeros(num_classes, np.float32)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    out = np.full(num_classes, ABSENT_CLASS_OFFSET)
    present = counts > 0
    out[present] = tau * counts[present] ** -0.25
    return out.astype(np.float32)


def make_optimizer(config: FitConfig) -> keras.optimizers.Optimizer:
    if config.optimizer == "adam":
        return keras.optimizers.Adam(config.learning_rate)
    if config.optimizer == "sgdm":
        return keras.optimizers.SGD(config.learning_rate, momentum=0.9)
    return keras.optimizers.SGD(config.learning_rate)


@dataclass
class TrainResult:
    num_examples: int
    train_loss: float
    train_accuracy: float
    seconds: float
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    #: DP-SGD only: how per-example gradients were computed ("vectorized" or "loop")
    per_example: str | None = None


def batch_statistics_layers(model: keras.Model) -> list[str]:
    """Names of the trainable BatchNormalization layers (they normalise with batch statistics,
    which couples the examples of a batch: no per-example gradients, hence no DP-SGD)."""
    return [
        layer.name for layer in leaf_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


@contextlib.contextmanager
def _quiet_tf_warnings():
    """tf.vectorized_map warns once per trace for every op it runs as a loop (``Conv2DBackpropFilter
    uses a while_loop``): expected, and noise in hospital logs."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _zeroing(variables):
    """A function that sets every one of ``variables`` to zero in one graph call (a hospital zeroes
    its client optimizer's slots every round; an eager assign per variable, 42 of them for Adam on
    the compact CNN, took 6.5 ms against 0.4 ms, alone on one TF thread)."""
    variables = list(variables)

    @tf.function
    def zero():
        for v in variables:
            v.assign(tf.zeros(v.shape, v.dtype))

    return zero


class LocalTrainer:
    """Holds one model and its compiled training step; reused across rounds."""

    def __init__(self, model: keras.Model, *, per_example: str = "auto", ema_decay: float = 0.0) -> None:
        """``per_example``: how the DP-SGD step gets per-example gradients: ``vectorized``
        (``tf.vectorized_map``), ``loop`` (microbatches of one example in a ``tf.while_loop``:
        slower, works for any model) or ``auto`` (vectorized, falling back to the loop if the
        model cannot be vectorized). ``ema_decay`` in (0, 1): keep an exponential moving average
        of the trainable weights, updated after every step (0: none)."""
        if per_example not in PER_EXAMPLE_MODES:
            raise ValueError(f"per_example must be one of {PER_EXAMPLE_MODES}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError("ema_decay must be in [0, 1)")
        self.model = model
        self._optimizer: keras.optimizers.Optimizer | None = None
        self._optimizer_kind: str | None = None
        self._steps: dict[bool, object] = {}
        self._per_example = per_example
        self._dp_steps: dict[str, object] = {}
        self._zero_optimizer = None
        self._no_corrections: list[tf.Tensor] | None = None
        self._seed_generators = [
            sg for layer in model._flatten_layers() for sg in getattr(layer, "_seed_generators", None) or []
        ]
        self._loss = keras.losses.SparseCategoricalCrossentropy(reduction="none")
        self._forward = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        self.ema_decay = float(ema_decay)
        self._ema: list[tf.Variable] = []
        self._ema_update = None
        if self.ema_decay:
            self._ema = [tf.Variable(v.numpy(), trainable=False, name=f"ema_{i}")
                         for i, v in enumerate(model.trainable_variables)]
            self._ema_updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="ema_updates")
            self._ema_update = self._build_ema_update()

    # ---------------------------------------------------------------- weight averaging (EMA)
    def _build_ema_update(self):
        variables, averages, count, decay = self.model.trainable_variables, self._ema, self._ema_updates, self.ema_decay

        @tf.function
        def update():
            count.assign_add(1)
            t = tf.cast(count, tf.float32)
            d = tf.minimum(tf.constant(decay, tf.float32), (1.0 + t) / (10.0 + t))
            for a, v in zip(averages, variables):
                a.assign(d * a + (1.0 - d) * tf.cast(v, a.dtype))

        return update

    @property
    def ema_updates(self) -> int:
        """How many steps the moving average has seen (0 without ``ema_decay``)."""
        return int(self._ema_updates.numpy()) if self._ema else 0

    @contextlib.contextmanager
    def averaged(self):
        """Inside the block the model holds the moving-average weights (as it is after the block
        when there is no average: ``ema_decay`` 0); the trained weights come back on exit."""
        if not self._ema:
            yield self.model
            return
        variables = self.model.trainable_variables
        trained = [v.numpy() for v in variables]
        for v, a in zip(variables, self._ema):
            v.assign(a)
        try:
            yield self.model
        finally:
            for v, w in zip(variables, trained):
                v.assign(w)

    def _prepare_optimizer(self, config: FitConfig, reset: bool = True) -> keras.optimizers.Optimizer:
        if self._optimizer is None or self._optimizer_kind != config.optimizer:
            self._optimizer = make_optimizer(config)
            self._optimizer.build(self.model.trainable_variables)
            self._optimizer_kind = config.optimizer
            self._steps = {}
            self._dp_steps = {}
            self._zero_optimizer = _zeroing(self._optimizer.variables)
        elif reset:  # a fresh client optimizer each round: zero its slots and step counter
            self._zero_optimizer()
        self._optimizer.learning_rate.assign(config.learning_rate)
        return self._optimizer

    def _build_step(self, calibrated: bool, training: bool = True, trains: tuple[bool, ...] | None = None):
        """The training step; ``calibrated``: FedLC's loss over ``log p - offsets`` (one offset per
        class, ``calibration_offsets``), else the plain cross-entropy (``offsets`` unused).
        ``training=False`` (classifier-only rounds): the forward pass in inference mode, so the
        classifier trains on the features the model predicts with (no dropout, BatchNorm's moving
        statistics used and left unchanged). ``trains`` (one flag per trainable variable; None: all):
        the gradient is taken, and the optimizer applied, for the flagged variables only, so a
        classifier round does not back-propagate through the frozen feature extractor."""
        model, optimizer, loss_fn = self.model, self._optimizer, self._loss
        variables = model.trainable_variables
        picked = [i for i, t in enumerate(trains or [True] * len(variables)) if t]
        trained = [variables[i] for i in picked]

        @tf.function(reduce_retracing=True)
        def step(x, y, sw, anchors, corrections, mu, offsets):
            with tf.GradientTape() as tape:
                probs = model(x, training=training)
                if calibrated:
                    log_p = tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0))
                    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
                        labels=y, logits=log_p - offsets[None, :])
                else:
                    per_example = loss_fn(y, probs)
                loss = tf.reduce_sum(per_example * sw) / tf.maximum(tf.reduce_sum(sw), 1e-8)
                prox = tf.add_n([tf.reduce_sum(tf.square(v - a)) for v, a in zip(variables, anchors)])
                total = loss + 0.5 * mu * prox
            grads = tape.gradient(total, trained)
            grads = [g + corrections[i] for g, i in zip(grads, picked)]
            optimizer.apply_gradients(zip(grads, trained))
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), y), tf.float32))
            return loss, correct

        return step

    def _build_dp_step(self, per_example: str):
        """DP-SGD step: clipped per-example gradients of the (sample-weighted) data loss, summed,
        plus N(0, (noise_std)^2) per coordinate, divided by the batch size; then the proximal
        gradient and the correction; then the optimizer."""
        model, optimizer, loss_fn = self.model, self._optimizer, self._loss
        variables = model.trainable_variables
        zero = tf.UnconnectedGradients.ZERO

        def one_example(xi, yi, swi, clip):
            with tf.GradientTape() as tape:
                probs = model(xi[None], training=True)
                loss = loss_fn(yi[None], probs)[0]
                weighted = loss * swi
            grads = tape.gradient(weighted, variables, unconnected_gradients=zero)
            norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads]))
            scale = clip / tf.maximum(norm, clip)  # min(1, C / ||g||): the norm over ALL variables
            correct = tf.cast(tf.equal(tf.argmax(probs[0], output_type=tf.int32), yi), tf.float32)
            return [g * scale for g in grads], loss, correct

        def clipped_sum_vectorized(x, y, sw, clip):
            grads, losses, correct = tf.vectorized_map(
                lambda a: one_example(a[0], a[1], a[2], clip), (x, y, sw))
            return [tf.reduce_sum(g, axis=0) for g in grads], losses, correct

        def clipped_sum_loop(x, y, sw, clip):
            n = tf.shape(x)[0]
            summed = [tf.zeros(v.shape, v.dtype) for v in variables]
            losses = tf.TensorArray(tf.float32, size=n)
            correct = tf.TensorArray(tf.float32, size=n)
            for i in tf.range(n):
                g, loss_i, correct_i = one_example(x[i], y[i], sw[i], clip)
                summed = [s + gi for s, gi in zip(summed, g)]
                losses = losses.write(i, loss_i)
                correct = correct.write(i, correct_i)
            return summed, losses.stack(), correct.stack()

        clipped_sum = clipped_sum_vectorized if per_example == "vectorized" else clipped_sum_loop

        @tf.function(reduce_retracing=True)
        def dp_step(x, y, sw, anchors, corrections, mu, clip, noise_std, noise_seed):
            summed, losses, correct = clipped_sum(x, y, sw, clip)
            batch = tf.cast(tf.shape(x)[0], tf.float32)
            seeds = tf.random.experimental.stateless_split(noise_seed, num=len(variables))
            grads = []
            for i, (s, v, a, c) in enumerate(zip(summed, variables, anchors, corrections)):
                noise = tf.random.stateless_normal(tf.shape(s), seed=seeds[i], dtype=s.dtype)
                grads.append((s + noise_std * noise) / batch + mu * (v - a) + c)
            optimizer.apply_gradients(zip(grads, variables))
            loss = tf.reduce_sum(losses * sw) / tf.maximum(tf.reduce_sum(sw), 1e-8)
            return loss, tf.reduce_sum(correct)

        return dp_step

    def _dp_call(self, *args):
        """Run the DP step; in ``auto`` mode the first call tries ``vectorized`` and falls back to
        ``loop`` if the model does not vectorize (the failure is at trace time, before any update)."""
        mode = self._per_example
        if mode == "auto":
            if "vectorized" in self._dp_steps:
                mode = "vectorized"
            elif "loop" in self._dp_steps:
                mode = "loop"
        with _quiet_tf_warnings():
            if mode == "auto":
                try:
                    self._dp_steps["vectorized"] = self._build_dp_step("vectorized")
                    return self._dp_steps["vectorized"](*args), "vectorized"
                except Exception as exc:  # noqa: BLE001 - any tracing failure of pfor: use the loop
                    self._dp_steps.pop("vectorized", None)
                    log.warning("per-example gradients cannot be vectorized for %s (%s: %s); using "
                                "microbatches of one example", self.model.name, type(exc).__name__,
                                str(exc)[:200])
                    mode = "loop"
            if mode not in self._dp_steps:
                self._dp_steps[mode] = self._build_dp_step(mode)
            return self._dp_steps[mode](*args), mode

    def _reseed(self, seed: int) -> None:
        """Derive the model's random layers' seeds (dropout) from the round's seed."""
        for i, sg in enumerate(self._seed_generators):
            derived = (int(seed) * 1_000_003 + 7919 * i) % 2_147_483_647
            sg.state.assign(np.array([derived, 0], dtype=sg.state.dtype))

    def fit(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        config: FitConfig,
        *,
        seed: int,
        num_classes: int,
        corrections: list[np.ndarray] | None = None,
        noise_seed: int | None = None,
        reset_optimizer: bool = True,
        step_learning_rates: Sequence[float] | None = None,
    ) -> TrainResult:
        """Train in place for ``config.local_epochs`` epochs; returns the training summary.

        ``corrections`` (one array per trainable variable) is added to every step's gradient.
        With ``config.dp_clip_norm > 0`` the DP-SGD step is used; its noise comes from
        ``noise_seed`` when given (reproducible: tests), else from the OS's randomness.
        ``reset_optimizer=False`` keeps the optimizer's slots (Adam moments, step count) from the
        previous call: centralized training calls ``fit`` once per epoch and is one optimizer run;
        a hospital starts every round with a fresh client optimizer (the default).
        ``step_learning_rates``: the rate of each step of this call (step ``i`` uses entry ``i``, the
        last entry holds for later steps); else ``config.learning_rate`` for every step.
        """
        if len(labels) == 0:
            raise ValueError("no training examples")
        dp = config.dp_clip_norm > 0
        calibrated = config.logit_calibration_tau > 0
        if dp and calibrated:
            raise UnsupportedConfig(
                "FedLC's logit calibration uses the local class counts in the loss, which DP-SGD's "
                "guarantee does not cover: use one or the other")
        if dp and config.classifier_only:
            raise UnsupportedConfig(
                "classifier-only rounds are not run under DP-SGD: their privacy cost would need its own "
                "accounting; use one or the other")
        if config.classifier_only and config.frozen_classifier:
            raise UnsupportedConfig("classifier_only and frozen_classifier together would train nothing")
        if dp and config.frozen_classifier:
            raise UnsupportedConfig(
                "a frozen classifier (FedBABU) is not run under DP-SGD: the DP step clips and noises "
                "every variable; use one or the other")
        if dp:
            bn = batch_statistics_layers(self.model)
            if bn:
                raise UnsupportedConfig(
                    f"DP-SGD needs per-example gradients, which BatchNormalization layers "
                    f"({', '.join(bn[:3])}) do not have: use a GroupNorm model (e.g. 'cnn') or freeze them")
        t0 = time.perf_counter()
        self._prepare_optimizer(config, reset=reset_optimizer)
        self._reseed(seed)
        variables = self.model.trainable_variables
        if config.classifier_only:
            trains = classifier_mask(self.model)
        elif config.frozen_classifier:
            trains = [not head for head in classifier_mask(self.model)]
        else:
            trains = [True] * len(variables)
        key = (calibrated, not config.classifier_only, tuple(trains))
        if key not in self._steps:
            self._steps[key] = self._build_step(*key)
        step_fn = self._steps[key]
        offsets = tf.constant(calibration_offsets(labels, num_classes, config.logit_calibration_tau))
        anchors = [tf.constant(v.numpy()) for v in variables]
        frozen = [(v, a) for v, a, t in zip(variables, anchors, trains) if not t]
        if corrections is None:
            shapes = [tuple(v.shape) for v in variables]
            if self._no_corrections is None or [tuple(c.shape) for c in self._no_corrections] != shapes:
                self._no_corrections = [tf.zeros_like(v) for v in variables]  # immutable: built once
            corr = self._no_corrections
        else:
            if len(corrections) != len(variables):
                raise ValueError("corrections must match the trainable variables")
            corr = [tf.constant(c, dtype=v.dtype) for c, v in zip(corrections, variables)]
        mu = tf.constant(float(config.proximal_mu), tf.float32)
        sw = class_weights(labels, num_classes) if config.class_weighting else None
        # every epoch from one iterator: not an iterator and a prefetch thread per epoch (with the
        # zeroing above, a site's round of a dozen images, 5 epochs of 8: 113 -> 98 ms; round_cost.py)
        per_epoch = -(-len(labels) // config.batch_size)
        cut = 0 < config.max_steps_per_epoch < per_epoch
        per_epoch = config.max_steps_per_epoch if cut else per_epoch
        stream = iter(make_dataset(
            images, labels, batch_size=config.batch_size, shuffle=True, augment=config.augment,
            seed=seed, sample_weights=sw, batches_per_pass=per_epoch if cut else 0,
            passes=config.local_epochs,
        ))
        if dp:
            clip = tf.constant(float(config.dp_clip_norm), tf.float32)
            noise_std = tf.constant(float(config.dp_noise_multiplier * config.dp_clip_norm), tf.float32)
            noise_base = secrets.randbits(62) if noise_seed is None else int(noise_seed)
        rates = None if step_learning_rates is None else [float(r) for r in step_learning_rates]
        if rates is not None and (not rates or min(rates) <= 0 or not np.all(np.isfinite(rates))):
            raise ValueError("step_learning_rates must be a non-empty list of positive, finite rates")
        per_example = None
        steps, loss_sum, correct_sum, seen = 0, 0.0, 0.0, 0
        for _epoch in range(config.local_epochs):
            for x, y, w in itertools.islice(stream, per_epoch):
                if rates is not None:
                    self._optimizer.learning_rate.assign(rates[min(steps, len(rates) - 1)])
                if dp:
                    step_seed = tf.constant([noise_base, steps], tf.int64)
                    (loss, correct), per_example = self._dp_call(
                        x, y, w, anchors, corr, mu, clip, noise_std, step_seed)
                else:
                    loss, correct = step_fn(x, y, w, anchors, corr, mu, offsets)
                if self._ema_update is not None:
                    self._ema_update()
                n = int(y.shape[0])
                loss_sum += float(loss) * n
                correct_sum += float(correct)
                seen += n
                steps += 1
        for v, start in frozen:  # a frozen variable gets no gradient and no update; restored all the same
            v.assign(start)
        return TrainResult(
            num_examples=int(len(labels)),
            train_loss=loss_sum / max(seen, 1),
            train_accuracy=correct_sum / max(seen, 1),
            seconds=time.perf_counter() - t0,
            steps=steps,
            per_example=per_example,
        )

    def predict(self, images: np.ndarray, batch_size: int = 256, *, tta: bool = False) -> np.ndarray:
        """Class probabilities (N x K); ``tta``: the mean over the 8 dihedral views of each image."""
        if not tta:
            return self._predict_one(images, batch_size)
        return np.mean(self.predict_views(images, batch_size), axis=0)

    def predict_views(self, images: np.ndarray, batch_size: int = 256) -> list[np.ndarray]:
        """Class probabilities of each of the 8 dihedral views (:func:`dihedral_views`); the first
        is the plain prediction."""
        return [self._predict_one(view, batch_size) for view in dihedral_views(images)]

    def _predict_one(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            x = tf.convert_to_tensor(images[start : start + batch_size], dtype=tf.float32)
            out.append(self._forward(x).numpy())
        if not out:
            return np.zeros((0, self.model.output_shape[-1]), np.float64)
        return np.concatenate(out).astype(np.float64)


def dihedral_views(images: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of the square applied to a batch ``(N, H, W, C)``: rotations by 0, 90, 180
    and 270 degrees, and each of them mirrored left-right; the first view is the batch itself."""
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"dihedral views need square images (N, S, S, C), got shape {images.shape}")
    rotations = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    return [np.ascontiguousarray(v) for r in rotations for v in (r, r[:, :, ::-1])]


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int
    confusion_matrix: np.ndarray
    probabilities: np.ndarray


def evaluate(trainer: LocalTrainer, images: np.ndarray, labels: np.ndarray, num_classes: int, *,
             tta: bool = False) -> EvalResult:
    probs = trainer.predict(images, tta=tta)
    n = len(labels)
    if n == 0:
        return EvalResult(0.0, 0.0, 0, np.zeros((num_classes, num_classes), np.int64), probs)
    p_true = np.clip(probs[np.arange(n), labels], 1e-7, 1.0)
    pred = probs.argmax(axis=1)
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, pred), 1)
    return EvalResult(
        loss=float(-np.mean(np.log(p_true))),
        accuracy=float(np.mean(pred == labels)),
        num_examples=n,
        confusion_matrix=cm,
        probabilities=probs,
    )
