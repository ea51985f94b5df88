from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from hemafed.schemas import DatasetSummaryPublic
from hemafed_hospital.deps import AgentDep

router = APIRouter(tags=["dataset"])


@router.get("/dataset", response_model=DatasetSummaryPublic)
async def dataset_summary(agent: AgentDep, image_size: int = Query(32, ge=16, le=512)) -> DatasetSummaryPublic:
    """Class counts of the local data: never pixels, never file names."""
    return await run_in_threadpool(agent.summary, image_size)
