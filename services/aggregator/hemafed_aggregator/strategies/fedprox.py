"""FedProx: Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, Algorithm 2.

Hospitals minimise the proximal objective ``h_k(w; w^t) = F_k(w) + (mu/2) ||w - w^t||^2``
(Eq. 2); the server aggregates exactly as FedAvg (Algorithm 2 averages the returned models).
This strategy sends ``FitConfig.proximal_mu = mu`` with every FitIns; ``mu > 0`` is required
(``mu = 0`` is FedAvg: use ``fedavg``).
"""

from __future__ import annotations

from typing import Any

from hemafed_aggregator.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, *, mu: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not mu > 0:
            raise ValueError("FedProx needs mu > 0 (mu = 0 is FedAvg)")
        self.mu = float(mu)
        self.fit_config = self.fit_config.model_copy(update={"proximal_mu": self.mu})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mu": self.mu}
