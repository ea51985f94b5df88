"""The aggregator's TensorFlow side (and its only one): build the initial model, save models
as ``.keras`` with JSON metadata, and score the best model on the held-out test set.
Aggregation itself never touches TensorFlow."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from hemafed.schemas import TaskSpec


def _build(task: TaskSpec):
    from hemafed.models import build_for_task

    return build_for_task(task)


def initial_weights(task: TaskSpec) -> tuple[list[np.ndarray], dict[str, int]]:
    from hemafed.models import count_params, get_exchanged

    model = _build(task)
    return get_exchanged(model, local_norm=task.local_norm), count_params(model)


def save_keras(task: TaskSpec, weights: list[np.ndarray], path: Path, metadata: dict[str, Any]) -> None:
    from hemafed.models import save_model, set_exchanged

    model = _build(task)
    set_exchanged(model, weights, local_norm=task.local_norm)
    save_model(model, path)
    meta = {"task": task.model_dump(mode="json"), "saved_at": time.time(), **metadata}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))


def evaluate_on_test(task: TaskSpec, weights: list[np.ndarray], test_dir: Path) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-class table and confusion matrix on the test set."""
    from hemafed.data.loader import load_image_folder, remap_labels
    from hemafed.models import set_exchanged
    from hemafed.training import LocalTrainer, evaluate

    data = load_image_folder(test_dir, task.image_size)
    y, keep = remap_labels(data.labels, data.classes, task.classes)
    x = data.images[keep]
    model = _build(task)
    set_exchanged(model, weights, local_norm=task.local_norm)
    res = evaluate(LocalTrainer(model), x, y, len(task.classes))
    return {"num_examples": res.num_examples, "loss": res.loss, "skipped_files": int(data.skipped),
            **classification_report(res.confusion_matrix, task.classes)}


def classification_report(cm: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy and macro/per-class precision, recall, F1, specificity from a confusion matrix
    (rows = true class, columns = predicted)."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        tn = total - support - predicted + tp
        specificity = np.where(total - support > 0, tn / (total - support), 0.0)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                "specificity": float(specificity[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "classes": list(classes),
        "confusion_matrix": cm.astype(int).tolist(),
    }
