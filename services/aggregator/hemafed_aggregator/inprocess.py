"""Services in one process: an httpx transport that routes requests by host name to ASGI apps.

Used by the simulation engine (:mod:`hemafed_aggregator.simulate`) and the in-process test tier:
the aggregator's real HTTP client objects talk to real hospital / metrics apps without sockets or
containers (``http://hospital-1/fit`` goes to the app registered as ``hospital-1``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import httpx


class RoutingTransport(httpx.AsyncBaseTransport):
    """Dispatch requests to in-process ASGI apps by host name (``http://hospital-1/...``).

    ``max_concurrent`` (optional) caps how many requests to the hosts in ``limited`` (default: all)
    are handled at once; the others wait their turn. On a machine with few cores this keeps 100
    simulated hospitals from training 100 models at once (the round loop still sends to all of
    them concurrently, exactly as on the stack). An unknown host is a :class:`httpx.ConnectError`,
    as an unreachable container would be.
    """

    def __init__(self, apps: Mapping[str, object], *, max_concurrent: int | None = None,
                 limited: Iterable[str] | None = None) -> None:
        if max_concurrent is not None and max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        self.transports = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}
        self.limited = set(self.transports if limited is None else limited)
        self.max_concurrent = max_concurrent
        self._slots: asyncio.Semaphore | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        transport = self.transports.get(host)
        if transport is None:
            raise httpx.ConnectError(f"no route to {host}", request=request)
        if self.max_concurrent is None or host not in self.limited:
            return await transport.handle_async_request(request)
        if self._slots is None:  # created in the running loop
            self._slots = asyncio.Semaphore(self.max_concurrent)
        async with self._slots:
            response = await transport.handle_async_request(request)
            await response.aread()  # the body is produced inside the slot
            return response
