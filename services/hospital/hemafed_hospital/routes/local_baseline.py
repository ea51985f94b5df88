from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from hemafed.exchange import CONTENT_TYPE
from hemafed_hospital.deps import AgentDep

router = APIRouter(tags=["training"])


@router.post("/local-baseline", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def local_baseline(request: Request, agent: AgentDep) -> Response:
    """Body: a safetensors model exchange with the federation's initial weights and
    ``LocalBaselineInstructions``; answer: the purely local model (same exchange format as /fit)."""
    body = await request.body()
    return Response(await run_in_threadpool(agent.local_baseline, body), media_type=CONTENT_TYPE)
