"""The Strategy interface: the round loop (``server.py``) is written once and calls these hooks.

A strategy never talks to a hospital itself: ``configure_train`` / ``configure_evaluate``
choose among the client objects the server hands them and say what to send; the server
does the sending (concurrently, with deadlines) and gives the answers back to
``aggregate_train`` / ``aggregate_evaluate``. All arithmetic is pure numpy
(:mod:`hemafed_aggregator.aggregation`); TensorFlow is never imported here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from hemafed.schemas import FitConfig
from hemafed.lr import learning_rate_at

Weights = list[np.ndarray]


class ClientRef(Protocol):
    """What a strategy may know of a hospital: its id (and nothing that talks HTTP)."""

    @property
    def id(self) -> str: ...


@dataclass
class FitIns:
    """What the server sends one hospital for local training."""

    weights: Weights
    config: FitConfig
    #: auxiliary tensor groups for algorithms that need them (SCAFFOLD's server control ``c``)
    aux: dict[str, Weights] = field(default_factory=dict)


@dataclass
class FitRes:
    """One hospital's answer to FitIns."""

    hospital_id: str
    weights: Weights
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    aux: dict[str, Weights] = field(default_factory=dict)


@dataclass
class EvaluateRes:
    hospital_id: str
    loss: float
    accuracy: float
    num_examples: int


@dataclass
class Failure:
    hospital_id: str
    status: str  # timeout / error / rejected
    message: str


class Strategy(ABC):
    """Base strategy. Subclasses implement at least ``aggregate_train``.

    The defaults select hospitals as McMahan et al. 2017 (Algorithm 1): each round
    ``m = max(ceil(C * K), min_fit_clients)`` of the K available hospitals, uniformly at random
    with the server's RNG, and evaluate on all available hospitals.
    """

    #: name used in configs / ``STRATEGY=``
    name: str = "base"

    def __init__(
        self,
        *,
        fit_config: FitConfig | None = None,
        fraction_fit: float = 1.0,
        min_fit_clients: int = 1,
        fraction_evaluate: float = 1.0,
        min_evaluate_clients: int = 1,
        lr_schedule: str = "constant",
        lr_min_fraction: float = 0.0,
        total_rounds: int = 1,
    ) -> None:
        if not 0.0 < fraction_fit <= 1.0:
            raise ValueError("fraction_fit must be in (0, 1]")
        if not 0.0 < fraction_evaluate <= 1.0:
            raise ValueError("fraction_evaluate must be in (0, 1]")
        self.fit_config = fit_config or FitConfig()
        learning_rate_at(self.fit_config.learning_rate, 1, max(total_rounds, 1), lr_schedule, lr_min_fraction)
        #: the hospitals' learning rate by round (hemafed.lr): constant, or cosine over total_rounds
        self.lr_schedule, self.lr_min_fraction, self.total_rounds = lr_schedule, lr_min_fraction, max(total_rounds, 1)
        self.fraction_fit = fraction_fit
        self.min_fit_clients = max(1, min_fit_clients)
        self.fraction_evaluate = fraction_evaluate
        self.min_evaluate_clients = max(1, min_evaluate_clients)

    # ------------------------------------------------------------------ hooks

    def initialize(self, weights: Weights) -> Weights:
        """Called once with the initial global weights; may set up server state."""
        return weights

    def num_fit_clients(self, available: int) -> int:
        m = int(np.ceil(self.fraction_fit * available))
        return min(available, max(m, self.min_fit_clients))

    def fit_config_for(self, rnd: int) -> FitConfig:
        """Round ``rnd``'s local-training config: ``fit_config`` with the round's learning rate."""
        lr = learning_rate_at(self.fit_config.learning_rate, rnd, self.total_rounds, self.lr_schedule,
                              self.lr_min_fraction)
        return self.fit_config if lr == self.fit_config.learning_rate else \
            self.fit_config.model_copy(update={"learning_rate": lr})

    def configure_train(
        self, rnd: int, weights: Weights, clients: list[ClientRef], rng: np.random.Generator
    ) -> list[tuple[ClientRef, FitIns]]:
        chosen = sample_clients(clients, self.num_fit_clients(len(clients)), rng)
        config = self.fit_config_for(rnd)
        return [(c, FitIns(weights=weights, config=config)) for c in chosen]

    @abstractmethod
    def aggregate_train(
        self, rnd: int, weights: Weights, results: list[FitRes], failures: list[Failure]
    ) -> Weights:
        """Return the new global weights from the current ones and the hospitals' results."""

    def configure_evaluate(
        self, rnd: int, weights: Weights, clients: list[ClientRef], rng: np.random.Generator
    ) -> list[ClientRef]:
        m = int(np.ceil(self.fraction_evaluate * len(clients)))
        m = min(len(clients), max(m, self.min_evaluate_clients))
        return sample_clients(clients, m, rng) if m < len(clients) else list(clients)

    def aggregate_evaluate(self, rnd: int, results: list[EvaluateRes]) -> dict[str, float | None]:
        """Global validation: median and example-weighted mean of hospital accuracies."""
        if not results:
            return {"val_accuracy_median": None, "val_accuracy_mean": None, "val_loss": None}
        acc = np.array([r.accuracy for r in results], dtype=np.float64)
        loss = np.array([r.loss for r in results], dtype=np.float64)
        n = np.array([r.num_examples for r in results], dtype=np.float64)
        w = n / n.sum() if n.sum() > 0 else np.full(len(results), 1.0 / len(results))
        return {
            "val_accuracy_median": float(np.median(acc)),
            "val_accuracy_mean": float(np.sum(w * acc)),
            "val_loss": float(np.sum(w * loss)),
        }

    # ------------------------------------------------------------------ state (resume)

    def state_dict(self) -> dict[str, Any]:
        """Server-side state to checkpoint (arrays allowed as lists of np.ndarray)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def round_report(self, rnd: int) -> dict[str, Any]:
        """Strategy-specific facts to record with round ``rnd`` (e.g. DP epsilon); none by default."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Parameters for run metadata."""
        return {
            "name": self.name,
            "fraction_fit": self.fraction_fit,
            "min_fit_clients": self.min_fit_clients,
        }


class StrategyWrapper(Strategy):
    """A strategy around another (classifier re-training rounds, server-side weight averaging):
    the wrapped strategy's name and settings, and every hook the wrapped one's until a subclass
    overrides it."""

    def __init__(self, base: Strategy) -> None:
        super().__init__(fit_config=base.fit_config, fraction_fit=base.fraction_fit,
                         min_fit_clients=base.min_fit_clients, fraction_evaluate=base.fraction_evaluate,
                         min_evaluate_clients=base.min_evaluate_clients, lr_schedule=base.lr_schedule,
                         lr_min_fraction=base.lr_min_fraction, total_rounds=base.total_rounds)
        self.base = base
        self.name = base.name

    def initialize(self, weights: Weights) -> Weights:
        return self.base.initialize(weights)

    def num_fit_clients(self, available: int) -> int:
        return self.base.num_fit_clients(available)

    def fit_config_for(self, rnd: int) -> FitConfig:
        return self.base.fit_config_for(rnd)

    def configure_train(self, rnd: int, weights: Weights, clients: list[ClientRef],
                        rng: np.random.Generator) -> list[tuple[ClientRef, FitIns]]:
        return self.base.configure_train(rnd, weights, clients, rng)

    def aggregate_train(self, rnd: int, weights: Weights, results: list[FitRes], failures: list[Failure]) -> Weights:
        return self.base.aggregate_train(rnd, weights, results, failures)

    def configure_evaluate(self, rnd: int, weights: Weights, clients: list[ClientRef],
                           rng: np.random.Generator) -> list[ClientRef]:
        return self.base.configure_evaluate(rnd, weights, clients, rng)

    def aggregate_evaluate(self, rnd: int, results: list[EvaluateRes]) -> dict[str, float | None]:
        return self.base.aggregate_evaluate(rnd, results)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)

    def round_report(self, rnd: int) -> dict[str, Any]:
        return self.base.round_report(rnd)

    def describe(self) -> dict[str, Any]:
        return self.base.describe()


def sample_clients(clients: list[ClientRef], m: int, rng: np.random.Generator) -> list[ClientRef]:
    """m distinct clients uniformly at random, in a stable (id-sorted) order."""
    if m >= len(clients):
        return sorted(clients, key=lambda c: c.id)
    idx = rng.choice(len(clients), size=m, replace=False)
    return sorted((clients[i] for i in idx), key=lambda c: c.id)
