"""Intermittent hospitals: who is present in a round (the chest X-ray study's scenario).

``PARTICIPATION`` (run config) declares it:

* ``""`` or ``all``: every hospital every round.
* ``random:<p>``: each hospital is present in a round with probability ``p``, drawn with a
  generator seeded by the run's seed and the round (deterministic, and the same after a
  resume); when fewer than ``min_present`` would be present, absent ones are brought back at
  random until there are (a round cannot run below MIN_CLIENTS).
* ``schedule:<hospital>=<rounds>;...``: the listed hospitals are *absent* in those rounds,
  e.g. ``schedule:hospital-2=3-5;hospital-4=1-2,8`` (hospital-4 joins in round 3, leaves in 8).

What happens to a departed hospital's contribution is ``DEPARTED``:

* ``drop`` (approach 1): its last weights are dropped; the round aggregates those present.
* ``keep`` (approach 2): its last answered update is used again in the aggregation of the rounds
  it misses, with its example count, as if it had answered (a stale update).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEPARTED_POLICIES = ("drop", "keep")


@dataclass(frozen=True)
class Participation:
    mode: str = "all"  # all / random / schedule
    probability: float = 1.0
    absent: dict[str, frozenset[int]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Participation:
        text = (text or "").strip()
        if text in ("", "all"):
            return cls()
        kind, sep, rest = text.partition(":")
        if kind == "random" and sep:
            try:
                p = float(rest)
            except ValueError:
                raise ValueError(f"PARTICIPATION {text!r}: random:<p> needs a number") from None
            if not 0.0 < p <= 1.0:
                raise ValueError(f"PARTICIPATION {text!r}: p must be in (0, 1]")
            return cls(mode="random", probability=p)
        if kind == "schedule" and sep:
            absent: dict[str, frozenset[int]] = {}
            for item in filter(None, (x.strip() for x in rest.split(";"))):
                hid, eq, spec = item.partition("=")
                if not eq or not hid.strip():
                    raise ValueError(f"PARTICIPATION entry {item!r} must be <hospital>=<rounds>")
                absent[hid.strip()] = frozenset(_rounds(spec, item))
            return cls(mode="schedule", absent=absent)
        raise ValueError(f"PARTICIPATION {text!r}: use '', 'all', 'random:<p>' or 'schedule:<hospital>=<rounds>;...'")

    def present(self, ids: list[str], rnd: int, *, seed: int, min_present: int = 1) -> list[str]:
        """The ids (in the given order) present in round ``rnd``."""
        if self.mode == "all":
            return list(ids)
        if self.mode == "schedule":
            return [h for h in ids if rnd not in self.absent.get(h, frozenset())]
        rng = np.random.default_rng([seed, 0x1A7E, rnd])
        here = rng.random(len(ids)) < self.probability
        missing = min(min_present, len(ids)) - int(here.sum())
        if missing > 0:
            back = rng.choice(np.flatnonzero(~here), size=missing, replace=False)
            here[back] = True
        return [h for h, ok in zip(ids, here) if ok]

    def describe(self) -> str:
        if self.mode == "random":
            return f"random:{self.probability:g}"
        if self.mode == "schedule":
            return "schedule:" + ";".join(f"{h}={','.join(map(str, sorted(r)))}" for h, r in sorted(self.absent.items()))
        return "all"


def _rounds(spec: str, item: str) -> set[int]:
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, dash, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if dash else (int(lo), int(lo))
        except ValueError:
            raise ValueError(f"PARTICIPATION entry {item!r}: {part!r} is not a round or a range a-b") from None
        if a < 1 or b < a:
            raise ValueError(f"PARTICIPATION entry {item!r}: bad range {part!r}")
        out.update(range(a, b + 1))
    if not out:
        raise ValueError(f"PARTICIPATION entry {item!r} names no rounds")
    return out
