"""The round loop, written once. A :class:`Strategy` fills the hooks; hospitals are reached
through injected client objects; reports go to the metrics service through a reporter."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tenacity import AsyncRetrying, retry_if_result, stop_after_delay, wait_exponential

from hemafed.exchange import ExchangeError, ModelExchange, check_weights, spec_of
from hemafed.schemas import (
    GlobalRoundMetrics,
    HospitalRoundMetrics,
    RoundCreate,
    RunCreate,
    RunStatus,
    RunUpdate,
    TaskSpec,
)

from hemafed_aggregator import modelops
from hemafed_aggregator.clients import HospitalClient, HospitalError
from hemafed_aggregator.reporting import MetricsReporter
from hemafed_aggregator.settings import RunConfig
from hemafed_aggregator.strategies.base import EvaluateRes, Failure, FitIns, FitRes, Strategy, Weights

log = logging.getLogger("hemafed.aggregator")


class RunFailed(Exception):
    pass


@dataclass
class HospitalState:
    status: str = "unknown"  # unknown / healthy / training / ok / timeout / error / rejected / unreachable
    last_round: int = 0
    message: str = ""
    num_train: int | None = None


@dataclass
class RunState:
    run_id: str
    rounds_total: int
    status: str = "starting"  # starting / waiting_for_clients / running / evaluating / finished / failed
    round: int = 0
    best_round: int | None = None
    best_val_accuracy: float | None = None
    message: str = ""
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    hospitals: dict[str, HospitalState] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    test_results: dict[str, Any] | None = None
    classes: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d["rounds_completed"] = len(self.rounds)
        d["test_accuracy"] = self.test_results.get("accuracy") if self.test_results else None
        return d


class FederatedServer:
    def __init__(
        self,
        *,
        run: RunConfig,
        strategy: Strategy,
        clients: list[HospitalClient],
        reporter: MetricsReporter,
        output_dir: Path,
        test_dir: Path | None = None,
    ) -> None:
        if len({c.id for c in clients}) != len(clients):
            raise ValueError("hospital ids must be unique")
        self.run_cfg = run
        self.strategy = strategy
        self.clients = clients
        self.reporter = reporter
        self.run_dir = output_dir / run.run_id
        self.test_dir = test_dir
        self.rng = np.random.default_rng(run.seed)
        self.state = RunState(run_id=run.run_id, rounds_total=run.rounds,
                              hospitals={c.id: HospitalState() for c in clients})
        self.task: TaskSpec | None = None
        self.weights: Weights = []
        self.best_weights: Weights | None = None
        #: each hospital's dataset summary (counts only), recorded with the run
        self.hospital_data: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ public

    async def run(self) -> RunState:
        try:
            await self._run()
        except Exception as exc:  # noqa: BLE001 - a failed run is reported, not raised
            if not isinstance(exc, RunFailed):
                log.exception("run failed")
            self.state.status = "failed"
            self.state.message = str(exc) or type(exc).__name__
            self.state.finished_at = time.time()
            await self.reporter.update_run(self.run_cfg.run_id, RunUpdate(status=RunStatus.failed,
                                                                          message=self.state.message))
            self._write_state()
        return self.state

    # ------------------------------------------------------------------ phases

    async def _run(self) -> None:
        cfg = self.run_cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        healthy = await self._wait_for_clients()
        self.task = await self._agree_task(healthy)
        self.weights, params = await asyncio.to_thread(modelops.initial_weights, self.task)
        spec = spec_of(self.weights)
        self.weights = self.strategy.initialize(self.weights)
        await self.reporter.create_run(RunCreate(
            id=cfg.run_id, rounds_total=cfg.rounds, clients=len(self.clients), split=cfg.split,
            model=cfg.model, dataset=cfg.dataset, strategy=self.strategy.name,
            config={**cfg.model_dump(mode="json"), "strategy": self.strategy.describe(), "params": params,
                    "classes": self.task.classes, "hospital_data": self.hospital_data},
        ))
        self.state.status = "running"
        for rnd in range(1, cfg.rounds + 1):
            self.state.round = rnd
            await self._round(rnd, spec)
            self._write_state()
        await self._finish()

    async def _wait_for_clients(self) -> list[HospitalClient]:
        """Wait (with retries, bounded by WAIT_FOR_CLIENTS) until every hospital is healthy,
        or go on with those that are once at least MIN_CLIENTS are and the wait is over."""
        self.state.status = "waiting_for_clients"
        cfg = self.run_cfg

        async def probe() -> list[HospitalClient]:
            ok = await asyncio.gather(*(c.health() for c in self.clients))
            for c, good in zip(self.clients, ok):
                self.state.hospitals[c.id].status = "healthy" if good else "unreachable"
            self.state.message = f"{sum(ok)}/{len(self.clients)} hospitals healthy"
            return [c for c, good in zip(self.clients, ok) if good]

        retrying = AsyncRetrying(
            stop=stop_after_delay(cfg.wait_for_clients),
            wait=wait_exponential(multiplier=0.5, max=5),
            retry=retry_if_result(lambda healthy: len(healthy) < len(self.clients)),
            retry_error_callback=lambda rs: rs.outcome.result(),  # give up: go on with those healthy
        )
        healthy = await retrying(probe)
        if len(healthy) < cfg.min_clients:
            raise RunFailed(
                f"only {len(healthy)} of {len(self.clients)} hospitals became healthy within "
                f"{cfg.wait_for_clients:.0f}s; MIN_CLIENTS is {cfg.min_clients}"
            )
        return healthy

    async def _agree_task(self, healthy: list[HospitalClient]) -> TaskSpec:
        cfg = self.run_cfg
        classes = list(cfg.classes)
        summaries = await asyncio.gather(*(c.summary(cfg.image_size) for c in healthy), return_exceptions=True)
        seen: set[str] = set()
        for c, s in zip(healthy, summaries):
            if isinstance(s, BaseException):
                self.state.hospitals[c.id].status = "error"
                self.state.hospitals[c.id].message = f"dataset summary failed: {s}"
                continue
            self.state.hospitals[c.id].num_train = s.num_train
            self.hospital_data[c.id] = {"classes": s.classes, "num_train": s.num_train, "num_val": s.num_val,
                                        "skipped_files": s.skipped_files}
            seen.update(k for k, n in s.classes.items() if n > 0)
        if not classes:
            classes = sorted(seen)
        if len(classes) < 2:
            raise RunFailed(f"the hospitals' data has fewer than 2 classes ({classes})")
        self.state.classes = classes
        return TaskSpec(model=cfg.model, image_size=cfg.image_size, classes=classes, seed=cfg.seed,
                        trainable_fraction=cfg.trainable_fraction, local_norm=cfg.local_norm)

    async def _round(self, rnd: int, spec) -> None:
        t0 = time.perf_counter()
        assert self.task is not None
        pairs = self.strategy.configure_train(rnd, self.weights, self.clients, self.rng)
        hospital_metrics: dict[str, HospitalRoundMetrics] = {
            c.id: HospitalRoundMetrics(status="not_selected") for c in self.clients
        }
        results, failures = await self._fit_all(rnd, pairs, spec, hospital_metrics)
        if len(results) < self.run_cfg.min_clients:
            for f in failures:
                log.warning("round %d: %s %s: %s", rnd, f.hospital_id, f.status, f.message)
            raise RunFailed(
                f"round {rnd}: only {len(results)} hospital(s) answered; MIN_CLIENTS is {self.run_cfg.min_clients}"
            )
        self.weights = self.strategy.aggregate_train(rnd, self.weights, results, failures)
        eval_clients = self.strategy.configure_evaluate(rnd, self.weights, self.clients, self.rng)
        evals = await self._evaluate_all(rnd, eval_clients, hospital_metrics)
        glob = self.strategy.aggregate_evaluate(rnd, evals)
        report = getattr(self.strategy, "round_report", lambda r: {})(rnd)
        duration = time.perf_counter() - t0
        median = glob.get("val_accuracy_median")
        if median is not None and (self.state.best_val_accuracy is None or median >= self.state.best_val_accuracy):
            self.state.best_val_accuracy, self.state.best_round = median, rnd
            self.best_weights = [w.copy() for w in self.weights]
            (self.run_dir / "best.safetensors").write_bytes(
                ModelExchange(weights=self.best_weights, round=rnd, metrics={"val_accuracy_median": median}).to_bytes()
            )
        entry = RoundCreate(
            round=rnd,
            global_=GlobalRoundMetrics(**{k: glob.get(k) for k in ("val_accuracy_median", "val_accuracy_mean",
                                                                   "val_loss")}),
            hospitals=hospital_metrics,
            duration_seconds=duration,
            report=report,
        )
        await self.reporter.report_round(self.run_cfg.run_id, entry)
        self.state.rounds.append(entry.model_dump(mode="json", by_alias=True))
        log.info(
            "round %d/%d: %d/%d hospitals, val acc median %s mean %s (%.1fs)", rnd, self.run_cfg.rounds,
            len(results), len(pairs), _fmt(median), _fmt(glob.get("val_accuracy_mean")), duration,
            extra={"round": rnd},
        )

    async def _fit_all(self, rnd, pairs, spec, metrics) -> tuple[list[FitRes], list[Failure]]:
        assert self.task is not None
        task = self.task

        async def one(client: HospitalClient, ins: FitIns):
            self.state.hospitals[client.id].status = "training"
            t = time.perf_counter()
            res, nbytes = await client.fit(rnd, ins, task)
            return res, nbytes, time.perf_counter() - t

        tasks = {asyncio.create_task(one(c, ins)): c for c, ins in pairs}
        done, pending = await asyncio.wait(tasks, timeout=self.run_cfg.round_timeout)
        for t in pending:
            t.cancel()
        results: list[FitRes] = []
        failures: list[Failure] = []
        for t, client in tasks.items():
            hs = self.state.hospitals[client.id]
            if t in pending:
                failures.append(Failure(client.id, "timeout", f"no answer within {self.run_cfg.round_timeout:.0f}s"))
            elif (exc := t.exception()) is not None:
                status = exc.status if isinstance(exc, HospitalError) else "error"
                failures.append(Failure(client.id, status, str(exc) or type(exc).__name__))
            else:
                res, nbytes, seconds = t.result()
                try:
                    check_weights(res.weights, spec)
                except ExchangeError as exc:
                    failures.append(Failure(client.id, "rejected", f"update rejected: {exc}"))
                else:
                    if res.num_examples <= 0:
                        failures.append(Failure(client.id, "rejected", "update reports no training examples"))
                        continue
                    results.append(res)
                    hs.status, hs.last_round, hs.message = "ok", rnd, ""
                    metrics[client.id] = HospitalRoundMetrics(
                        status="ok", train_loss=res.metrics.get("train_loss"),
                        train_accuracy=res.metrics.get("train_accuracy"), num_examples=res.num_examples,
                        fit_seconds=res.metrics.get("fit_seconds", seconds), update_bytes=nbytes,
                    )
        for f in failures:
            hs = self.state.hospitals[f.hospital_id]
            hs.status, hs.message = f.status, f.message
            metrics[f.hospital_id] = HospitalRoundMetrics(status=f.status, message=f.message[:500])
            log.warning("round %d: hospital %s left out (%s): %s", rnd, f.hospital_id, f.status, f.message,
                        extra={"round": rnd, "hospital": f.hospital_id})
        results.sort(key=lambda r: r.hospital_id)
        return results, failures

    async def _evaluate_all(self, rnd, clients, metrics) -> list[EvaluateRes]:
        assert self.task is not None
        tasks = {asyncio.create_task(c.evaluate(rnd, self.weights, self.task)): c for c in clients}
        done, pending = await asyncio.wait(tasks, timeout=self.run_cfg.round_timeout)
        for t in pending:
            t.cancel()
        out = []
        for t, c in tasks.items():
            if t in done and t.exception() is None:
                ev = t.result()
                out.append(ev)
                metrics[c.id].val_accuracy = ev.accuracy
                metrics[c.id].val_loss = ev.loss
            else:
                why = "timeout" if t in pending else str(t.exception())
                log.warning("round %d: evaluation on %s failed: %s", rnd, c.id, why)
        return sorted(out, key=lambda e: e.hospital_id)

    async def _finish(self) -> None:
        assert self.task is not None
        self.state.status = "evaluating"
        best = self.best_weights if self.best_weights is not None else self.weights
        meta = {"run_id": self.run_cfg.run_id, "best_round": self.state.best_round,
                "best_val_accuracy_median": self.state.best_val_accuracy, "rounds": self.run_cfg.rounds,
                "strategy": self.strategy.describe()}
        await asyncio.to_thread(modelops.save_keras, self.task, best, self.run_dir / "best.keras",
                                {**meta, "kind": "best"})
        await asyncio.to_thread(modelops.save_keras, self.task, self.weights, self.run_dir / "final.keras",
                                {**meta, "kind": "final", "round": self.run_cfg.rounds})
        if self.test_dir is not None and self.test_dir.is_dir():
            self.state.test_results = await asyncio.to_thread(modelops.evaluate_on_test, self.task, best,
                                                              self.test_dir)
            (self.run_dir / "test_results.json").write_text(json.dumps(self.state.test_results, indent=2))
            log.info("test accuracy of the best model (round %s): %.4f", self.state.best_round,
                     self.state.test_results["accuracy"])
        else:
            log.warning("no test set at %s: final test evaluation skipped", self.test_dir)
        self.state.status = "finished"
        self.state.finished_at = time.time()
        self._write_state()
        await self.reporter.update_run(self.run_cfg.run_id, RunUpdate(
            status=RunStatus.finished, best_round=self.state.best_round,
            test_accuracy=self.state.test_results["accuracy"] if self.state.test_results else None,
            test_results=self.state.test_results,
        ))

    def _write_state(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "run.json").write_text(json.dumps(self.state.public(), indent=2, default=str))


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
