"""``/api/runs``: create, list, read and update runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from hemafed.schemas import ErrorPublic, RunCreate, RunPublic, RunUpdate
from hemafed_metrics.deps import StoreDep

router = APIRouter(prefix="/api/runs", tags=["runs"])
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic, "description": "Unknown run"}}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorPublic, "description": "Run id already exists"}},
)
def create_run(body: RunCreate, store: StoreDep) -> RunPublic:
    return store.create_run(body)


@router.get("")
def list_runs(store: StoreDep) -> list[RunPublic]:
    """All runs, newest first."""
    return store.list_runs()


@router.get("/{run_id}", responses=_404)
def get_run(run_id: str, store: StoreDep) -> RunPublic:
    return store.get_run(run_id)


@router.patch("/{run_id}", responses=_404)
def update_run(run_id: str, body: RunUpdate, store: StoreDep) -> RunPublic:
    """Partial update: omitted or null fields stay as they are."""
    return store.update_run(run_id, body)
