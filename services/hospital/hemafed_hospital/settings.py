"""Node configuration of one hospital (who it is, where its data lives). Run configuration
(rounds, learning rate, epochs, model) is the aggregator's and arrives with each instruction."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class HospitalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    hospital_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    data_dir: Path = Path("/data")
    #: fraction of the local images held out for local validation (stratified, seeded)
    val_fraction: float = Field(0.15, gt=0.0, lt=0.9)
    split_seed: int = 0
    tf_threads: int = Field(1, ge=1)
    metrics_url: str | None = None
    sample_interval: float = Field(2.0, gt=0)
    #: largest request body accepted (weights of the biggest model with margin)
    max_body_bytes: int = 512 * 1024 * 1024
