"""Helpers shared by the in-process tests (no real datasets: synthetic images in tmp dirs)."""

from __future__ import annotations

from pathlib import Path

import httpx

from hemafed.data.synthetic import write_image_folder


def synthetic_folder(root: Path, n_per_class: int = 6, size: int = 32, seed: int = 0, classes=None) -> Path:
    write_image_folder(root, n_per_class, image_size=size, seed=seed)
    if classes is not None:  # keep only some classes (label skew)
        for d in root.iterdir():
            if d.name not in classes:
                for f in d.iterdir():
                    f.unlink()
                d.rmdir()
    return root


class RoutingTransport(httpx.AsyncBaseTransport):
    """Dispatch requests to in-process ASGI apps by host name (``http://hospital-1/...``)."""

    def __init__(self, apps: dict) -> None:
        self.transports = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self.transports.get(request.url.host)
        if transport is None:
            raise httpx.ConnectError(f"no route to {request.url.host}", request=request)
        return await transport.handle_async_request(request)
