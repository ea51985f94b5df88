"""Server-side stochastic weight averaging: Izmailov et al., "Averaging Weights Leads to Wider
Optima and Better Generalization", UAI 2018 (SWA), applied to the global model as in Caldarola
et al., "Improving Generalization in Federated Learning by Seeking Flat Minima", ECCV 2022
(FedAvg + SWA: the server averages the global models of the last rounds).

Wraps the run's strategy (:class:`StrategyWrapper`). Every round is the wrapped strategy's, hook
for hook; in addition the global models it returns in the window of rounds ``last - K + 1 .. last``
are summed (float64), and in round ``last`` the uniform mean of those K models is returned instead
of the round's own model:

    w_SWA = (1 / K) * sum_{r = last-K+1}^{last} w^r

That mean is the model evaluated in round ``last`` (and so picked by global validation like any
round's model), saved as the final model, and where the classifier rounds start when the run has
some (``last`` is then the last round before them). Inside the window the hospitals keep training
from the wrapped strategy's models, as SWA collects its average along the SGD trajectory without
training from it. After round ``last`` the wrapped strategy's server state (momentum, FedDyn's h,
SCAFFOLD's c) refers to a model that is no longer the global one; that is why the window ends the
run's training of the whole network: only classifier rounds (their own example-weighted mean, no
server state) or nothing follow it.

Averaging models a differentially private strategy released is post-processing: the privacy
spent is unchanged. Non-float tensors (none in HemaFed's models) are taken from round ``last``.
BatchNorm moving statistics are averaged like every other tensor, where Izmailov et al. recompute
them with a pass over the training data (which the server does not hold); HemaFed's own CNNs use
GroupNorm, which keeps none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hemafed_aggregator.aggregation import add_scaled, uniform_mean, zeros_like
from hemafed_aggregator.strategies.base import Failure, FitRes, Strategy, StrategyWrapper, Weights

#: state_dict keys of this wrapper (the wrapped strategy's keys must not start with it)
PREFIX = "swa_"


class ServerSWA(StrategyWrapper):
    def __init__(self, base: Strategy, *, rounds: int, last_round: int | None = None) -> None:
        last = base.total_rounds if last_round is None else last_round
        if not 1 <= last <= base.total_rounds:
            raise ValueError(f"the averaging window must end within the run's {base.total_rounds} rounds "
                             f"(got round {last})")
        if not 2 <= rounds <= last:
            raise ValueError(f"weight averaging needs at least 2 and at most {last} rounds to average "
                             f"(the rounds up to {last} that train the whole network; got {rounds})")
        super().__init__(base)
        #: the window: rounds first .. last
        self.last = last
        self.first = last - rounds + 1
        self.total: Weights = []
        self.count = 0

    def in_window(self, rnd: int) -> bool:
        return self.first <= rnd <= self.last

    def aggregate_train(self, rnd: int, weights: Weights, results: list[FitRes], failures: list[Failure]) -> Weights:
        new = self.base.aggregate_train(rnd, weights, results, failures)
        if not self.in_window(rnd):
            return new
        self.total = add_scaled(self.total if self.count else zeros_like(new), new, 1.0)  # float64 sums
        self.count += 1
        if rnd < self.last:
            return new
        return uniform_mean(self.total, self.count, new)

    # ------------------------------------------------------------------ state (resume), reports

    def state_dict(self) -> dict[str, Any]:
        state = self.base.state_dict()
        if any(k.startswith(PREFIX) for k in state):
            raise TypeError(f"{self.base.name}'s state keys collide with the weight average's ({PREFIX}*)")
        state[f"{PREFIX}window"] = [self.first, self.last]
        state[f"{PREFIX}count"] = self.count
        if self.count:
            state[f"{PREFIX}total"] = list(self.total)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        own = {k: v for k, v in state.items() if k.startswith(PREFIX)}
        window = own.get(f"{PREFIX}window")
        if window is None or list(window) != [self.first, self.last]:
            was = f"averaged rounds {window[0]}..{window[1]}" if window else "was written without SWA_ROUNDS"
            raise ValueError(f"the checkpoint {was}, this run averages rounds {self.first}..{self.last}: resume "
                             "with the SWA_ROUNDS the run started with, or use a new RUN_ID")
        self.base.load_state_dict({k: v for k, v in state.items() if not k.startswith(PREFIX)})
        self.count = int(own.get(f"{PREFIX}count", 0))
        self.total = [np.asarray(t, dtype=np.float64).copy() for t in own.get(f"{PREFIX}total", [])]
        if self.count and not self.total:
            raise ValueError("weight-average state has a count but no sum")

    def round_report(self, rnd: int) -> dict[str, Any]:
        report = dict(self.base.round_report(rnd))
        if self.in_window(rnd):
            # models summed so far; in round `last` the global model is their mean
            report["swa"] = {"window": [self.first, self.last], "collected": self.count,
                             "global_is_average": rnd == self.last}
        return report

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "swa_rounds": self.last - self.first + 1,
                "swa_window": [self.first, self.last]}
