"""FedAdagrad: Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2.

``v_t = v_{t-1} + Delta_t^2``; the rest (momentum ``m_t``, ``x + eta m_t / (sqrt(v_t) + tau)``,
defaults, ``v_{-1} = tau^2``) is :class:`~hemafed_aggregator.strategies.fedopt.FedOpt`.
``beta_2`` is unused by Adagrad (kept so every FedOpt variant takes the same parameters).
"""

from __future__ import annotations

import numpy as np

from hemafed_aggregator.strategies.fedopt import FedOpt


class FedAdagrad(FedOpt):
    name = "fedadagrad"

    def update_v(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v + delta_sq
