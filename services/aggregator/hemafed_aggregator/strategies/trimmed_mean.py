"""Coordinate-wise trimmed mean: Yin et al., "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML 2018, Definition 2 / Algorithm 1 (option II).

For each coordinate the ``floor(beta * n)`` largest and smallest of the n hospitals' values are
dropped and the rest averaged (``beta`` in [0, 1/2); ``beta = 0`` is the plain mean). Applied to
the models, which equals applying it to the updates ``w_k - x`` (translation-equivariant).
Unweighted. A round with no results leaves the weights unchanged.
"""

from __future__ import annotations

from typing import Any

from hemafed_aggregator.aggregation import check_same_structure, trimmed_mean
from hemafed_aggregator.strategies.base import Failure, FitRes, Strategy, Weights


class TrimmedMean(Strategy):
    name = "trimmed_mean"

    def __init__(self, *, beta: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= beta < 0.5:
            raise ValueError("beta must be in [0, 0.5)")
        self.beta = beta

    def aggregate_train(self, rnd: int, weights: Weights, results: list[FitRes], failures: list[Failure]) -> Weights:
        if not results:
            return weights
        check_same_structure([weights, *(r.weights for r in results)])
        return trimmed_mean([r.weights for r in results], self.beta)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "beta": self.beta}
