from fastapi import APIRouter

from hemafed import __version__
from hemafed.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
def health() -> HealthPublic:
    return HealthPublic(service="aggregator", version=__version__)
