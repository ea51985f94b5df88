"""SCAFFOLD: Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020, Algorithm 1 (server side; hospitals use option II).

Each round the server sends ``(x, c)``: the global model and the server control variate
``c`` in ``FitIns.aux["c"]``, with ``FitConfig.scaffold = True``. Hospital ``i`` (keeping its
own ``c_i``, initially 0) runs K local steps ``y <- y - eta_l (g_i(y) - c_i + c)``, then
option II: ``c_i^+ = c_i - c + (x - y) / (K eta_l)``, and returns its model ``y_i`` as the
weights and ``aux["delta_c"] = c_i^+ - c_i``. The server (lines 16-17)::

    x <- x + eta_g (1/|S|) sum_{i in S} (y_i - x)
    c <- c + (1/N) sum_{i in S} Delta c_i

with ``N`` all hospitals: ``num_clients`` when given, else the distinct hospitals seen so far
(in ``configure_train`` client lists and results). ``c`` (float64, initially 0) and the known
ids are in :meth:`state_dict`. A result without a well-formed ``aux["delta_c"]`` is an error.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from hemafed_aggregator.aggregation import check_same_structure, copy_weights, zeros_like
from hemafed_aggregator.strategies.base import ClientRef, Failure, FitIns, FitRes, Strategy, Weights

log = logging.getLogger("hemafed.aggregator")


class Scaffold(Strategy):
    name = "scaffold"

    def __init__(self, *, server_lr: float = 1.0, num_clients: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if server_lr <= 0:
            raise ValueError("server_lr must be positive")
        if num_clients is not None and num_clients < 1:
            raise ValueError("num_clients must be >= 1")
        self.server_lr = server_lr
        self.num_clients = num_clients
        if self.fit_config.optimizer != "sgd":
            # option II's control-variate update assumes plain SGD steps at the hospitals
            log.warning("SCAFFOLD: hospital optimizer %r replaced by plain 'sgd' (option II needs it)",
                        self.fit_config.optimizer)
        self.fit_config = self.fit_config.model_copy(update={"scaffold": True, "optimizer": "sgd"})
        self.c: Weights | None = None
        self.known_ids: set[str] = set()

    def initialize(self, weights: Weights) -> Weights:
        if self.c is None:
            self.c = zeros_like(weights)
        return weights

    def total_clients(self) -> int:
        known = len(self.known_ids)
        return max(self.num_clients, known) if self.num_clients is not None else known

    def control_for_clients(self, weights: Weights) -> Weights:
        """``c`` as sent to hospitals: in the dtypes of the weights."""
        if self.c is None:
            self.c = zeros_like(weights)
        return [c.astype(w.dtype) for c, w in zip(self.c, weights)]

    def configure_train(
        self, rnd: int, weights: Weights, clients: list[ClientRef], rng: np.random.Generator
    ) -> list[tuple[ClientRef, FitIns]]:
        self.known_ids.update(c.id for c in clients)
        chosen = super().configure_train(rnd, weights, clients, rng)
        c = self.control_for_clients(weights)
        return [(client, FitIns(weights=ins.weights, config=ins.config, aux={"c": c})) for client, ins in chosen]

    def aggregate_train(self, rnd: int, weights: Weights, results: list[FitRes], failures: list[Failure]) -> Weights:
        if not results:
            return weights
        for r in results:
            dc = r.aux.get("delta_c")
            if dc is None:
                raise ValueError(f"SCAFFOLD: hospital {r.hospital_id!r} returned no aux['delta_c']")
            try:
                check_same_structure([weights, dc, r.weights])
            except ValueError:
                raise ValueError(f"SCAFFOLD: hospital {r.hospital_id!r} returned tensors of the wrong shapes") from None
        self.known_ids.update(r.hospital_id for r in results)
        if self.c is None:
            self.c = zeros_like(weights)
        n, big_n = len(results), self.total_clients()
        x = [np.asarray(w, dtype=np.float64) for w in weights]
        dx = [np.zeros_like(t) for t in x]
        dc = [np.zeros_like(t) for t in x]
        for r in results:
            for acc, y, t in zip(dx, r.weights, x):
                acc += np.asarray(y, dtype=np.float64) - t
            for acc, d in zip(dc, r.aux["delta_c"]):
                acc += np.asarray(d, dtype=np.float64)
        self.c = [c + d / big_n for c, d in zip(self.c, dc)]
        return [(t + self.server_lr * d / n).astype(w.dtype) for t, d, w in zip(x, dx, weights)]

    def state_dict(self) -> dict[str, Any]:
        return {"c": None if self.c is None else copy_weights(self.c), "known_ids": sorted(self.known_ids)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        c = state.get("c")
        self.c = None if c is None else [np.array(x, dtype=np.float64) for x in c]
        self.known_ids = set(state.get("known_ids", []))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "server_lr": self.server_lr, "num_clients": self.num_clients}
