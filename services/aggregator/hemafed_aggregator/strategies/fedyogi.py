"""FedYogi: Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2
(Yogi: Zaheer et al. 2018).

``v_t = v_{t-1} - (1 - beta_2) Delta_t^2 sign(v_{t-1} - Delta_t^2)`` (``sign(0) = 0``); the
rest is :class:`~hemafed_aggregator.strategies.fedopt.FedOpt`.
"""

from __future__ import annotations

import numpy as np

from hemafed_aggregator.strategies.fedopt import FedOpt


class FedYogi(FedOpt):
    name = "fedyogi"

    def update_v(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.beta_2) * delta_sq * np.sign(v - delta_sq)
