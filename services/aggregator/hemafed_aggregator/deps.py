"""Shared route dependencies as named Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from hemafed.security import require_caller

from hemafed_aggregator.inference import Predictor
from hemafed_aggregator.server import FederatedServer


def get_server(request: Request) -> FederatedServer:
    server = getattr(request.app.state, "server", None)
    if server is None:
        raise HTTPException(503, "the aggregator is starting")
    return server


ServerDep = Annotated[FederatedServer, Depends(get_server)]


def get_predictor(request: Request) -> Predictor:
    return request.app.state.predictor


PredictorDep = Annotated[Predictor, Depends(get_predictor)]


#: the enrolled caller (the metrics service's prediction proxy): 401 / 403 otherwise
CallerDep = Annotated[str, Depends(require_caller)]
#: for ``include_router(..., dependencies=[Authenticated])``
Authenticated = Depends(require_caller)
