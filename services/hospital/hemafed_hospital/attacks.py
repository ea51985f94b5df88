"""TEST-ONLY fault injection: a hospital that poisons its updates (RELIABILITY.md, chaos suite).

``ATTACK`` (off by default: ``none``) turns the hospital named in ``ATTACKER`` into an attacker
inside the federation, to measure what robust strategies and the aggregator's outlier flags do.
Every other hospital ignores the setting. With ``u = w_local - w_global`` the honest update:

* ``sign_flip``: sends ``w_global - s * u`` (the update reversed and scaled, ``s = ATTACK_SCALE``);
* ``scale``: sends ``w_global + s * u`` (boosted update);
* ``noise``: sends ``w_global + n`` with ``n ~ N(0, ATTACK_NOISE_STD^2)`` per coordinate (the
  update replaced by Gaussian noise);
* ``label_flip``: trains honestly on flipped labels ``y -> C - 1 - y`` (data poisoning).

The hospital logs a warning at start-up and on every poisoned round. It never applies in
production configs: compose passes ``ATTACK=none`` unless the chaos suite or a test sets it.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hemafed.exchange import ModelExchange

log = logging.getLogger("hemafed.hospital")

AttackName = Literal["none", "sign_flip", "scale", "noise", "label_flip"]
ATTACKS: tuple[str, ...] = ("none", "sign_flip", "scale", "noise", "label_flip")
WEIGHT_ATTACKS = ("sign_flip", "scale", "noise")


@dataclass(frozen=True)
class Attack:
    name: AttackName = "none"
    scale: float = 10.0
    noise_std: float = 1.0
    seed: int = 0

    @classmethod
    def for_hospital(cls, hospital_id: str, name: str, attacker: str, *, scale: float, noise_std: float,
                     seed: int = 0) -> Attack:
        """The attack this hospital applies: ``name`` when ``attacker`` names it, else none."""
        if name not in ATTACKS:
            raise ValueError(f"ATTACK must be one of {', '.join(ATTACKS)}, not {name!r}")
        targets = {a.strip() for a in attacker.split(",") if a.strip()}
        if name == "none" or hospital_id not in targets:
            return cls()
        attack = cls(name=name, scale=scale, noise_std=noise_std, seed=seed)  # type: ignore[arg-type]
        log.warning("TEST-ONLY FAULT INJECTION: %s sends poisoned updates (ATTACK=%s, scale %g, noise std %g)",
                    hospital_id, name, scale, noise_std)
        return attack

    @property
    def active(self) -> bool:
        return self.name != "none"

    def labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        """Training labels as this hospital uses them (flipped under ``label_flip``)."""
        if self.name != "label_flip":
            return y
        return (num_classes - 1 - np.asarray(y)).astype(np.asarray(y).dtype)

    def poison(self, global_weights: list[np.ndarray], reply: ModelExchange) -> ModelExchange:
        """The reply as sent: its weights replaced under a weight attack (metrics left as trained)."""
        if self.name not in WEIGHT_ATTACKS:
            return reply
        out = []
        rng = np.random.default_rng([self.seed, reply.round, zlib.crc32(b"attack")])
        for g, w in zip(global_weights, reply.weights):
            g64, w64 = np.asarray(g, dtype=np.float64), np.asarray(w, dtype=np.float64)
            if self.name == "sign_flip":
                p = g64 - self.scale * (w64 - g64)
            elif self.name == "scale":
                p = g64 + self.scale * (w64 - g64)
            else:
                p = g64 + rng.normal(0.0, self.noise_std, size=g64.shape)
            out.append(p.astype(w.dtype))
        log.warning("round %d: TEST-ONLY FAULT INJECTION: update poisoned (%s)", reply.round, self.name)
        reply.weights = out
        reply.extra = {**reply.extra}
        return reply
