"""Deterministic fake hospitals for the round loop (pure numpy, no TensorFlow, no HTTP): the
aggregator's real FederatedServer, strategies, checkpoint and metrics reporter around them."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

import httpx
import numpy as np

from hemafed.schemas import DatasetSummaryPublic, TaskSpec
from hemafed_aggregator import modelops
from hemafed_aggregator.clients import HospitalError
from hemafed.reporting import MetricsReporter
from hemafed_aggregator.server import FederatedServer
from hemafed_aggregator.settings import RunConfig
from hemafed_aggregator.strategies import ServerSWA, build_strategy
from hemafed_aggregator.strategies.base import EvaluateRes, FitIns, FitRes
from hemafed_metrics.app import create_app as metrics_app
from hemafed_metrics.store import InMemoryStore

SHAPES = [(4, 3), (3,), (2, 2)]


def initial_weights(task: TaskSpec):
    rng = np.random.default_rng(task.seed)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES], {"total": sum(int(np.prod(s)) for s in SHAPES)}


def save_keras(task, weights, path: Path, metadata) -> None:
    path.write_bytes(b"fake keras")


def patch_modelops(monkeypatch) -> None:
    """The round loop's only TensorFlow calls, replaced by numpy stand-ins."""
    monkeypatch.setattr(modelops, "initial_weights", initial_weights)
    monkeypatch.setattr(modelops, "save_keras", save_keras)
    from hemafed_aggregator import server

    if hasattr(server, "modelcard"):  # SavedModel export of the final model: TensorFlow
        monkeypatch.setattr(server.modelcard, "export_run", lambda *a, **k: None)


class FakeHospital:
    """Answers fit with a deterministic function of (hospital, round, global weights): a step towards
    a per-hospital target plus seeded noise; evaluate with a deterministic score of the weights.

    ``attack`` makes it an attacker ("sign_flip" / "scale": -10x / 10x its honest update).
    ``dead_rounds`` are rounds whose fit fails (the first ``dead_attempts`` times) as if the container
    were gone; ``alive`` is what
    health() answers (a callable of the number of probes so far, or a bool)."""

    def __init__(self, hid: str, *, n: int = 10, attack: str = "none", dead_rounds=(), dead_attempts: int = 10**6,
                 alive=True, hang_in_round: int | None = None) -> None:
        self._id = hid
        self.n = n
        self.attack = attack
        self.dead_rounds = set(dead_rounds)
        self.dead_attempts = dead_attempts
        self.alive = alive
        self.probes = 0
        self.hang_in_round = hang_in_round
        self.hanging = asyncio.Event()
        self.fits: list[int] = []
        self.seed = zlib.crc32(hid.encode())

    @property
    def id(self) -> str:
        return self._id

    async def health(self) -> bool:
        self.probes += 1
        return self.alive(self.probes) if callable(self.alive) else bool(self.alive)

    async def summary(self, image_size: int) -> DatasetSummaryPublic:
        return DatasetSummaryPublic(hospital_id=self._id, classes={"a": self.n // 2, "b": self.n - self.n // 2},
                                    num_train=self.n, num_val=2, skipped_files=0)

    async def fit(self, rnd: int, ins: FitIns, task: TaskSpec) -> tuple[FitRes, int]:
        self.fits.append(rnd)
        if rnd == self.hang_in_round:
            self.hanging.set()
            await asyncio.sleep(3600)
        if rnd in self.dead_rounds and self.fits.count(rnd) <= self.dead_attempts:
            raise HospitalError("error", "connection refused (container gone)")
        rng = np.random.default_rng([self.seed, rnd])
        target = np.random.default_rng(self.seed)
        honest = []
        for w in ins.weights:
            goal = target.standard_normal(w.shape)
            step = 0.3 * (goal - w) + 0.05 * rng.standard_normal(w.shape)
            honest.append(step)
        if self.attack == "sign_flip":
            honest = [-10.0 * u for u in honest]
        elif self.attack == "scale":
            honest = [10.0 * u for u in honest]
        weights = [(w + u).astype(w.dtype) for w, u in zip(ins.weights, honest)]
        return FitRes(hospital_id=self._id, weights=weights, num_examples=self.n,
                      metrics={"train_loss": 1.0 / rnd, "train_accuracy": 0.5}), 1000

    async def evaluate(self, rnd: int, weights, task: TaskSpec) -> EvaluateRes:
        target = np.random.default_rng(self.seed)
        dist = sum(float(np.sum((w - target.standard_normal(w.shape)) ** 2)) for w in weights)
        return EvaluateRes(hospital_id=self._id, loss=dist, accuracy=1.0 / (1.0 + dist), num_examples=2)


def make_server(tmp_path: Path, clients, *, store: InMemoryStore | None = None, strategy: str = "fedadam",
                strategy_params: dict | None = None, **run) -> FederatedServer:
    cfg = RunConfig(**{"run_id": "ck", "rounds": 5, "seed": 3, "min_clients": 2, "fraction_fit": 0.5,
                       "wait_for_clients": 1, "round_timeout": 30, "image_size": 16, **run})
    strat = build_strategy(strategy, fraction_fit=cfg.fraction_fit, min_fit_clients=cfg.min_clients,
                           **({"total_rounds": cfg.rounds} if cfg.swa_rounds else {}), **(strategy_params or {}))
    if cfg.swa_rounds:  # server-side weight averaging over the run's last SWA_ROUNDS rounds
        strat = ServerSWA(strat, rounds=cfg.swa_rounds)
    store = store if store is not None else InMemoryStore()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=metrics_app(store=store)))
    return FederatedServer(run=cfg, strategy=strat, clients=clients,
                           reporter=MetricsReporter("http://metrics", http), output_dir=tmp_path / "results")
