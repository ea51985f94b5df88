"""What every strategy test builds its hand-computed cases from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Client:
    """A stand-in for the server's client objects: strategies only read ``id``."""

    id: str


def arr(*v: float) -> np.ndarray:
    return np.array(v, dtype=np.float64)
