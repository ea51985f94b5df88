"""Shared route dependencies as named Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from hemafed.security import require_caller
from hemafed_hospital.agent import HospitalAgent
from hemafed_hospital.settings import HospitalSettings


def get_agent(request: Request) -> HospitalAgent:
    return request.app.state.agent


def get_settings(request: Request) -> HospitalSettings:
    return request.app.state.settings


AgentDep = Annotated[HospitalAgent, Depends(get_agent)]
SettingsDep = Annotated[HospitalSettings, Depends(get_settings)]
#: the enrolled caller (only the aggregator, with this hospital's own token): 401 / 403 otherwise
CallerDep = Annotated[str, Depends(require_caller)]
#: for ``include_router(..., dependencies=[Authenticated])``: every route but /health needs it
Authenticated = Depends(require_caller)
