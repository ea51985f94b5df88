from typing import Any

from fastapi import APIRouter

from hemafed_aggregator.deps import ServerDep

router = APIRouter(tags=["run"])


@router.get("/api/status")
def status(server: ServerDep) -> dict[str, Any]:
    """The current run: status, round k of R, best round, per-hospital state."""
    out = server.state.public()
    out.pop("rounds")
    return out
