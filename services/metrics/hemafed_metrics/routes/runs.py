"""``/api/runs``: create, list, read and update runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from hemafed.schemas import ErrorPublic, RunCreate, RunPublic, RunUpdate
from hemafed_metrics.deps import StoreDep
from hemafed_metrics.export import CSV_MEDIA_TYPE, confusion_csv, hospital_data_csv, per_class_csv, runs_csv

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


_CSV: dict[int | str, dict[str, Any]] = {200: {"content": {"text/csv": {}}}}


def _csv(body: str, filename: str) -> Response:
    return Response(body, media_type=CSV_MEDIA_TYPE,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get(".csv", response_class=Response, responses=_CSV)
def list_runs_csv(store: StoreDep) -> Response:
    """All runs (settings and final figures), newest first."""
    return _csv(runs_csv(store.list_runs()), "runs.csv")


@router.get("/{run_id}/hospitals.csv", response_class=Response, responses={**_404, **_CSV})
def hospital_data_as_csv(run_id: str, store: StoreDep) -> Response:
    """Examples per hospital and class (counts only)."""
    return _csv(hospital_data_csv(store.get_run(run_id)), f"{run_id}-hospitals.csv")


@router.get("/{run_id}/per_class.csv", response_class=Response, responses={**_404, **_CSV})
def per_class_as_csv(run_id: str, store: StoreDep) -> Response:
    """The test set's per-class metrics (header only until the run has test results)."""
    return _csv(per_class_csv(store.get_run(run_id)), f"{run_id}-per-class.csv")


@router.get("/{run_id}/confusion.csv", response_class=Response, responses={**_404, **_CSV})
def confusion_as_csv(run_id: str, store: StoreDep) -> Response:
    """The test confusion matrix (rows true, columns predicted)."""
    return _csv(confusion_csv(store.get_run(run_id)), f"{run_id}-confusion.csv")


@router.get("/{run_id}", responses=_404)
def get_run(run_id: str, store: StoreDep) -> RunPublic:
    return store.get_run(run_id)


@router.patch("/{run_id}", responses=_404)
def update_run(run_id: str, body: RunUpdate, store: StoreDep) -> RunPublic:
    """Partial update: omitted or null fields stay as they are."""
    return store.update_run(run_id, body)
