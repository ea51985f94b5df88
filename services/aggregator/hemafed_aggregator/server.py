"""The round loop, written once. A :class:`Strategy` fills the hooks; hospitals are reached
through injected client objects; reports go to the metrics service through a reporter."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
from tenacity import AsyncRetrying, retry_if_result, stop_after_delay, wait_exponential

from hemafed.exchange import ExchangeError, ModelExchange, check_weights, spec_of
from hemafed.reporting import MetricsReporter
from hemafed.schemas import (
    GlobalRoundMetrics,
    HospitalRoundMetrics,
    RoundCreate,
    RunCreate,
    RunStatus,
    RunUpdate,
    TaskSpec,
)

from hemafed_aggregator import checkpoint, modelcard, modelops, runreport
from hemafed_aggregator.clients import HospitalClient, HospitalError
from hemafed_aggregator.outliers import outlier_report
from hemafed_aggregator.participation import Participation
from hemafed_aggregator.settings import RunConfig
from hemafed_aggregator.strategies.base import EvaluateRes, Failure, FitIns, FitRes, Strategy, Weights

log = logging.getLogger("hemafed.aggregator")

#: RunConfig.best_by -> the global validation figure (Strategy.aggregate_evaluate) that picks the best round
BEST_BY_METRIC = {"median": "val_accuracy_median", "pooled": "val_accuracy_mean"}


class RunFailed(Exception):
    pass


class TooFewAnswers(RunFailed):
    """A round got fewer than MIN_CLIENTS usable answers (the round may be tried again)."""

    def __init__(self, message: str, hospitals: dict[str, dict[str, str]]) -> None:
        super().__init__(message)
        #: each hospital's status in that attempt
        self.hospitals = hospitals


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
    #: rounds after which this run was resumed from its checkpoint (an aggregator restart each)
    resumed_from: list[int] = field(default_factory=list)
    #: the finished run whose final weights this run started from (INIT_RUN), else None
    initialised_from: dict[str, Any] | None = None

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
        self.participation = Participation.parse(run.participation)
        #: each hospital's last accepted update (re-used for departed hospitals under DEPARTED=keep)
        self.last_updates: dict[str, FitRes] = {}
        #: this round's earlier attempts that got fewer than MIN_CLIENTS answers (reported with the round)
        self.failed_attempts: list[dict[str, Any]] = []
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
        if cfg.init_run:  # a finished run's final weights (same model and classes)
            try:
                self.weights, params, self.state.initialised_from = await asyncio.to_thread(
                    modelops.finished_run_weights, self.task, self.run_dir.parent / cfg.init_run)
            except modelops.InitRunError as exc:
                raise RunFailed(str(exc)) from None
        else:
            self.weights, params = await asyncio.to_thread(modelops.initial_weights, self.task)
        spec = spec_of(self.weights)
        self.weights = self.strategy.initialize(self.weights)
        start = self._resume(spec)
        await self.reporter.create_run(RunCreate(
            id=cfg.run_id, rounds_total=cfg.rounds, clients=len(self.clients), split=cfg.split,
            model=cfg.model, dataset=cfg.dataset, strategy=self.strategy.name,
            config={**cfg.model_dump(mode="json"), "strategy": self.strategy.describe(), "params": params,
                    "initialised_from": self.state.initialised_from,
                    "classes": self.task.classes, "hospital_data": self.hospital_data},
        ))
        await self._report_resume()
        self.state.status = "running"
        for rnd in range(start, cfg.rounds + 1):
            self.state.round = rnd
            await self._round_with_quorum(rnd, spec)
            self._write_state()
            await self._save_checkpoint(rnd)
        await self._finish()

    async def _wait_for_clients(self) -> list[HospitalClient]:
        """Wait (with retries, bounded by WAIT_FOR_CLIENTS) until every hospital is healthy,
        or go on with those that are once at least MIN_CLIENTS are and the wait is over."""
        cfg = self.run_cfg
        healthy = await self._poll_health(
            until=lambda n: n == len(self.clients), mark_healthy=True,
            message=lambda n: f"{n}/{len(self.clients)} healthy, need {cfg.min_clients} (MIN_CLIENTS)")
        if len(healthy) < cfg.min_clients:
            raise RunFailed(
                f"only {len(healthy)} of {len(self.clients)} hospitals became healthy within "
                f"{cfg.wait_for_clients:.0f}s; MIN_CLIENTS is {cfg.min_clients}"
            )
        return healthy

    async def _poll_health(self, *, until: Callable[[int], bool], message: Callable[[int], str],
                           mark_healthy: bool) -> list[HospitalClient]:
        """Probe every hospital's health with bounded retries (exponential back-off, WAIT_FOR_CLIENTS in
        all) until ``until(number healthy)``; the status is ``waiting_for_clients`` with ``message(n)``
        meanwhile, set together after each probe (a probe of stopped hospitals can take seconds, and a
        status read in between must never pair ``waiting_for_clients`` with the previous message).
        Unreachable hospitals are marked so (healthy ones too with ``mark_healthy``).
        Returns the healthy hospitals of the last probe."""

        async def probe() -> list[HospitalClient]:
            ok = await asyncio.gather(*(c.health() for c in self.clients))
            for c, good in zip(self.clients, ok):
                if mark_healthy or not good:
                    self.state.hospitals[c.id].status = "healthy" if good else "unreachable"
            self.state.status, self.state.message = "waiting_for_clients", message(sum(ok))
            return [c for c, good in zip(self.clients, ok) if good]

        retrying = AsyncRetrying(
            stop=stop_after_delay(self.run_cfg.wait_for_clients),
            wait=wait_exponential(multiplier=0.5, max=5),
            retry=retry_if_result(lambda healthy: not until(len(healthy))),
            retry_error_callback=lambda rs: rs.outcome.result(),  # give up: the last probe's answer
        )
        return await retrying(probe)

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
        present, absent = self._participants(rnd)
        pairs = self.strategy.configure_train(rnd, self.weights, present, self.rng)
        hospital_metrics: dict[str, HospitalRoundMetrics] = {
            c.id: HospitalRoundMetrics(status="not_selected") for c in self.clients
        }
        for c in absent:
            hospital_metrics[c.id] = HospitalRoundMetrics(status="absent", message="departed this round")
            self.state.hospitals[c.id].status = "absent"
        results, failures = await self._fit_all(rnd, pairs, spec, hospital_metrics)
        if len(results) < self.run_cfg.min_clients:
            for f in failures:
                log.warning("round %d: %s %s: %s", rnd, f.hospital_id, f.status, f.message)
            raise TooFewAnswers(
                f"round {rnd}: only {len(results)} hospital(s) answered; MIN_CLIENTS is {self.run_cfg.min_clients}",
                {h: {"status": m.status, "message": m.message} for h, m in hospital_metrics.items()},
            )
        stale = self._stale_updates(results, absent)
        outliers, self.weights = await asyncio.to_thread(self._aggregate, rnd, results, stale, failures)
        eval_clients = self.strategy.configure_evaluate(rnd, self.weights, present, self.rng)
        evals = await self._evaluate_all(rnd, eval_clients, hospital_metrics)
        glob = self.strategy.aggregate_evaluate(rnd, evals)
        report = dict(self.strategy.round_report(rnd))
        if outliers:
            report["outliers"] = outliers
        if self.failed_attempts:  # earlier attempts of this round, below MIN_CLIENTS (RELIABILITY.md)
            report["failed_attempts"] = list(self.failed_attempts)
        if self.participation.mode != "all":
            report["participation"] = {"present": [c.id for c in present], "absent": [c.id for c in absent],
                                       "stale": [r.hospital_id for r in stale], "departed": self.run_cfg.departed}
        duration = time.perf_counter() - t0
        median = glob.get("val_accuracy_median")
        score = glob.get(BEST_BY_METRIC[self.run_cfg.best_by])
        if score is not None and (self.state.best_val_accuracy is None or score >= self.state.best_val_accuracy):
            self.state.best_val_accuracy, self.state.best_round = score, rnd
            self.best_weights = [w.copy() for w in self.weights]
            (self.run_dir / "best.safetensors").write_bytes(
                ModelExchange(weights=self.best_weights, round=rnd,
                              metrics={k: v for k, v in glob.items() if v is not None}).to_bytes()
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

    def _aggregate(self, rnd: int, results: list[FitRes], stale: list[FitRes],
                   failures: list[Failure]) -> tuple[dict[str, Any], Weights]:
        """The round's outlier report on the fresh updates and the new global weights (numpy, seconds
        for many hospitals or a large model: run in a worker thread, so that /health and /api/status
        answer meanwhile)."""
        outliers = outlier_report(self.weights, results, norm_factor=self.run_cfg.outlier_norm_factor,
                                  min_cosine=self.run_cfg.outlier_min_cosine)
        return outliers, self.strategy.aggregate_train(rnd, self.weights, results + stale, failures)

    def _participants(self, rnd: int) -> tuple[list[HospitalClient], list[HospitalClient]]:
        """Hospitals present / departed in round ``rnd`` (PARTICIPATION; all present by default)."""
        ids = self.participation.present([c.id for c in self.clients], rnd, seed=self.run_cfg.seed,
                                         min_present=self.run_cfg.min_clients)
        here = set(ids)
        present = [c for c in self.clients if c.id in here]
        absent = [c for c in self.clients if c.id not in here]
        if absent:
            log.info("round %d: %d hospital(s) departed: %s", rnd, len(absent), ", ".join(c.id for c in absent),
                     extra={"round": rnd})
        return present, absent

    def _stale_updates(self, results: list[FitRes], absent: list[HospitalClient]) -> list[FitRes]:
        """Remember each hospital's last update; under DEPARTED=keep (approach 2) return the departed
        hospitals' last updates for re-use (weights and example counts only)."""
        if self.run_cfg.departed != "keep":
            return []
        for r in results:
            self.last_updates[r.hospital_id] = r
        return [FitRes(hospital_id=u.hospital_id, weights=u.weights, num_examples=u.num_examples,
                       metrics={"stale": 1.0})
                for c in absent if (u := self.last_updates.get(c.id)) is not None]

    async def _fit_all(self, rnd, pairs, spec, metrics) -> tuple[list[FitRes], list[Failure]]:
        assert self.task is not None
        task = self.task

        async def one(client: HospitalClient, ins: FitIns):
            self.state.hospitals[client.id].status = "training"
            t = time.perf_counter()
            res, nbytes = await client.fit(rnd, ins, task)
            return res, (nbytes, getattr(client, "last_request_bytes", 0)), time.perf_counter() - t

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
                res, (nbytes, request_bytes), seconds = t.result()
                try:
                    check_weights(res.weights, spec, max_norm=self.run_cfg.max_update_norm)
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
                        request_bytes=request_bytes,
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
                metrics[c.id].request_bytes += getattr(c, "last_request_bytes", 0)
            else:
                why = "timeout" if t in pending else str(t.exception())
                log.warning("round %d: evaluation on %s failed: %s", rnd, c.id, why)
        return sorted(out, key=lambda e: e.hospital_id)

    async def _finish(self) -> None:
        assert self.task is not None
        self.state.status = "evaluating"
        best = self.best_weights if self.best_weights is not None else self.weights
        meta = {"run_id": self.run_cfg.run_id, "best_round": self.state.best_round,
                "best_by": self.run_cfg.best_by, "best_val_accuracy": self.state.best_val_accuracy,
                "best_val_accuracy_median": modelcard.round_global(self.state.rounds, self.state.best_round)
                .get("val_accuracy_median"),
                "rounds": self.run_cfg.rounds,
                "strategy": self.strategy.describe(), "initialised_from": self.state.initialised_from}
        await asyncio.to_thread(modelops.save_keras, self.task, best, self.run_dir / "best.keras",
                                {**meta, "kind": "best"})
        await asyncio.to_thread(modelops.save_keras, self.task, self.weights, self.run_dir / "final.keras",
                                {**meta, "kind": "final", "round": self.run_cfg.rounds})
        # test figures, report files, timing/communication, local baselines (hemafed_aggregator.runreport)
        self.state.test_results = await runreport.final_report(self, best)
        await asyncio.to_thread(modelcard.export_run, self.run_dir, run=self.run_cfg, task=self.task,
                                state=self.state, hospital_data=self.hospital_data,
                                strategy=self.strategy.describe())
        self.state.status = "finished"
        self.state.finished_at = time.time()
        self._write_state()
        await self.reporter.update_run(self.run_cfg.run_id, RunUpdate(
            status=RunStatus.finished, best_round=self.state.best_round,
            test_accuracy=self.state.test_results["accuracy"] if self.state.test_results else None,
            test_results=self.state.test_results,
        ))

    # ------------------------------------------------------------------ reliability (RELIABILITY.md)

    def _resume(self, spec) -> int:
        """Continue from ``<run dir>/checkpoint`` when this RUN_ID has one: global and best weights,
        strategy state, server RNG, completed rounds, best round, hospital states. Returns the first
        round to run (1 without a checkpoint). A checkpoint of another configuration fails the run."""
        assert self.task is not None
        try:
            ck = checkpoint.load(self.run_dir)
        except checkpoint.CheckpointError as exc:
            raise RunFailed(f"cannot resume run {self.run_cfg.run_id}: {exc}") from exc
        if ck is None:
            return 1
        task = self.task.model_dump(mode="json")
        if ck.strategy_name != self.strategy.name or ck.task != task or ck.spec != _json_spec(spec):
            raise RunFailed(
                f"{checkpoint.directory(self.run_dir)} was written by another configuration (strategy "
                f"{ck.strategy_name!r}, task {ck.task}); use a new RUN_ID or remove the checkpoint"
            )
        if ck.best_by != self.run_cfg.best_by:  # its best round and weights were picked by the other figure
            raise RunFailed(
                f"{checkpoint.directory(self.run_dir)} picked its best round by BEST_BY={ck.best_by}, this run "
                f"by BEST_BY={self.run_cfg.best_by}; resume with BEST_BY={ck.best_by} or use a new RUN_ID"
            )
        self.weights = ck.weights
        self.best_weights = ck.best_weights
        self.strategy.load_state_dict(ck.strategy_state)
        self.rng = checkpoint.restore_rng(ck.rng_state)
        self.state.best_round, self.state.best_val_accuracy = ck.best_round, ck.best_val_accuracy
        self.state.rounds = list(ck.rounds)
        self.state.started_at = ck.started_at or self.state.started_at
        self.state.resumed_from = [*ck.resumed_from, ck.round]
        for hid, saved in ck.hospitals.items():
            if hid in self.state.hospitals:  # the live status comes from the health probe
                self.state.hospitals[hid].last_round = int(saved.get("last_round", 0))
        self.last_updates = {h: FitRes(hospital_id=h, weights=w, num_examples=n)
                             for h, (n, w) in ck.last_updates.items()}
        log.warning("run %s: resuming from its checkpoint after round %d of %d (resume #%d)",
                    self.run_cfg.run_id, ck.round, self.run_cfg.rounds, len(self.state.resumed_from))
        return ck.round + 1

    async def _report_resume(self) -> None:
        """After a resume: mark the run running again and re-send the completed rounds (the metrics
        store upserts by (run, round): a round it has is replaced by the same, one it missed is added)."""
        if not self.state.resumed_from:
            return
        k = self.state.resumed_from[-1]
        await self.reporter.update_run(self.run_cfg.run_id, RunUpdate(
            status=RunStatus.running, message=f"resumed from the checkpoint of round {k}"))
        for entry in self.state.rounds:
            await self.reporter.report_round(self.run_cfg.run_id, RoundCreate.model_validate(entry))

    async def _save_checkpoint(self, rnd: int) -> None:
        assert self.task is not None
        ck = checkpoint.Checkpoint(
            round=rnd, weights=list(self.weights), best_weights=self.best_weights,
            strategy_name=self.strategy.name, strategy_state=self.strategy.state_dict(),
            rng_state=checkpoint.rng_state(self.rng), best_round=self.state.best_round,
            best_val_accuracy=self.state.best_val_accuracy, best_by=self.run_cfg.best_by,
            rounds=list(self.state.rounds), hospitals={h: asdict(hs) for h, hs in self.state.hospitals.items()},
            task=self.task.model_dump(mode="json"), spec=_json_spec(spec_of(self.weights)),
            started_at=self.state.started_at, resumed_from=list(self.state.resumed_from),
            last_updates={h: (u.num_examples, u.weights) for h, u in self.last_updates.items()},
        )
        await asyncio.to_thread(checkpoint.save, self.run_dir, ck)

    async def _round_with_quorum(self, rnd: int, spec) -> None:
        """Run round ``rnd``; when fewer than MIN_CLIENTS answer, wait (WAIT_FOR_CLIENTS) until MIN_CLIENTS
        hospitals are healthy and run the same round again, at most ROUND_RETRIES times, then fail."""
        retries = self.run_cfg.round_retries
        self.state.message = ""  # the start-up wait's message is over
        self.failed_attempts = []
        for attempt in range(retries + 1):
            try:
                await self._round(rnd, spec)
                self.state.message = ""  # a retry's message is over once its round is done
                return
            except TooFewAnswers as exc:
                self.failed_attempts.append({"message": str(exc), "hospitals": exc.hospitals})
                if attempt == retries:
                    raise RunFailed(f"{exc}; gave up after {retries} retries (ROUND_RETRIES)") from None
                log.warning("%s: waiting for MIN_CLIENTS healthy hospitals, then round %d again (retry %d/%d)",
                            exc, rnd, attempt + 1, retries, extra={"round": rnd})
                # the first health probe can take seconds (stopped containers): say why the round stopped
                self.state.message = f"{exc}; checking which hospitals are healthy"
                await self._wait_for_quorum(str(exc))
                self.state.status = "running"
                self.state.message = f"round {rnd} again (retry {attempt + 1}/{retries}) after: {exc}"

    async def _wait_for_quorum(self, reason: str) -> None:
        """Wait (WAIT_FOR_CLIENTS in all) until MIN_CLIENTS hospitals are healthy; the status says so
        meanwhile. Raises RunFailed when the wait is over."""
        cfg = self.run_cfg
        healthy = len(await self._poll_health(
            until=lambda n: n >= cfg.min_clients, mark_healthy=False,
            message=lambda n: f"{reason}; {n}/{len(self.clients)} healthy, need {cfg.min_clients}"))
        if healthy < cfg.min_clients:
            raise RunFailed(f"{reason}; only {healthy} of {len(self.clients)} hospitals healthy after waiting "
                            f"{cfg.wait_for_clients:.0f}s (WAIT_FOR_CLIENTS); MIN_CLIENTS is {cfg.min_clients}")

    def _write_state(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "run.json").write_text(json.dumps(self.state.public(), indent=2, default=str))


def _json_spec(spec) -> list:
    """A weight spec as it reads back from JSON (lists, not tuples)."""
    return [[list(shape), dtype] for shape, dtype in spec]


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
