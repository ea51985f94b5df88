"""The centralized baseline: the federation's model, augmentation and budget trained on the pooled
training data of all hospitals, in one container (``make central``; compose service ``central``,
profile ``central``, run with the hospital image)::

    python -m hemafed_hospital.central        # settings from the environment (CentralSettings)

* Data: every ``DATA_ROOT/hospital-*`` folder is loaded and split into train/validation exactly as
  that hospital's agent splits it (``load_image_folder`` + ``stratified_split`` with VAL_FRACTION
  and SPLIT_SEED), so the pooled training set is the union of the hospitals' training splits and
  the validation set the union of their validation splits. The class list is the federation's
  (CLASSES, else the sorted union of the classes the hospitals hold).
* Training: ``EPOCHS`` (default ``ROUNDS x LOCAL_EPOCHS``, the federation's budget per hospital)
  epochs with the hospitals' trainer, augmentation, optimizer, batch size and class weighting;
  unlike a federated round, the optimizer keeps its state from epoch to epoch (one continuous
  centralized training); ``LR_SCHEDULE=cosine`` decays the rate by epoch (:mod:`hemafed.lr`),
  ``LR_WARMUP_EPOCHS=n`` ramps it up linearly step by step over the first n epochs.
  ``EMA_DECAY=d`` (e.g. 0.998) keeps an exponential moving average of the weights; then the
  averaged weights are the ones validated, kept and tested (Polyak averaging).
  The best epoch by validation accuracy is kept (the federation keeps its best round by
  validation, never by the test set).
  ``INIT_RUN=<RUN_ID>`` starts from that earlier run's ``final.keras`` (in ``OUTPUT_DIR``) instead of
  fresh weights, with a fresh optimizer and this run's schedule: a warm restart (SGDR, Loshchilov &
  Hutter 2017) that continues a finished run for more epochs. The earlier run must have the same
  model and classes; the image size may differ (fine-tuning at a larger size, FixRes), and
  ``test_results.json`` names the start (``initialised_from``), its epochs and, if it differs, its size.
* Report: the best model on ``DATA_ROOT/test`` (``TTA=true``: each test image's prediction is
  the mean over its 8 dihedral views, and the single-view figures are reported beside) with :mod:`hemafed.report` (the same files as a
  federated run: ``test_results.json`` with ``timing``, ``confusion_matrix.csv/.png``,
  ``per_class.csv``, ``per_image.csv``), ``best.keras`` / ``final.keras`` + JSON, ``run.json``.
* Metrics: reported as a run with strategy ``centralized``, one "round" per epoch (hospital
  ``central``), so it shows on the dashboard like any run; resource samples as service ``central``.

Exit status: 0 finished, 1 failed (the reason is logged and reported to the metrics service).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from hemafed.data.loader import ValSplit, load_image_folder, remap_labels, validation_split
from hemafed.lr import LrSchedule, learning_rate_at, warmup_rates
from hemafed.reporting import MetricsReporter
from hemafed.schemas import (
    FitConfig,
    GlobalRoundMetrics,
    HospitalRoundMetrics,
    RoundCreate,
    RunCreate,
    RunStatus,
    RunUpdate,
    TaskSpec,
)
from hemafed.security import CommaList, ServiceSettings, async_client

log = logging.getLogger("hemafed.central")
SERVICE = "central"
STRATEGY = "centralized"


class CentralSettings(ServiceSettings):
    """Node settings (where things are; ``SECRETS_DIR`` / ``INSECURE``: :mod:`hemafed.security`, its
    folder is ``build/certs/central``) and the run config (the same options as a federated run)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", protected_namespaces=())

    #: the split tool's output (data-mounts/): hospital-*/ folders and test/
    data_root: Path = Path("/data")
    hospital_pattern: str = "hospital-*"
    #: held-out test set (default DATA_ROOT/test)
    test_dir: Path | None = None
    output_dir: Path = Path("/results")
    metrics_url: str | None = None
    #: how long to wait for the metrics service before going on without it
    wait_for_metrics: float = Field(60.0, ge=0)
    tf_threads: int = Field(1, ge=1)
    sample_interval: float = Field(2.0, gt=0)
    # ---- run config
    run_id: str = Field("central", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    model: str = "cnn"
    image_size: int = Field(32, ge=16, le=512)
    classes: CommaList = Field(default_factory=list)
    seed: int = 0
    trainable_fraction: float = Field(1.0, ge=0, le=1)
    rounds: int = Field(5, ge=1, le=10_000)
    local_epochs: int = Field(2, ge=1)
    #: epochs of centralized training; 0 = ROUNDS x LOCAL_EPOCHS (the federation's budget)
    epochs: int = Field(0, ge=0, le=100_000)
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    optimizer: str = Field("adam", pattern=r"^(adam|sgd|sgdm)$")
    #: learning rate per epoch (hemafed.lr): constant | cosine, decaying to LR_MIN_FRACTION x LEARNING_RATE
    lr_schedule: LrSchedule = "constant"
    lr_min_fraction: float = Field(0.0, ge=0, le=1)
    #: linear warm-up of the rate, step by step, over the first epochs (0: none)
    lr_warmup_epochs: int = Field(0, ge=0, le=1000)
    #: exponential moving average of the weights (0: none); the averaged weights are validated and kept
    ema_decay: float = Field(0.0, ge=0, lt=1)
    #: test-time augmentation: the test prediction is the mean over the 8 dihedral views
    tta: bool = False
    #: start from OUTPUT_DIR/<INIT_RUN>/final.keras (an earlier run of the same model and classes, any size)
    init_run: str = Field("", pattern=r"^[A-Za-z0-9_.\-]{0,64}$")
    augment: bool = True
    class_weighting: bool = False
    max_steps_per_epoch: int = Field(0, ge=0)
    #: the hospitals' local validation split (HospitalSettings.val_fraction / val_split / split_seed)
    val_fraction: float = Field(0.15, gt=0.0, lt=0.9)
    val_split: ValSplit = "stratified"
    split_seed: int = 0
    split: str = ""
    dataset: str = ""


    @property
    def total_epochs(self) -> int:
        return self.epochs or self.rounds * self.local_epochs

    @property
    def test_path(self) -> Path:
        return self.test_dir if self.test_dir is not None else self.data_root / "test"


class CentralError(Exception):
    """The centralized run cannot go on (no data, no classes, ...)."""


# --------------------------------------------------------------------------- data


@dataclass
class PooledData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: list[str]
    #: per hospital folder: num_train, num_val, classes (counts), skipped_files (as its /dataset says)
    hospitals: dict[str, dict[str, Any]] = field(default_factory=dict)


def hospital_dirs(root: Path, pattern: str = "hospital-*") -> list[Path]:
    """The hospital folders under ``root``, in numeric order (hospital-2 before hospital-10)."""
    def key(p: Path) -> tuple:
        return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name))

    return sorted((p for p in Path(root).glob(pattern) if p.is_dir()), key=key)


def pool_hospitals(dirs: list[Path], image_size: int, *, val_fraction: float, split_seed: int,
                   classes: list[str] | None = None, val_split: str = "stratified") -> PooledData:
    """Each folder split exactly as its hospital agent splits it, then pooled; labels in the
    federation's class list (``classes``, else the sorted union of the classes held)."""
    if not dirs:
        raise CentralError("no hospital folders to pool")
    parts = []
    for d in dirs:
        loaded = load_image_folder(d, image_size)
        train_idx, val_idx = validation_split(loaded.labels, val_fraction, split_seed, val_split,
                                              key=d.name)  # as HospitalAgent._load (hospital id = folder)
        parts.append((d, loaded, train_idx, val_idx))
    if not classes:
        classes = sorted({c for _, ld, _, _ in parts for c, n in ld.class_counts().items() if n > 0})
    if len(classes) < 2:
        raise CentralError(f"the hospitals' data has fewer than 2 classes ({classes})")
    xs_t, ys_t, xs_v, ys_v, info = [], [], [], [], {}
    for d, ld, tr, va in parts:
        yt, keep_t = remap_labels(ld.labels[tr], ld.classes, classes)
        yv, keep_v = remap_labels(ld.labels[va], ld.classes, classes)
        xs_t.append(ld.images[tr][keep_t])
        ys_t.append(yt)
        xs_v.append(ld.images[va][keep_v])
        ys_v.append(yv)
        info[d.name] = {"num_train": int(len(tr)), "num_val": int(len(va)), "classes": ld.class_counts(),
                        "skipped_files": int(ld.skipped)}
    shape = (0, image_size, image_size, 3)
    return PooledData(
        x_train=np.concatenate(xs_t) if xs_t else np.zeros(shape, np.uint8),
        y_train=np.concatenate(ys_t).astype(np.int64),
        x_val=np.concatenate(xs_v) if xs_v else np.zeros(shape, np.uint8),
        y_val=np.concatenate(ys_v).astype(np.int64),
        classes=list(classes),
        hospitals=info,
    )


class CentralRun:
    def __init__(self, settings: CentralSettings, http: httpx.AsyncClient) -> None:
        self.s = settings
        self.reporter = MetricsReporter(settings.metrics_url, http)
        self.run_dir = settings.output_dir / settings.run_id
        self.state: dict[str, Any] = {
            "run_id": settings.run_id, "strategy": STRATEGY, "rounds_total": settings.total_epochs,
            "status": "starting", "round": 0, "best_round": None, "best_val_accuracy": None, "message": "",
            "started_at": time.time(), "finished_at": None, "rounds": [], "test_results": None, "classes": [],
        }

    def _write_state(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        st = {**self.state, "rounds_completed": len(self.state["rounds"]),
              "test_accuracy": (self.state["test_results"] or {}).get("accuracy")}
        (self.run_dir / "run.json").write_text(json.dumps(st, indent=2, default=str))

    async def run(self) -> int:
        try:
            await self._run()
            return 0
        except Exception as exc:  # noqa: BLE001 - a failed run is reported, not raised
            if not isinstance(exc, CentralError):
                log.exception("centralized run failed")
            msg = str(exc) or type(exc).__name__
            log.error("centralized run %s FAILED: %s", self.s.run_id, msg)
            print(f"run {self.s.run_id} FAILED: {msg}", flush=True)
            self.state.update(status="failed", message=msg, finished_at=time.time())
            self._write_state()
            await self.reporter.update_run(self.s.run_id, RunUpdate(status=RunStatus.failed, message=msg[:2000]))
            return 1

    async def _run(self) -> None:
        s = self.s
        self.run_dir.mkdir(parents=True, exist_ok=True)
        await self.reporter.wait_ready(s.wait_for_metrics)
        t_load = time.perf_counter()
        dirs = hospital_dirs(s.data_root, s.hospital_pattern)
        if not dirs:
            raise CentralError(f"no {s.hospital_pattern} folders under {s.data_root}: run the split first "
                               "(`make central` does)")
        if not s.test_path.is_dir():
            raise CentralError(f"no test set at {s.test_path}")
        data = await asyncio.to_thread(pool_hospitals, dirs, s.image_size, val_fraction=s.val_fraction,
                                       split_seed=s.split_seed, classes=s.classes or None,
                                       val_split=s.val_split)
        load_seconds = time.perf_counter() - t_load
        if len(data.y_train) == 0:
            raise CentralError("the pooled training set is empty")
        log.info("pooled %d hospitals: %d training and %d validation images, %d classes (%.1fs)", len(dirs),
                 len(data.y_train), len(data.y_val), len(data.classes), load_seconds)
        self.state["classes"] = data.classes
        task = TaskSpec(model=s.model, image_size=s.image_size, classes=data.classes, seed=s.seed,
                        trainable_fraction=s.trainable_fraction)
        config = FitConfig(local_epochs=1, batch_size=s.batch_size, learning_rate=s.learning_rate,
                           optimizer=s.optimizer, augment=s.augment, class_weighting=s.class_weighting,
                           max_steps_per_epoch=s.max_steps_per_epoch)
        init = _initial_model(s, task) if s.init_run else None
        trainer, params = await asyncio.to_thread(_build, task, s.ema_decay, init["path"] if init else None)
        if init:
            log.info("starting from run %s (final.keras, %s epochs)", s.init_run, init["epochs"])
        steps_per_epoch = -(-len(data.y_train) // s.batch_size)
        if s.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, s.max_steps_per_epoch)
        epochs = s.total_epochs
        await self.reporter.create_run(RunCreate(
            id=s.run_id, rounds_total=epochs, clients=1, split=s.split, model=s.model, dataset=s.dataset,
            strategy=STRATEGY,
            config={**s.model_dump(mode="json", exclude={"data_root", "test_dir", "output_dir", "metrics_url",
                                                           "secrets_dir", "insecure"}),
                    "epochs": epochs, "params": params, "classes": data.classes, "initialised_from": init,
                    "pooled_hospitals": data.hospitals, "num_train": int(len(data.y_train)),
                    "num_val": int(len(data.y_val))},
        ))
        self.state["status"] = "running"
        best_weights, final_weights, train_seconds = None, None, 0.0
        for epoch in range(1, epochs + 1):
            self.state["round"] = epoch
            t0 = time.perf_counter()
            lr = learning_rate_at(s.learning_rate, epoch, epochs, s.lr_schedule, s.lr_min_fraction)
            rates = warmup_rates(lr, epoch, s.lr_warmup_epochs, steps_per_epoch)
            res, val = await asyncio.to_thread(_epoch, trainer, data, config.model_copy(update={"learning_rate": lr}),
                                               s.seed * 100_003 + epoch * 101, rates)
            duration = time.perf_counter() - t0
            train_seconds += duration
            if self.state["best_val_accuracy"] is None or val.accuracy >= self.state["best_val_accuracy"]:
                self.state.update(best_val_accuracy=val.accuracy, best_round=epoch)
                with trainer.averaged() as model:
                    best_weights = [w.copy() for w in model.get_weights()]
            entry = RoundCreate(
                round=epoch,
                global_=GlobalRoundMetrics(val_accuracy_median=val.accuracy, val_accuracy_mean=val.accuracy,
                                           val_loss=val.loss),
                hospitals={SERVICE: HospitalRoundMetrics(
                    status="ok", val_accuracy=val.accuracy, val_loss=val.loss, train_loss=res.train_loss,
                    train_accuracy=res.train_accuracy, num_examples=res.num_examples, fit_seconds=res.seconds,
                    update_bytes=0)},
                duration_seconds=duration,
                report={"epoch": epoch, "steps": res.steps, "learning_rate": lr,
                        **({"warmup_learning_rates": [rates[0], rates[min(res.steps, len(rates)) - 1]]} if rates else {}),
                        **({"ema_updates": trainer.ema_updates} if s.ema_decay else {})},
            )
            self.state["rounds"].append(entry.model_dump(mode="json", by_alias=True))
            self._write_state()
            await self.reporter.report_round(s.run_id, entry)
            log.info("epoch %d/%d (lr %.2e): train loss %.4f acc %.4f, val loss %.4f acc %.4f (%.1fs)", epoch,
                     epochs, lr, res.train_loss, res.train_accuracy, val.loss, val.accuracy, duration)
        with trainer.averaged() as model:
            final_weights = model.get_weights()
        self.state["status"] = "evaluating"
        wall = time.time() - self.state["started_at"]
        results = await asyncio.to_thread(self._finish, trainer, task, best_weights, final_weights)
        results.update(
            strategy=STRATEGY, run_id=s.run_id, best_round=self.state["best_round"],
            timing={"training_seconds": train_seconds, "epochs": epochs, "rounds": epochs,
                    "mean_epoch_seconds": train_seconds / epochs, "data_load_seconds": load_seconds,
                    "wall_seconds": wall},
            communication={"update_bytes_per_round": [0] * epochs, "update_bytes_total": 0,
                           "trainable_parameters": params["trainable"], "total_parameters": params["total"],
                           "non_trainable_parameters": params["total"] - params["trainable"],
                           "exchanged_parameters": 0},
            pooled={"hospitals": data.hospitals, "num_train": int(len(data.y_train)),
                    "num_val": int(len(data.y_val))},
            initialised_from=init,
        )
        (self.run_dir / "test_results.json").write_text(json.dumps(results, indent=2))
        self.state.update(status="finished", finished_at=time.time(), test_results=results)
        self._write_state()
        await self.reporter.update_run(s.run_id, RunUpdate(
            status=RunStatus.finished, best_round=self.state["best_round"], test_accuracy=results["accuracy"],
            test_results=results))
        log.info("centralized run %s finished: best epoch %s, test accuracy %.4f, macro F1 %.4f, training %.1fs",
                 s.run_id, self.state["best_round"], results["accuracy"], results["macro_f1"], train_seconds)
        print(f"run {s.run_id} finished: best epoch {self.state['best_round']}/{epochs}, test accuracy "
              f"{results['accuracy']:.4f}, macro F1 {results['macro_f1']:.4f}, training {train_seconds:.1f}s, "
              f"wall {wall:.1f}s; results in {self.run_dir}/", flush=True)

    def _finish(self, trainer, task: TaskSpec, best_weights, final_weights) -> dict[str, Any]:
        from hemafed.data.testset import load_test_set
        from hemafed.models import save_model
        from hemafed.report import classification_metrics, per_source_metrics, tta_report, write_report_files

        meta = {"run_id": self.s.run_id, "strategy": STRATEGY, "task": task.model_dump(mode="json"),
                "best_round": self.state["best_round"], "best_val_accuracy": self.state["best_val_accuracy"],
                "epochs": self.s.total_epochs, "saved_at": time.time()}
        trainer.model.set_weights(final_weights)
        save_model(trainer.model, self.run_dir / "final.keras")
        (self.run_dir / "final.json").write_text(json.dumps({**meta, "kind": "final"}, indent=2))
        trainer.model.set_weights(best_weights)
        save_model(trainer.model, self.run_dir / "best.keras")
        (self.run_dir / "best.json").write_text(json.dumps({**meta, "kind": "best"}, indent=2))
        ts = load_test_set(self.s.test_path, task.image_size, task.classes)
        tta = None
        if self.s.tta:
            probs, tta = tta_report(trainer.predict_views(ts.images), ts.labels, task.classes)
        else:
            probs = trainer.predict(ts.images)
        rep = classification_metrics(probs, ts.labels, task.classes)
        rep["skipped_files"] = int(ts.skipped)
        rep["weights"] = f"moving average (decay {self.s.ema_decay})" if self.s.ema_decay else "trained"
        rep["test_time_augmentation"] = tta
        rep["per_source"] = per_source_metrics(ts.files, ts.labels, probs.argmax(axis=1), task.classes)
        rep["files"] = write_report_files(self.run_dir, rep, probs, ts.labels, ts.files,
                                          title=f"{self.s.run_id}: centralized, best epoch {self.state['best_round']}")
        return rep


def _initial_model(s: CentralSettings, task: TaskSpec) -> dict[str, Any]:
    """Where an ``INIT_RUN`` start comes from (``OUTPUT_DIR/<INIT_RUN>/final.keras`` and its
    ``final.json``), refused unless that run trained the same model and classes."""
    from hemafed.models import ModelError, finished_run

    try:
        return finished_run(s.output_dir / s.init_run, task)
    except ModelError as exc:
        raise CentralError(str(exc)) from None


def _build(task: TaskSpec, ema_decay: float = 0.0, init_path: str | None = None):
    from hemafed.models import ModelError, build_for_task, count_params, load_weights_from
    from hemafed.training import LocalTrainer

    model = build_for_task(task)
    if init_path is not None:  # before the trainer: its moving average starts from these weights
        try:
            load_weights_from(model, init_path)
        except ModelError as exc:
            raise CentralError(str(exc)) from None
    return LocalTrainer(model, ema_decay=ema_decay), count_params(model)


def _epoch(trainer, data: PooledData, config: FitConfig, seed: int, rates: list[float] | None = None):
    from hemafed.training import evaluate

    # one optimizer run across epochs: Adam's moments carry over (a hospital resets them each round)
    res = trainer.fit(data.x_train, data.y_train, config, seed=seed, num_classes=len(data.classes),
                      reset_optimizer=False, step_learning_rates=rates)
    with trainer.averaged():  # the weights that are kept: the moving average where there is one
        return res, evaluate(trainer, data.x_val, data.y_val, len(data.classes))


async def run_central(settings: CentralSettings, http: httpx.AsyncClient | None = None,
                      report_resources: bool = True) -> int:
    """One centralized run; returns the exit status (0 finished, 1 failed)."""
    from hemafed.training import configure_threads

    configure_threads(settings.tf_threads)
    # TLS + this service's bearer token for the metrics service (plain httpx without secrets)
    client = http or async_client(settings, {"metrics": settings.metrics_url})
    reporter = None
    try:
        if report_resources and settings.metrics_url:
            from hemafed.resources import ResourceReporter

            reporter = ResourceReporter(SERVICE, settings.metrics_url, interval=settings.sample_interval,
                                        client=client)
            await reporter.start()
        return await CentralRun(settings, client).run()
    finally:
        if reporter is not None:
            with contextlib.suppress(Exception):
                await reporter.stop()
        if http is None:
            await client.aclose()


def main() -> int:
    from hemafed.logs import setup_logging

    setup_logging(SERVICE)
    try:
        settings = CentralSettings()
    except Exception as exc:  # noqa: BLE001 - a configuration error is one clear line, not a traceback
        print(f"central: bad settings: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run_central(settings))


if __name__ == "__main__":
    sys.exit(main())
