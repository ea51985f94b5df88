"""The hospital agent's handlers: everything the routes call. Images never leave this object:
what it returns is weights, counts and aggregate metrics.

Client side of the strategies that need one (the aggregator's strategies set the FitConfig fields):

* FedProx (``proximal_mu``): the trainer's proximal term.
* FedLC (``logit_calibration_tau``, Zhang et al. 2022): the trainer calibrates its logits by the
  round's local class counts (:func:`hemafed.training.calibration_offsets`); the counts stay here.
* FedDyn (``feddyn_alpha``, Acar et al. 2021, Algorithm 1): the hospital keeps ``g_k`` (one array
  per trainable variable, initially 0), trains on ``L_k(t) - <g_k, t> + alpha/2 ||t - global||^2``
  (corrections ``-g_k``, proximal coefficient ``alpha``), then ``g_k <- g_k - alpha (t_k - global)``
  (so that ``g_k`` is ``grad L_k(t_k)`` at the local optimum, the paper's first-order condition).
* SCAFFOLD (``scaffold``, Karimireddy et al. 2020, option II): needs plain SGD (anything else is
  refused with 422: the option II update assumes ``y <- y - lr (g - c_i + c)``). The server's ``c``
  comes in ``aux["c"]``; the hospital keeps ``c_i`` (initially 0), trains with corrections
  ``c - c_i``, then ``c_i+ = c_i - c + (x - y) / (K lr)`` over its K local steps, and replies with
  ``aux["delta_c"] = c_i+ - c_i`` (zeros for exchanged variables that are not trainable).
* Classifier re-training rounds (``classifier_only``): the trainer masks every gradient except the
  classifier layer's, so the rest of the model goes back exactly as it came; FedDyn's ``g_k`` and
  SCAFFOLD's ``c_i`` are kept for later rounds (those terms are off in these rounds). A DP-SGD
  config with it is refused with 422.
* FedBABU (``frozen_classifier``): the other way round, the classifier layer's gradients masked and
  its weights sent back exactly as received; refused with 422 under DP-SGD.
* Replies leave out what did not change: when the instructions say ``omit_unchanged`` (the
  aggregator always does), the tensors sent back bit for bit as received are not in the reply,
  only their positions (``extra["unchanged"]``, :func:`hemafed.exchange.omit_unchanged`): a
  classifier round uploads the classifier alone, a FedBABU round everything but it.
* Requests may leave out what the hospital holds: the weights of the last request received are
  kept by digest (``held``), and a request's ``extra["held"]`` names the tensors to take from them
  (:func:`hemafed.exchange.resolve_held`); one it does not hold is a 412 (the aggregator then sends
  the request whole).
* Data schedules (``schedule``): under ``weekly`` / ``weekly-recycle`` a round trains (and
  validates its update locally) on its part of the data only (:mod:`hemafed.data.schedule`);
  global validation (``evaluate``) always uses the whole local validation split.
* DP-SGD (``dp_clip_norm`` / ``dp_noise_multiplier``, Abadi et al. 2016): the trainer's DP step;
  the reply's metrics carry ``dp_epsilon`` (this hospital's total over the run so far, RDP
  accounted by :func:`hemafed.privacy.dpsgd_epsilon` with q = batch / examples, i.e. shuffled
  batches accounted as Poisson sampling, the usual approximation), ``dp_epsilon_round`` and
  ``dp_delta``. Only the weights (and SCAFFOLD/FedDyn state, post-processing of them) are
  covered: ``train_loss``/``train_accuracy``/``local_val_*`` and ``num_examples`` are not noised.

The state is per task (``TaskSpec``) and lives in memory (a restarted hospital starts again from
0). A fit for a round *below* the state's last round is a new run: the state starts again. A fit
for the *same* round is a resend: it starts from the state before that round (the DP accounting
still counts both trainings: a privacy cost, once paid, is never taken back).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
from pydantic import ValidationError

from hemafed.data.loader import load_image_folder, remap_labels, validation_split
from hemafed.data.schedule import round_indices
from hemafed.exchange import ACCEPTS_KEY, HELD_KEY, UNCHANGED_KEY, ExchangeError, MissingTensors, ModelExchange
from hemafed.exchange import check_weights, omit_unchanged, request_digest, resolve_held, spec_of, tensor_digest
from hemafed.schemas import (
    DatasetSummaryPublic,
    EvaluateInstructions,
    EvaluatePublic,
    FitConfig,
    FitInstructions,
    LocalBaselineInstructions,
    TaskSpec,
)

from hemafed_hospital.attacks import Attack
from hemafed_hospital.replay import FitReplay, StaleRound
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


#: tasks whose algorithm state a hospital keeps (a hospital in more federations than this loses
#: the oldest one's state, with a warning)
MAX_TASK_STATES = 8


@dataclass
class AlgorithmState:
    """What a hospital carries from round to round for one task (arrays: one per trainable variable)."""

    #: last round that updated this state (-1: none yet)
    round: int = -1
    #: FedDyn's g_k (float64)
    feddyn_g: list[np.ndarray] | None = None
    #: SCAFFOLD's c_i (float64)
    scaffold_c: list[np.ndarray] | None = None
    #: DP-SGD spending: local epochs run, by (num_examples, batch, noise multiplier, steps per epoch, delta)
    dp_epochs: dict[tuple, int] = field(default_factory=dict)
    #: the state before ``round`` (a resent round starts again from it)
    previous: AlgorithmState | None = None


class HospitalAgent:
    def __init__(self, settings: HospitalSettings) -> None:
        self.settings = settings
        self._data: dict[int, LocalData] = {}
        self._models: dict[str, object] = {}
        self._states: OrderedDict[str, AlgorithmState] = OrderedDict()
        self._busy = threading.Lock()
        self._data_lock = threading.Lock()
        self.last_round = 0
        #: repeated / out-of-date /fit requests (replay.py)
        self.replay = FitReplay()
        #: the weights of the last request received, by digest: a later request may refer to them
        #: instead of sending them again (hemafed.exchange.resolve_held); one model's worth of memory
        self.held: dict[str, np.ndarray] = {}
        self._held_lock = threading.Lock()
        #: TEST-ONLY fault injection (attacks.py); none unless ATTACKER names this hospital
        self.attack = Attack.for_hospital(settings.hospital_id, settings.attack, settings.attacker,
                                          scale=settings.attack_scale, noise_std=settings.attack_noise_std,
                                          seed=settings.split_seed)

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
        train_idx, val_idx = validation_split(loaded.labels, self.settings.val_fraction, self.settings.split_seed,
                                              self.settings.val_split, key=self.settings.hospital_id)
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
        y_task, keep = remap_labels(y, d.local_classes, task.classes)
        return x[keep], y_task

    # ------------------------------------------------------------------ model

    def _trainer(self, task: TaskSpec):
        from hemafed.models import build_for_task  # TensorFlow: only where a model is built
        from hemafed.training import LocalTrainer

        key = task.model_dump_json()
        if key not in self._models:
            self._models = {key: LocalTrainer(build_for_task(task))}  # keep one model: memory on small hosts
        return self._models[key]

    def _load_global(self, trainer, task: TaskSpec, weights: list[np.ndarray]) -> None:
        from hemafed.models import get_exchanged, set_exchanged

        expected = spec_of(get_exchanged(trainer.model, local_norm=task.local_norm))
        try:
            check_weights(weights, expected)
        except ExchangeError as exc:
            raise AgentError(422, f"global weights rejected: {exc}") from exc
        set_exchanged(trainer.model, weights, local_norm=task.local_norm)

    @staticmethod
    def _trainable_positions(trainer, task: TaskSpec) -> list[int | None]:
        """For each exchanged variable, its position in ``model.trainable_variables`` (None: not trainable,
        e.g. BatchNorm statistics). For ``cnn`` the two lists are the same."""
        from hemafed.models import exchanged_variables

        pos = {id(v): i for i, v in enumerate(trainer.model.trainable_variables)}
        return [pos.get(id(v)) for v in exchanged_variables(trainer.model, local_norm=task.local_norm)]

    def state(self, task: TaskSpec) -> AlgorithmState | None:
        """The algorithm state kept for ``task`` (None before its first round)."""
        return self._states.get(task.model_dump_json())

    def _state_for_round(self, task: TaskSpec, rnd: int) -> AlgorithmState:
        key = task.model_dump_json()
        st = self._states.get(key)
        if st is None or st.round < 0:
            return AlgorithmState()
        if rnd > st.round:
            return st
        if rnd == st.round and st.previous is not None:
            log.warning("round %d sent again: starting from the state before it", rnd)
            return replace(st.previous, dp_epochs=dict(st.dp_epochs))  # privacy spent stays spent
        log.warning("round %d after round %d: a new run, the FedDyn/SCAFFOLD/DP state starts again",
                    rnd, st.round)
        return AlgorithmState()

    def _commit_state(self, task: TaskSpec, rnd: int, before: AlgorithmState, after: AlgorithmState) -> None:
        key = task.model_dump_json()
        after.round = rnd
        after.previous = replace(before, previous=None)
        self._states[key] = after
        self._states.move_to_end(key)
        while len(self._states) > MAX_TASK_STATES:
            self._states.popitem(last=False)
            log.warning("dropping the algorithm state of an old task (%d kept at most)", MAX_TASK_STATES)

    def _scheduled(self, x: np.ndarray, y: np.ndarray, rnd: int, config: FitConfig) -> tuple[np.ndarray, np.ndarray]:
        """The images round ``rnd`` sees under the data schedule (hemafed.data.schedule)."""
        if config.schedule == "full":
            return x, y
        idx = round_indices(len(y), rnd, schedule=config.schedule, parts=config.schedule_parts,
                            recycle_fraction=config.recycle_fraction, seed=self.settings.split_seed)
        return x[idx], y[idx]

    @staticmethod
    def _check_algorithms(config: FitConfig) -> None:
        if config.scaffold and config.feddyn_alpha > 0:
            raise AgentError(422, "scaffold and feddyn_alpha > 0 are different algorithms: choose one")
        if config.scaffold and config.optimizer != "sgd":
            raise AgentError(422, f"SCAFFOLD needs plain SGD on the hospitals (its control-variate update "
                                  f"assumes it): optimizer is {config.optimizer!r}, set it to 'sgd'")

    def _scaffold_c(self, msg: ModelExchange, trainer, task: TaskSpec) -> list[np.ndarray]:
        from hemafed.models import get_exchanged

        c = msg.aux.get("c")
        if c is None:
            raise AgentError(422, "SCAFFOLD: the server control variate aux['c'] is missing")
        try:
            check_weights(c, spec_of(get_exchanged(trainer.model, local_norm=task.local_norm)))
        except ExchangeError as exc:
            raise AgentError(422, f"SCAFFOLD: aux['c'] rejected: {exc}") from exc
        return c

    # ------------------------------------------------------------------ handlers

    def fit(self, body: bytes) -> bytes:
        msg, instructions, digests = self._decode(body, FitInstructions)
        run_id = msg.extra.get("run_id")
        try:
            return self.replay.run(instructions.task.model_dump_json(), run_id if isinstance(run_id, str) else None,
                                   msg.round, request_digest(msg, digests), lambda: self._fit_once(msg, instructions))
        except StaleRound as exc:
            raise AgentError(409, str(exc)) from exc

    def _fit_once(self, msg: ModelExchange, instructions: FitInstructions) -> bytes:
        with self._training():
            reply = self.attack.poison(msg.weights, self._fit(msg, instructions))
        if instructions.omit_unchanged:  # only what training changed travels back (hemafed.exchange)
            reply.weights, left_out = omit_unchanged(reply.weights, msg.weights)
            if left_out:
                reply.extra[UNCHANGED_KEY] = left_out
        reply.extra[ACCEPTS_KEY] = [HELD_KEY]  # later requests may refer to the weights held here
        return reply.to_bytes()

    @contextlib.contextmanager
    def _training(self) -> Iterator[None]:
        """One training at a time on this hospital (it shares the model): a second gets 409."""
        if not self._busy.acquire(blocking=False):
            raise AgentError(409, "a training round is already running on this hospital")
        try:
            yield
        finally:
            self._busy.release()

    def _train_labels(self, d: LocalData, task: TaskSpec) -> tuple[np.ndarray, np.ndarray]:
        """The local training split in the federation's classes; 409 when none of them is here."""
        x, y = self._task_labels(d, task, "train")
        if len(y) == 0:
            raise AgentError(409, "none of this hospital's classes are in the federation's class list")
        return x, y

    def _round_seed(self, task: TaskSpec, rnd: int) -> int:
        """The local-training seed of round ``rnd``: differs by task, round and hospital."""
        return task.seed * 100_003 + rnd * 101 + _stable_hash(self.settings.hospital_id)

    def _fit(self, msg: ModelExchange, ins: FitInstructions) -> ModelExchange:
        from hemafed.models import get_exchanged
        from hemafed.privacy import dpsgd_epsilon
        from hemafed.training import UnsupportedConfig, evaluate

        task, config = ins.task, ins.config
        self._check_algorithms(config)
        d = self.data(task.image_size)
        x, y = self._scheduled(*self._train_labels(d, task), msg.round, config)
        y = self.attack.labels(y, len(task.classes))  # ATTACK=label_flip only (test-only fault injection)
        if len(y) == 0:
            raise AgentError(409, f"round {msg.round}: this hospital's part of the {config.schedule} schedule is "
                                  f"empty ({config.schedule_parts} parts)")
        trainer = self._trainer(task)
        self._load_global(trainer, task, msg.weights)
        c_server = self._scaffold_c(msg, trainer, task) if config.scaffold else None

        variables = trainer.model.trainable_variables
        positions = self._trainable_positions(trainer, task)
        # trainable AND exchanged: the variables the strategies' rules apply to
        shared = sorted(i for i in positions if i is not None)
        before = self._state_for_round(task, msg.round)
        after = replace(before, dp_epochs=dict(before.dp_epochs), previous=None)
        start = [np.asarray(v.numpy(), dtype=np.float64) for v in variables]  # x: the global model
        zeros = [np.zeros(v.shape, np.float64) for v in variables]
        corrections = None
        train_config = config
        if config.feddyn_alpha > 0:
            g = before.feddyn_g if before.feddyn_g is not None else zeros
            corrections = [-gk for gk in g]
            train_config = config.model_copy(update={"proximal_mu": config.proximal_mu + config.feddyn_alpha})
        if c_server is not None:
            c = [np.zeros(v.shape, np.float64) for v in variables]
            for j, i in enumerate(positions):
                if i is not None:
                    c[i] = np.asarray(c_server[j], dtype=np.float64)
            c_i = before.scaffold_c if before.scaffold_c is not None else zeros
            corrections = [ck - cik for ck, cik in zip(c, c_i)]

        seed = self._round_seed(task, msg.round)
        try:
            result = trainer.fit(x, y, train_config, seed=seed, num_classes=len(task.classes),
                                 corrections=corrections)
        except UnsupportedConfig as exc:
            raise AgentError(422, str(exc)) from exc
        end = [np.asarray(v.numpy(), dtype=np.float64) for v in variables]  # y / theta_k: the local model
        aux: dict[str, list[np.ndarray]] = {}
        extra_metrics: dict[str, float] = {}

        if config.feddyn_alpha > 0:
            alpha = config.feddyn_alpha
            g = [gk.copy() for gk in (before.feddyn_g if before.feddyn_g is not None else zeros)]
            for i in shared:
                g[i] = g[i] - alpha * (end[i] - start[i])
            after.feddyn_g = g
        if c_server is not None:
            k, lr = result.steps, config.learning_rate
            c_i = before.scaffold_c if before.scaffold_c is not None else zeros
            c_new = [cik.copy() for cik in c_i]
            for i in shared:
                c_new[i] = c_i[i] - c[i] + (start[i] - end[i]) / (k * lr)
            after.scaffold_c = c_new
            exchanged = get_exchanged(trainer.model, local_norm=task.local_norm)
            aux["delta_c"] = [
                np.zeros_like(w) if i is None else (c_new[i] - c_i[i]).astype(w.dtype)
                for w, i in zip(exchanged, positions)
            ]
        if config.dp_clip_norm > 0 and config.dp_noise_multiplier > 0:
            n = result.num_examples
            batch = min(config.batch_size, n)
            steps_per_epoch = result.steps // config.local_epochs
            # max_steps_per_epoch = the steps actually run per epoch: the accountant counts exactly them
            key = (n, batch, float(config.dp_noise_multiplier), steps_per_epoch, float(config.dp_delta))
            after.dp_epochs[key] = after.dp_epochs.get(key, 0) + config.local_epochs

            def eps(k: tuple, epochs: int) -> float:
                return dpsgd_epsilon(k[0], k[1], epochs, k[2], k[4], max_steps_per_epoch=k[3])

            # one configuration: RDP composition; several: their (epsilon, delta)s add up (basic composition)
            extra_metrics = {
                "dp_epsilon": sum(eps(k, e) for k, e in after.dp_epochs.items()),
                "dp_epsilon_round": eps(key, config.local_epochs),
                "dp_delta": sum(k[4] for k in after.dp_epochs),
            }
            log.info("round %d: DP-SGD (C=%g, z=%g, q=%d/%d, %d steps, %s): epsilon %.3f this round, %.3f in "
                     "total at delta %.2g", msg.round, config.dp_clip_norm, config.dp_noise_multiplier, batch,
                     n, result.steps, result.per_example, extra_metrics["dp_epsilon_round"],
                     extra_metrics["dp_epsilon"], extra_metrics["dp_delta"])
        elif config.dp_clip_norm > 0:
            log.warning("round %d: per-example clipping without noise (dp_noise_multiplier = 0): "
                        "no privacy guarantee", msg.round)

        # local validation: this hospital's update on its round's validation part (all of it under "full")
        xv, yv = self._scheduled(*self._task_labels(d, task, "val"), msg.round, config)
        local_val = evaluate(trainer, xv, yv, len(task.classes))
        if config.feddyn_alpha > 0 or c_server is not None or config.dp_clip_norm > 0:
            self._commit_state(task, msg.round, before, after)
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
                **extra_metrics,
            },
            extra={"hospital_id": self.settings.hospital_id},
            aux=aux,
        )

    def evaluate(self, body: bytes) -> EvaluatePublic:
        from hemafed.training import evaluate

        msg, ins, _ = self._decode(body, EvaluateInstructions)
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

    def local_baseline(self, body: bytes) -> bytes:
        """``POST /local-baseline``: a purely local model for the local-vs-federated table."""
        msg, ins, _ = self._decode(body, LocalBaselineInstructions)
        with self._training():
            return self._local_baseline(msg, ins).to_bytes()

    def _local_baseline(self, msg: ModelExchange, ins: LocalBaselineInstructions) -> ModelExchange:
        """Train from the weights sent (the federation's initial model) on the local training split
        only: ``ins.rounds`` passes of ``config.local_epochs`` epochs, each with the seed and the fresh
        client optimizer (and learning rate) of the matching federated round, and keep the pass with the best local
        validation accuracy (the federation keeps its best round by validation too). The
        algorithm terms that exist for the federation (FedProx, FedDyn, SCAFFOLD, FedLC's logit
        calibration) are off; the data
        schedule is not applied (all local training images every pass)."""
        from hemafed.models import get_exchanged
        from hemafed.training import UnsupportedConfig, evaluate

        task = ins.task
        config = ins.config.model_copy(update={"proximal_mu": 0.0, "feddyn_alpha": 0.0, "scaffold": False,
                                               "logit_calibration_tau": 0.0})
        d = self.data(task.image_size)
        x, y = self._train_labels(d, task)
        xv, yv = self._task_labels(d, task, "val")
        trainer = self._trainer(task)
        self._load_global(trainer, task, msg.weights)
        best: tuple[float, int, list[np.ndarray], object, object] | None = None
        seconds = 0.0
        for rnd in range(1, ins.rounds + 1):
            cfg = config.model_copy(update={"learning_rate": ins.learning_rates[rnd - 1]}) if ins.learning_rates \
                else config
            try:
                result = trainer.fit(x, y, cfg, seed=self._round_seed(task, rnd), num_classes=len(task.classes))
            except UnsupportedConfig as exc:
                raise AgentError(422, str(exc)) from exc
            seconds += result.seconds
            val = evaluate(trainer, xv, yv, len(task.classes))
            if best is None or val.accuracy >= best[0]:
                best = (val.accuracy, rnd, get_exchanged(trainer.model, local_norm=task.local_norm), result, val)
        assert best is not None
        _, best_round, weights, result, val = best
        log.info("local baseline: %d passes of %d epochs on %d images in %.1fs; best pass %d, local val "
                 "accuracy %.4f", ins.rounds, config.local_epochs, len(y), seconds, best_round, val.accuracy)
        return ModelExchange(
            weights=weights,
            round=msg.round,
            num_examples=int(len(y)),
            metrics={
                "train_loss": result.train_loss,
                "train_accuracy": result.train_accuracy,
                "fit_seconds": seconds,
                "best_round": float(best_round),
                "local_val_accuracy": val.accuracy,
                "local_val_loss": val.loss,
                "num_val": float(val.num_examples),
            },
            extra={"hospital_id": self.settings.hospital_id},
        )

    def _decode(self, body: bytes, schema):
        """The request, its instructions and its full weights' digests (for
        :func:`hemafed.exchange.request_digest`); the tensors it refers to (``extra["held"]``) taken from
        the last weights received (412 when they are not held here: the sender sends them)."""
        try:
            msg = ModelExchange.from_bytes(body)
        except ExchangeError as exc:
            raise AgentError(400, str(exc)) from exc
        try:
            instructions = schema.model_validate(msg.extra.get("instructions"))
        except ValidationError as exc:
            raise AgentError(422, f"bad instructions: {exc.errors(include_url=False)}") from exc
        with self._held_lock:
            try:
                msg.weights = resolve_held(msg.weights, msg.extra.get(HELD_KEY), self.held)
            except MissingTensors as exc:
                raise AgentError(412, str(exc)) from exc
            except ExchangeError as exc:
                raise AgentError(400, str(exc)) from exc
            digests = [tensor_digest(w) for w in msg.weights]
            self.held = dict(zip(digests, msg.weights))
        return msg, instructions, digests


def _stable_hash(s: str) -> int:
    return int.from_bytes(s.encode()[:8].ljust(8, b"\0"), "little") % 10_007
