"""FedLC: Zhang et al., "Federated Learning with Label Distribution Skew via Logits Calibration",
ICML 2022.

Under label skew a hospital's local cross-entropy pushes down the scores of the classes it rarely
or never sees, so every local update drags the shared classifier towards that hospital's label mix
(client drift). FedLC calibrates each hospital's logits by its own label counts before the
softmax, ``z_c - tau * n_c^(-1/4)`` (Eq. 7): rare classes get a larger margin, and a class with
no local example leaves the local softmax altogether. The counts never leave the hospital (the
trainer computes them, :func:`hemafed.training.calibration_offsets`); the server aggregates
as FedAvg. This strategy sends ``FitConfig.logit_calibration_tau = tau`` with every FitIns;
``tau > 0`` is required (``tau = 0`` is FedAvg: use ``fedavg``). Predictions use the plain,
uncalibrated model.

Calibration is a hospital-side objective and composes with a server optimizer: the server step is
FedAvgM's (``v <- beta v + Delta``, ``x <- x + eta v``) with ``server_momentum`` beta = 0 by
default, which is the paper's FedAvg (``x + eta Delta``; ``eta = server_lr`` = 1: the plain
average). ``server_momentum > 0`` adds Hsu et al.'s server momentum (state ``v`` checkpointed).
"""

from __future__ import annotations

from typing import Any

from hemafed_aggregator.strategies.fedavgm import FedAvgM


class FedLC(FedAvgM):
    name = "fedlc"

    def __init__(self, *, tau: float = 1.0, server_momentum: float = 0.0, **kwargs: Any) -> None:
        super().__init__(server_momentum=server_momentum, **kwargs)
        if not 0 < tau <= 100:
            raise ValueError("FedLC needs 0 < tau <= 100 (tau = 0 is FedAvg)")
        self.tau = float(tau)
        self.fit_config = self.fit_config.model_copy(update={"logit_calibration_tau": self.tau})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tau": self.tau}
