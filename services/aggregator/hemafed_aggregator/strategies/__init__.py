"""Strategies, one file each, named after their papers. ``build_strategy`` maps names to classes."""

from __future__ import annotations

from typing import Any

from hemafed_aggregator.strategies.base import EvaluateRes, Failure, FitIns, FitRes, Strategy
from hemafed_aggregator.strategies.classifier_retraining import ClassifierRetraining
from hemafed_aggregator.strategies.dp_fedavg import DPFedAvg
from hemafed_aggregator.strategies.fedadagrad import FedAdagrad
from hemafed_aggregator.strategies.fedadam import FedAdam
from hemafed_aggregator.strategies.fedavg import FedAvg
from hemafed_aggregator.strategies.fedavgm import FedAvgM
from hemafed_aggregator.strategies.feddyn import FedDyn
from hemafed_aggregator.strategies.fedlc import FedLC
from hemafed_aggregator.strategies.fedprox import FedProx
from hemafed_aggregator.strategies.fedyogi import FedYogi
from hemafed_aggregator.strategies.krum import Krum, MultiKrum
from hemafed_aggregator.strategies.median import CoordinateMedian
from hemafed_aggregator.strategies.scaffold import Scaffold
from hemafed_aggregator.strategies.swa import ServerSWA
from hemafed_aggregator.strategies.trimmed_mean import TrimmedMean

REGISTRY: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedAvgM,
        FedAdagrad,
        FedAdam,
        FedYogi,
        FedProx,
        FedLC,
        FedDyn,
        Scaffold,
        CoordinateMedian,
        TrimmedMean,
        Krum,
        MultiKrum,
        DPFedAvg,
    )
}


def build_strategy(name: str, **params: Any) -> Strategy:
    try:
        cls = REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
    return cls(**params)


__all__ = [
    "REGISTRY",
    "ClassifierRetraining",
    "CoordinateMedian",
    "DPFedAvg",
    "EvaluateRes",
    "Failure",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedDyn",
    "FedLC",
    "FedProx",
    "FedYogi",
    "FitIns",
    "FitRes",
    "Krum",
    "MultiKrum",
    "Scaffold",
    "ServerSWA",
    "Strategy",
    "TrimmedMean",
    "build_strategy",
]
