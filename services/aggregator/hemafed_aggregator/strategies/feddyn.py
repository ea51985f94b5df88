"""FedDyn: Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021, Algorithm 1.

Server side only. With ``m`` the number of ALL devices and ``P_t`` the ones that answered::

    h^t     = h^{t-1} - alpha (1/m) sum_{k in P_t} (theta_k^t - theta^{t-1})
    theta^t = (1/|P_t|) sum_{k in P_t} theta_k^t - (1/alpha) h^t

(``h^0 = 0``; the sum is read per device, as in the authors' code, which accumulates
``theta_k - theta^{t-1}`` per device and averages over all ``m``). The mean over ``P_t`` is
unweighted, as in the paper.

Hospital side (``FitConfig.feddyn_alpha = alpha``): each device keeps ``g_k`` (its "gradient
state", initially 0), minimises ``L_k(theta) - <g_k, theta> + (alpha/2) ||theta - theta^{t-1}||^2``
and then sets ``g_k <- g_k - alpha (theta_k^t - theta^{t-1})``.

``m`` is ``num_clients`` when given, else the number of distinct hospitals seen so far (in
``configure_train`` client lists and results). ``h`` and the known ids are in :meth:`state_dict`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hemafed_aggregator.aggregation import check_same_structure, copy_weights, unweighted_average, zeros_like
from hemafed_aggregator.strategies.base import ClientRef, Failure, FitIns, FitRes, Strategy, Weights


class FedDyn(Strategy):
    name = "feddyn"

    def __init__(self, *, alpha: float = 0.01, num_clients: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not alpha > 0:
            raise ValueError("FedDyn needs alpha > 0")
        if num_clients is not None and num_clients < 1:
            raise ValueError("num_clients must be >= 1")
        self.alpha = float(alpha)
        self.num_clients = num_clients
        self.fit_config = self.fit_config.model_copy(update={"feddyn_alpha": self.alpha})
        self.h: Weights | None = None
        self.known_ids: set[str] = set()

    def total_clients(self) -> int:
        """``m`` of the paper: all devices, not only this round's."""
        known = len(self.known_ids)
        return max(self.num_clients, known) if self.num_clients is not None else known

    def configure_train(
        self, rnd: int, weights: Weights, clients: list[ClientRef], rng: np.random.Generator
    ) -> list[tuple[ClientRef, FitIns]]:
        self.known_ids.update(c.id for c in clients)
        return super().configure_train(rnd, weights, clients, rng)

    def aggregate_train(self, rnd: int, weights: Weights, results: list[FitRes], failures: list[Failure]) -> Weights:
        if not results:
            return weights
        check_same_structure([weights, *(r.weights for r in results)])
        self.known_ids.update(r.hospital_id for r in results)
        if self.h is None:
            self.h = zeros_like(weights)
        m = self.total_clients()
        x = [np.asarray(w, dtype=np.float64) for w in weights]
        drift = [np.zeros_like(t) for t in x]
        for r in results:
            for acc, theta_k, t in zip(drift, r.weights, x):
                acc += np.asarray(theta_k, dtype=np.float64) - t
        self.h = [h - self.alpha / m * d for h, d in zip(self.h, drift)]
        mean = unweighted_average([[np.asarray(t, dtype=np.float64) for t in r.weights] for r in results])
        return [(a - h / self.alpha).astype(w.dtype) for a, h, w in zip(mean, self.h, weights)]

    def state_dict(self) -> dict[str, Any]:
        return {"h": None if self.h is None else copy_weights(self.h), "known_ids": sorted(self.known_ids)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        h = state.get("h")
        self.h = None if h is None else [np.array(x, dtype=np.float64) for x in h]
        self.known_ids = set(state.get("known_ids", []))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "alpha": self.alpha, "num_clients": self.num_clients}
