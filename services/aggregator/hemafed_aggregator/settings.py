"""Aggregator configuration: node settings (where things are) apart from the run config
(what to train and how). Both come from the environment (compose passes them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated


class AggregatorSettings(BaseSettings):
    """Where the hospitals, the metrics service and the volumes are."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    #: comma-separated ``id=url`` pairs, e.g. ``hospital-1=http://hospital-1:8000,...``
    hospitals: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    metrics_url: str | None = None
    output_dir: Path = Path("/results")
    #: held-out global test set; read once, after training, for the final report
    test_dir: Path | None = None
    auto_start: bool = True
    tf_threads: int = Field(1, ge=1)
    sample_interval: float = Field(2.0, gt=0)
    max_body_bytes: int = 4 * 1024 * 1024

    @field_validator("hospitals", mode="before")
    @classmethod
    def _parse_hospitals(cls, v: Any) -> Any:
        if isinstance(v, str):
            out = {}
            for item in filter(None, (p.strip() for p in v.split(","))):
                hid, sep, url = item.partition("=")
                if not sep or not hid or not url:
                    raise ValueError(f"HOSPITALS entry {item!r} must be id=url")
                out[hid.strip()] = url.strip().rstrip("/")
            return out
        return v


class RunConfig(BaseSettings):
    """What one federated run trains and how (the run config, the aggregator's)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", protected_namespaces=())

    run_id: str = Field("run", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    rounds: int = Field(5, ge=1, le=10_000)
    strategy: str = "fedavg"
    #: JSON object of strategy parameters, e.g. ``{"server_lr": 1.0}``
    strategy_params: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)
    min_clients: int = Field(2, ge=1)
    fraction_fit: float = Field(1.0, gt=0, le=1)
    round_timeout: float = Field(600.0, gt=0)
    #: how long to wait for MIN_CLIENTS healthy hospitals before failing the run
    wait_for_clients: float = Field(300.0, gt=0)
    model: str = "cnn"
    image_size: int = Field(32, ge=16, le=512)
    #: optional fixed class list (comma-separated); default: union of the hospitals' classes
    classes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    seed: int = 0
    local_epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
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

    @field_validator("classes", mode="before")
    @classmethod
    def _parse_classes(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [c.strip() for c in v.split(",") if c.strip()]
        return v
