"""The metrics service's web pages (dashboard, runs page), their static assets and the CSV
downloads the pages link to, through httpx's ASGI transport (no browser, no network)."""

from __future__ import annotations

import csv
import fnmatch
import io
import re
import tomllib
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from hemafed_metrics.app import create_app
from hemafed_metrics.routes.pages import STATIC_DIR
from hemafed_metrics.settings import MetricsSettings
from hemafed_metrics.store import InMemoryStore

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
#: XML namespace identifiers are URIs, never fetched: the only absolute URLs allowed in assets
NAMESPACES = {"http://www.w3.org/2000/svg"}
CLASSES = ["basophil", "eosinophil", "lymphocyte"]
HOSPITAL_DATA = {
    "hospital-2": {"classes": {"basophil": 7, "lymphocyte": 3}, "num_train": 9, "num_val": 1, "skipped_files": 2},
    "hospital-1": {"classes": {"basophil": 4, "eosinophil": 5, "lymphocyte": 6}, "num_train": 13, "num_val": 2,
                   "skipped_files": 0},
}
TEST_RESULTS = {
    "accuracy": 0.75,
    "loss": 0.61,
    "num_examples": 12,
    "macro_f1": 0.7,
    "per_class": {
        "basophil": {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "specificity": 1.0, "support": 4},
        "eosinophil": {"precision": 0.6, "recall": 0.75, "f1": 0.6667, "specificity": 0.75, "support": 4},
        "lymphocyte": {"precision": 0.75, "recall": 1.0, "f1": 0.8571, "specificity": 0.875, "support": 4, "auc": 0.9},
    },
    "classes": CLASSES,
    "confusion_matrix": [[2, 2, 0], [0, 3, 1], [0, 0, 4]],
}
RUN = {
    "id": "run-a",
    "rounds_total": 3,
    "clients": 2,
    "split": "iid",
    "model": "cnn",
    "dataset": "pbc-128",
    "strategy": "fedavg",
    "config": {"image_size": 32, "local_epochs": 2, "batch_size": 16, "learning_rate": 0.001, "optimizer": "adam",
               "seed": 7, "classes": CLASSES, "hospital_data": HOSPITAL_DATA},
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(MetricsSettings(db_path=Path("/nonexistent/never-opened.db")), store=InMemoryStore(clock=clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metrics") as c:
        yield c


class _Refs(HTMLParser):
    """Every src/href of a page, and the ids of its elements."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.ids: set[str] = set()
        self.links: dict[str, str] = {}
        self._a: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key):
                self.refs.append(a[key] or "")
        if a.get("id"):
            self.ids.add(a["id"] or "")
        self._a = a.get("href") if tag == "a" else None

    def handle_data(self, data: str) -> None:
        if self._a is not None and data.strip():
            self.links[data.strip()] = self._a
            self._a = None


def _parse(html: str) -> _Refs:
    p = _Refs()
    p.feed(html)
    return p


# --------------------------------------------------------------------------- pages


@pytest.mark.parametrize("path", ["/", "/?run=run-a", "/?run=no-such-run", "/runs"])
async def test_pages_are_html(client: httpx.AsyncClient, path: str) -> None:
    resp = await client.get(path)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert resp.headers["cache-control"] == "no-cache"
    assert resp.text.lstrip().lower().startswith("<!doctype html>")
    page = _parse(resp.text)
    # the header links the three pages, the prediction page included
    assert page.links["Dashboard"] == "/"
    assert page.links["Runs"] == "/runs"
    assert page.links["Predict"] == "/predict"
    assert "live" in page.ids


async def test_dashboard_has_the_test_hooks(client: httpx.AsyncClient) -> None:
    page = _parse((await client.get("/")).text)
    charts = {"chart-accuracy", "chart-loss", "chart-timeline", "chart-cpu", "chart-ram", "chart-gpu",
              "chart-classes", "chart-privacy", "chart-confusion"}
    tables = {"table-rounds", "table-resources", "table-hospitals", "table-per-class"}
    downloads = {"dl-rounds", "dl-resources", "dl-hospitals", "dl-per-class", "dl-confusion"}
    assert charts | tables | downloads <= page.ids
    html = (await client.get("/")).text
    for chart in charts:
        assert re.search(rf'id="{chart}"[^>]*data-points="0"', html), chart


async def test_runs_page_has_its_table_and_downloads(client: httpx.AsyncClient) -> None:
    page = _parse((await client.get("/runs")).text)
    assert {"table-runs", "dl-runs", "runs-count"} <= page.ids
    js = (await client.get("/static/runs.js")).text
    assert "'/api/runs.csv'" in js and "'/api/runs'" in js


@pytest.mark.parametrize("path", ["/", "/runs"])
async def test_pages_reference_only_local_assets_that_exist(client: httpx.AsyncClient, path: str) -> None:
    page = _parse((await client.get(path)).text)
    assert page.refs
    for ref in page.refs:
        assert ref.startswith("/") and not ref.startswith("//"), f"{path} references {ref!r}"
        if ref.startswith("/static/"):
            resp = await client.get(ref)
            assert resp.status_code == 200, ref
            assert resp.content, ref


def test_no_asset_points_at_another_host() -> None:
    """Hospitals are often offline: no script, style, font or image may come from a CDN."""
    files = [p for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert {"dashboard.html", "runs.html", "style.css", "common.js", "charts.js", "dashboard.js", "runs.js",
            "favicon.svg"} <= {p.name for p in files}
    for f in files:
        text = f.read_text(encoding="utf-8")
        urls = set(re.findall(r"""https?://[^\s'"<>)]+""", text, flags=re.IGNORECASE)) - NAMESPACES
        assert not urls, f"{f.name} points at other hosts: {sorted(urls)}"
        assert not re.search(r"""(src|href)\s*=\s*["']//""", text), f"{f.name} has a protocol-relative URL"
        assert "@import" not in text and "@font-face" not in text, f.name
        for u in re.findall(r"url\(\s*['\"]?([^)'\"]+)", text):
            assert u.startswith("/static/") or u.startswith("data:"), f"{f.name}: url({u})"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("style.css", "text/css"),
        ("common.js", "javascript"),
        ("charts.js", "javascript"),
        ("dashboard.js", "javascript"),
        ("runs.js", "javascript"),
        ("favicon.svg", "image/svg+xml"),
        ("dashboard.html", "text/html"),
    ],
)
async def test_static_files_with_their_content_types(client: httpx.AsyncClient, name: str, content_type: str) -> None:
    resp = await client.get(f"/static/{name}")
    assert resp.status_code == 200
    assert content_type in resp.headers["content-type"]
    assert resp.content == (STATIC_DIR / name).read_bytes()
    assert "etag" in resp.headers and "last-modified" in resp.headers


@pytest.mark.parametrize("path", ["/static/nope.js", "/static/", "/static/../app.py", "/static/%2e%2e/app.py",
                                  "/static/..%2fsettings.py"])
async def test_unknown_static_paths_are_404(client: httpx.AsyncClient, path: str) -> None:
    resp = await client.get(path)
    assert resp.status_code == 404
    assert "MetricsSettings" not in resp.text and "create_app" not in resp.text


async def test_pages_are_not_in_the_api_schema(client: httpx.AsyncClient) -> None:
    paths = set((await client.get("/openapi.json")).json()["paths"])
    assert not {"/", "/runs"} & paths


async def test_every_download_the_dashboard_links_to_exists(client: httpx.AsyncClient) -> None:
    """The dashboard builds its CSV/JSON links as base + '/<name>': each is a route of the API."""
    js = (await client.get("/static/dashboard.js")).text
    names = set(re.findall(r"base \+ '(/[a-z_.]+)'", js))
    assert {"/rounds.csv", "/resources.csv", "/hospitals.csv", "/per_class.csv", "/confusion.csv", "/rounds",
            "/resources"} <= names
    paths = set((await client.get("/openapi.json")).json()["paths"])
    for n in names:
        assert f"/api/runs/{{run_id}}{n}" in paths, n


def test_static_files_ship_in_the_package() -> None:
    """The image installs the package (not editable): every static file must be package data."""
    cfg = tomllib.loads((ROOT / "services" / "metrics" / "pyproject.toml").read_text())
    patterns = cfg["tool"]["setuptools"]["package-data"]["hemafed_metrics"]
    pkg = STATIC_DIR.parent
    for f in STATIC_DIR.rglob("*"):
        if f.is_file() and "__pycache__" not in f.parts:
            rel = f.relative_to(pkg).as_posix()
            assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel


# --------------------------------------------------------------------------- CSV downloads


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def _assert_csv(resp: httpx.Response, filename: str) -> list[list[str]]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "text/csv; charset=utf-8"
    assert resp.headers["content-disposition"] == f'attachment; filename="{filename}"'
    return _rows(resp.text)


async def test_runs_csv(client: httpx.AsyncClient, clock: FakeClock) -> None:
    rows = _assert_csv(await client.get("/api/runs.csv"), "runs.csv")
    assert rows == [["id", "status", "dataset", "split", "model", "strategy", "clients", "rounds_total",
                     "rounds_completed", "image_size", "local_epochs", "batch_size", "learning_rate", "optimizer",
                     "seed", "best_round", "test_accuracy", "macro_f1", "started_at", "finished_at", "message"]]
    assert (await client.post("/api/runs", json=RUN)).status_code == 201
    clock.now = 1010.0
    assert (await client.post("/api/runs", json={**RUN, "id": "run-b", "config": {}})).status_code == 201
    clock.now = 1100.0
    upd = {"status": "finished", "test_accuracy": 0.75, "test_results": TEST_RESULTS, "best_round": 2,
           "message": "done, all good"}
    assert (await client.patch("/api/runs/run-a", json=upd)).status_code == 200
    rows = _assert_csv(await client.get("/api/runs.csv"), "runs.csv")
    header, *body = rows
    got = [dict(zip(header, r)) for r in body]
    assert [g["id"] for g in got] == ["run-b", "run-a"]  # newest first, like /api/runs
    assert got[1] == {
        "id": "run-a", "status": "finished", "dataset": "pbc-128", "split": "iid", "model": "cnn",
        "strategy": "fedavg", "clients": "2", "rounds_total": "3", "rounds_completed": "0", "image_size": "32",
        "local_epochs": "2", "batch_size": "16", "learning_rate": "0.001", "optimizer": "adam", "seed": "7",
        "best_round": "2", "test_accuracy": "0.75", "macro_f1": "0.7", "started_at": "1000.0",
        "finished_at": "1100.0", "message": "done, all good",
    }
    # a run without config or results: empty cells, never "None"
    assert got[0]["status"] == "running" and got[0]["image_size"] == "" and got[0]["macro_f1"] == ""
    assert "None" not in (await client.get("/api/runs.csv")).text


async def test_hospitals_csv(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/runs", json=RUN)).status_code == 201
    rows = _assert_csv(await client.get("/api/runs/run-a/hospitals.csv"), "run-a-hospitals.csv")
    assert rows == [
        ["hospital_id", "num_train", "num_val", "skipped_files", "class", "count"],
        ["hospital-1", "13", "2", "0", "basophil", "4"],
        ["hospital-1", "13", "2", "0", "eosinophil", "5"],
        ["hospital-1", "13", "2", "0", "lymphocyte", "6"],
        ["hospital-2", "9", "1", "2", "basophil", "7"],
        ["hospital-2", "9", "1", "2", "lymphocyte", "3"],
    ]
    # counts only: no file names or pixels ever reach this table
    assert ".jpg" not in (await client.get("/api/runs/run-a/hospitals.csv")).text


async def test_test_result_csvs_before_and_after_the_run_finished(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/runs", json=RUN)).status_code == 201
    assert _assert_csv(await client.get("/api/runs/run-a/per_class.csv"), "run-a-per-class.csv") == [["class"]]
    assert _assert_csv(await client.get("/api/runs/run-a/confusion.csv"), "run-a-confusion.csv") == [
        ["true \\ predicted"]]
    upd = {"status": "finished", "test_accuracy": 0.75, "test_results": TEST_RESULTS, "best_round": 2}
    assert (await client.patch("/api/runs/run-a", json=upd)).status_code == 200

    rows = _assert_csv(await client.get("/api/runs/run-a/per_class.csv"), "run-a-per-class.csv")
    # every metric any class has becomes a column (AUC is present for one class only)
    assert rows == [
        ["class", "precision", "recall", "f1", "specificity", "support", "auc"],
        ["basophil", "1.0", "0.5", "0.6667", "1.0", "4", ""],
        ["eosinophil", "0.6", "0.75", "0.6667", "0.75", "4", ""],
        ["lymphocyte", "0.75", "1.0", "0.8571", "0.875", "4", "0.9"],
    ]
    rows = _assert_csv(await client.get("/api/runs/run-a/confusion.csv"), "run-a-confusion.csv")
    assert rows == [
        ["true \\ predicted", "basophil", "eosinophil", "lymphocyte"],
        ["basophil", "2", "2", "0"],
        ["eosinophil", "0", "3", "1"],
        ["lymphocyte", "0", "0", "4"],
    ]


@pytest.mark.parametrize("name", ["hospitals.csv", "per_class.csv", "confusion.csv", "rounds.csv", "resources.csv"])
async def test_csv_of_an_unknown_run_is_404(client: httpx.AsyncClient, name: str) -> None:
    resp = await client.get(f"/api/runs/nope/{name}")
    assert resp.status_code == 404
    assert resp.json() == {"detail": "run 'nope' not found"}
