from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from hemafed.schemas import EvaluatePublic
from hemafed_hospital.deps import AgentDep

router = APIRouter(tags=["training"])


@router.post("/evaluate", response_model=EvaluatePublic)
async def evaluate(request: Request, agent: AgentDep) -> EvaluatePublic:
    """Body: a safetensors model exchange with the global weights; answer: local validation metrics."""
    body = await request.body()
    return await run_in_threadpool(agent.evaluate, body)
