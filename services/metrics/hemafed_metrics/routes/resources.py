"""Resource samples: ``POST /api/resources`` and reads, per run or in general."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel

from hemafed.schemas import ErrorPublic, ResourceBatchCreate, ResourceSamplePublic
from hemafed_metrics.deps import StoreDep, check_own_samples
from hemafed_metrics.export import CSV_MEDIA_TYPE, resources_csv

router = APIRouter(tags=["resources"])
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic, "description": "Unknown run"}}

Service = Annotated[str | None, Query(min_length=1, max_length=64, description="only this service")]
Limit = Annotated[int | None, Query(ge=1, le=1_000_000, description="only the latest N samples")]


class AcceptedPublic(BaseModel):
    accepted: int


@router.post("/api/resources", status_code=status.HTTP_202_ACCEPTED,
             responses={403: {"model": ErrorPublic, "description": "A sample of another service"}})
def add_resources(body: ResourceBatchCreate, store: StoreDep, request: Request) -> AcceptedPublic:
    """An enrolled service reports its own samples only (403 for another service's: none stored)."""
    check_own_samples(request, {sample.service for sample in body.samples})
    return AcceptedPublic(accepted=store.add_resource_samples(body.samples))


@router.get("/api/resources")
def list_resources(
    store: StoreDep,
    service: Service = None,
    since: Annotated[float | None, Query(description="unix time, inclusive")] = None,
    until: Annotated[float | None, Query(description="unix time, inclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> list[ResourceSamplePublic]:
    """Samples oldest first; with more than ``limit`` in range, the latest ``limit``."""
    return store.list_resources(service=service, since=since, until=until, limit=limit)


@router.get("/api/runs/{run_id}/resources", responses=_404)
def run_resources(
    run_id: str, store: StoreDep, service: Service = None, limit: Limit = None
) -> list[ResourceSamplePublic]:
    """Samples from 5 s before the run started to 5 s after it finished (or now)."""
    return store.run_resources(run_id, service=service, limit=limit)


@router.get(
    "/api/runs/{run_id}/resources.csv",
    response_class=Response,
    responses={**_404, 200: {"content": {"text/csv": {}}}},
)
def run_resources_csv(run_id: str, store: StoreDep, service: Service = None) -> Response:
    return Response(
        resources_csv(store.run_resources(run_id, service=service)),
        media_type=CSV_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{run_id}-resources.csv"'},
    )
