"""FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, Algorithm 1.

The server update is written as TFF's weighted FedAvg with a server optimizer of plain SGD:
``w <- w + server_lr * sum_k (n_k/n) (w_k - w)``; ``server_lr = 1`` is exactly Algorithm 1.
``weighted=False`` gives the plain (unweighted) mean of the hospitals' models.
"""

from __future__ import annotations

from hemafed_aggregator.aggregation import add_scaled, subtract, unweighted_average, weighted_average
from hemafed_aggregator.strategies.base import Failure, FitRes, Strategy, Weights


class FedAvg(Strategy):
    name = "fedavg"

    def __init__(self, *, server_lr: float = 1.0, weighted: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if server_lr <= 0:
            raise ValueError("server_lr must be positive")
        self.server_lr = server_lr
        self.weighted = weighted

    def average(self, results: list[FitRes]) -> Weights:
        updates = [r.weights for r in results]
        if self.weighted:
            return weighted_average(updates, [r.num_examples for r in results])
        return unweighted_average(updates)

    def aggregate_train(self, rnd: int, weights: Weights, results: list[FitRes], failures: list[Failure]) -> Weights:
        if not results:
            return weights
        avg = self.average(results)
        if self.server_lr == 1.0:
            return avg
        return add_scaled(weights, subtract(avg, weights), self.server_lr)

    def describe(self) -> dict:
        return {**super().describe(), "server_lr": self.server_lr, "weighted": self.weighted}
