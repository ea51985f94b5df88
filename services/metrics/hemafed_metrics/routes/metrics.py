"""``GET /metrics``: Prometheus text exposition of the app's registry."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hemafed_metrics.deps import RegistryDep

router = APIRouter(tags=["prometheus"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(registry: RegistryDep) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
