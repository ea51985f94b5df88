"""Data over time: which of a hospital's images a round trains on (the thesis' scenarios).

* ``full``: every round uses all local training data (the usual FL setting).
* ``weekly`` (Case 1, weekly arrival): the local data is cut once into ``parts`` disjoint parts
  (a seeded permutation, so the cut is the same every round and after a restart); round ``r``
  trains on part ``(r - 1) mod parts`` only: a week's images are seen once and then gone.
* ``weekly-recycle`` (Case 2, weekly arrival with recycling): round ``r`` trains on part ``r``
  plus a ``recycle_fraction`` share (default 60%) of the images used in round ``r - 1``, drawn
  at random - so images that arrived earlier keep coming back with a decaying probability.
  ``used(1) = part(1)``; ``used(r) = part(r) + sample(used(r - 1), round(f * |used(r - 1)|))``.

Everything is a pure function of (n, round, parts, seed): no state to lose when a hospital
restarts, and the aggregator can compute the same sets for reports.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Schedule = Literal["full", "weekly", "weekly-recycle"]
SCHEDULES: tuple[str, ...] = ("full", "weekly", "weekly-recycle")


def parts_of(n: int, parts: int, seed: int) -> list[np.ndarray]:
    """``n`` indices cut into ``parts`` disjoint, near-equal parts after a seeded shuffle."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    perm = np.random.default_rng([seed, 0x5C4ED]).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, parts)]


def round_indices(
    n: int,
    rnd: int,
    *,
    schedule: str = "full",
    parts: int = 1,
    recycle_fraction: float = 0.6,
    seed: int = 0,
) -> np.ndarray:
    """Sorted indices (into ``n`` local images) that round ``rnd`` (1-based) trains on."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; one of {', '.join(SCHEDULES)}")
    if rnd < 1:
        raise ValueError("rounds are numbered from 1")
    if not 0.0 <= recycle_fraction <= 1.0:
        raise ValueError("recycle_fraction must be in [0, 1]")
    if schedule == "full" or parts <= 1:
        return np.arange(n)
    cut = parts_of(n, parts, seed)
    if schedule == "weekly":
        return cut[(rnd - 1) % parts]
    used = cut[0]
    for r in range(2, rnd + 1):
        k = int(round(recycle_fraction * len(used)))
        keep = np.random.default_rng([seed, 0x2EC7C1E, r]).choice(used, size=k, replace=False) if k else used[:0]
        used = np.union1d(cut[(r - 1) % parts], keep)
    return used
