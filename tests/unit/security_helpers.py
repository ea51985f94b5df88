"""Test helpers for the security layer: real enrolment material (``scripts/certs.py``) in a tmp
folder, and authenticated in-process clients.

    folders = make_certs(tmp_path, hospitals=2)           # {service: its secrets folder}
    settings = HospitalSettings(..., secrets_dir=folders["hospital-1"])
    async with authed_client(app, folders, "aggregator", "hospital-1") as c:
        await c.post("/fit", ...)                          # carries the aggregator's token for hospital-1
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("hemafed_certs_script", ROOT / "scripts" / "certs.py")
certs_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(certs_script)


def make_certs(out: Path, hospitals: int = 2) -> dict[str, Path]:
    """``scripts/certs.py`` into ``out``: ``{service: folder}`` (plus ``out/ca.pem``)."""
    return certs_script.generate(out, hospitals)


def token(folders: dict[str, Path], caller: str, server: str) -> str:
    """The token ``caller`` presents to ``server``."""
    return json.loads((folders[caller] / "credentials.json").read_text())[server]


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def authed_client(app, folders: dict[str, Path], caller: str, server: str, **kwargs) -> httpx.AsyncClient:
    """An in-process (ASGI) client of ``app`` that calls it as ``caller`` does."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{server}",
                             headers=bearer(token(folders, caller, server)), **kwargs)


def all_routes(app) -> list[tuple[str, set[str] | None, object]]:
    """``(path, methods, route)`` of every route the app serves, routers included (FastAPI >= 0.16x
    keeps included routers lazily, so ``app.routes`` alone does not list their routes)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: included routes are flat in app.routes
        return [(r.path, getattr(r, "methods", None), r) for r in app.routes]
    return [(rc.path, rc.methods, rc.original_route) for rc in iter_route_contexts(app.routes)]


def concrete(path: str, value: str = "run-x") -> str:
    """``path`` with every ``{param}`` filled in."""
    import re

    return re.sub(r"\{[^}]+\}", value, path)
