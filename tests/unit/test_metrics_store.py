"""The MetricsStore contract, run against InMemoryStore and SQLiteStore."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hemafed.schemas import (
    GlobalRoundMetrics,
    HospitalRoundMetrics,
    ResourceSampleCreate,
    RoundCreate,
    RunCreate,
    RunStatus,
    RunUpdate,
)
from hemafed_metrics.store import InMemoryStore, MetricsStore, RunExists, RunNotFound, SQLiteStore


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_create(run_id: str = "r1", **kw: object) -> RunCreate:
    data: dict = {
        "id": run_id,
        "rounds_total": 5,
        "clients": 3,
        "split": "dirichlet-0.5",
        "model": "cnn",
        "dataset": "bccd",
        "strategy": "fedavg",
        "config": {"lr": 0.001, "nested": {"a": [1, 2]}},
    }
    return RunCreate(**{**data, **kw})


def round_create(n: int, acc: float = 0.5, hospitals: tuple[str, ...] = ("h1", "h2")) -> RoundCreate:
    return RoundCreate(
        round=n,
        global_=GlobalRoundMetrics(val_accuracy_median=acc, val_accuracy_mean=acc - 0.01, val_loss=1.0 - acc),
        hospitals={
            h: HospitalRoundMetrics(
                val_accuracy=acc,
                train_loss=0.3,
                num_examples=10 + i,
                fit_seconds=1.5,
                update_bytes=1234,
                status="ok",
            )
            for i, h in enumerate(hospitals)
        },
        duration_seconds=2.5,
    )


def sample(service: str, t: float, cpu: float = 10.0, gpu: float | None = None) -> ResourceSampleCreate:
    return ResourceSampleCreate(
        service=service,
        t=t,
        cpu_percent=cpu,
        rss_bytes=1000,
        gpu_util=gpu,
        gpu_mem_bytes=None if gpu is None else 7,
    )


class StoreContract:
    """Tests every store must pass; subclasses provide the ``store`` fixture."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    # ---------------------------------------------------------------- runs

    def test_create_and_get_run(self, store: MetricsStore, clock: FakeClock) -> None:
        created = store.create_run(run_create())
        assert created == store.get_run("r1")
        assert created.model_dump() == {
            "id": "r1",
            "rounds_total": 5,
            "clients": 3,
            "split": "dirichlet-0.5",
            "model": "cnn",
            "dataset": "bccd",
            "strategy": "fedavg",
            "config": {"lr": 0.001, "nested": {"a": [1, 2]}},
            "status": RunStatus.running,
            "rounds_completed": 0,
            "test_accuracy": None,
            "test_results": None,
            "best_round": None,
            "message": "",
            "started_at": 1000.0,
            "finished_at": None,
        }

    def test_duplicate_run_rejected(self, store: MetricsStore) -> None:
        store.create_run(run_create())
        with pytest.raises(RunExists, match="'r1'"):
            store.create_run(run_create(rounds_total=9))
        assert store.get_run("r1").rounds_total == 5
        assert len(store.list_runs()) == 1

    def test_unknown_run(self, store: MetricsStore) -> None:
        for call in (
            lambda: store.get_run("nope"),
            lambda: store.update_run("nope", RunUpdate(message="x")),
            lambda: store.upsert_round("nope", round_create(1)),
            lambda: store.list_rounds("nope"),
            lambda: store.last_round("nope"),
            lambda: store.run_resources("nope"),
        ):
            with pytest.raises(RunNotFound, match="'nope'") as info:
                call()
            assert info.value.run_id == "nope"

    def test_update_run_and_finished_at(self, store: MetricsStore, clock: FakeClock) -> None:
        store.create_run(run_create())
        clock.now = 1010.0
        run = store.update_run("r1", RunUpdate(message="round 1 done"))
        assert (run.status, run.message, run.finished_at) == (RunStatus.running, "round 1 done", None)

        clock.now = 1020.0
        run = store.update_run(
            "r1",
            RunUpdate(status=RunStatus.finished, test_accuracy=0.91, test_results={"f1": 0.9}, best_round=4),
        )
        assert run.status == RunStatus.finished
        assert run.finished_at == 1020.0
        assert (run.test_accuracy, run.test_results, run.best_round) == (0.91, {"f1": 0.9}, 4)
        assert run.message == "round 1 done"  # omitted fields unchanged
        assert store.get_run("r1") == run

        clock.now = 1030.0  # repeated final status keeps the first finished_at
        assert store.update_run("r1", RunUpdate(status=RunStatus.failed)).finished_at == 1020.0
        run = store.update_run("r1", RunUpdate(status=RunStatus.running))
        assert run.finished_at is None
        run = store.update_run("r1", RunUpdate(status=RunStatus.failed, message="boom"))
        assert (run.status, run.finished_at, run.message) == (RunStatus.failed, 1030.0, "boom")
        assert run.test_accuracy == 0.91

    def test_list_runs_newest_first(self, store: MetricsStore, clock: FakeClock) -> None:
        assert store.list_runs() == []
        for i, run_id in enumerate(["a", "b", "c"]):
            clock.now = 1000.0 + i
            store.create_run(run_create(run_id))
        clock.now = 2000.0
        store.create_run(run_create("d"))
        store.create_run(run_create("e"))  # same started_at: later insert first
        assert [r.id for r in store.list_runs()] == ["e", "d", "c", "b", "a"]

    # ---------------------------------------------------------------- rounds

    def test_upsert_round_idempotent(self, store: MetricsStore, clock: FakeClock) -> None:
        store.create_run(run_create())
        clock.now = 1001.0
        rec = store.upsert_round("r1", round_create(2, acc=0.6))
        assert (rec.run_id, rec.round, rec.recorded_at) == ("r1", 2, 1001.0)
        store.upsert_round("r1", round_create(1, acc=0.4))
        clock.now = 1002.0
        store.upsert_round("r1", round_create(2, acc=0.7, hospitals=("h3",)))  # replaces round 2

        rounds = store.list_rounds("r1")
        assert [r.round for r in rounds] == [1, 2]
        assert rounds[1].global_.val_accuracy_median == 0.7
        assert list(rounds[1].hospitals) == ["h3"]
        assert rounds[1].recorded_at == 1002.0
        assert rounds[0].hospitals["h2"] == HospitalRoundMetrics(
            val_accuracy=0.4, train_loss=0.3, num_examples=11, fit_seconds=1.5, update_bytes=1234
        )
        assert rounds[0].duration_seconds == 2.5
        assert store.get_run("r1").rounds_completed == 2
        assert store.last_round("r1") == rounds[1]

    def test_rounds_are_per_run(self, store: MetricsStore) -> None:
        store.create_run(run_create("a"))
        store.create_run(run_create("b"))
        store.upsert_round("a", round_create(1))
        assert store.list_rounds("b") == []
        assert store.last_round("b") is None
        assert {r.id: r.rounds_completed for r in store.list_runs()} == {"a": 1, "b": 0}

    # ---------------------------------------------------------------- resources

    def test_resources_filters_and_limit(self, store: MetricsStore) -> None:
        assert store.add_resource_samples([sample("agg", t) for t in (3.0, 1.0, 2.0)]) == 3
        assert store.add_resource_samples([sample("h1", 2.5, gpu=50.0)]) == 1
        assert store.add_resource_samples([]) == 0

        assert [(s.service, s.t) for s in store.list_resources()] == [
            ("agg", 1.0),
            ("agg", 2.0),
            ("h1", 2.5),
            ("agg", 3.0),
        ]
        assert [s.t for s in store.list_resources(service="agg")] == [1.0, 2.0, 3.0]
        assert [s.t for s in store.list_resources(since=2.0, until=2.5)] == [2.0, 2.5]  # inclusive
        assert [s.t for s in store.list_resources(limit=2)] == [2.5, 3.0]  # latest two, oldest first
        assert [s.t for s in store.list_resources(service="agg", since=1.5, limit=1)] == [3.0]
        assert store.list_resources(service="none") == []
        h1 = store.list_resources(service="h1")[0]
        assert h1.model_dump() == {
            "service": "h1",
            "t": 2.5,
            "cpu_percent": 10.0,
            "rss_bytes": 1000,
            "gpu_util": 50.0,
            "gpu_mem_bytes": 7,
        }

    def test_latest_resources(self, store: MetricsStore) -> None:
        assert store.latest_resources() == []
        store.add_resource_samples([sample("b", 5.0, cpu=1.0), sample("a", 1.0, cpu=2.0)])
        store.add_resource_samples([sample("b", 4.0, cpu=3.0)])  # older: does not replace
        store.add_resource_samples([sample("a", 2.0, cpu=4.0)])
        assert [(s.service, s.t, s.cpu_percent) for s in store.latest_resources()] == [
            ("a", 2.0, 4.0),
            ("b", 5.0, 1.0),
        ]

    def test_run_resources_window(self, store: MetricsStore, clock: FakeClock) -> None:
        store.create_run(run_create())  # started_at 1000
        store.add_resource_samples(
            [sample("h1", t) for t in (994.0, 995.0, 1000.0, 1050.0, 1105.0, 1106.0)]
            + [sample("agg", 1001.0)]
        )
        clock.now = 1100.0  # running: window ends now + 5
        assert [s.t for s in store.run_resources("r1")] == [995.0, 1000.0, 1001.0, 1050.0, 1105.0]
        store.update_run("r1", RunUpdate(status=RunStatus.finished))  # finished_at 1100
        clock.now = 5000.0
        assert [s.t for s in store.run_resources("r1", service="h1")] == [995.0, 1000.0, 1050.0, 1105.0]
        assert [s.t for s in store.run_resources("r1", limit=1)] == [1105.0]

    # ---------------------------------------------------------------- concurrency / copies

    def test_thread_safe(self, store: MetricsStore) -> None:
        store.create_run(run_create())
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                for i in range(25):
                    store.add_resource_samples([sample(f"s{k}", float(i))])
                    store.upsert_round("r1", round_create(i % 5 + 1))
                    store.get_run("r1")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(store.list_resources()) == 150
        assert store.get_run("r1").rounds_completed == 5
        assert len(store.list_rounds("r1")) == 5

    def test_returns_copies(self, store: MetricsStore) -> None:
        store.create_run(run_create())
        store.get_run("r1").config["lr"] = 99
        store.upsert_round("r1", round_create(1)).hospitals.clear()
        store.list_rounds("r1")[0].hospitals.clear()
        assert store.get_run("r1").config["lr"] == 0.001
        assert len(store.list_rounds("r1")[0].hospitals) == 2


class TestInMemoryStore(StoreContract):
    @pytest.fixture
    def store(self, clock: FakeClock) -> Iterator[MetricsStore]:
        with InMemoryStore(clock=clock) as s:
            yield s


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def db_path(self, tmp_path: Path) -> Path:
        return tmp_path / "sub" / "dir" / "metrics.db"  # parent folders are created

    @pytest.fixture
    def store(self, db_path: Path, clock: FakeClock) -> Iterator[MetricsStore]:
        with SQLiteStore(db_path, clock=clock) as s:
            yield s

    def test_wal_and_schema(self, store: SQLiteStore, db_path: Path) -> None:
        conn = sqlite3.connect(db_path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            conn.close()
        assert {"runs", "rounds", "resources", "resources_latest"} <= tables

    def test_old_database_gains_the_round_report_column(self, tmp_path: Path, clock: FakeClock) -> None:
        path = tmp_path / "old.db"
        conn = sqlite3.connect(path)
        conn.executescript(
            "CREATE TABLE rounds (run_id TEXT NOT NULL, round INTEGER NOT NULL, global TEXT NOT NULL,"
            " hospitals TEXT NOT NULL, duration_seconds REAL, recorded_at REAL NOT NULL,"
            " PRIMARY KEY (run_id, round));"
        )
        conn.close()
        with SQLiteStore(path, clock=clock) as store:
            store.create_run(run_create())
            rnd = round_create(1).model_copy(update={"report": {"dp_epsilon": 1.25}})
            store.upsert_round("r1", rnd)
            assert store.list_rounds("r1")[0].report == {"dp_epsilon": 1.25}

    def test_persists_across_reopen(self, store: SQLiteStore, db_path: Path, clock: FakeClock) -> None:
        store.create_run(run_create())
        store.create_run(run_create("r2"))
        store.upsert_round("r1", round_create(1))
        store.upsert_round("r1", round_create(1, acc=0.8))
        clock.now = 1010.0
        store.update_run("r1", RunUpdate(status=RunStatus.finished, test_results={"per_class": {"a": 1.0}}))
        store.add_resource_samples([sample("agg", 1001.0, gpu=12.5), sample("h1", 1002.0)])
        before = (
            store.list_runs(),
            store.list_rounds("r1"),
            store.list_resources(),
            store.latest_resources(),
        )
        store.close()

        with SQLiteStore(db_path, clock=clock) as again:
            after = (
                again.list_runs(),
                again.list_rounds("r1"),
                again.list_resources(),
                again.latest_resources(),
            )
            assert after == before
            assert again.get_run("r1").rounds_completed == 1
            assert again.get_run("r1").test_results == {"per_class": {"a": 1.0}}
            with pytest.raises(RunExists):
                again.create_run(run_create())
