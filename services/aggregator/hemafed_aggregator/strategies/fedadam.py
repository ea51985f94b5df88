"""FedAdam: Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2.

``v_t = beta_2 v_{t-1} + (1 - beta_2) Delta_t^2`` (no bias correction, as in Algorithm 2); the
rest is :class:`~hemafed_aggregator.strategies.fedopt.FedOpt`.
"""

from __future__ import annotations

import numpy as np

from hemafed_aggregator.strategies.fedopt import FedOpt


class FedAdam(FedOpt):
    name = "fedadam"

    def update_v(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1.0 - self.beta_2) * delta_sq
