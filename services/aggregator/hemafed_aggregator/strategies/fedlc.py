"""FedLC: Zhang et al., "Federated Learning with Label Distribution Skew via Logits Calibration",
ICML 2022.

Under label skew a hospital's local cross-entropy pushes down the scores of the classes it rarely
or never sees, so every local update drags the shared classifier towards that hospital's label mix
(client drift). FedLC calibrates each hospital's logits by its own label counts before the
softmax, ``z_c - tau * n_c^(-1/4)`` (Eq. 7): rare classes get a larger margin, and a class with
no local example leaves the local softmax altogether. The counts never leave the hospital (the
trainer computes them, :func:`hemafed.training.calibration_offsets`); the server aggregates
exactly as FedAvg. This strategy sends ``FitConfig.logit_calibration_tau = tau`` with every
FitIns; ``tau > 0`` is required (``tau = 0`` is FedAvg: use ``fedavg``). Predictions use the
plain, uncalibrated model.
"""

from __future__ import annotations

from typing import Any

from hemafed_aggregator.strategies.fedavg import FedAvg


class FedLC(FedAvg):
    name = "fedlc"

    def __init__(self, *, tau: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 < tau <= 100:
            raise ValueError("FedLC needs 0 < tau <= 100 (tau = 0 is FedAvg)")
        self.tau = float(tau)
        self.fit_config = self.fit_config.model_copy(update={"logit_calibration_tau": self.tau})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tau": self.tau}
