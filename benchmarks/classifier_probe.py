"""Is it the features or the classifier? A diagnostic for a federated model that fails a class.

    .venv/bin/python benchmarks/classifier_probe.py --run label-skew-feddyn-r60-1 \
        --data build/simulate/split-<hash>      # the split the run trained on (hospital-*/, test/)

Freezes the run's best model up to its last layer (the features after global average pooling)
and scores on the held-out test images:

* the model as it is;
* a linear probe: the classifier layer re-trained on the pooled features of every hospital's
  images (full-batch gradient descent on the softmax cross-entropy, from the model's own
  classifier). It pools the hospitals' features, which a federation may not do: it is only the
  upper bound of what any fix of the classifier alone can reach on these features;
* federated re-training of the classifier alone: each round every hospital takes a few
  full-batch gradient steps on its own features from the global classifier, and the server takes
  the example-weighted mean (FedAvg on a convex problem), the arithmetic of ``CLASSIFIER_ROUNDS``
  without augmentation or minibatches.

If the probe recovers the failed class, the features separate it and the classifier is what the
federation got wrong. Prints a Markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def softmax_grad(W: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray,
                 l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of the mean softmax cross-entropy (+ l2/2 ||W||^2) of the linear classifier."""
    z = X @ W + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    return X.T @ p + l2 * W, p.sum(axis=0)


def fit_classifier(W: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray, *, steps: int, lr: float,
                   l2: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` of full-batch gradient descent from (W, b); the inputs are not modified."""
    W, b = W.astype(np.float64).copy(), b.astype(np.float64).copy()
    for _ in range(steps):
        gW, gb = softmax_grad(W, b, X, y, l2)
        W -= lr * gW
        b -= lr * gb
    return W, b


def federated_classifier(W: np.ndarray, b: np.ndarray, parts: list[tuple[np.ndarray, np.ndarray]], *,
                         rounds: int, steps: int, lr: float, l2: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """FedAvg of the classifier alone: ``steps`` local steps per hospital, example-weighted mean."""
    n = np.array([len(y) for _, y in parts], dtype=np.float64)
    w = n / n.sum()
    for _ in range(rounds):
        local = [fit_classifier(W, b, X, y, steps=steps, lr=lr, l2=l2) for X, y in parts]
        W = sum(wk * Wk for wk, (Wk, _) in zip(w, local))
        b = sum(wk * bk for wk, (_, bk) in zip(w, local))
    return W, b


def scores(W: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[float, np.ndarray]:
    """Accuracy and recall per class (NaN for a class absent from ``y``)."""
    pred = (X @ W + b).argmax(axis=1)
    recall = np.array([np.mean(pred[y == c] == c) if np.any(y == c) else np.nan for c in range(num_classes)])
    return float(np.mean(pred == y)), recall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run id in --results")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--data", type=Path, required=True, help="the run's split: hospital-*/ and test/")
    p.add_argument("--steps", type=int, default=2000, help="gradient steps of the pooled probe")
    p.add_argument("--rounds", type=int, default=100, help="rounds of the federated re-training")
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    args = p.parse_args(argv)

    import keras

    from hemafed.data.loader import load_image_folder
    from hemafed.models import load_model

    model = load_model(args.results / args.run / "best.keras")
    head = model.get_layer("classifier")
    extractor = keras.Model(model.inputs, head.input)
    W0, b0 = (np.asarray(v, np.float64) for v in head.get_weights())
    size = int(model.input_shape[1])
    classes = json.loads((args.results / args.run / "run.json").read_text())["classes"]  # the outputs' order
    if W0.shape[1] != len(classes):
        p.error(f"the model has {W0.shape[1]} outputs, run.json names {len(classes)} classes")

    def load(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        data = load_image_folder(folder, size, classes)
        return extractor.predict(data.images, batch_size=256, verbose=0).astype(np.float64), data.labels

    hospitals = sorted(d for d in args.data.glob("hospital-*") if d.is_dir())
    if not hospitals or not (args.data / "test").is_dir():
        p.error(f"{args.data}: needs hospital-*/ and test/ folders")
    Xt, yt = load(args.data / "test")
    parts = [load(h) for h in hospitals]
    Xp = np.concatenate([x for x, _ in parts])
    yp = np.concatenate([y for _, y in parts])
    rows = [("the model as it is", W0, b0),
            (f"linear probe on the pooled features ({args.steps} steps; upper bound)",
             *fit_classifier(W0, b0, Xp, yp, steps=args.steps, lr=args.lr)),
            (f"classifier re-trained federated ({args.rounds} rounds x {args.local_steps} steps)",
             *federated_classifier(W0, b0, parts, rounds=args.rounds, steps=args.local_steps, lr=args.lr))]
    print(f"{args.run}: {len(hospitals)} hospitals, {len(yp)} training and {len(yt)} test images, "
          f"{Xp.shape[1]} features\n")
    print("| classifier | test accuracy | " + " | ".join(f"{c} recall" for c in classes) + " |")
    print("|---|---|" + "---|" * len(classes))
    for name, W, b in rows:
        acc, recall = scores(W, b, Xt, yt, len(classes))
        print(f"| {name} | {acc:.3f} | " + " | ".join(f"{r:.2f}" for r in recall) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
