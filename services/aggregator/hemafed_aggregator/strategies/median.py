"""Coordinate-wise median: Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018, Definition 1 / Algorithm 1 (option I).

The new global model is the coordinate-wise median of the hospitals' models. Yin et al. take
the median of the updates ``w_k - x``; the median commutes with subtracting the same ``x``
from every value, so the two agree. Unweighted (a hospital's example count cannot be trusted
under attack). A round with no results leaves the weights unchanged.
"""

from __future__ import annotations

from hemafed_aggregator.aggregation import check_same_structure, coordinate_median
from hemafed_aggregator.strategies.base import Failure, FitRes, Strategy, Weights


class CoordinateMedian(Strategy):
    name = "median"

    def aggregate_train(self, rnd: int, weights: Weights, results: list[FitRes], failures: list[Failure]) -> Weights:
        if not results:
            return weights
        check_same_structure([weights, *(r.weights for r in results)])
        return coordinate_median([r.weights for r in results])
