from fastapi import APIRouter

from hemafed import __version__
from hemafed.schemas import HealthPublic
from hemafed_hospital.deps import SettingsDep

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
def health(settings: SettingsDep) -> HealthPublic:
    return HealthPublic(service=settings.hospital_id, version=__version__)
