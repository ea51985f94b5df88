"""``POST /api/predict``: the top-3 classes of one uploaded image under the finished run's best model."""

from typing import Any

from fastapi import APIRouter, HTTPException, UploadFile

from hemafed.schemas import ErrorPublic, PredictionPublic
from hemafed_aggregator.deps import PredictorDep, ServerDep
from hemafed_aggregator.inference import PredictError

router = APIRouter(tags=["inference"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorPublic, "description": "No finished model yet (the run is still going, or failed)"},
    413: {"model": ErrorPublic, "description": "File or image too large"},
    415: {"model": ErrorPublic, "description": "Not an image"},
    422: {"description": "Empty or corrupt image, or no `file` field"},
    503: {"model": ErrorPublic, "description": "The aggregator is starting"},
}


@router.post("/api/predict", responses=_ERRORS)
async def predict(file: UploadFile, server: ServerDep, predictor: PredictorDep) -> PredictionPublic:
    """Multipart field ``file``: one image; the answer names the run and the round of the model."""
    try:
        return await predictor.predict_upload(server, file)
    except PredictError as exc:
        raise HTTPException(exc.status, exc.detail) from exc
