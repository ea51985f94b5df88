"""The test report of a run (pure numpy; matplotlib only to draw the confusion-matrix PNG).

Used by the aggregator (federated runs, local baselines) and the centralized-baseline container,
so every run's results directory has the same files:

* :func:`classification_metrics` - from class probabilities + true labels: loss (mean cross-entropy),
  accuracy, macro precision / recall / F1 / specificity / one-vs-rest AUC, a per-class table
  (precision, recall, F1, specificity, AUC, support) and the confusion matrix (rows = true class,
  columns = predicted).
* :func:`classification_report` - the same figures that need only a confusion matrix.
* :func:`per_source_metrics` - accuracy and macro F1 per data source of the test images (the
  ``<source>__`` prefix of their file names, :mod:`hemafed.data.split`): a small hospital's images
  can be served badly while a test set dominated by a large one scores well.
* :func:`write_report_files` - ``confusion_matrix.csv``, ``confusion_matrix.png``, ``per_class.csv``
  and ``per_image.csv`` (file, top-1 class and score, top-2 class and score, true class: the
  thesis' Table 12).

Conventions: macro averages run over the classes that have test images (a class absent from the
test set has no recall, and its precision is 0 by definition when it is predicted, so averaging it
would only measure its absence). A class's AUC is ``None`` when it cannot be defined (no positive
or no negative test image); the macro AUC averages the defined ones.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "REPORT_FILES",
    "classification_metrics",
    "classification_report",
    "confusion_matrix",
    "cross_entropy",
    "one_vs_rest_auc",
    "per_source_metrics",
    "source_of",
    "top_k",
    "write_confusion_csv",
    "write_confusion_png",
    "write_per_class_csv",
    "write_per_image_csv",
    "write_report_files",
]

#: what :func:`write_report_files` writes into a results directory
REPORT_FILES = ("confusion_matrix.csv", "confusion_matrix.png", "per_class.csv", "per_image.csv")
#: probabilities are clipped to this before the logarithm (the same as training.evaluate)
EPS = 1e-7


def _check(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[1] != num_classes:
        raise ValueError(f"probabilities must be (N, {num_classes}), got shape {p.shape}")
    if y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"labels must be (N,) with N = {len(p)}, got shape {y.shape}")
    if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be integers in [0, {num_classes})")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities must be finite")
    return p, y.astype(np.int64)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return cm


def cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean of ``-log p(true class)`` (probabilities clipped to [1e-7, 1])."""
    if len(labels) == 0:
        return 0.0
    p_true = np.clip(probs[np.arange(len(labels)), labels], EPS, 1.0)
    return float(-np.mean(np.log(p_true)))


def one_vs_rest_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for the boolean ``positive``: the probability that a
    random positive scores above a random negative, ties counting one half (Mann-Whitney U with
    mid-ranks, what ``sklearn.metrics.roc_auc_score`` computes). ``None`` without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # mid-ranks (1-based) for ties
    start = 0
    for end in np.append(np.flatnonzero(np.diff(sorted_s)) + 1, len(s)):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
        start = end
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def classification_report(cm: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy and macro/per-class precision, recall, F1, specificity from a confusion matrix
    (rows = true class, columns = predicted)."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix must be {len(classes)}x{len(classes)}, got {cm.shape}")
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

    def macro(v: np.ndarray) -> float:
        return float(v[present].mean()) if present.any() else 0.0

    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_precision": macro(precision),
        "macro_recall": macro(recall),
        "macro_f1": macro(f1),
        "macro_specificity": macro(specificity),
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                "specificity": float(specificity[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "classes": list(classes),
        "confusion_matrix": cm.astype(int).tolist(),
    }


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Every test figure of a run from ``probs`` (N x K class probabilities) and ``labels`` (N
    true class indices into ``classes``): ``num_examples``, ``loss``, ``accuracy``,
    ``macro_precision``, ``macro_recall``, ``macro_f1``, ``macro_specificity``, ``macro_auc``,
    ``per_class`` ({class: precision, recall, f1, specificity, auc, support}), ``classes`` and
    ``confusion_matrix``. Ties in the top-1 class go to the lower class index (``argmax``)."""
    p, y = _check(probs, labels, len(classes))
    pred = p.argmax(axis=1) if len(p) else np.zeros(0, np.int64)
    rep = classification_report(confusion_matrix(y, pred, len(classes)), classes)
    aucs = [one_vs_rest_auc(p[:, k], y == k) for k in range(len(classes))]
    for c, auc in zip(classes, aucs):
        rep["per_class"][c]["auc"] = auc
    defined = [a for a in aucs if a is not None]
    return {
        "num_examples": int(len(y)),
        "loss": cross_entropy(p, y),
        **rep,
        "macro_auc": float(np.mean(defined)) if defined else None,
    }


def source_of(file_name: str) -> str | None:
    """The data source of a test image from its file name, ``<source>__<class>__<file>`` or
    ``<source>__<id>.png`` (:mod:`hemafed.data.split`); ``None`` for a name without the prefix."""
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    source, sep, rest = base.partition("__")
    return source if sep and source and rest else None


def per_source_metrics(files: Sequence[str], labels: Sequence[int], predicted: Sequence[int],
                       classes: Sequence[str]) -> dict[str, dict[str, Any]] | None:
    """``{source: {num_examples, accuracy, macro_recall, macro_f1}}`` over the test images of each
    source (``labels`` / ``predicted``: true and top-1 class indices; macro figures over the classes
    that source has test images of), sources in name order; ``None`` when any file name carries no
    source prefix (the figures would not add up to the test set)."""
    y, pred = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if not len(files) == len(y) == len(pred):
        raise ValueError(f"{len(files)} file names, {len(y)} labels and {len(pred)} predictions")
    k = len(classes)
    if len(y) and (min(y.min(), pred.min()) < 0 or max(y.max(), pred.max()) >= k):
        raise ValueError(f"class indices must be in [0, {k})")
    sources = [source_of(f) for f in files]
    if not sources or any(s is None for s in sources):
        return None
    src = np.asarray(sources)
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(sources)):
        mask = src == name
        rep = classification_report(confusion_matrix(y[mask], pred[mask], k), classes)
        out[name] = {"num_examples": int(mask.sum()), "accuracy": rep["accuracy"],
                     "macro_recall": rep["macro_recall"], "macro_f1": rep["macro_f1"]}
    return out


#: what ``tta=True`` means in a report (hemafed.training.dihedral_views)
TTA_KIND = "mean softmax over the 8 dihedral views (4 rotations by 90 degrees, each also mirrored)"


def tta_report(views: Sequence[np.ndarray], labels: np.ndarray, classes: Sequence[str]
                                  ) -> tuple[np.ndarray, dict[str, Any]]:
    """From the class probabilities of each view of the test images (the first view: the images as
    they are), the mean prediction that the report scores, and the ``test_time_augmentation``
    entry: how many views, and the single-view (plain) figures beside it for comparison."""
    if not views:
        raise ValueError("no views to average")
    plain = classification_metrics(views[0], labels, classes)
    mean = np.mean(np.stack(views), axis=0)
    return mean, {"views": len(views), "kind": TTA_KIND,
                  "single_view": {k: plain[k] for k in ("accuracy", "macro_f1", "loss")}}


def top_k(probs: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` most probable classes per row, most probable first
    (ties: the lower class index first)."""
    p = np.asarray(probs, dtype=np.float64)
    idx = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(p, idx, axis=1)


# --------------------------------------------------------------------------- writers


def write_confusion_csv(path: Path, cm: Sequence[Sequence[int]], classes: Sequence[str]) -> None:
    """Rows = true class, columns = predicted; the first cell names the axes."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true\\predicted", *classes])
        for c, row in zip(classes, cm):
            w.writerow([c, *(int(v) for v in row)])


def write_per_class_csv(path: Path, report: dict[str, Any]) -> None:
    """One row per class: precision, recall, F1, specificity, AUC (empty when undefined), support."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "precision", "recall", "f1", "specificity", "auc", "support"])
        for c in report["classes"]:
            r = report["per_class"][c]
            auc = r.get("auc")
            w.writerow([c, f"{r['precision']:.6f}", f"{r['recall']:.6f}", f"{r['f1']:.6f}",
                        f"{r['specificity']:.6f}", "" if auc is None else f"{auc:.6f}", r["support"]])


def write_per_image_csv(path: Path, files: Sequence[str], probs: np.ndarray, labels: np.ndarray,
                        classes: Sequence[str]) -> None:
    """One row per test image: file, top-1 class and score, top-2 class and score, true class."""
    p, y = _check(probs, labels, len(classes))
    if len(files) != len(y):
        raise ValueError(f"{len(files)} file names for {len(y)} images")
    idx, scores = top_k(p, 2) if len(p) else (np.zeros((0, 2), np.int64), np.zeros((0, 2)))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "top1", "top1_score", "top2", "top2_score", "true"])
        for name, (i1, i2), (s1, s2), t in zip(files, idx, scores, y):
            w.writerow([name, classes[i1], f"{s1:.6f}", classes[i2], f"{s2:.6f}", classes[t]])


def write_confusion_png(path: Path, cm: Sequence[Sequence[int]], classes: Sequence[str], title: str = "") -> None:
    """The confusion matrix as a heat map (colour: share of the true class; text: counts)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # no pyplot: no global state, thread-safe

    m = np.asarray(cm, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(classes)
    size = max(4.0, 0.7 * n + 2.0)
    fig = Figure(figsize=(size, size * 0.9))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(classes))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report_files(out_dir: Path, report: dict[str, Any], probs: np.ndarray, labels: np.ndarray,
                       files: Sequence[str], *, title: str = "") -> list[str]:
    """Write :data:`REPORT_FILES` into ``out_dir``; returns their names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = report["classes"]
    write_confusion_csv(out_dir / "confusion_matrix.csv", report["confusion_matrix"], classes)
    write_confusion_png(out_dir / "confusion_matrix.png", report["confusion_matrix"], classes, title)
    write_per_class_csv(out_dir / "per_class.csv", report)
    write_per_image_csv(out_dir / "per_image.csv", files, probs, labels, classes)
    return list(REPORT_FILES)
