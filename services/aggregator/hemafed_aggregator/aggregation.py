"""Pure numpy aggregation functions (no TensorFlow). Weights are lists of arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Weights = list[np.ndarray]


def weighted_average(updates: Sequence[Weights], num_examples: Sequence[float]) -> Weights:
    """Example-weighted mean: sum_k (n_k / n) * w_k  (McMahan et al. 2017, Algorithm 1).

    Accumulates in float64 and returns each tensor in its input dtype.
    """
    if not updates:
        raise ValueError("no updates to average")
    check_same_structure(updates)
    n = np.asarray(num_examples, dtype=np.float64)
    if n.shape != (len(updates),) or np.any(n < 0) or n.sum() <= 0:
        raise ValueError("num_examples must be non-negative with a positive sum, one per update")
    coef = n / n.sum()
    out = []
    for layer in zip(*updates):
        acc = np.zeros(layer[0].shape, dtype=np.float64)
        for c, w in zip(coef, layer):
            acc += c * w
        out.append(acc.astype(layer[0].dtype))
    return out


def unweighted_average(updates: Sequence[Weights]) -> Weights:
    """Plain mean of the updates (every hospital counts the same)."""
    return weighted_average(updates, [1.0] * len(updates))


def uniform_mean(total: Weights, count: int, like: Weights) -> Weights:
    """``total / count`` (float64 sums of ``count`` models) in the dtypes of ``like``; non-float
    tensors from ``like`` (server-side weight averaging, strategies/swa.py)."""
    if count < 1:
        raise ValueError("no models to average")
    check_same_structure([total, like])
    return [(t / count).astype(w.dtype) if np.issubdtype(w.dtype, np.floating) else w.copy()
            for t, w in zip(total, like)]


def subtract(a: Weights, b: Weights) -> Weights:
    """a - b tensor by tensor (same structure required: no silent broadcasting or truncation)."""
    check_same_structure([a, b])
    return [x - y for x, y in zip(a, b)]


def add_scaled(a: Weights, b: Weights, scale: float) -> Weights:
    """a + scale * b, in a's dtypes (same structure required)."""
    check_same_structure([a, b])
    return [(x + scale * y).astype(x.dtype) for x, y in zip(a, b)]


def global_norm(w: Weights) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(x, dtype=np.float64))) for x in w)))


# --------------------------------------------------------------------------- helpers


def zeros_like(w: Weights, dtype: type | None = np.float64) -> Weights:
    """Zeros with w's shapes (float64 unless told otherwise): fresh server state."""
    return [np.zeros(x.shape, dtype=dtype or x.dtype) for x in w]


def copy_weights(w: Weights) -> Weights:
    return [np.array(x, copy=True) for x in w]


def check_same_structure(updates: Sequence[Weights]) -> None:
    """Raise ValueError unless every update has the same number of tensors and the same shapes."""
    if not updates:
        raise ValueError("no updates")
    shapes = [tuple(np.shape(x)) for x in updates[0]]
    for k, u in enumerate(updates[1:], start=1):
        if [tuple(np.shape(x)) for x in u] != shapes:
            raise ValueError(f"update {k} does not have the shapes of update 0: {shapes}")


def _stack(updates: Sequence[Weights]) -> list[np.ndarray]:
    """Per tensor, the updates stacked along a new axis 0 (float64)."""
    check_same_structure(updates)
    return [np.stack([np.asarray(x, dtype=np.float64) for x in layer]) for layer in zip(*updates)]


def flatten(w: Weights) -> np.ndarray:
    """All tensors of one model as one float64 vector."""
    if not w:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in w])


# --------------------------------------------------------------------------- robust (Byzantine)


def coordinate_median(updates: Sequence[Weights]) -> Weights:
    """Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", Definition 1): ``med{x_k}_i`` for every coordinate i.

    With an even count it is the mean of the two middle values (numpy's convention).
    Returns each tensor in the dtype of the first update's tensor.
    """
    return [np.median(s, axis=0).astype(ref.dtype) for s, ref in zip(_stack(updates), updates[0])]


def trimmed_mean(updates: Sequence[Weights], beta: float) -> Weights:
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018, Definition 2).

    For every coordinate, drop the ``k = floor(beta * n)`` largest and the k smallest of the
    n values and average the remaining ``n - 2k``. ``beta`` must be in [0, 1/2).
    """
    if not 0.0 <= beta < 0.5:
        raise ValueError("beta must be in [0, 0.5)")
    stacked = _stack(updates)
    n = len(updates)
    k = int(np.floor(beta * n))
    return [np.sort(s, axis=0)[k : n - k].mean(axis=0).astype(ref.dtype) for s, ref in zip(stacked, updates[0])]


def krum_scores(updates: Sequence[Weights], num_byzantine: int) -> np.ndarray:
    """Krum scores (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", Section 4): ``s(i) = sum_{i -> j} ||V_i - V_j||^2`` over the
    ``n - f - 2`` updates closest to V_i (squared L2 distance, V_i itself excluded).

    Requires ``n > 2f + 2`` (the paper's condition); raises ValueError otherwise.
    """
    n, f = len(updates), num_byzantine
    if f < 0:
        raise ValueError("num_byzantine must be >= 0")
    if n <= 2 * f + 2:
        raise ValueError(f"Krum needs n > 2f + 2 updates: got n={n} for f={f} (need at least {2 * f + 3})")
    check_same_structure(updates)
    flat = [flatten(u) for u in updates]
    d2 = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        for j in range(i + 1, n):
            d2[i, j] = d2[j, i] = float(np.sum(np.square(flat[i] - flat[j])))
    closest = n - f - 2
    return np.array([np.sort(np.delete(d2[i], i))[:closest].sum() for i in range(n)])


def multi_krum(updates: Sequence[Weights], num_byzantine: int, num_selected: int = 1) -> tuple[Weights, list[int]]:
    """Multi-Krum (Blanchard et al. 2017, Section 4): the plain mean of the ``m`` updates with
    the lowest Krum scores; ``m = 1`` is Krum itself (the single best update, returned as is).

    Returns ``(aggregate, selected indices in ascending score order)``; ties are broken by
    position (stable sort).
    """
    if not 1 <= num_selected <= len(updates):
        raise ValueError(f"num_selected must be in [1, {len(updates)}]")
    scores = krum_scores(updates, num_byzantine)
    chosen = [int(i) for i in np.argsort(scores, kind="stable")[:num_selected]]
    return unweighted_average([updates[i] for i in chosen]), chosen


def update_outlier_scores(
    global_weights: Weights, client_weights: Mapping[str, Weights]
) -> dict[str, dict[str, float]]:
    """Per hospital, how unusual its update looks: ``{id: {"norm", "cosine_to_consensus"}}``.

    ``update_k = w_k - global``; ``norm`` is its global L2 norm; the consensus is the
    coordinate-wise median of all updates (Yin et al. 2018) and ``cosine_to_consensus`` is
    ``<u_k, c> / (||u_k|| ||c||)``, defined as 0.0 when either vector is zero. For flagging
    outliers in the metrics; never changes the aggregate.
    """
    if not client_weights:
        return {}
    ids = list(client_weights)
    check_same_structure([global_weights, *(client_weights[h] for h in ids)])
    updates = [subtract(client_weights[h], global_weights) for h in ids]
    consensus = flatten(coordinate_median(updates))
    c_norm = float(np.linalg.norm(consensus))
    out: dict[str, dict[str, float]] = {}
    for h, u in zip(ids, updates):
        v = flatten(u)
        norm = float(np.linalg.norm(v))
        cos = float(np.dot(v, consensus) / (norm * c_norm)) if norm > 0 and c_norm > 0 else 0.0
        out[h] = {"norm": norm, "cosine_to_consensus": cos}
    return out


# --------------------------------------------------------------------------- differential privacy


def clip_by_global_norm(w: Weights, clip_norm: float) -> tuple[Weights, float]:
    """``w * min(1, S / ||w||)`` with ``||.||`` the L2 norm over all tensors (McMahan et al.
    2018, "Learning Differentially Private Recurrent Language Models", Algorithm 1,
    ``pi(Delta, S)``). Returns ``(clipped, norm before clipping)``; float64 tensors.
    """
    if clip_norm <= 0:
        raise ValueError("clip_norm must be positive")
    norm = global_norm(w)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [np.asarray(x, dtype=np.float64) * factor for x in w], norm
