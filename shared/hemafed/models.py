"""Model factory (TensorFlow / Keras 3). Imported only where a model is built or trained.

Every model takes uint8-range RGB input ``(S, S, 3)`` and does its own preprocessing, so
hospitals, the aggregator and an exported model all feed raw pixels.

Models:
- ``cnn`` (default): a compact GroupNorm CNN that trains in minutes on 2 CPU cores at
  28-64 px. GroupNorm instead of BatchNorm: BatchNorm running statistics are averaged
  across hospitals with different label mixes and make federated validation swing
  (measured: see README); GroupNorm has no running statistics.
- ``cnn-bn``: the same with BatchNorm (for comparison, and for FedBN with ``local_norm``).
- ``cnn-small``: the GroupNorm CNN with half the filters (8/16/32): about a quarter of the
  parameters (18.6k instead of 73k), for client-level DP, whose noise on the averaged update
  grows with the square root of the exchanged parameters (benchmarks/dp_budget.py).
- ``cnn-wide``: the GroupNorm CNN with twice the filters (32/64/128, ~4x the compute): the
  accuracy-first choice at 64 px when the hours are there.
- ``cnn-deep``: ``cnn-wide`` plus a fourth block (256 filters) after a third pooling: twice the
  receptive field (68 px instead of 32: a whole 64 px cell, not a patch of it) for ~1.8x the
  epoch time of ``cnn-wide`` (150 s vs 85 s at 64 px on 2 cores) and 1.2M parameters.
- ``mobilenetv2``: frozen backbone + GlobalAveragePooling/BatchNorm/Dense head (ALL study).
- ``resnet50``, ``vgg16``, ``efficientnetb0``: keras.applications backbones.

``weights`` for the applications is a local ``.h5``/``.weights.h5`` file or ``None``:
nothing is ever downloaded at run time, and a missing file is a clear error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from hemafed.schemas import TaskSpec

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: quiet C++ logs

import keras  # noqa: E402
from keras import layers  # noqa: E402

APPLICATIONS = ("mobilenetv2", "resnet50", "vgg16", "efficientnetb0")
#: name -> (normalisation, filters of each conv block; a 2x2 max-pooling between blocks)
COMPACT = {"cnn": ("group", (16, 32, 64)), "cnn-bn": ("batch", (16, 32, 64)), "cnn-small": ("group", (8, 16, 32)),
           "cnn-wide": ("group", (32, 64, 128)), "cnn-deep": ("group", (32, 64, 128, 256))}
MODELS = (*COMPACT, *APPLICATIONS)
NORM_LAYERS = (layers.BatchNormalization, layers.GroupNormalization, layers.LayerNormalization)


class ModelError(ValueError):
    """A model that cannot be built as asked (unknown name, missing weights file, ...)."""


@keras.saving.register_keras_serializable(package="hemafed")
class CaffePreprocess(layers.Layer):
    """RGB [0,255] -> BGR minus the ImageNet channel means (keras 'caffe' mode: ResNet50/VGG16)."""

    def call(self, x):
        x = keras.ops.flip(x, axis=-1)
        return x - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)


def _conv_block(x, filters: int, norm: str, name: str):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        if norm == "group":
            x = layers.GroupNormalization(groups=min(8, filters), name=f"{name}_gn{i}")(x)
        else:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def _compact_cnn(num_classes: int, image_size: int, norm: str, widths: tuple[int, ...]) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for i, filters in enumerate(widths, start=1):
        if i > 1:
            x = layers.MaxPooling2D(name=f"pool{i - 1}")(x)
        x = _conv_block(x, filters, norm, f"block{i}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    # hemafed_cnn_group (cnn), hemafed_cnn_group_8 (cnn-small), hemafed_cnn_group_32 (cnn-wide),
    # hemafed_cnn_group_32x4 (cnn-deep)
    suffix = "" if widths == COMPACT["cnn"][1] else f"_{widths[0]}"
    if len(widths) != 3:
        suffix += f"x{len(widths)}"
    return keras.Model(inputs, outputs, name=f"hemafed_cnn_{norm}{suffix}")


def _application(name: str, num_classes: int, image_size: int, weights: str | None, trainable_fraction: float):
    if weights is not None and not Path(weights).is_file():
        raise ModelError(
            f"weights file {weights!r} for {name} does not exist; HemaFed never downloads weights at run "
            "time: place the keras.applications weights file on the volume and pass its path, or use weights=None"
        )
    shape = (image_size, image_size, 3)
    apps = keras.applications
    if name == "mobilenetv2":
        if image_size < 32:
            raise ModelError("mobilenetv2 needs image_size >= 32")
        backbone = apps.MobileNetV2(include_top=False, weights=None, input_shape=shape)
        pre = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")
    elif name == "resnet50":
        if image_size < 32:
            raise ModelError("resnet50 needs image_size >= 32")
        backbone = apps.ResNet50(include_top=False, weights=None, input_shape=shape)
        pre = CaffePreprocess(name="preprocess")
    elif name == "vgg16":
        if image_size < 32:
            raise ModelError("vgg16 needs image_size >= 32")
        backbone = apps.VGG16(include_top=False, weights=None, input_shape=shape)
        pre = CaffePreprocess(name="preprocess")
    elif name == "efficientnetb0":
        backbone = apps.EfficientNetB0(include_top=False, weights=None, input_shape=shape)
        pre = layers.Identity(name="preprocess")  # EfficientNet rescales internally
    else:  # pragma: no cover - guarded by build_model
        raise ModelError(name)
    if weights is not None:
        try:
            backbone.load_weights(weights, skip_mismatch=False)
        except Exception as exc:  # noqa: BLE001 - surface any loader error with context
            raise ModelError(f"cannot load weights {weights!r} into {name}: {exc}") from exc
    _set_trainable_fraction(backbone, trainable_fraction)
    inputs = keras.Input(shape, name="image")
    x = pre(inputs)
    # the frozen part runs in inference mode so its BatchNorm statistics stay fixed
    x = backbone(x, training=False if trainable_fraction == 0.0 else None)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"hemafed_{name}")


def _set_trainable_fraction(backbone: keras.Model, fraction: float) -> None:
    """Unfreeze the top ``fraction`` of the backbone's layers (0 = frozen, 1 = all trainable)."""
    n = len(backbone.layers)
    first_trainable = n - int(round(fraction * n))
    backbone.trainable = fraction > 0.0
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= first_trainable


def build_model(
    name: str,
    num_classes: int,
    image_size: int,
    *,
    seed: int = 0,
    weights: str | None = None,
    trainable_fraction: float | None = None,
) -> keras.Model:
    """Build (not compile) a model; the same arguments and seed give the same initial weights."""
    name = name.lower()
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if num_classes < 2:
        raise ModelError("need at least 2 classes")
    keras.utils.set_random_seed(seed)
    if name in COMPACT:
        if weights is not None:
            raise ModelError(f"{name} has no pretrained weights; use weights=None")
        norm, widths = COMPACT[name]
        return _compact_cnn(num_classes, image_size, norm, widths)
    default_fraction = 0.0 if name == "mobilenetv2" else 1.0
    return _application(
        name, num_classes, image_size, weights, default_fraction if trainable_fraction is None else trainable_fraction
    )


def build_for_task(task: TaskSpec) -> keras.Model:
    """The model a federation's TaskSpec describes (same for every hospital and the aggregator)."""
    fraction = None if task.model in COMPACT else task.trainable_fraction
    return build_model(task.model, len(task.classes), task.image_size, seed=task.seed, trainable_fraction=fraction)


def leaf_layers(layer: keras.layers.Layer):
    sub = getattr(layer, "layers", None)
    if sub:
        for child in sub:
            yield from leaf_layers(child)
    else:
        yield layer


def exchanged_variables(model: keras.Model, *, local_norm: bool = False) -> list:
    """Variables that travel between hospitals and the aggregator.

    All variables (including BatchNorm running statistics) of every *trainable* leaf layer;
    frozen layers never travel (every participant builds them identically). With
    ``local_norm`` (FedBN, Li et al. 2021) normalisation layers stay local.
    """
    out = []
    for layer in leaf_layers(model):
        if not layer.trainable or not layer.weights:
            continue
        if local_norm and isinstance(layer, NORM_LAYERS):
            continue
        out.extend(layer.weights)
    return out


def get_exchanged(model: keras.Model, *, local_norm: bool = False) -> list[np.ndarray]:
    return [np.asarray(v.numpy(), dtype=v.dtype) for v in exchanged_variables(model, local_norm=local_norm)]


def set_exchanged(model: keras.Model, weights: list[np.ndarray], *, local_norm: bool = False) -> None:
    variables = exchanged_variables(model, local_norm=local_norm)
    if len(variables) != len(weights):
        raise ValueError(f"expected {len(variables)} tensors, got {len(weights)}")
    for v, w in zip(variables, weights):
        v.assign(w)


def count_params(model: keras.Model) -> dict[str, int]:
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    total = int(sum(np.prod(v.shape) for v in model.weights))
    return {"trainable": trainable, "total": total, "exchanged": int(sum(np.prod(v.shape) for v in exchanged_variables(model)))}


def save_model(model: keras.Model, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))


def load_model(path: str | os.PathLike) -> keras.Model:
    return keras.models.load_model(str(path), compile=False)


def finished_run(folder: Path, task: TaskSpec) -> dict[str, Any]:
    """Where a run that starts from a finished run's weights (``INIT_RUN``) starts: ``folder/final.keras``
    and its ``final.json``, refused (ModelError, with the reason) unless that run trained the same
    model and classes. Returns what the new run records about it (``initialised_from``).

    The image size may differ: the compact CNNs and the applications end in global average pooling,
    so their weights do not depend on it (progressive resizing, or FixRes' fine-tuning at a larger
    size than was trained at: Touvron et al. 2019); ``image_size`` in the record says what the
    finished run trained at. A model whose weights do depend on the size is refused when they are
    loaded (:func:`load_weights_from`)."""
    path, meta_path = folder / "final.keras", folder / "final.json"
    if not path.is_file() or not meta_path.is_file():
        raise ModelError(f"INIT_RUN={folder.name}: no final.keras and final.json in {folder} "
                         "(the run to start from must have finished)")
    try:
        meta = json.loads(meta_path.read_text())
        earlier = meta["task"]
        mismatch = [f"{k} {earlier.get(k)!r} there, {getattr(task, k)!r} here"
                    for k in ("model", "classes") if earlier.get(k) != getattr(task, k)]
        resized = {"image_size": int(earlier["image_size"])} if earlier.get("image_size") != task.image_size else {}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"INIT_RUN={folder.name}: unreadable {meta_path.name}: {exc}") from None
    if mismatch:
        raise ModelError(f"INIT_RUN={folder.name} trained another task: " + "; ".join(mismatch))
    # a centralized run counts epochs, a federated one rounds (its best by the hospitals' median)
    length = {k: meta[k] for k in ("epochs", "rounds") if k in meta}
    return {"run_id": folder.name, "path": str(path), **length, "strategy": meta.get("strategy"),
            "best_val_accuracy": meta.get("best_val_accuracy", meta.get("best_val_accuracy_median")), **resized}


def load_weights_from(model: keras.Model, path: str | os.PathLike) -> None:
    """Every weight of ``model`` from the saved model at ``path`` (Keras checks the count and shapes)."""
    try:
        model.set_weights(load_model(path).get_weights())
    except ValueError as exc:
        raise ModelError(f"{path}: its weights do not fit the model: {exc}") from None
