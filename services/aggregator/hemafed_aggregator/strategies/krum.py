"""Krum and Multi-Krum: Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS 2017, Section 4.

Krum scores each of the n hospitals' models by the sum of squared L2 distances to its
``n - f - 2`` nearest neighbours and keeps the lowest-scoring model; Multi-Krum averages the
``m`` lowest-scoring ones. Distances between models equal distances between updates
``w_k - x``, so applying it to models is the paper's rule. Needs ``n > 2f + 2`` results (a
ValueError otherwise), so ``min_fit_clients`` is raised to at least ``2f + 3``.
A round with no results leaves the weights unchanged.
"""

from __future__ import annotations

from typing import Any

from hemafed_aggregator.aggregation import check_same_structure, multi_krum
from hemafed_aggregator.strategies.base import Failure, FitRes, Strategy, Weights


class Krum(Strategy):
    """``num_byzantine`` is f; ``num_selected`` is m (1 = Krum)."""

    name = "krum"

    def __init__(self, *, num_byzantine: int = 1, num_selected: int | None = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_byzantine < 0:
            raise ValueError("num_byzantine must be >= 0")
        if num_selected is not None and num_selected < 1:
            raise ValueError("num_selected must be >= 1")
        self.num_byzantine = num_byzantine
        self.num_selected = num_selected
        self.min_fit_clients = max(self.min_fit_clients, 2 * num_byzantine + 3)
        #: ids of the hospitals whose models Krum kept in the last aggregated round (best first)
        self.last_selected: list[str] = []

    def selected_count(self, n: int) -> int:
        return self.num_selected if self.num_selected is not None else n - self.num_byzantine

    def aggregate_train(self, rnd: int, weights: Weights, results: list[FitRes], failures: list[Failure]) -> Weights:
        if not results:
            return weights
        check_same_structure([weights, *(r.weights for r in results)])
        agg, chosen = multi_krum([r.weights for r in results], self.num_byzantine, self.selected_count(len(results)))
        self.last_selected = [results[i].hospital_id for i in chosen]
        return agg

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "num_byzantine": self.num_byzantine, "num_selected": self.num_selected}


class MultiKrum(Krum):
    """Multi-Krum with ``m = n - f`` by default (the choice of El Mhamdi et al. 2018)."""

    name = "multikrum"

    def __init__(self, *, num_byzantine: int = 1, num_selected: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_byzantine=num_byzantine, num_selected=num_selected, **kwargs)
