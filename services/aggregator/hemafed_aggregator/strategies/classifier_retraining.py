"""Classifier re-training rounds: Kang et al., "Decoupling Representation and Classifier for
Long-Tailed Recognition", ICLR 2020 (cRT), run federated, as motivated by Luo et al., "No Fear of
Heterogeneity: Classifier Calibration for Federated Learning with Non-IID Data", NeurIPS 2021
(under label skew the classifier layer is the most biased part of the federated model).

Wraps the run's strategy. Rounds ``1 .. R - N`` are the wrapped strategy's, hook for hook. In the
last ``N`` rounds the feature extractor is frozen where it stands and only the layer named
``classifier`` is re-trained:

* every hospital gets the round's FitConfig with ``classifier_only = True`` and the drift terms
  of the wrapped algorithm off (``proximal_mu = 0``, ``feddyn_alpha = 0``, ``scaffold = False``;
  FedLC's calibration, a choice of loss, stays; FedBABU's ``frozen_classifier`` is lifted: this is
  where its classifier trains); the hospital masks every other gradient and sends
  the other weights back exactly as it got them;
* the answers are combined by the example-weighted mean (McMahan et al. 2017, Algorithm 1), so
  the frozen weights stay exactly where they are; the wrapped strategy's server state (momentum,
  FedDyn's h, SCAFFOLD's c) is neither used nor changed: it would move the frozen weights;
* a departed hospital's stale update (``DEPARTED=keep``) is not re-used in these rounds: it may
  hold another feature extractor.

With frozen features the re-training is a convex problem (softmax regression), on which averaging
the hospitals' classifiers after a short local run lands near the classifier trained on the
pooled features. Differentially private and robust strategies are refused: these rounds would have
neither their noise nor their protection.

The classifier rounds may train with settings of their own (``learning_rate``, ``local_epochs``,
``optimizer``, ``augment``; unset = the run's): a learning rate given here is constant over these
rounds (the run's schedule does not shrink it). A run that starts from a trained model
(``INIT_RUN``, ``trained_start=True``) may consist of classifier rounds only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hemafed.schemas import FitConfig
from hemafed_aggregator.aggregation import weighted_average
from hemafed_aggregator.strategies.base import (
    ClientRef,
    Failure,
    FitIns,
    FitRes,
    Strategy,
    StrategyWrapper,
    Weights,
)

#: wrapped strategies these rounds would undermine, and why
REFUSED = {
    "dp_fedavg": "its privacy guarantee needs clipping and noise in every round",
    "median": "a robust rule protects every round, and these rounds average",
    "trimmed_mean": "a robust rule protects every round, and these rounds average",
    "krum": "a robust rule protects every round, and these rounds average",
    "multikrum": "a robust rule protects every round, and these rounds average",
}


class ClassifierRetraining(StrategyWrapper):
    def __init__(self, base: Strategy, *, rounds: int, learning_rate: float | None = None,
                 local_epochs: int | None = None, optimizer: str | None = None, augment: bool | None = None,
                 trained_start: bool = False) -> None:
        if base.name in REFUSED:
            raise ValueError(f"classifier re-training rounds cannot follow {base.name}: {REFUSED[base.name]}")
        if base.fit_config.dp_clip_norm > 0:
            raise ValueError("classifier re-training rounds are not run under DP-SGD (DP_CLIP_NORM > 0)")
        most = base.total_rounds if trained_start else base.total_rounds - 1
        if not 1 <= rounds <= most:
            raise ValueError(f"classifier rounds must be at least 1 and at most {most} of the run's "
                             f"{base.total_rounds} rounds (got {rounds})"
                             + ("" if trained_start else ": the features train first"))
        own = {"learning_rate": learning_rate, "local_epochs": local_epochs, "optimizer": optimizer,
               "augment": augment}
        #: the classifier rounds' own FitConfig fields (validated as a FitConfig: a bad value fails here)
        self.own = {k: v for k, v in own.items() if v is not None}
        FitConfig.model_validate({**base.fit_config.model_dump(), **self.own})
        super().__init__(base)
        self.classifier_rounds = rounds
        #: the first classifier round
        self.first = base.total_rounds - rounds + 1

    def is_classifier_round(self, rnd: int) -> bool:
        return rnd >= self.first

    def fit_config_for(self, rnd: int) -> FitConfig:
        config = self.base.fit_config_for(rnd)
        if not self.is_classifier_round(rnd):
            return config
        return config.model_copy(update={"classifier_only": True, "proximal_mu": 0.0, "feddyn_alpha": 0.0,
                                         "scaffold": False, "frozen_classifier": False,
                                         **self.own})

    def configure_train(self, rnd: int, weights: Weights, clients: list[ClientRef],
                        rng: np.random.Generator) -> list[tuple[ClientRef, FitIns]]:
        if not self.is_classifier_round(rnd):
            return self.base.configure_train(rnd, weights, clients, rng)
        # Strategy's default hook: the base's client count and this round's classifier-only config, no aux
        return Strategy.configure_train(self, rnd, weights, clients, rng)

    def aggregate_train(self, rnd: int, weights: Weights, results: list[FitRes], failures: list[Failure]) -> Weights:
        if not self.is_classifier_round(rnd):
            return self.base.aggregate_train(rnd, weights, results, failures)
        fresh = [r for r in results if not r.metrics.get("stale")]
        if not fresh:
            return weights
        return weighted_average([r.weights for r in fresh], [r.num_examples for r in fresh])

    def round_report(self, rnd: int) -> dict[str, Any]:
        if self.is_classifier_round(rnd):
            return {"classifier_only": True}
        return self.base.round_report(rnd)

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "classifier_rounds": self.classifier_rounds,
                **{f"classifier_{k}": v for k, v in self.own.items()}}
