"""FedOpt: Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2.

The server treats the (example-weighted) average change of the hospitals' models as a
pseudo-gradient and runs an optimizer on it::

    Delta_t = avg_k(w_k) - x_t                                   (pseudo-gradient, Alg. 2)
    m_t     = beta_1 m_{t-1} + (1 - beta_1) Delta_t
    v_t     = ServerOpt-specific (Adagrad / Adam / Yogi, see subclasses)
    x_{t+1} = x_t + eta * m_t / (sqrt(v_t) + tau)

Choices (stated because the paper leaves them as inputs):

* ``m_{-1} = 0`` and ``v_{-1} = tau^2``: Algorithm 2 requires ``v_{-1} >= tau^2``; we take the
  smallest allowed value (Flower initialises ``v`` to 0; pass ``initial_v=0.0`` to match it).
* No Adam bias correction: Algorithm 2 has none (Flower's FedAdam applies one).
* Defaults eta = 1e-2, beta_1 = 0.9, beta_2 = 0.99, tau = 1e-3 (the paper's beta values; eta
  and tau are tuned per task in the paper, Section 5 / Appendix D).
* ``weighted=True`` averages by examples as FedAvg; the paper's Algorithm 2 uses the plain
  mean ``(1/|S|) sum Delta_i`` (``weighted=False``).

Server state (``m``, ``v`` and the step count) is float64 and round-trips through
:meth:`state_dict` / :meth:`load_state_dict`. A round with no results leaves weights and
state unchanged. :class:`FedOpt` is the shared base; the named algorithms live in
``fedadagrad.py``, ``fedadam.py``, ``fedyogi.py`` and ``fedavgm.py``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from hemafed_aggregator.aggregation import copy_weights, unweighted_average, weighted_average, zeros_like
from hemafed_aggregator.strategies.base import Failure, FitRes, Strategy, Weights


class ServerOptStrategy(Strategy):
    """Shared pattern: pseudo-gradient -> stateful server step -> ``x + step``.

    Subclasses implement :meth:`server_step` (returning the float64 increment to add to ``x``)
    and list their state arrays in ``_state_keys``.
    """

    _state_keys: tuple[str, ...] = ()

    def __init__(self, *, server_lr: float, weighted: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if server_lr <= 0:
            raise ValueError("server_lr must be positive")
        self.server_lr = server_lr
        self.weighted = weighted
        self.step = 0
        for key in self._state_keys:
            setattr(self, key, None)

    def pseudo_gradient(self, weights: Weights, results: list[FitRes]) -> Weights:
        """``Delta_t = avg_k(w_k) - x_t`` in float64."""
        models = [r.weights for r in results]
        avg = weighted_average(models, [r.num_examples for r in results]) if self.weighted else unweighted_average(models)
        return [np.asarray(a, dtype=np.float64) - np.asarray(x, dtype=np.float64) for a, x in zip(avg, weights)]

    @abstractmethod
    def server_step(self, delta: Weights) -> Weights:
        """Update the server state with ``delta`` and return the increment for ``x``."""

    def aggregate_train(self, rnd: int, weights: Weights, results: list[FitRes], failures: list[Failure]) -> Weights:
        if not results:
            return weights
        delta = self.pseudo_gradient(weights, results)
        for key in self._state_keys:
            if getattr(self, key) is None:
                setattr(self, key, self.initial_state(key, delta))
        increment = self.server_step(delta)
        self.step += 1
        return [(np.asarray(x, dtype=np.float64) + d).astype(x.dtype) for x, d in zip(weights, increment)]

    def initial_state(self, key: str, like: Weights) -> Weights:
        return zeros_like(like)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self.step}
        for key in self._state_keys:
            value = getattr(self, key)
            state[key] = None if value is None else copy_weights(value)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        for key in self._state_keys:
            value = state.get(key)
            setattr(self, key, None if value is None else [np.array(x, dtype=np.float64) for x in value])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "server_lr": self.server_lr, "weighted": self.weighted}


class FedOpt(ServerOptStrategy):
    """Reddi et al. 2021, Algorithm 2 with a pluggable second-moment rule :meth:`update_v`."""

    name = "fedopt"
    _state_keys = ("m", "v")

    def __init__(
        self,
        *,
        server_lr: float = 1e-2,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
        initial_v: float | None = None,
        weighted: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(server_lr=server_lr, weighted=weighted, **kwargs)
        if not 0.0 <= beta_1 < 1.0 or not 0.0 <= beta_2 < 1.0:
            raise ValueError("beta_1 and beta_2 must be in [0, 1)")
        if tau <= 0:
            raise ValueError("tau must be positive")
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.tau = tau
        self.initial_v = tau**2 if initial_v is None else initial_v
        if self.initial_v < 0:
            raise ValueError("initial_v must be >= 0")

    def initial_state(self, key: str, like: Weights) -> Weights:
        if key == "v":
            return [np.full(x.shape, self.initial_v, dtype=np.float64) for x in like]
        return zeros_like(like)

    @abstractmethod
    def update_v(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """``v_t`` from ``v_{t-1}`` and ``Delta_t^2`` (elementwise)."""

    def server_step(self, delta: Weights) -> Weights:
        self.m = [self.beta_1 * m + (1.0 - self.beta_1) * d for m, d in zip(self.m, delta)]
        self.v = [self.update_v(v, np.square(d)) for v, d in zip(self.v, delta)]
        return [self.server_lr * m / (np.sqrt(v) + self.tau) for m, v in zip(self.m, self.v)]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "tau": self.tau,
            "initial_v": self.initial_v,
        }
