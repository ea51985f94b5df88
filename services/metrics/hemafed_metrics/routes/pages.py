"""The web pages: ``/`` (live dashboard), ``/runs`` (past runs) and ``/static/...``.

Every script, style and font is a file of this package (``hemafed_metrics/static``); nothing is
fetched from another host, so the pages work on an offline hospital network. The pages are
static HTML that poll the JSON API (``/api/runs``, ``/api/runs/{id}/rounds``,
``/api/runs/{id}/resources``); the dashboard reads the run id from ``?run=<id>`` (default: the
newest run).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["pages"], include_in_schema=False)

#: pages are small and change with every deployment: revalidate instead of caching blindly
_NO_CACHE = {"Cache-Control": "no-cache"}


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type="text/html; charset=utf-8", headers=_NO_CACHE)


@router.get("/", response_class=FileResponse)
def dashboard() -> FileResponse:
    """The live dashboard of one run (``?run=<id>``, else the newest)."""
    return _page("dashboard.html")


@router.get("/runs", response_class=FileResponse)
def runs_page() -> FileResponse:
    """Past runs with their settings and final figures."""
    return _page("runs.html")


def static_files() -> StaticFiles:
    """The ``/static`` mount (the app mounts it; StaticFiles answers unknown paths 404)."""
    return StaticFiles(directory=STATIC_DIR, check_dir=True)
