"""Storage of runs, rounds and resource samples: the :class:`MetricsStore` contract and two stores.

:class:`InMemoryStore` (tests, throw-away) and :class:`SQLiteStore` (stdlib ``sqlite3``, WAL,
one connection behind a lock) behave identically; both are thread-safe, and every method
blocks, so async callers run them in a worker thread (FastAPI does for ``def`` routes).

Errors: :class:`RunNotFound` (unknown run id) and :class:`RunExists` (duplicate id).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hemafed.schemas import (
    ResourceSampleBase,
    ResourceSamplePublic,
    RoundCreate,
    RoundPublic,
    RunCreate,
    RunPublic,
    RunStatus,
    RunUpdate,
)

#: a run's resource samples are those within this many seconds of its start..end
RUN_RESOURCE_MARGIN_S = 5.0
FINAL_STATUSES = frozenset({RunStatus.finished, RunStatus.failed})

Clock = Callable[[], float]


class StoreError(Exception):
    """Base of the store's errors; the message is fit for an API ``detail``."""


class RunNotFound(StoreError, LookupError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found")
        self.run_id = run_id


class RunExists(StoreError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} already exists")
        self.run_id = run_id


def new_run(run: RunCreate, now: float) -> RunPublic:
    """The record of a freshly created run."""
    return RunPublic(**run.model_dump(), status=RunStatus.running, rounds_completed=0, started_at=now)


def apply_update(run: RunPublic, update: RunUpdate, now: float) -> RunPublic:
    """``run`` with ``update`` applied: ``None`` fields leave the run unchanged.

    ``finished_at`` is set when the status becomes finished/failed (kept if it already was
    final) and cleared when it goes back to running.
    """
    changes: dict[str, Any] = update.model_dump(exclude_none=True)
    status = changes.get("status")
    if status is not None:
        if status in FINAL_STATUSES:
            if run.status not in FINAL_STATUSES or run.finished_at is None:
                changes["finished_at"] = now
        else:
            changes["finished_at"] = None
    return run.model_validate({**run.model_dump(), **changes})


class MetricsStore(ABC):
    """What the metrics service needs from storage. Every method is thread-safe."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock

    # runs
    @abstractmethod
    def create_run(self, run: RunCreate) -> RunPublic:
        """Record a new running run started now; :class:`RunExists` on a duplicate id."""

    @abstractmethod
    def update_run(self, run_id: str, update: RunUpdate) -> RunPublic:
        """Apply a partial update (see :func:`apply_update`); :class:`RunNotFound`."""

    @abstractmethod
    def get_run(self, run_id: str) -> RunPublic:
        """One run; :class:`RunNotFound`."""

    @abstractmethod
    def list_runs(self) -> list[RunPublic]:
        """All runs, newest first."""

    # rounds
    @abstractmethod
    def upsert_round(self, run_id: str, rnd: RoundCreate) -> RoundPublic:
        """Record a round, replacing an earlier record of the same round; :class:`RunNotFound`."""

    @abstractmethod
    def list_rounds(self, run_id: str) -> list[RoundPublic]:
        """A run's rounds by round number; :class:`RunNotFound`."""

    def last_round(self, run_id: str) -> RoundPublic | None:
        """The highest-numbered round recorded, if any; :class:`RunNotFound`."""
        rounds = self.list_rounds(run_id)
        return rounds[-1] if rounds else None

    # resources
    @abstractmethod
    def add_resource_samples(self, samples: Iterable[ResourceSampleBase]) -> int:
        """Append samples; returns how many."""

    @abstractmethod
    def list_resources(
        self,
        service: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[ResourceSamplePublic]:
        """Samples with ``since <= t <= until`` (bounds inclusive, ``None`` = open), oldest
        first; with ``limit``, the latest ``limit`` of them (still oldest first)."""

    @abstractmethod
    def latest_resources(self) -> list[ResourceSamplePublic]:
        """The most recent sample of each service, by service name."""

    def run_resources(
        self, run_id: str, service: str | None = None, limit: int | None = None
    ) -> list[ResourceSamplePublic]:
        """Samples within ``[started_at - 5 s, (finished_at or now) + 5 s]``; :class:`RunNotFound`."""
        run = self.get_run(run_id)
        end = run.finished_at if run.finished_at is not None else self.clock()
        return self.list_resources(
            service, run.started_at - RUN_RESOURCE_MARGIN_S, end + RUN_RESOURCE_MARGIN_S, limit
        )

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (the in-memory store has none)."""

    def __enter__(self) -> MetricsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- in memory


class InMemoryStore(MetricsStore):
    """Everything in dicts behind one lock; returned objects are copies."""

    def __init__(self, clock: Clock = time.time) -> None:
        super().__init__(clock)
        self._lock = threading.RLock()
        self._runs: dict[str, RunPublic] = {}
        self._rounds: dict[str, dict[int, RoundPublic]] = {}
        self._samples: list[ResourceSamplePublic] = []
        self._latest: dict[str, ResourceSamplePublic] = {}

    def _run(self, run_id: str) -> RunPublic:
        try:
            run = self._runs[run_id]
        except KeyError:
            raise RunNotFound(run_id) from None
        return run.model_copy(deep=True, update={"rounds_completed": len(self._rounds[run_id])})

    def create_run(self, run: RunCreate) -> RunPublic:
        with self._lock:
            if run.id in self._runs:
                raise RunExists(run.id)
            self._runs[run.id] = new_run(run, self.clock())
            self._rounds[run.id] = {}
            return self._run(run.id)

    def update_run(self, run_id: str, update: RunUpdate) -> RunPublic:
        with self._lock:
            self._runs[run_id] = apply_update(self._run(run_id), update, self.clock())
            return self._run(run_id)

    def get_run(self, run_id: str) -> RunPublic:
        with self._lock:
            return self._run(run_id)

    def list_runs(self) -> list[RunPublic]:
        with self._lock:
            order = list(self._runs)  # insertion order breaks ties in started_at
            runs = [self._run(i) for i in reversed(order)]
        return sorted(runs, key=lambda r: r.started_at, reverse=True)

    def upsert_round(self, run_id: str, rnd: RoundCreate) -> RoundPublic:
        with self._lock:
            if run_id not in self._runs:
                raise RunNotFound(run_id)
            rec = RoundPublic(**rnd.model_dump(by_alias=True), run_id=run_id, recorded_at=self.clock())
            self._rounds[run_id][rnd.round] = rec
            return rec.model_copy(deep=True)

    def list_rounds(self, run_id: str) -> list[RoundPublic]:
        with self._lock:
            if run_id not in self._runs:
                raise RunNotFound(run_id)
            rounds = self._rounds[run_id]
            return [rounds[n].model_copy(deep=True) for n in sorted(rounds)]

    def add_resource_samples(self, samples: Iterable[ResourceSampleBase]) -> int:
        recs = [ResourceSamplePublic(**s.model_dump()) for s in samples]
        with self._lock:
            self._samples.extend(recs)
            for s in recs:
                prev = self._latest.get(s.service)
                if prev is None or s.t >= prev.t:
                    self._latest[s.service] = s
        return len(recs)

    def list_resources(
        self,
        service: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[ResourceSamplePublic]:
        with self._lock:
            hits = [
                s
                for s in self._samples
                if (service is None or s.service == service)
                and (since is None or s.t >= since)
                and (until is None or s.t <= until)
            ]
        hits.sort(key=lambda s: s.t)  # stable: insertion order breaks ties
        if limit is not None:
            hits = hits[-limit:] if limit > 0 else []
        return [s.model_copy() for s in hits]

    def latest_resources(self) -> list[ResourceSamplePublic]:
        with self._lock:
            return [self._latest[k].model_copy() for k in sorted(self._latest)]


# --------------------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    rounds_total INTEGER NOT NULL,
    clients INTEGER NOT NULL,
    split TEXT NOT NULL,
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    strategy TEXT NOT NULL,
    config TEXT NOT NULL,            -- JSON
    status TEXT NOT NULL,
    message TEXT NOT NULL,
    test_accuracy REAL,
    test_results TEXT,               -- JSON or NULL
    best_round INTEGER,
    started_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    round INTEGER NOT NULL,
    global TEXT NOT NULL,            -- JSON GlobalRoundMetrics
    hospitals TEXT NOT NULL,         -- JSON {hospital_id: HospitalRoundMetrics}
    duration_seconds REAL,
    recorded_at REAL NOT NULL,
    report TEXT NOT NULL DEFAULT '{}',  -- JSON: strategy/schedule facts of the round
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS resources (
    id INTEGER PRIMARY KEY,
    service TEXT NOT NULL,
    t REAL NOT NULL,
    cpu_percent REAL NOT NULL,
    rss_bytes INTEGER NOT NULL,
    gpu_util REAL,
    gpu_mem_bytes INTEGER
);
CREATE INDEX IF NOT EXISTS resources_t ON resources (t);
CREATE INDEX IF NOT EXISTS resources_service_t ON resources (service, t);
-- the most recent sample per service, kept on insert so /metrics never scans `resources`
CREATE TABLE IF NOT EXISTS resources_latest (
    service TEXT PRIMARY KEY,
    t REAL NOT NULL,
    cpu_percent REAL NOT NULL,
    rss_bytes INTEGER NOT NULL,
    gpu_util REAL,
    gpu_mem_bytes INTEGER
);
"""

_RUN_COLUMNS = tuple(f for f in RunPublic.model_fields if f != "rounds_completed")
_RUN_JSON = frozenset({"config", "test_results"})
_SAMPLE_COLUMNS = tuple(ResourceSamplePublic.model_fields)
_RUN_SELECT = "SELECT r.*, (SELECT COUNT(*) FROM rounds WHERE run_id = r.id) AS rounds_completed FROM runs r"


class SQLiteStore(MetricsStore):
    """A SQLite file (WAL) with one connection guarded by a lock; the schema is created on open."""

    def __init__(self, path: str | Path, clock: Clock = time.time) -> None:
        super().__init__(clock)
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
        self._conn.row_factory = sqlite3.Row
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)
            # databases created before rounds had a report column (the metrics volume persists)
            cols = {r["name"] for r in self._conn.execute("PRAGMA table_info(rounds)")}
            if "report" not in cols:
                self._conn.execute("ALTER TABLE rounds ADD COLUMN report TEXT NOT NULL DEFAULT '{}'")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # helpers (call with the lock held)
    def _run(self, run_id: str) -> RunPublic:
        row = self._conn.execute(f"{_RUN_SELECT} WHERE r.id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(run_id)
        return _run_from_row(row)

    def _write_run(self, run: RunPublic, insert: bool) -> None:
        values = [json.dumps(v) if k in _RUN_JSON and v is not None else v for k, v in _run_values(run)]
        if insert:
            cols = ", ".join(_RUN_COLUMNS)
            marks = ", ".join("?" * len(_RUN_COLUMNS))
            self._conn.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", values)
        else:
            sets = ", ".join(f"{c} = ?" for c in _RUN_COLUMNS[1:])
            self._conn.execute(f"UPDATE runs SET {sets} WHERE id = ?", [*values[1:], values[0]])

    def _check_run(self, run_id: str) -> None:
        if self._conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise RunNotFound(run_id)

    # runs
    def create_run(self, run: RunCreate) -> RunPublic:
        rec = new_run(run, self.clock())
        with self._lock, self._conn:
            try:
                self._write_run(rec, insert=True)
            except sqlite3.IntegrityError:
                raise RunExists(run.id) from None
            return self._run(run.id)

    def update_run(self, run_id: str, update: RunUpdate) -> RunPublic:
        with self._lock, self._conn:
            self._write_run(apply_update(self._run(run_id), update, self.clock()), insert=False)
            return self._run(run_id)

    def get_run(self, run_id: str) -> RunPublic:
        with self._lock:
            return self._run(run_id)

    def list_runs(self) -> list[RunPublic]:
        with self._lock:
            rows = self._conn.execute(f"{_RUN_SELECT} ORDER BY r.started_at DESC, r.rowid DESC").fetchall()
        return [_run_from_row(r) for r in rows]

    # rounds
    def upsert_round(self, run_id: str, rnd: RoundCreate) -> RoundPublic:
        rec = RoundPublic(**rnd.model_dump(by_alias=True), run_id=run_id, recorded_at=self.clock())
        hospitals = {k: v.model_dump() for k, v in rec.hospitals.items()}
        with self._lock, self._conn:
            self._check_run(run_id)
            self._conn.execute(
                "INSERT OR REPLACE INTO rounds (run_id, round, global, hospitals, duration_seconds,"
                " recorded_at, report) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    rec.round,
                    rec.global_.model_dump_json(),
                    json.dumps(hospitals),
                    rec.duration_seconds,
                    rec.recorded_at,
                    json.dumps(rec.report),
                ),
            )
        return rec

    def list_rounds(self, run_id: str) -> list[RoundPublic]:
        with self._lock:
            self._check_run(run_id)
            rows = self._conn.execute(
                "SELECT * FROM rounds WHERE run_id = ? ORDER BY round", (run_id,)
            ).fetchall()
        return [_round_from_row(r) for r in rows]

    def last_round(self, run_id: str) -> RoundPublic | None:
        with self._lock:
            self._check_run(run_id)
            row = self._conn.execute(
                "SELECT * FROM rounds WHERE run_id = ? ORDER BY round DESC LIMIT 1", (run_id,)
            ).fetchone()
        return None if row is None else _round_from_row(row)

    # resources
    def add_resource_samples(self, samples: Iterable[ResourceSampleBase]) -> int:
        rows = [tuple(getattr(s, c) for c in _SAMPLE_COLUMNS) for s in samples]
        cols = ", ".join(_SAMPLE_COLUMNS)
        marks = ", ".join("?" * len(_SAMPLE_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in _SAMPLE_COLUMNS if c != "service")
        with self._lock, self._conn:
            self._conn.executemany(f"INSERT INTO resources ({cols}) VALUES ({marks})", rows)
            self._conn.executemany(
                f"INSERT INTO resources_latest ({cols}) VALUES ({marks}) ON CONFLICT (service)"
                f" DO UPDATE SET {updates} WHERE excluded.t >= resources_latest.t",
                rows,
            )
        return len(rows)

    def list_resources(
        self,
        service: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[ResourceSamplePublic]:
        where, args = [], []
        for cond, value in (("service = ?", service), ("t >= ?", since), ("t <= ?", until)):
            if value is not None:
                where.append(cond)
                args.append(value)
        sql = f"SELECT {', '.join(_SAMPLE_COLUMNS)}, id FROM resources"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY t DESC, id DESC LIMIT ?)"
            args.append(max(limit, 0))
        sql += " ORDER BY t, id"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [ResourceSamplePublic(**{c: r[c] for c in _SAMPLE_COLUMNS}) for r in rows]

    def latest_resources(self) -> list[ResourceSamplePublic]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM resources_latest ORDER BY service").fetchall()
        return [ResourceSamplePublic(**dict(r)) for r in rows]


def _run_values(run: RunPublic) -> list[tuple[str, Any]]:
    data = run.model_dump(mode="json")
    return [(c, data[c]) for c in _RUN_COLUMNS]


def _run_from_row(row: sqlite3.Row) -> RunPublic:
    data = dict(row)
    for k in _RUN_JSON:
        if data[k] is not None:
            data[k] = json.loads(data[k])
    return RunPublic.model_validate(data)


def _round_from_row(row: sqlite3.Row) -> RoundPublic:
    data = dict(row)
    data["global"] = json.loads(data["global"])
    data["hospitals"] = json.loads(data["hospitals"])
    data["report"] = json.loads(data.get("report") or "{}")
    return RoundPublic.model_validate(data)
