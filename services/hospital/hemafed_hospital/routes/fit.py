from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from hemafed.exchange import CONTENT_TYPE
from hemafed_hospital.deps import AgentDep

router = APIRouter(tags=["training"])


@router.post("/fit", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def fit(request: Request, agent: AgentDep) -> Response:
    """Body and answer: a safetensors model exchange (global weights in, local update out)."""
    body = await request.body()
    return Response(await run_in_threadpool(agent.fit, body), media_type=CONTENT_TYPE)
