"""Per-round outlier flags for the hospitals' updates (pure numpy; reported, never used to aggregate).

For each hospital k that answered round t, with ``u_k = w_k - x_t`` its update against the global
model it was sent, :func:`hemafed_aggregator.aggregation.update_outlier_scores` gives ``||u_k||`` and
the cosine between ``u_k`` and the consensus (the coordinate-wise median of all updates). An update
is *flagged* when

* ``||u_k|| > norm_factor * median_j ||u_j||`` (an unusually large step: scaled or noise updates), or
* ``cos(u_k, consensus) < min_cosine`` (pointing away from the others: sign-flipped updates).

The report goes into the round's ``report["outliers"]`` as
``{hospital: {"norm", "norm_ratio", "cosine", "flagged", "why"}}``. With fewer than three updates
the median is not a consensus worth the name; the scores are still reported, the flags are too
(with two updates neither rule can flag a norm: the larger is at most twice their median).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from hemafed_aggregator.aggregation import update_outlier_scores


class _Result(Protocol):
    hospital_id: str
    weights: list[np.ndarray]


def flag(scores: dict[str, dict[str, float]], *, norm_factor: float = 3.0,
         min_cosine: float = 0.0) -> dict[str, dict[str, Any]]:
    """Scores (``{id: {"norm", "cosine_to_consensus"}}``) -> the report entries with flags."""
    if not scores:
        return {}
    median = float(np.median([s["norm"] for s in scores.values()]))
    out: dict[str, dict[str, Any]] = {}
    for h, s in scores.items():
        ratio = s["norm"] / median if median > 0 else (1.0 if s["norm"] == 0 else float("inf"))
        why = []
        if ratio > norm_factor:
            why.append(f"norm {ratio:.1f}x the median (limit {norm_factor:g}x)")
        if s["cosine_to_consensus"] < min_cosine:
            why.append(f"cosine to consensus {s['cosine_to_consensus']:.2f} < {min_cosine:g}")
        out[h] = {
            "norm": s["norm"],
            "norm_ratio": ratio if np.isfinite(ratio) else None,
            "cosine": s["cosine_to_consensus"],
            "flagged": bool(why),
            "why": "; ".join(why),
        }
    return out


def outlier_report(global_weights: list[np.ndarray], results: list[_Result], *, norm_factor: float = 3.0,
                   min_cosine: float = 0.0) -> dict[str, dict[str, Any]]:
    """The round's outlier report for the fresh results (``{}`` without any)."""
    if not results:
        return {}
    scores = update_outlier_scores(global_weights, {r.hospital_id: r.weights for r in results})
    return flag(scores, norm_factor=norm_factor, min_cosine=min_cosine)
