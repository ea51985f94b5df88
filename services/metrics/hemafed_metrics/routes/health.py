"""``GET /health``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter

from hemafed.schemas import HealthPublic
from hemafed_metrics.deps import SettingsDep

try:
    VERSION = version("hemafed-metrics")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    VERSION = "0.0.0"

router = APIRouter(tags=["health"])


@router.get("/health")
def health(settings: SettingsDep) -> HealthPublic:
    return HealthPublic(service=settings.service_name, version=VERSION)
