"""``GET /predict`` (the upload page) and ``POST /api/predict`` (proxied to the aggregator, which
holds the model: this service has no TensorFlow)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, UploadFile
from fastapi.responses import FileResponse

from hemafed.schemas import ErrorPublic, PredictionPublic
from hemafed_metrics.deps import AggregatorDep
from hemafed_metrics.routes.pages import STATIC_DIR
from hemafed_metrics.upstream import UpstreamError

router = APIRouter(tags=["inference"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorPublic, "description": "No finished model yet (from the aggregator)"},
    413: {"model": ErrorPublic, "description": "File or image too large"},
    415: {"model": ErrorPublic, "description": "Not an image"},
    422: {"description": "Empty or corrupt image, or no `file` field"},
    502: {"model": ErrorPublic, "description": "The aggregator is unreachable or answered badly"},
    503: {"model": ErrorPublic, "description": "No aggregator configured, or it is starting"},
    504: {"model": ErrorPublic, "description": "The aggregator did not answer in time"},
}


@router.get("/predict", response_class=FileResponse, include_in_schema=False)
def predict_page() -> FileResponse:
    """Upload an image and see the top-3 classes of the finished run's best model."""
    return FileResponse(STATIC_DIR / "predict.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


@router.post("/api/predict", responses=_ERRORS)
async def predict(file: UploadFile, aggregator: AggregatorDep) -> PredictionPublic:
    """Multipart field ``file``: one image; answered by the aggregator's best model of its finished run."""
    try:
        return await aggregator.predict(await file.read(), file.filename, file.content_type)
    except UpstreamError as exc:
        raise HTTPException(exc.status, exc.detail) from exc
