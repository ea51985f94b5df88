"""FedAvgM: Hsu, Qi & Brown, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification", 2019, Section 3 (server momentum).

With the pseudo-gradient ``Delta = avg_k(w_k) - x`` (the paper writes ``Delta w = x - avg`` and
subtracts; same update)::

    v <- beta v + Delta        x <- x + eta v

``server_momentum`` beta = 0.9 and ``server_lr`` eta = 1.0 by default; ``beta = 0`` is FedAvg
(with server learning rate eta). ``v`` starts at 0 and is saved in :meth:`state_dict`.
"""

from __future__ import annotations

from typing import Any

from hemafed_aggregator.strategies.base import Weights
from hemafed_aggregator.strategies.fedopt import ServerOptStrategy


class FedAvgM(ServerOptStrategy):
    name = "fedavgm"
    _state_keys = ("v",)

    def __init__(self, *, server_lr: float = 1.0, server_momentum: float = 0.9, weighted: bool = True, **kwargs: Any) -> None:
        super().__init__(server_lr=server_lr, weighted=weighted, **kwargs)
        if not 0.0 <= server_momentum < 1.0:
            raise ValueError("server_momentum must be in [0, 1)")
        self.server_momentum = server_momentum

    def server_step(self, delta: Weights) -> Weights:
        self.v = [self.server_momentum * v + d for v, d in zip(self.v, delta)]
        return [self.server_lr * v for v in self.v]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "server_momentum": self.server_momentum}
