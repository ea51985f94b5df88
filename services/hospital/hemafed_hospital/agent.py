"""The hospital agent's handlers: everything the routes call. Images never leave this object:
what it returns is weights, counts and aggregate metrics."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from hemafed.data.loader import load_image_folder, stratified_split
from hemafed.exchange import ExchangeError, ModelExchange, check_weights, spec_of
from hemafed.schemas import DatasetSummaryPublic, EvaluateInstructions, EvaluatePublic, FitInstructions, TaskSpec

from hemafed_hospital.settings import HospitalSettings

log = logging.getLogger("hemafed.hospital")


class AgentError(Exception):
    """An instruction the agent refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class LocalData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    local_classes: list[str]
    class_counts: dict[str, int]
    skipped: int
    skipped_reasons: dict[str, int]


class HospitalAgent:
    def __init__(self, settings: HospitalSettings) -> None:
        self.settings = settings
        self._data: dict[int, LocalData] = {}
        self._models: dict[str, object] = {}
        self._busy = threading.Lock()
        self._data_lock = threading.Lock()
        self.last_round = 0

    # ------------------------------------------------------------------ data

    def data(self, image_size: int) -> LocalData:
        with self._data_lock:
            if image_size not in self._data:
                self._data[image_size] = self._load(image_size)
            return self._data[image_size]

    def _load(self, image_size: int) -> LocalData:
        if not self.settings.data_dir.is_dir():
            raise AgentError(503, f"data directory {self.settings.data_dir} is not mounted")
        loaded = load_image_folder(self.settings.data_dir, image_size)
        if len(loaded.labels) == 0:
            raise AgentError(503, "no readable images in the data directory")
        train_idx, val_idx = stratified_split(loaded.labels, self.settings.val_fraction, self.settings.split_seed)
        counts = np.bincount(loaded.labels, minlength=len(loaded.classes))
        log.info("loaded %d images (%d skipped) at %d px", len(loaded.labels), loaded.skipped, image_size)
        return LocalData(
            x_train=loaded.images[train_idx],
            y_train=loaded.labels[train_idx],
            x_val=loaded.images[val_idx],
            y_val=loaded.labels[val_idx],
            local_classes=list(loaded.classes),
            class_counts={c: int(n) for c, n in zip(loaded.classes, counts)},
            skipped=int(loaded.skipped),
            skipped_reasons=dict(loaded.skipped_reasons),
        )

    def summary(self, image_size: int = 32) -> DatasetSummaryPublic:
        d = self.data(image_size)
        return DatasetSummaryPublic(
            hospital_id=self.settings.hospital_id,
            classes=d.class_counts,
            num_train=int(len(d.y_train)),
            num_val=int(len(d.y_val)),
            skipped_files=d.skipped,
            skipped_reasons=d.skipped_reasons,
        )

    def _task_labels(self, d: LocalData, task: TaskSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Local images relabelled to the federation's class list (unknown classes dropped)."""
        x, y = (d.x_train, d.y_train) if split == "train" else (d.x_val, d.y_val)
        index = {c: i for i, c in enumerate(task.classes)}
        mapping = np.array([index.get(c, -1) for c in d.local_classes], dtype=np.int64)
        y_task = mapping[y]
        keep = y_task >= 0
        return x[keep], y_task[keep]

    # ------------------------------------------------------------------ model

    def _trainer(self, task: TaskSpec):
        from hemafed.models import build_model  # TensorFlow: only where a model is built
        from hemafed.training import LocalTrainer

        key = task.model_dump_json()
        if key not in self._models:
            model = build_model(task.model, len(task.classes), task.image_size, seed=task.seed,
                                trainable_fraction=None if task.model in ("cnn", "cnn-bn") else task.trainable_fraction)
            self._models = {key: LocalTrainer(model)}  # keep one model: memory on small hosts
        return self._models[key]

    def _load_global(self, trainer, task: TaskSpec, weights: list[np.ndarray]) -> None:
        from hemafed.models import get_exchanged, set_exchanged

        expected = spec_of(get_exchanged(trainer.model, local_norm=task.local_norm))
        try:
            check_weights(weights, expected)
        except ExchangeError as exc:
            raise AgentError(422, f"global weights rejected: {exc}") from exc
        set_exchanged(trainer.model, weights, local_norm=task.local_norm)

    # ------------------------------------------------------------------ handlers

    def fit(self, body: bytes) -> bytes:
        msg, instructions = self._decode(body, FitInstructions)
        if not self._busy.acquire(blocking=False):
            raise AgentError(409, "a training round is already running on this hospital")
        try:
            return self._fit(msg, instructions).to_bytes()
        finally:
            self._busy.release()

    def _fit(self, msg: ModelExchange, ins: FitInstructions) -> ModelExchange:
        from hemafed.models import get_exchanged
        from hemafed.training import evaluate

        task, config = ins.task, ins.config
        d = self.data(task.image_size)
        x, y = self._task_labels(d, task, "train")
        if len(y) == 0:
            raise AgentError(409, "none of this hospital's classes are in the federation's class list")
        trainer = self._trainer(task)
        self._load_global(trainer, task, msg.weights)
        seed = task.seed * 100_003 + msg.round * 101 + _stable_hash(self.settings.hospital_id)
        result = trainer.fit(x, y, config, seed=seed, num_classes=len(task.classes))
        xv, yv = self._task_labels(d, task, "val")
        local_val = evaluate(trainer, xv, yv, len(task.classes))
        self.last_round = msg.round
        log.info("round %d: trained on %d images in %.1fs, loss %.4f", msg.round, result.num_examples,
                 result.seconds, result.train_loss)
        return ModelExchange(
            weights=get_exchanged(trainer.model, local_norm=task.local_norm),
            round=msg.round,
            num_examples=result.num_examples,
            metrics={
                "train_loss": result.train_loss,
                "train_accuracy": result.train_accuracy,
                "fit_seconds": result.seconds,
                "steps": float(result.steps),
                "local_val_accuracy": local_val.accuracy,
                "local_val_loss": local_val.loss,
            },
            extra={"hospital_id": self.settings.hospital_id},
        )

    def evaluate(self, body: bytes) -> EvaluatePublic:
        from hemafed.training import evaluate

        msg, ins = self._decode(body, EvaluateInstructions)
        task = ins.task
        d = self.data(task.image_size)
        x, y = self._task_labels(d, task, "val")
        trainer = self._trainer(task)
        with self._busy:  # evaluation shares the model with training
            self._load_global(trainer, task, msg.weights)
            res = evaluate(trainer, x, y, len(task.classes))
        return EvaluatePublic(
            round=msg.round,
            hospital_id=self.settings.hospital_id,
            loss=res.loss,
            accuracy=res.accuracy,
            num_examples=res.num_examples,
            classes=list(task.classes),
            confusion_matrix=res.confusion_matrix.tolist(),
        )

    @staticmethod
    def _decode(body: bytes, schema):
        try:
            msg = ModelExchange.from_bytes(body)
        except ExchangeError as exc:
            raise AgentError(400, str(exc)) from exc
        try:
            instructions = schema.model_validate(msg.extra.get("instructions"))
        except ValidationError as exc:
            raise AgentError(422, f"bad instructions: {exc.errors(include_url=False)}") from exc
        return msg, instructions


def _stable_hash(s: str) -> int:
    return int.from_bytes(s.encode()[:8].ljust(8, b"\0"), "little") % 10_007
