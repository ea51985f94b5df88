"""The metrics service's HTTP API, through httpx's ASGI transport (both stores)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hemafed_metrics.app import create_app
from hemafed_metrics.settings import MetricsSettings
from hemafed_metrics.store import InMemoryStore, MetricsStore, SQLiteStore

pytestmark = pytest.mark.anyio

MAX_BODY = 4096
T0 = 1000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


RUN = {
    "id": "run-1",
    "rounds_total": 3,
    "clients": 2,
    "split": "iid",
    "model": "cnn",
    "dataset": "bccd",
    "strategy": "fedavg",
    "config": {"lr": 0.01},
}


def round_body(n: int, acc: float = 0.5) -> dict:
    return {
        "round": n,
        "global": {"val_accuracy_median": acc, "val_accuracy_mean": acc - 0.05, "val_loss": 1.0 - acc},
        "hospitals": {
            "hosp-a": {
                "val_accuracy": acc,
                "train_loss": 0.4,
                "num_examples": 100,
                "fit_seconds": 2.0,
                "update_bytes": 5000,
                "status": "ok",
            },
            "hosp-b": {"status": "timeout", "message": "no answer in 60 s"},
        },
        "duration_seconds": 3.5,
        "report": {"dp_epsilon": 0.1 * n, "outliers": {"hosp-a": {"norm": 1.5, "flagged": False}}},
    }


def hospital(**kw: object) -> dict:
    base = {
        "status": "ok",
        "val_accuracy": None,
        "val_loss": None,
        "train_loss": None,
        "train_accuracy": None,
        "num_examples": 0,
        "fit_seconds": None,
        "update_bytes": 0,
        "request_bytes": 0,
        "message": "",
    }
    return {**base, **kw}


def sample(service: str, t: float, **kw: object) -> dict:
    return {
        "service": service,
        "t": t,
        "cpu_percent": 12.5,
        "rss_bytes": 2048,
        "gpu_util": None,
        "gpu_mem_bytes": None,
        **kw,
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[MetricsStore]:
    s = (
        InMemoryStore(clock=clock)
        if request.param == "memory"
        else SQLiteStore(tmp_path / "m.db", clock=clock)
    )
    yield s
    s.close()


@pytest.fixture
async def client(store: MetricsStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        MetricsSettings(db_path=Path("/nonexistent/never-opened.db"), max_body_bytes=MAX_BODY), store=store
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metrics") as c:
        yield c


async def create_run(client: httpx.AsyncClient, **kw: object) -> dict:
    resp = await client.post("/api/runs", json={**RUN, **kw})
    assert resp.status_code == 201, resp.text
    return resp.json()


# --------------------------------------------------------------------------- health


async def test_health(client: httpx.AsyncClient) -> None:
    resp = await client.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "service": "metrics", "version": "0.1.0"}


async def test_root_is_the_dashboard_and_static_serves_files_only(client: httpx.AsyncClient) -> None:
    # the pages themselves are tested in test_metrics_pages.py
    root = await client.get("/")
    assert root.status_code == 200 and root.headers["content-type"].startswith("text/html")
    assert (await client.get("/static/app.js")).status_code == 404


# --------------------------------------------------------------------------- runs


async def test_create_get_list_run(client: httpx.AsyncClient, clock: FakeClock) -> None:
    expected = {
        **RUN,
        "status": "running",
        "rounds_completed": 0,
        "test_accuracy": None,
        "test_results": None,
        "best_round": None,
        "message": "",
        "started_at": T0,
        "finished_at": None,
    }
    assert await create_run(client) == expected
    resp = await client.get("/api/runs/run-1")
    assert (resp.status_code, resp.json()) == (200, expected)

    clock.now = T0 + 10
    await create_run(client, id="run-2", clients=5)
    resp = await client.get("/api/runs")
    assert resp.status_code == 200
    runs = resp.json()
    assert [r["id"] for r in runs] == ["run-2", "run-1"]
    assert runs[0] == {**expected, "id": "run-2", "clients": 5, "started_at": T0 + 10}


async def test_duplicate_run_409(client: httpx.AsyncClient) -> None:
    await create_run(client)
    resp = await client.post("/api/runs", json=RUN)
    assert resp.status_code == 409
    assert resp.json() == {"detail": "run 'run-1' already exists"}


@pytest.mark.parametrize(
    "body",
    [
        {k: v for k, v in RUN.items() if k != "rounds_total"},
        {**RUN, "id": "bad id/with slash"},
        {**RUN, "id": ""},
        {**RUN, "clients": -1},
        {**RUN, "config": "not a dict"},
    ],
)
async def test_create_run_422(client: httpx.AsyncClient, body: dict) -> None:
    resp = await client.post("/api/runs", json=body)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"][0] == "body"
    assert (await client.get("/api/runs")).json() == []


async def test_invalid_json_422(client: httpx.AsyncClient) -> None:
    resp = await client.post("/api/runs", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422


async def test_unknown_run_404(client: httpx.AsyncClient) -> None:
    detail = {"detail": "run 'ghost' not found"}
    for method, path, body in [
        ("GET", "/api/runs/ghost", None),
        ("PATCH", "/api/runs/ghost", {"message": "x"}),
        ("POST", "/api/runs/ghost/rounds", round_body(1)),
        ("GET", "/api/runs/ghost/rounds", None),
        ("GET", "/api/runs/ghost/rounds.csv", None),
        ("GET", "/api/runs/ghost/resources", None),
        ("GET", "/api/runs/ghost/resources.csv", None),
    ]:
        resp = await client.request(method, path, json=body)
        assert (resp.status_code, resp.json()) == (404, detail), (method, path)


async def test_patch_run(client: httpx.AsyncClient, clock: FakeClock) -> None:
    await create_run(client)
    clock.now = T0 + 60
    resp = await client.patch(
        "/api/runs/run-1",
        json={
            "status": "finished",
            "test_accuracy": 0.93,
            "test_results": {"macro_f1": 0.9},
            "best_round": 2,
        },
    )
    assert resp.status_code == 200
    assert resp.json() == {
        **RUN,
        "status": "finished",
        "rounds_completed": 0,
        "test_accuracy": 0.93,
        "test_results": {"macro_f1": 0.9},
        "best_round": 2,
        "message": "",
        "started_at": T0,
        "finished_at": T0 + 60,
    }
    resp = await client.patch("/api/runs/run-1", json={"message": "done"})  # partial: rest unchanged
    assert resp.json()["message"] == "done"
    assert resp.json()["status"] == "finished"
    assert resp.json()["test_accuracy"] == 0.93

    resp = await client.patch("/api/runs/run-1", json={"status": "exploded"})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "status"]


# --------------------------------------------------------------------------- rounds


async def test_rounds_post_list_idempotent(client: httpx.AsyncClient, clock: FakeClock) -> None:
    await create_run(client)
    clock.now = T0 + 5
    resp = await client.post("/api/runs/run-1/rounds", json=round_body(1, 0.4))
    assert resp.status_code == 201
    first = {
        "round": 1,
        "global": {"val_accuracy_median": 0.4, "val_accuracy_mean": 0.4 - 0.05, "val_loss": 0.6},
        "hospitals": {
            "hosp-a": hospital(
                val_accuracy=0.4, train_loss=0.4, num_examples=100, fit_seconds=2.0, update_bytes=5000
            ),
            "hosp-b": hospital(status="timeout", message="no answer in 60 s"),
        },
        "duration_seconds": 3.5,
        "report": {"dp_epsilon": 0.1, "outliers": {"hosp-a": {"norm": 1.5, "flagged": False}}},
        "run_id": "run-1",
        "recorded_at": T0 + 5,
    }
    assert resp.json() == first

    clock.now = T0 + 9
    await client.post("/api/runs/run-1/rounds", json=round_body(2, 0.5))
    clock.now = T0 + 12
    resp = await client.post("/api/runs/run-1/rounds", json=round_body(2, 0.7))  # re-post replaces
    assert resp.status_code == 201

    resp = await client.get("/api/runs/run-1/rounds")
    assert resp.status_code == 200
    rounds = resp.json()
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0] == first
    assert rounds[1]["global"]["val_accuracy_median"] == 0.7
    assert rounds[1]["recorded_at"] == T0 + 12
    assert (await client.get("/api/runs/run-1")).json()["rounds_completed"] == 2
    assert (await client.get("/api/runs")).json()[0]["rounds_completed"] == 2


@pytest.mark.parametrize(
    "body",
    [
        {**round_body(1), "round": 0},
        {k: v for k, v in round_body(1).items() if k != "global"},
        {**round_body(1), "hospitals": {"hosp-a": {"num_examples": "many"}}},
    ],
)
async def test_round_422(client: httpx.AsyncClient, body: dict) -> None:
    await create_run(client)
    resp = await client.post("/api/runs/run-1/rounds", json=body)
    assert resp.status_code == 422
    assert (await client.get("/api/runs/run-1/rounds")).json() == []


async def test_rounds_csv(client: httpx.AsyncClient) -> None:
    await create_run(client)
    for n in (1, 2, 2):  # round 2 twice: still one set of rows
        await client.post("/api/runs/run-1/rounds", json=round_body(n))
    await client.post("/api/runs/run-1/rounds", json={"round": 3, "global": {}, "hospitals": {}})
    resp = await client.get("/api/runs/run-1/rounds.csv")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    assert resp.headers["content-disposition"] == 'attachment; filename="run-1-rounds.csv"'
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0] == [
        "run_id",
        "round",
        "global_val_accuracy_median",
        "global_val_accuracy_mean",
        "global_val_loss",
        "duration_seconds",
        "recorded_at",
        "hospital_id",
        "status",
        "val_accuracy",
        "val_loss",
        "train_loss",
        "train_accuracy",
        "num_examples",
        "fit_seconds",
        "update_bytes",
        "request_bytes",
        "message",
    ]
    body = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert len(body) == 5  # 2 rounds x 2 hospitals + round 3 without hospitals
    assert [(r["round"], r["hospital_id"]) for r in body] == [
        ("1", "hosp-a"),
        ("1", "hosp-b"),
        ("2", "hosp-a"),
        ("2", "hosp-b"),
        ("3", ""),
    ]
    assert body[0]["global_val_accuracy_median"] == "0.5"
    assert body[0]["num_examples"] == "100"
    assert body[1]["status"] == "timeout"
    assert body[1]["val_accuracy"] == ""
    assert body[1]["message"] == "no answer in 60 s"


# --------------------------------------------------------------------------- resources


async def test_post_and_list_resources(client: httpx.AsyncClient) -> None:
    samples = [
        sample("agg", 10.0),
        sample("hosp-a", 11.0, gpu_util=40.0, gpu_mem_bytes=1 << 30),
        sample("agg", 12.0),
    ]
    resp = await client.post("/api/resources", json={"samples": samples})
    assert (resp.status_code, resp.json()) == (202, {"accepted": 3})

    resp = await client.get("/api/resources")
    assert (resp.status_code, resp.json()) == (200, samples)
    assert (await client.get("/api/resources", params={"service": "agg"})).json() == [samples[0], samples[2]]
    assert (await client.get("/api/resources", params={"since": 11.0})).json() == samples[1:]
    assert (await client.get("/api/resources", params={"limit": 1})).json() == [samples[2]]
    assert (await client.get("/api/resources", params={"limit": 0})).status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"samples": [sample("agg", 1.0, cpu_percent=-1)]},
        {"samples": [sample("", 1.0)]},
        {"samples": [{"service": "agg"}]},
        {"sample": []},
    ],
)
async def test_post_resources_422(client: httpx.AsyncClient, body: dict) -> None:
    resp = await client.post("/api/resources", json=body)
    assert resp.status_code == 422
    assert (await client.get("/api/resources")).json() == []


async def test_run_resources_window_and_csv(client: httpx.AsyncClient, clock: FakeClock) -> None:
    await create_run(client)  # started at T0
    ts = [T0 - 6, T0 - 5, T0 + 1, T0 + 30, T0 + 66]
    await client.post(
        "/api/resources",
        json={
            "samples": [sample("hosp-a", t) for t in ts]
            + [sample("agg", T0 + 2, gpu_util=3.5, gpu_mem_bytes=10)]
        },
    )
    clock.now = T0 + 60
    await client.patch("/api/runs/run-1", json={"status": "finished"})
    clock.now = T0 + 1000

    resp = await client.get("/api/runs/run-1/resources")
    assert resp.status_code == 200
    assert [(s["service"], s["t"]) for s in resp.json()] == [
        ("hosp-a", T0 - 5),
        ("hosp-a", T0 + 1),
        ("agg", T0 + 2),
        ("hosp-a", T0 + 30),
    ]
    assert resp.json()[2] == sample("agg", T0 + 2, gpu_util=3.5, gpu_mem_bytes=10)
    resp = await client.get("/api/runs/run-1/resources", params={"service": "agg"})
    assert [s["t"] for s in resp.json()] == [T0 + 2]

    resp = await client.get("/api/runs/run-1/resources.csv")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0] == ["service", "t", "cpu_percent", "rss_bytes", "gpu_util", "gpu_mem_bytes"]
    assert len(rows) == 1 + 4
    assert rows[3] == ["agg", str(T0 + 2), "12.5", "2048", "3.5", "10"]
    assert rows[1] == ["hosp-a", str(T0 - 5), "12.5", "2048", "", ""]


# --------------------------------------------------------------------------- body limit


async def test_body_limit_content_length_413(client: httpx.AsyncClient) -> None:
    big = {"samples": [sample("agg", float(i)) for i in range(100)]}
    assert len(json.dumps(big)) > MAX_BODY
    resp = await client.post("/api/resources", json=big)
    assert resp.status_code == 413
    assert resp.json() == {"detail": f"request body exceeds the limit of {MAX_BODY} bytes"}
    assert (await client.get("/api/resources")).json() == []


async def test_body_limit_streamed_413(client: httpx.AsyncClient) -> None:
    payload = json.dumps({"samples": [sample("agg", float(i)) for i in range(100)]}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 512):
            yield payload[i : i + 512]

    resp = await client.post("/api/resources", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in resp.request.headers
    assert resp.status_code == 413
    assert resp.json() == {"detail": f"request body exceeds the limit of {MAX_BODY} bytes"}
    assert (await client.get("/api/resources")).json() == []


async def test_body_under_limit_streamed_ok(client: httpx.AsyncClient) -> None:
    payload = json.dumps({"samples": [sample("agg", 1.0)]}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 16):
            yield payload[i : i + 16]

    resp = await client.post("/api/resources", content=chunks(), headers={"content-type": "application/json"})
    assert (resp.status_code, resp.json()) == (202, {"accepted": 1})


# --------------------------------------------------------------------------- /metrics


async def test_prometheus_metrics(client: httpx.AsyncClient) -> None:
    await create_run(client)
    await create_run(client, id="run-2")
    await client.post("/api/runs/run-1/rounds", json=round_body(1, 0.4))
    await client.post("/api/runs/run-1/rounds", json=round_body(2, 0.75))
    await client.patch("/api/runs/run-2", json={"status": "failed", "test_accuracy": 0.25})
    await client.post(
        "/api/resources",
        json={
            "samples": [
                sample("agg", 1.0, cpu_percent=5.0),
                sample("agg", 2.0, cpu_percent=7.0, rss_bytes=999),
                sample("hosp-a", 1.5, gpu_util=80.0, gpu_mem_bytes=4096),
            ]
        },
    )

    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(resp.text)
        for s in fam.samples
    }

    def v(name: str, **labels: str) -> float | None:
        return values.get((name, tuple(sorted(labels.items()))))

    assert v("hemafed_run_rounds_completed", run_id="run-1") == 2
    assert v("hemafed_run_rounds_completed", run_id="run-2") == 0
    assert v("hemafed_run_rounds_total", run_id="run-1") == 3
    assert v("hemafed_run_status", run_id="run-1", status="running") == 1
    assert v("hemafed_run_status", run_id="run-1", status="finished") == 0
    assert v("hemafed_run_status", run_id="run-2", status="failed") == 1
    assert v("hemafed_run_global_val_accuracy", run_id="run-1", stat="median") == 0.75
    assert v("hemafed_run_global_val_accuracy", run_id="run-1", stat="mean") == pytest.approx(0.7)
    assert v("hemafed_run_global_val_loss", run_id="run-1") == 0.25
    assert v("hemafed_run_global_val_accuracy", run_id="run-2", stat="median") is None
    assert v("hemafed_run_test_accuracy", run_id="run-2") == 0.25
    assert v("hemafed_run_test_accuracy", run_id="run-1") is None
    assert v("hemafed_service_cpu_percent", service="agg") == 7.0
    assert v("hemafed_service_rss_bytes", service="agg") == 999
    assert v("hemafed_service_last_sample_timestamp_seconds", service="agg") == 2.0
    assert v("hemafed_service_gpu_util_percent", service="hosp-a") == 80.0
    assert v("hemafed_service_gpu_memory_bytes", service="hosp-a") == 4096
    assert v("hemafed_service_gpu_util_percent", service="agg") is None


# --------------------------------------------------------------------------- lifespan


async def test_lifespan_opens_sqlite_and_samples_itself(tmp_path: Path) -> None:
    db = tmp_path / "data" / "metrics.db"
    settings = MetricsSettings(db_path=db, service_name="metrics-test", sample_interval=0.02)
    app = create_app(settings)
    assert not db.exists()  # nothing opened before startup
    async with app.router.lifespan_context(app):
        store = app.state.store
        assert isinstance(store, SQLiteStore)
        for _ in range(200):
            if len(store.list_resources(service="metrics-test")) >= 2:
                break
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as c:
            own = (await c.get("/api/resources", params={"service": "metrics-test"})).json()
            assert (await c.get("/health")).json()["service"] == "metrics-test"
        assert len(own) >= 2
        assert all(s["rss_bytes"] > 0 and s["cpu_percent"] >= 0 for s in own)
    assert app.state.store is None
    with SQLiteStore(db) as reopened:
        assert len(reopened.list_resources(service="metrics-test")) >= 2


async def test_lifespan_keeps_injected_store_open(clock: FakeClock) -> None:
    store = InMemoryStore(clock=clock)
    app = create_app(MetricsSettings(sample_interval=0), store=store)
    async with app.router.lifespan_context(app):
        assert app.state.store is store
    assert app.state.store is store
    assert store.list_resources() == []  # sampling disabled
