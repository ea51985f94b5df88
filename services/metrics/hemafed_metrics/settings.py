"""Settings of the metrics service, read from the environment (no prefix)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from hemafed.security import ConfigPath, ServiceSettings


class MetricsSettings(ServiceSettings):
    """Environment: ``DB_PATH``, ``SERVICE_NAME``, ``SAMPLE_INTERVAL``, ``MAX_BODY_BYTES``,
    ``AGGREGATOR_URL``, ``AGGREGATOR_TIMEOUT``, ``SECRETS_DIR`` / ``INSECURE`` (:mod:`hemafed.security`)."""

    #: SQLite database file (its folder is created); ``:memory:`` for a throw-away store
    db_path: ConfigPath = Path("/var/lib/hemafed/metrics.db")
    #: name under which the service records its own resource samples and answers /health
    service_name: Annotated[str, Field(min_length=1, max_length=64)] = "metrics"
    #: seconds between the service's own resource samples; 0 disables them
    sample_interval: Annotated[float, Field(ge=0)] = 2.0
    #: request bodies larger than this are answered 413
    max_body_bytes: Annotated[int, Field(gt=0)] = 2 * 1024 * 1024
    #: the aggregator, for ``POST /api/predict`` (proxied); unset: the route answers 503
    aggregator_url: str | None = None
    #: seconds to wait for the aggregator's answer to a prediction
    aggregator_timeout: Annotated[float, Field(gt=0)] = 60.0
