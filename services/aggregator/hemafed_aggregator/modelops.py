"""The aggregator's TensorFlow side (and its only one): build the initial model, save models
as ``.keras`` with JSON metadata, and score the best model on the held-out test set.
Aggregation itself never touches TensorFlow."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from hemafed.report import (classification_metrics, classification_report, per_source_metrics,
                            tta_report, write_report_files)
from hemafed.schemas import TaskSpec

__all__ = ["InitRunError", "classification_report", "evaluate_on_test", "export_saved_model", "finished_run_weights",
           "initial_weights", "load_test_set", "predict", "save_keras"]


class InitRunError(ValueError):
    """The finished run named by INIT_RUN cannot start this run (missing, another task, weights
    that do not fit)."""


def _build(task: TaskSpec):
    from hemafed.models import build_for_task

    return build_for_task(task)


def initial_weights(task: TaskSpec) -> tuple[list[np.ndarray], dict[str, int]]:
    from hemafed.models import count_params, get_exchanged

    model = _build(task)
    return get_exchanged(model, local_norm=task.local_norm), count_params(model)


def finished_run_weights(task: TaskSpec, folder: Path
                         ) -> tuple[list[np.ndarray], dict[str, int], dict[str, Any]]:
    """As :func:`initial_weights`, from a finished run's ``final.keras`` (``INIT_RUN``), plus what the
    new run records about that start (``initialised_from``); InitRunError with the reason when that
    run is missing, trained another task (:func:`hemafed.models.finished_run`) or its weights do not fit."""
    from hemafed.models import ModelError, count_params, finished_run, get_exchanged, load_weights_from

    model = _build(task)
    try:
        start = finished_run(folder, task)
        load_weights_from(model, start["path"])
    except ModelError as exc:
        raise InitRunError(str(exc)) from None
    return get_exchanged(model, local_norm=task.local_norm), count_params(model), start


def save_keras(task: TaskSpec, weights: list[np.ndarray], path: Path, metadata: dict[str, Any]) -> None:
    from hemafed.models import save_model, set_exchanged

    model = _build(task)
    set_exchanged(model, weights, local_norm=task.local_norm)
    save_model(model, path)
    meta = {"task": task.model_dump(mode="json"), "saved_at": time.time(), **metadata}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))


def load_test_set(task: TaskSpec, test_dir: Path):
    """The held-out test set at the task's image size, labelled in the task's class order, with
    its file names (for the per-image report)."""
    from hemafed.data.testset import load_test_set as load

    return load(test_dir, task.image_size, task.classes)


def _trainer(task: TaskSpec, weights: list[np.ndarray]):
    from hemafed.models import set_exchanged
    from hemafed.training import LocalTrainer

    model = _build(task)
    set_exchanged(model, weights, local_norm=task.local_norm)
    return LocalTrainer(model)


def predict(task: TaskSpec, weights: list[np.ndarray], images: np.ndarray, *, tta: bool = False) -> np.ndarray:
    """Class probabilities (N x K) of the model ``task`` describes with ``weights`` (``tta``: the
    mean over the 8 dihedral views)."""
    return _trainer(task, weights).predict(images, tta=tta)


def export_saved_model(keras_path: Path, out_dir: Path) -> dict[str, Any]:
    """Export a saved ``.keras`` model as a TensorFlow SavedModel (Keras 3 ``model.export``) for
    TF Serving, TFLite converters or plain ``tf.saved_model.load``; replaces ``out_dir``.
    Returns the serving signature (endpoint ``serve``, also ``serving_default``)."""
    import shutil

    from hemafed.models import load_model

    if not keras_path.is_file():
        raise FileNotFoundError(f"{keras_path.name} not found in {keras_path.parent}")
    model = load_model(keras_path)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.export(str(out_dir), format="tf_saved_model", verbose=False)
    _, size, _, channels = model.input_shape
    return {"path": out_dir.name, "endpoint": "serve", "signature": "serving_default",
            "input": {"shape": [None, size, size, channels], "dtype": "float32", "range": [0, 255]},
            "output": {"shape": [None, int(model.output_shape[-1])], "dtype": "float32", "kind": "softmax"}}


def evaluate_on_test(task: TaskSpec, weights: list[np.ndarray], test_dir: Path, out_dir: Path | None = None,
                     *, test_set=None, title: str = "", tta: bool = False) -> dict[str, Any]:
    """Every figure of :func:`hemafed.report.classification_metrics` on the test set (loss,
    accuracy, macro precision/recall/F1/specificity/AUC, per-class table, confusion matrix) plus
    ``skipped_files`` and ``per_source`` (:func:`hemafed.report.per_source_metrics`); with
    ``out_dir``, also its CSV/PNG files (:data:`hemafed.report.REPORT_FILES`).
    ``test_set``: an already loaded :func:`load_test_set` (several models, one read). ``tta``: the
    figures are of the mean over the 8 dihedral views, and ``test_time_augmentation`` holds the
    single-view ones (else it is ``None``)."""
    ts = test_set if test_set is not None else load_test_set(task, test_dir)
    trainer, tta_entry = _trainer(task, weights), None
    if tta:
        probs, tta_entry = tta_report(trainer.predict_views(ts.images), ts.labels, task.classes)
    else:
        probs = trainer.predict(ts.images)
    rep = classification_metrics(probs, ts.labels, task.classes)
    rep["skipped_files"] = int(ts.skipped)
    rep["test_time_augmentation"] = tta_entry
    rep["per_source"] = per_source_metrics(ts.files, ts.labels, probs.argmax(axis=1), task.classes)
    if out_dir is not None:
        rep["files"] = write_report_files(out_dir, rep, probs, ts.labels, ts.files, title=title)
    return rep
