"""``/api/runs/{run_id}/rounds``: record (idempotently) and read a run's rounds."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from hemafed.schemas import ErrorPublic, RoundCreate, RoundPublic
from hemafed_metrics.deps import StoreDep
from hemafed_metrics.export import CSV_MEDIA_TYPE, rounds_csv

router = APIRouter(prefix="/api/runs/{run_id}", tags=["rounds"], responses={404: {"model": ErrorPublic}})


@router.post("/rounds", status_code=status.HTTP_201_CREATED)
def record_round(run_id: str, body: RoundCreate, store: StoreDep) -> RoundPublic:
    """Record a round; posting the same round again replaces it."""
    return store.upsert_round(run_id, body)


@router.get("/rounds")
def list_rounds(run_id: str, store: StoreDep) -> list[RoundPublic]:
    return store.list_rounds(run_id)


@router.get("/rounds.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def rounds_as_csv(run_id: str, store: StoreDep) -> Response:
    """One row per (round, hospital), with the round's global columns."""
    return Response(
        rounds_csv(store.list_rounds(run_id)),
        media_type=CSV_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{run_id}-rounds.csv"'},
    )
