"""Aggregator configuration: node settings (where things are) apart from the run config
(what to train and how). Both come from the environment (compose passes them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

from hemafed.lr import LrSchedule
from hemafed.security import NAME_PATTERN, CommaList, ConfigPath, ServiceSettings, check_name
from hemafed_aggregator.participation import Participation


class AggregatorSettings(ServiceSettings):
    """Where the hospitals, the metrics service and the volumes are; ``SECRETS_DIR`` / ``INSECURE``
    (TLS and credentials, :mod:`hemafed.security`)."""

    #: comma-separated ``id=url`` pairs, e.g. ``hospital-1=http://hospital-1:8000,...``
    hospitals: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    metrics_url: str | None = None
    output_dir: ConfigPath = Path("/results")
    #: held-out global test set; read once, after training, for the final report
    test_dir: ConfigPath | None = None
    auto_start: bool = True
    tf_threads: int = Field(1, ge=1)
    sample_interval: float = Field(2.0, gt=0)
    max_body_bytes: int = 4 * 1024 * 1024
    #: POST /api/predict: largest uploaded file (bytes) and image (pixels) accepted, else 413
    predict_max_bytes: int = Field(2 * 1024 * 1024, gt=0)
    predict_max_pixels: int = Field(25_000_000, gt=0)

    @field_validator("hospitals", mode="before")
    @classmethod
    def _parse_hospitals(cls, v: Any) -> Any:
        if isinstance(v, str):
            out = {}
            for item in filter(None, (p.strip() for p in v.split(","))):
                hid, sep, url = item.partition("=")
                if not sep or not hid or not url:
                    raise ValueError(f"HOSPITALS entry {item!r} must be id=url")
                out[check_name(hid.strip())] = url.strip().rstrip("/")
            return out
        return v


class RunConfig(BaseSettings):
    """What one federated run trains and how (the run config, the aggregator's)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", protected_namespaces=())

    run_id: str = Field("run", pattern=NAME_PATTERN)  # a folder name under OUTPUT_DIR: never "." / ".."
    rounds: int = Field(5, ge=1, le=10_000)
    strategy: str = "fedavg"
    #: JSON object of strategy parameters, e.g. ``{"server_lr": 1.0}``
    strategy_params: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)
    min_clients: int = Field(2, ge=1)
    fraction_fit: float = Field(1.0, gt=0, le=1)
    round_timeout: float = Field(600.0, gt=0)
    #: how long to wait for MIN_CLIENTS healthy hospitals before failing the run (at the start, and
    #: again whenever a round got fewer than MIN_CLIENTS answers)
    wait_for_clients: float = Field(300.0, gt=0)
    #: how often a round with fewer than MIN_CLIENTS answers is run again (after that wait) before failing
    round_retries: int = Field(2, ge=0, le=100)
    #: outlier flags in each round's report: an update whose norm exceeds this factor times the median
    #: norm, or whose cosine to the consensus (coordinate-wise median update) is below the minimum
    outlier_norm_factor: float = Field(3.0, gt=1)
    outlier_min_cosine: float = Field(0.0, ge=-1, le=1)
    model: str = "cnn"
    image_size: int = Field(32, ge=16, le=512)
    #: optional fixed class list (comma-separated); default: union of the hospitals' classes
    classes: CommaList = Field(default_factory=list)
    seed: int = 0
    local_epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    #: the hospitals' learning rate by round (hemafed.lr): constant | cosine (to LR_MIN_FRACTION x LEARNING_RATE)
    lr_schedule: LrSchedule = "constant"
    lr_min_fraction: float = Field(0.0, ge=0, le=1)
    optimizer: str = "adam"
    augment: bool = True
    class_weighting: bool = False
    trainable_fraction: float = Field(1.0, ge=0, le=1)
    local_norm: bool = False
    #: sample-level DP-SGD at the hospitals (0 = off): per-example clip norm, noise multiplier, delta
    dp_clip_norm: float = Field(0.0, ge=0)
    dp_noise_multiplier: float = Field(0.0, ge=0)
    dp_delta: float = Field(1e-5, gt=0, lt=1)
    max_steps_per_epoch: int = Field(0, ge=0)
    #: the last CLASSIFIER_ROUNDS of the ROUNDS re-train only the classifier layer on the frozen
    #: feature extractor, averaged by examples (hemafed_aggregator.strategies.classifier_retraining)
    classifier_rounds: int = Field(0, ge=0)
    #: FedBABU (Oh et al. 2022): the classifier layer stays at its initial weights in every round
    #: but the classifier rounds (hospitals mask its gradients); the rest of the model learns features
    #: for that fixed classifier, which the classifier rounds (if any) then re-train
    freeze_classifier: bool = False
    #: the classifier rounds' own local training (a convex problem on frozen features, which may want
    #: other settings than the whole network): learning rate (0 = the run's, on its LR_SCHEDULE; set,
    #: it is constant), local epochs (0 = LOCAL_EPOCHS), optimizer ('' = OPTIMIZER), augmentation
    #: ('' / None = AUGMENT)
    classifier_learning_rate: float = Field(0.0, ge=0, le=10)
    classifier_epochs: int = Field(0, ge=0, le=100)
    classifier_optimizer: Literal["", "adam", "sgd", "sgdm"] = ""
    classifier_augment: bool | None = None
    #: server-side weight averaging (SWA; hemafed_aggregator.strategies.swa): the global models of the
    #: last SWA_ROUNDS rounds that train the whole network (before any classifier rounds) are averaged
    #: into the model of the window's last round (0 = off; else at least 2)
    swa_rounds: int = Field(0, ge=0)
    #: start from the final weights of a finished run in OUTPUT_DIR (its RUN_ID; '' = fresh weights):
    #: same model and classes (any image size), refused otherwise. With it every round may be a
    #: classifier round (CLASSIFIER_ROUNDS = ROUNDS): the features come trained
    init_run: str = Field("", pattern=r"^[A-Za-z0-9_.\-]{0,64}$")
    #: an update whose L2 norm (all exchanged tensors) exceeds this is refused like a malformed one
    max_update_norm: float = Field(1e6, gt=0)
    #: data over time at the hospitals: full | weekly (Case 1) | weekly-recycle (Case 2); the data
    #: is cut into ROUNDS parts (hemafed.data.schedule)
    schedule: Literal["full", "weekly", "weekly-recycle"] = "full"
    recycle_fraction: float = Field(0.6, ge=0, le=1)
    #: intermittent hospitals (hemafed_aggregator.participation): '' | random:<p> | schedule:<h>=<rounds>;...
    participation: str = ""
    #: a departed hospital's last update: drop (approach 1) or keep using it (approach 2)
    departed: Literal["drop", "keep"] = "drop"
    #: after the run, each hospital also trains a purely local model (same initial weights, rounds x
    #: local_epochs epochs) for the local-vs-federated table (hemafed_aggregator.runreport)
    local_baseline: bool = False
    #: run id of a centralized baseline (``make central``) on the same data, in OUTPUT_DIR: the
    #: report adds the wall-time reduction against it ('' = none)
    baseline_run: str = Field("", pattern=r"^[A-Za-z0-9_.\-]{0,64}$")
    #: test-time augmentation in the final test report: each test image's prediction is the mean
    #: over its 8 dihedral views (the single-view figures are reported beside)
    tta: bool = False
    #: which global validation figure picks the best round: the median of the hospitals' validation
    #: accuracies (a typical hospital), or the pooled accuracy (the example-weighted mean = the
    #: accuracy on all hospitals' validation images together, what a centralized run picks by)
    best_by: Literal["median", "pooled"] = "median"
    split: str = ""
    dataset: str = ""

    @field_validator("strategy_params", mode="before")
    @classmethod
    def _parse_params(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = json.loads(v) if v.strip() else {}
            if not isinstance(v, dict):
                raise ValueError("STRATEGY_PARAMS must be a JSON object")
        return v

    @field_validator("classifier_augment", mode="before")
    @classmethod
    def _unset_augment(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v  # compose passes '' for "the run's"

    @model_validator(mode="after")
    def _classifier_rounds_within_run(self) -> RunConfig:
        n, rounds = self.classifier_rounds, self.rounds
        if self.init_run:
            if n > rounds:
                raise ValueError(f"CLASSIFIER_ROUNDS ({n}) cannot exceed ROUNDS ({rounds})")
        elif n >= rounds:
            raise ValueError(f"CLASSIFIER_ROUNDS ({n}) must be fewer than ROUNDS ({rounds}): they are the run's "
                             "last rounds, after the features have trained (all of them only with INIT_RUN, "
                             "from a trained model)")
        body = rounds - n
        if self.swa_rounds and not 2 <= self.swa_rounds <= body:
            raise ValueError(f"SWA_ROUNDS ({self.swa_rounds}) must be 0 or from 2 to the {body} round(s) that train "
                             "the whole network (ROUNDS - CLASSIFIER_ROUNDS)")
        own = {"CLASSIFIER_LEARNING_RATE": self.classifier_learning_rate > 0,
               "CLASSIFIER_EPOCHS": self.classifier_epochs > 0,
               "CLASSIFIER_OPTIMIZER": self.classifier_optimizer != "",
               "CLASSIFIER_AUGMENT": self.classifier_augment is not None}
        if not n and any(own.values()):
            given = ", ".join(k for k, set_ in own.items() if set_)
            raise ValueError(f"{given} only apply to classifier rounds: set CLASSIFIER_ROUNDS too")
        return self

    @model_validator(mode="after")
    def _exclusive_options(self) -> RunConfig:
        if self.init_run and self.init_run == self.run_id:
            raise ValueError(f"INIT_RUN ({self.init_run}) must be another run than RUN_ID: "
                             "this run writes there")
        if self.freeze_classifier and self.dp_clip_norm > 0:
            raise ValueError("FREEZE_CLASSIFIER under DP-SGD (DP_CLIP_NORM > 0): the DP step clips and "
                             "noises every variable; use one or the other")
        if self.freeze_classifier and self.strategy == "dp_fedavg":
            raise ValueError("FREEZE_CLASSIFIER with dp_fedavg: the server's noise would move the "
                             "classifier every round")
        if self.init_run and self.local_norm:
            raise ValueError("INIT_RUN with LOCAL_NORM: the hospitals' own normalisation layers are not "
                             "in the finished run's final.keras")
        return self

    @field_validator("participation")
    @classmethod
    def _check_participation(cls, v: str) -> str:
        Participation.parse(v)  # a clear error at start-up, not in round 3
        return v

