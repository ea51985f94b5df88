"""Learning-rate schedules over rounds (federated) or epochs (centralized). Pure Python.

``constant``: the base rate every step. ``cosine`` (Loshchilov & Hutter 2017, without restarts):
``lr_t = lr_min + (lr - lr_min) * (1 + cos(pi * (t - 1) / T)) / 2`` for ``t = 1..T``, so the first
round/epoch uses ``lr`` and the rate falls towards ``lr_min = lr * min_fraction``. In a federation the
aggregator sends round ``t``'s rate in that round's FitConfig; each hospital keeps it for its local
epochs (a per-round step schedule, as in FedAvg studies that decay the client rate by round).
"""

from __future__ import annotations

import math
from typing import Literal

LrSchedule = Literal["constant", "cosine"]
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


def learning_rate_at(base: float, step: int, total: int, schedule: str = "constant",
                     min_fraction: float = 0.0) -> float:
    """The rate for ``step`` (1-based) of ``total``; steps past ``total`` keep the last rate."""
    if base <= 0:
        raise ValueError("the base learning rate must be positive")
    if total < 1 or step < 1:
        raise ValueError("step and total are 1-based and at least 1")
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError("min_fraction must be in [0, 1]")
    if schedule == "constant" or total == 1:
        if schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        return base
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    t = min(step, total)
    low = base * min_fraction
    rate = low + (base - low) * (1.0 + math.cos(math.pi * (t - 1) / total)) / 2.0
    return max(rate, low, 1e-12)  # FitConfig needs a positive rate even at min_fraction 0


def warmup_rates(rate: float, epoch: int, warmup_epochs: int, steps_per_epoch: int) -> list[float] | None:
    """Per-step rates of ``epoch`` (1-based) under a linear warm-up over the first ``warmup_epochs``
    epochs (Goyal et al. 2017): step ``g`` (0-based, counted from the first epoch) runs at
    ``rate * (g + 1) / (warmup_epochs * steps_per_epoch)``, so the last warm-up step reaches
    ``rate``; ``rate`` is that epoch's scheduled rate. ``None`` once the warm-up is over (the
    scheduled rate holds for the whole epoch)."""
    if warmup_epochs < 0 or steps_per_epoch < 1 or epoch < 1:
        raise ValueError("warmup_epochs >= 0, steps_per_epoch >= 1 and a 1-based epoch are needed")
    if epoch > warmup_epochs:
        return None
    total = warmup_epochs * steps_per_epoch
    first = (epoch - 1) * steps_per_epoch
    return [rate * (first + j + 1) / total for j in range(steps_per_epoch)]
