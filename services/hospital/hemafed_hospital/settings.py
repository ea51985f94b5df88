"""Node configuration of one hospital (who it is, where its data lives). Run configuration
(rounds, learning rate, epochs, model) is the aggregator's and arrives with each instruction."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from hemafed.data.loader import ValSplit
from hemafed.security import ConfigPath, SafeName, ServiceSettings


class HospitalSettings(ServiceSettings):
    """Environment (compose): ``HOSPITAL_ID``, ``DATA_DIR``, ``METRICS_URL``, ``SECRETS_DIR`` (TLS and
    credentials, :mod:`hemafed.security`), ``INSECURE``, ..."""

    hospital_id: SafeName
    data_dir: ConfigPath = Path("/data")
    #: fraction of the local images held out for local validation (stratified, seeded)
    val_fraction: float = Field(0.15, gt=0.0, lt=0.9)
    #: stratified (per class; at least one image of every class held twice) or random (the site's
    #: images drawn uniformly: for sites of a few dozen images, hemafed.data.loader.random_split)
    val_split: ValSplit = "stratified"
    split_seed: int = 0
    tf_threads: int = Field(1, ge=1)
    metrics_url: str | None = None
    sample_interval: float = Field(2.0, gt=0)
    #: largest request body accepted (weights of the biggest model with margin)
    max_body_bytes: int = 512 * 1024 * 1024
    #: TEST-ONLY fault injection (hemafed_hospital.attacks, the chaos suite): the hospitals named in
    #: ATTACKER (comma-separated ids) poison their updates with ATTACK; ``none`` everywhere by default
    attack: Literal["none", "sign_flip", "scale", "noise", "label_flip"] = "none"
    attacker: str = ""
    attack_scale: float = Field(10.0, gt=0)
    attack_noise_std: float = Field(1.0, gt=0)
