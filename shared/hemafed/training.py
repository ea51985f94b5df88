"""Local training and evaluation (TensorFlow). Used by the hospital agent, the aggregator's
final test evaluation and the centralized baseline.

One custom training step covers the local objectives of the strategies:

    loss = CE(y, f(x; w)) + (mu / 2) * ||w - w_global||^2          (FedProx, FedDyn's quadratic)
    grad += linear_correction                                      (SCAFFOLD's c - c_i, FedDyn's -g_k)

The client optimizer is fresh each round (its slots are reset), as in FedAvg / TFF.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from hemafed.schemas import FitConfig  # noqa: E402


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
) -> tf.data.Dataset:
    x = images.astype(np.float32, copy=False) if images.dtype != np.float32 else images
    sw = np.ones(len(labels), np.float32) if sample_weights is None else sample_weights.astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, labels.astype(np.int32), sw))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
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


class LocalTrainer:
    """Holds one model and its compiled training step; reused across rounds."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self._optimizer: keras.optimizers.Optimizer | None = None
        self._optimizer_kind: str | None = None
        self._step = None
        self._loss = keras.losses.SparseCategoricalCrossentropy(reduction="none")
        self._forward = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def _prepare_optimizer(self, config: FitConfig) -> keras.optimizers.Optimizer:
        if self._optimizer is None or self._optimizer_kind != config.optimizer:
            self._optimizer = make_optimizer(config)
            self._optimizer.build(self.model.trainable_variables)
            self._optimizer_kind = config.optimizer
            self._step = None
        else:  # a fresh client optimizer each round: zero its slots and step counter
            for v in self._optimizer.variables:
                v.assign(tf.zeros_like(v))
        self._optimizer.learning_rate.assign(config.learning_rate)
        return self._optimizer

    def _build_step(self):
        model, optimizer, loss_fn = self.model, self._optimizer, self._loss
        variables = model.trainable_variables

        @tf.function(reduce_retracing=True)
        def step(x, y, sw, anchors, corrections, mu):
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                per_example = loss_fn(y, probs)
                loss = tf.reduce_sum(per_example * sw) / tf.maximum(tf.reduce_sum(sw), 1e-8)
                prox = tf.add_n([tf.reduce_sum(tf.square(v - a)) for v, a in zip(variables, anchors)])
                total = loss + 0.5 * mu * prox
            grads = tape.gradient(total, variables)
            grads = [g + c for g, c in zip(grads, corrections)]
            optimizer.apply_gradients(zip(grads, variables))
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), y), tf.float32))
            return loss, correct

        return step

    def fit(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        config: FitConfig,
        *,
        seed: int,
        num_classes: int,
        corrections: list[np.ndarray] | None = None,
    ) -> TrainResult:
        """Train in place for ``config.local_epochs`` epochs; returns the training summary."""
        if len(labels) == 0:
            raise ValueError("no training examples")
        t0 = time.perf_counter()
        self._prepare_optimizer(config)
        if self._step is None:
            self._step = self._build_step()
        variables = self.model.trainable_variables
        anchors = [tf.constant(v.numpy()) for v in variables]
        if corrections is None:
            corr = [tf.zeros_like(v) for v in variables]
        else:
            if len(corrections) != len(variables):
                raise ValueError("corrections must match the trainable variables")
            corr = [tf.constant(c, dtype=v.dtype) for c, v in zip(corrections, variables)]
        mu = tf.constant(float(config.proximal_mu), tf.float32)
        sw = class_weights(labels, num_classes) if config.class_weighting else None
        ds = make_dataset(
            images, labels, batch_size=config.batch_size, shuffle=True, augment=config.augment,
            seed=seed, sample_weights=sw,
        )
        steps, loss_sum, correct_sum, seen = 0, 0.0, 0.0, 0
        for _epoch in range(config.local_epochs):
            for i, (x, y, w) in enumerate(ds):
                if config.max_steps_per_epoch and i >= config.max_steps_per_epoch:
                    break
                loss, correct = self._step(x, y, w, anchors, corr, mu)
                n = int(y.shape[0])
                loss_sum += float(loss) * n
                correct_sum += float(correct)
                seen += n
                steps += 1
        return TrainResult(
            num_examples=int(len(labels)),
            train_loss=loss_sum / max(seen, 1),
            train_accuracy=correct_sum / max(seen, 1),
            seconds=time.perf_counter() - t0,
            steps=steps,
        )

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            x = tf.convert_to_tensor(images[start : start + batch_size], dtype=tf.float32)
            out.append(self._forward(x).numpy())
        if not out:
            return np.zeros((0, self.model.output_shape[-1]), np.float32)
        return np.concatenate(out).astype(np.float64)


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int
    confusion_matrix: np.ndarray
    probabilities: np.ndarray


def evaluate(trainer: LocalTrainer, images: np.ndarray, labels: np.ndarray, num_classes: int) -> EvalResult:
    probs = trainer.predict(images)
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
