"""Shared route dependencies as named Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from hemafed_aggregator.server import FederatedServer


def get_server(request: Request) -> FederatedServer:
    server = getattr(request.app.state, "server", None)
    if server is None:
        raise HTTPException(503, "the aggregator is starting")
    return server


ServerDep = Annotated[FederatedServer, Depends(get_server)]
