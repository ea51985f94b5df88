"""JSON schemas shared by the services (pydantic v2), named Base / Create / Public.

The weights themselves never travel as JSON: see :mod:`hemafed.exchange`.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# --------------------------------------------------------------------------- task / config


class TaskSpec(BaseModel):
    """What model every participant builds: sent by the aggregator with each instruction."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = "cnn"
    image_size: int = Field(32, ge=16, le=512)
    classes: list[str] = Field(min_length=2)
    seed: int = 0
    trainable_fraction: float = Field(1.0, ge=0.0, le=1.0)
    #: FedBN: keep normalisation layers local (never sent, never averaged)
    local_norm: bool = False


class FitConfig(BaseModel):
    """Local training hyper-parameters for one round (run config, the aggregator's)."""

    model_config = ConfigDict(extra="forbid")

    local_epochs: int = Field(1, ge=1, le=100)
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    optimizer: Literal["adam", "sgd", "sgdm"] = "adam"
    augment: bool = True
    class_weighting: bool = False
    #: FedProx proximal coefficient (0 = plain local training)
    proximal_mu: float = Field(0.0, ge=0)
    #: FedLC (Zhang et al. 2022) logit calibration tau (0 = off): the local loss is the cross-entropy
    #: of the calibrated logits z_c - tau * n_c^(-1/4), n_c = local training examples of class c
    #: (classes absent locally drop out of the softmax); prediction uses the plain model
    logit_calibration_tau: float = Field(0.0, ge=0, le=100)
    #: cap on local steps per epoch (0 = a full pass over the local data)
    max_steps_per_epoch: int = Field(0, ge=0)
    #: classifier re-training (hemafed_aggregator.strategies.classifier_retraining): only the layer
    #: named "classifier" trains; every other weight comes back exactly as it was sent
    classifier_only: bool = False
    #: FedBABU (Oh et al. 2022): the layer named "classifier" does not train (it comes back exactly as
    #: sent, at its initial weights when every round freezes it); the rest of the model does
    frozen_classifier: bool = False
    #: FedDyn (Acar et al. 2021) dynamic-regulariser coefficient alpha (0 = off): the hospital
    #: minimises L_k(t) - <g_k, t> + alpha/2 ||t - global||^2, then g_k <- g_k - alpha (t - global)
    feddyn_alpha: float = Field(0.0, ge=0)
    #: SCAFFOLD (Karimireddy et al. 2020): correct local steps with c - c_i (c in FitIns aux "c")
    #: and return aux "delta_c" (option II control-variate update)
    scaffold: bool = False
    #: hospital-side DP-SGD (Abadi et al. 2016): per-example L2 clip norm C (0 = no DP-SGD)
    dp_clip_norm: float = Field(0.0, ge=0)
    #: DP-SGD noise multiplier z: Gaussian noise N(0, (z C)^2) added to each summed batch gradient
    dp_noise_multiplier: float = Field(0.0, ge=0)
    #: delta at which a hospital reports its DP-SGD epsilon (hemafed.privacy.dpsgd_epsilon)
    dp_delta: float = Field(1e-5, gt=0, lt=1)
    #: data over time (hemafed.data.schedule): full | weekly (Case 1) | weekly-recycle (Case 2)
    schedule: Literal["full", "weekly", "weekly-recycle"] = "full"
    #: how many parts ("weeks") the local data is cut into for the weekly schedules (the run's rounds)
    schedule_parts: int = Field(1, ge=1, le=10_000)
    #: weekly-recycle: share of the images used in a round carried into the next round
    recycle_fraction: float = Field(0.6, ge=0, le=1)

    @model_validator(mode="after")
    def _dp_noise_needs_clip(self) -> FitConfig:
        if self.dp_noise_multiplier > 0 and self.dp_clip_norm <= 0:
            raise ValueError("dp_noise_multiplier > 0 needs dp_clip_norm > 0 (noise is scaled by the clip norm)")
        return self


class FitInstructions(BaseModel):
    """Carried in the ``extra`` of the exchange the aggregator sends to ``POST /fit``."""

    task: TaskSpec
    config: FitConfig
    #: the sender fills in the tensors a reply leaves out (hemafed.exchange.fill_unchanged): the
    #: hospital may send back only those its training changed (older hospitals ignore this field
    #: and reply in full; older aggregators do not set it and get full replies)
    omit_unchanged: bool = False


class EvaluateInstructions(BaseModel):
    task: TaskSpec


class LocalBaselineInstructions(BaseModel):
    """Carried in the ``extra`` of the exchange sent to ``POST /local-baseline``: train a purely
    local model from the weights sent, ``rounds`` times ``config.local_epochs`` epochs (the
    federation's budget), keeping the pass with the best local validation accuracy."""

    task: TaskSpec
    config: FitConfig
    rounds: int = Field(ge=1, le=10_000)
    #: pass r's learning rate (the federation's schedule by round, hemafed.lr); empty: config's rate
    learning_rates: list[Annotated[float, Field(gt=0, le=10)]] = Field(default_factory=list, max_length=10_000)

    @model_validator(mode="after")
    def _one_rate_per_pass(self) -> LocalBaselineInstructions:
        if self.learning_rates and len(self.learning_rates) != self.rounds:
            raise ValueError(f"learning_rates has {len(self.learning_rates)} entries for {self.rounds} passes")
        return self


# --------------------------------------------------------------------------- hospital agent


class HealthPublic(BaseModel):
    status: Literal["ok"] = "ok"
    service: str
    version: str


class DatasetSummaryPublic(BaseModel):
    """What a hospital says about its data: counts only, never pixels or file names."""

    hospital_id: str
    classes: dict[str, int]
    num_train: int
    num_val: int
    skipped_files: int
    skipped_reasons: dict[str, int] = Field(default_factory=dict)


class EvaluatePublic(BaseModel):
    round: int
    hospital_id: str
    loss: float
    accuracy: float
    num_examples: int
    classes: list[str]
    confusion_matrix: list[list[int]]


class ErrorPublic(BaseModel):
    detail: str


# --------------------------------------------------------------------------- metrics service


class RunStatus(str, Enum):
    running = "running"
    finished = "finished"
    failed = "failed"


class RunBase(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    rounds_total: int = Field(ge=0)
    clients: int = Field(ge=0)
    split: str = ""
    model: str = ""
    dataset: str = ""
    strategy: str = ""
    config: dict = Field(default_factory=dict)


class RunCreate(RunBase):
    pass


class RunUpdate(BaseModel):
    """Partial update of a run by the aggregator (status, message, final test results)."""

    status: RunStatus | None = None
    message: str | None = None
    test_accuracy: float | None = None
    test_results: dict | None = None
    best_round: int | None = None


class RunPublic(RunBase):
    status: RunStatus
    rounds_completed: int
    test_accuracy: float | None = None
    test_results: dict | None = None
    best_round: int | None = None
    message: str = ""
    started_at: float
    finished_at: float | None = None


class GlobalRoundMetrics(BaseModel):
    val_accuracy_median: float | None = None
    val_accuracy_mean: float | None = None
    val_loss: float | None = None


class HospitalRoundMetrics(BaseModel):
    status: str = "ok"  # ok / timeout / error / rejected / not_selected
    val_accuracy: float | None = None
    val_loss: float | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    num_examples: int = 0
    fit_seconds: float | None = None
    #: bytes of the hospital's reply to /fit (its update, less what it sent back unchanged)
    update_bytes: int = 0
    #: bytes of this round's requests that carried a model to the hospital (/fit, then /evaluate
    #: with the aggregated model), less the tensors it already held
    request_bytes: int = 0
    message: str = ""


class RoundBase(BaseModel):
    round: int = Field(ge=1)
    global_: GlobalRoundMetrics = Field(alias="global")
    hospitals: dict[str, HospitalRoundMetrics]
    duration_seconds: float | None = None
    #: strategy- and schedule-specific facts of the round (JSON object), e.g. ``dp_epsilon``,
    #: ``outliers`` ({hospital: {norm, cosine, flagged}}), ``participation`` ({hospital: state})
    report: dict = Field(default_factory=dict)

    model_config = ConfigDict(populate_by_name=True)


class RoundCreate(RoundBase):
    pass


class RoundPublic(RoundBase):
    run_id: str
    recorded_at: float


class ResourceSampleBase(BaseModel):
    service: str = Field(min_length=1, max_length=64)
    t: float
    cpu_percent: float = Field(ge=0)
    rss_bytes: int = Field(ge=0)
    gpu_util: float | None = None
    gpu_mem_bytes: int | None = None


class ResourceSampleCreate(ResourceSampleBase):
    pass


class ResourceSamplePublic(ResourceSampleBase):
    pass


class ResourceBatchCreate(BaseModel):
    samples: list[ResourceSampleCreate] = Field(max_length=10_000)


# --------------------------------------------------------------------------- inference


class ClassProbability(BaseModel):
    #: class name (``class`` is a Python keyword)
    label: str
    probability: float = Field(ge=0.0, le=1.0)


class PredictionPublic(BaseModel):
    """``POST /api/predict``: the top classes of one image under the best model of a finished run."""

    model_config = ConfigDict(protected_namespaces=())

    run_id: str
    #: the federated round whose global model answered (the run's best round)
    round: int
    model: str
    image_size: int
    #: the top classes, most probable first (at most 3)
    predictions: list[ClassProbability]
