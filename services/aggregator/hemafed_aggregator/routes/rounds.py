from typing import Any

from fastapi import APIRouter

from hemafed_aggregator.deps import ServerDep

router = APIRouter(tags=["run"])


@router.get("/api/rounds")
def rounds(server: ServerDep) -> list[dict[str, Any]]:
    """Every completed round of the current run (global and per-hospital metrics)."""
    return server.state.rounds
