"""Many hospitals in one process: ``python -m hemafed_aggregator.simulate --clients 100 ...``.

For a scale the Compose stack cannot reach on a small machine (100 hospitals would be 100
containers of ~0.8 GB each). What is the same as on the stack: the round loop
(:class:`~hemafed_aggregator.server.FederatedServer`, built by the aggregator's own
``build_server``), the strategy, the HTTP client objects, every hospital's real
:class:`~hemafed_hospital.agent.HospitalAgent` behind its real FastAPI routes (safetensors bodies,
the checks on both sides), the metrics service, the data split tool and the results files
(``results/<RUN_ID>/run.json``, ``test_results.json``, ``best.keras``, ...).

What is *not* the same, and matters when reading its figures:

* requests travel through an in-process ASGI transport
  (:class:`~hemafed_aggregator.inprocess.RoutingTransport`), not over TCP between containers: no
  network latency or bandwidth, no TLS, no container isolation or memory limits;
* all hospitals share one process, its cores and TensorFlow's thread pool: at most
  ``--concurrency`` hospitals train or evaluate at a time (the others queue), so round times are
  the sum of the hospitals' work divided by the concurrency, not the slowest hospital's time;
  ``ROUND_TIMEOUT`` defaults to a day here for that reason;
* no per-service resource samples (one process).

Data: ``--data-mounts DIR`` uses an existing split (``DIR/hospital-1..N`` and ``DIR/test``, as
``make data`` writes them); otherwise the split tool runs in-process with ``--dataset``,
``--split``, ``--alpha``, ... into ``--work-dir`` (cached by its options: the sweep's runs that share a
split reuse it).

Every run-config option of the aggregator is an option here (``--rounds``, ``--strategy``,
``--strategy-params``, ``--local-epochs``, ``--learning-rate``, ``--participation``, ...; see
``--help``), with the aggregator's defaults and validation.

Exit status: 0 finished, 1 the run failed (reason printed and in run.json), 2 bad options or data.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from hemafed_aggregator.inprocess import RoutingTransport
from hemafed_aggregator.settings import AggregatorSettings, RunConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger("hemafed.simulate")

#: RunConfig fields the simulation sets itself (from the split options)
_OWN_FIELDS = {"split", "dataset"}
#: the round deadline when none is given: hospitals queue for the cores, so a round takes long
DEFAULT_ROUND_TIMEOUT = 86_400.0


class SimulationError(ValueError):
    """Bad options or data (exit status 2); the message is one line."""


@dataclass
class DataOptions:
    """Where the hospitals' data comes from (an existing split, or the split tool's options)."""

    clients: int | None = None
    data_mounts: Path | None = None
    dataset: str = "synthetic"
    split: str = "iid"
    alpha: float = 0.5
    source_proportions: str | None = None
    mapping: str | None = None
    min_per_hospital: int = 20
    test_fraction: float = 0.15
    synthetic_per_class: int = 300
    synthetic_size: int = 64
    seed: int = 0
    work_dir: Path = Path("build/simulate")


@dataclass
class PreparedData:
    root: Path
    hospitals: list[str]
    split: str
    dataset_label: str
    manifest: dict[str, Any] | None


def _dataset_label(spec: str) -> str:
    """The label a run records for a split spec (as the Makefile's DATASET_LABEL)."""
    items = [i.strip() for i in spec.split(",") if i.strip()]
    labels = []
    for item in items:
        name, sep, target = item.partition("=")
        if sep:
            labels.append(name)
        elif item.startswith(("synthetic", "bloodmnist")):
            labels.append(item)
        else:
            labels.append(Path(item).name)
    return "+".join(labels)


def prepare_data(opts: DataOptions) -> PreparedData:
    """The hospitals' folders: an existing split, or a (cached) in-process split."""
    if opts.data_mounts is not None:
        root = opts.data_mounts
        found = sorted((p.name for p in root.glob("hospital-*") if p.is_dir()),
                       key=lambda n: int(n.rsplit("-", 1)[1]) if n.rsplit("-", 1)[1].isdigit() else 10**9)
        if not found:
            raise SimulationError(f"--data-mounts {root}: no hospital-* folders "
                                  "(write them with `make data`)")
        n = opts.clients or len(found)
        if n > len(found):
            raise SimulationError(f"--clients {n} but {root} has only {len(found)} hospital folders")
        manifest_path = root / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
        split = (manifest or {}).get("split", "")
        label = _dataset_label((manifest or {}).get("dataset", "")) if manifest else root.name
        return PreparedData(root, found[:n], split, label, manifest)

    from hemafed.data.sources import DatasetError
    from hemafed.data.split import SplitError, SplitOptions, run_split

    if not opts.clients:
        raise SimulationError("--clients is required (or --data-mounts with a split)")
    spec = ",".join(_absolute_item(i) for i in opts.dataset.split(",") if i.strip())
    split_opts = SplitOptions(
        dataset=spec, mapping=str(Path(opts.mapping).resolve()) if opts.mapping else None,
        clients=opts.clients,
        split=opts.split, alpha=opts.alpha, min_per_hospital=opts.min_per_hospital,
        test_fraction=opts.test_fraction, source_proportions=opts.source_proportions, seed=opts.seed,
        synthetic_per_class=opts.synthetic_per_class, synthetic_size=opts.synthetic_size,
    )
    key = {k: v for k, v in vars(split_opts).items() if k not in ("out", "cache_dir", "workers")}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    root = opts.work_dir / f"split-{digest}"
    hospitals = [f"hospital-{i}" for i in range(1, opts.clients + 1)]
    manifest_path = root / "manifest.json"
    if manifest_path.is_file() and (root / "test").is_dir() and all((root / h).is_dir() for h in hospitals):
        log.info("reusing the split in %s", root)
        manifest = json.loads(manifest_path.read_text())
    else:
        split_opts.out = str(root)
        log.info("splitting %s for %d hospitals (%s) into %s", opts.dataset, opts.clients, opts.split, root)
        try:
            manifest = run_split(split_opts, log=log.warning).manifest
        except (DatasetError, SplitError) as exc:
            raise SimulationError(f"data split: {exc}") from exc
    return PreparedData(root, hospitals, opts.split, _dataset_label(opts.dataset), manifest)


def _absolute_item(item: str) -> str:
    item = item.strip()
    name, sep, target = item.partition("=")
    path = target if sep else item
    if path.startswith(("synthetic", "bloodmnist")):
        return item
    resolved = str(Path(path).expanduser().resolve())
    return f"{name}={resolved}" if sep else resolved


class TrainerPool:
    """Models (with their compiled steps) shared by the simulated hospitals, per task: a hospital
    takes one for the length of a fit or an evaluation and gives it back, so there are at most
    ``--concurrency`` models instead of one per hospital (building and tracing 100 models costs more
    than a round). Safe because every fit and evaluation first loads the global weights into all
    the model's exchanged variables, and the variables that do not travel are frozen layers built
    identically everywhere; not with ``local_norm`` (FedBN keeps normalisation layers per hospital),
    where each hospital keeps its own model."""

    def __init__(self) -> None:
        self._free: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self.built = 0

    def acquire(self, task) -> tuple[str, Any]:
        key = task.model_dump_json()
        with self._lock:
            free = self._free.setdefault(key, [])
            if free:
                return key, free.pop()
            self.built += 1
        from hemafed.models import build_for_task
        from hemafed.training import LocalTrainer

        return key, LocalTrainer(build_for_task(task))

    def release(self, key: str, trainer: Any) -> None:
        with self._lock:
            self._free.setdefault(key, []).append(trainer)


def pooled_agent_class():
    """A :class:`HospitalAgent` whose model comes from a :class:`TrainerPool` during ``fit`` and
    ``evaluate`` (everything else: the agent's own code)."""
    from hemafed_hospital.agent import HospitalAgent

    class PooledHospitalAgent(HospitalAgent):
        def __init__(self, settings, pool: TrainerPool) -> None:
            super().__init__(settings)
            self._pool = pool
            self._lease = threading.local()

        def _trainer(self, task):
            leased = getattr(self._lease, "items", None)
            if leased is None:  # outside fit/evaluate: the agent's own model
                return super()._trainer(task)
            key = task.model_dump_json()
            if key not in leased:
                leased[key] = self._pool.acquire(task)[1]
            return leased[key]

        def _leased(self, handler, body):
            self._lease.items = {}
            try:
                return handler(body)
            finally:
                for key, trainer in self._lease.items.items():
                    self._pool.release(key, trainer)
                self._lease.items = None

        def fit(self, body: bytes) -> bytes:
            return self._leased(super().fit, body)

        def evaluate(self, body: bytes):
            return self._leased(super().evaluate, body)

    return PooledHospitalAgent


def build_apps(data: PreparedData, *, val_fraction: float, split_seed: int, metrics: bool,
               pool: TrainerPool | None = None, val_split: str = "stratified") -> tuple[dict, Any]:
    """The hospital apps (and an in-process metrics service with an in-memory store)."""
    try:
        from hemafed_hospital.app import create_app as hospital_app
        from hemafed_hospital.settings import HospitalSettings
    except ImportError as exc:  # the aggregator image has no hospital package: run on a host with all of them
        raise SimulationError("the simulation needs the hospital package "
                              f"(pip install -e services/hospital): {exc}") from exc
    agent_cls = pooled_agent_class() if pool is not None else None
    apps: dict[str, Any] = {}
    for hid in data.hospitals:
        settings = from_values(HospitalSettings, {"hospital_id": hid, "data_dir": data.root / hid,
                                                  "val_fraction": val_fraction, "val_split": val_split,
                                                  "split_seed": split_seed})
        agent = agent_cls(settings, pool) if agent_cls is not None else None
        apps[hid] = hospital_app(settings, agent=agent, report_resources=False)
    store = None
    if metrics:
        from hemafed_metrics.app import create_app as metrics_app
        from hemafed_metrics.store import InMemoryStore

        store = InMemoryStore()
        apps["metrics"] = metrics_app(store=store)
    return apps, store


async def simulate(run: RunConfig, data: PreparedData, *, results_dir: Path, concurrency: int,
                   val_fraction: float = 0.15, metrics_url: str | None = None, shared_models: bool = True,
                   val_split: str = "stratified"):
    """One federated run with every hospital in this process; returns the server's final state.
    ``shared_models``: hospitals borrow models from a :class:`TrainerPool` (ignored with local_norm)."""
    from hemafed_aggregator.app import build_server

    pool = TrainerPool() if shared_models and not run.local_norm else None
    apps, store = build_apps(data, val_fraction=val_fraction, split_seed=run.seed,
                             metrics=metrics_url is None, pool=pool, val_split=val_split)
    transport = RoutingTransport(apps, max_concurrent=concurrency, limited=data.hospitals)
    settings = from_values(AggregatorSettings, {
        "hospitals": {h: f"http://{h}" for h in data.hospitals},
        "metrics_url": metrics_url or "http://metrics",
        "output_dir": results_dir,
        "test_dir": data.root / "test",
        "auto_start": False,
    })
    t0 = time.monotonic()
    async with httpx.AsyncClient(transport=transport) as http:
        server = build_server(settings, run, http)
        state = await server.run()
        wall = time.monotonic() - t0
        run_dir = results_dir / run.run_id
        if store is not None and state.rounds:
            r = await http.get(f"http://metrics/api/runs/{run.run_id}/rounds.csv")
            if r.status_code == 200:
                (run_dir / "rounds.csv").write_text(r.text)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "simulation.json").write_text(json.dumps({
        "engine": "simulation",
        "clients": len(data.hospitals),
        "concurrency": concurrency,
        "models_built": pool.built if pool is not None else len(data.hospitals),
        "data": str(data.root),
        "split": data.split,
        "dataset": data.dataset_label,
        "wall_seconds": round(wall, 3),
        "peak_rss_bytes": _peak_rss(),
        "note": "same server, strategy, client objects and hospital apps as the stack; requests travel "
                "in-process (ASGI), hospitals share one process and its cores",
    }, indent=2))
    return state


def from_values(cls: type[BaseSettings], values: dict[str, Any]) -> Any:
    """``cls(**values)`` from the given values and the defaults only (no environment, no .env):
    an instance of a subclass of ``cls`` with the same fields and validators."""

    class _ValuesOnly(cls):  # type: ignore[valid-type, misc]
        @classmethod
        def settings_customise_sources(cls_, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            return (init_settings,)

    _ValuesOnly.__name__ = _ValuesOnly.__qualname__ = cls.__name__
    return _ValuesOnly(**values)


def _peak_rss() -> int:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru if sys.platform == "darwin" else ru * 1024)


# --------------------------------------------------------------------------- CLI


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgError(message)


def _run_fields() -> list[str]:
    return [f for f in RunConfig.model_fields if f not in _OWN_FIELDS]


def build_parser() -> argparse.ArgumentParser:
    from hemafed.data.loader import VAL_SPLITS

    p = _Parser(prog="python -m hemafed_aggregator.simulate", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sim = p.add_argument_group("simulation")
    sim.add_argument("--clients", type=int, help="hospitals (required unless --data-mounts)")
    sim.add_argument("--data-mounts", type=Path, help="an existing split: DIR/hospital-1..N and DIR/test")
    sim.add_argument("--dataset", default="synthetic",
                     help="the split tool's dataset spec (default synthetic)")
    sim.add_argument("--split", default="iid", help="iid | noniid | source (default iid)")
    sim.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha of noniid (default 0.5)")
    sim.add_argument("--source-proportions", help="split=source weights, e.g. '1,0;0,1;0.5,0.5'")
    sim.add_argument("--mapping", help="class-mapping file of the split tool")
    sim.add_argument("--min-per-hospital", type=int, default=20)
    sim.add_argument("--test-fraction", type=float, default=0.15)
    sim.add_argument("--synthetic-per-class", type=int, default=300)
    sim.add_argument("--synthetic-size", type=int, default=64)
    sim.add_argument("--val-fraction", type=float, default=0.15,
                     help="each hospital's local validation share")
    sim.add_argument("--val-split", choices=VAL_SPLITS, default="stratified",
                     help="how each hospital holds it out: per class (default) or drawn uniformly (tiny sites)")
    sim.add_argument("--work-dir", type=Path, default=Path("build/simulate"), help="where splits are cached")
    sim.add_argument("--results-dir", type=Path, default=Path("results"))
    sim.add_argument("--concurrency", type=int, default=max(1, os.cpu_count() or 1),
                     help="hospitals training/evaluating at once (default: the CPU count)")
    sim.add_argument("--tf-threads", type=int, default=1, help="TensorFlow intra-op threads (default 1)")
    sim.add_argument("--metrics-url", help="report to this metrics service (default: an in-process one)")
    sim.add_argument("--no-shared-models", dest="shared_models", action="store_false",
                     help="one model per hospital (default: hospitals borrow from a pool of --concurrency "
                          "models; always per hospital with --local-norm)")
    sim.add_argument("-v", "--verbose", action="store_true", help="also log every hospital's fit")
    run = p.add_argument_group("run config (the aggregator's RunConfig; defaults as on the stack)")
    for name in _run_fields():
        field = RunConfig.model_fields[name]
        default = field.default_factory() if field.default_factory else field.default
        run.add_argument(f"--{name.replace('_', '-')}", dest=f"run_{name}", default=None, metavar="V",
                         help=f"default {json.dumps(default, default=str)}")
    return p


def parse(argv: list[str] | None) -> tuple[RunConfig, DataOptions, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {n: getattr(args, f"run_{n}") for n in _run_fields()
                              if getattr(args, f"run_{n}") is not None}
    values.setdefault("round_timeout", DEFAULT_ROUND_TIMEOUT)
    values.setdefault("run_id", f"sim-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.concurrency < 1:
        raise SimulationError("--concurrency must be >= 1")
    if args.clients is not None and args.clients < 1:
        raise SimulationError("--clients must be >= 1")
    data = DataOptions(clients=args.clients, data_mounts=args.data_mounts, dataset=args.dataset,
                       split=args.split, alpha=args.alpha, source_proportions=args.source_proportions,
                       mapping=args.mapping,
                       min_per_hospital=args.min_per_hospital, test_fraction=args.test_fraction,
                       synthetic_per_class=args.synthetic_per_class, synthetic_size=args.synthetic_size,
                       work_dir=args.work_dir)
    # the environment is not read: a host's exported ROUNDS=... (make exports it) must not leak in
    try:
        run = from_values(RunConfig, values)
    except ValidationError as exc:
        errors = "; ".join(f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
                           for e in exc.errors(include_url=False))
        raise SimulationError(errors) from None
    except ValueError as exc:  # a field validator's own error (e.g. STRATEGY_PARAMS not JSON)
        raise SimulationError(str(exc)) from None
    data.seed = run.seed
    return run, data, args


def main(argv: list[str] | None = None) -> int:
    try:
        run, data_opts, args = parse(argv)
    except _ArgError as exc:
        print(f"simulate: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except SimulationError as exc:
        print(f"simulate: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # one model per hospital: retracing notes
    logging.getLogger("hemafed.hospital").setLevel(logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        data = prepare_data(data_opts)
    except SimulationError as exc:
        print(f"simulate: error: {exc}", file=sys.stderr)
        return 2
    run = run.model_copy(update={"split": data.split, "dataset": data.dataset_label})
    from hemafed.training import configure_threads

    configure_threads(args.tf_threads)
    print(f"simulation {run.run_id}: {len(data.hospitals)} hospitals in one process (concurrency "
          f"{args.concurrency}), {data.split or '?'} split of {data.dataset_label}, {run.rounds} rounds",
          flush=True)
    try:
        state = asyncio.run(simulate(run, data, results_dir=args.results_dir, concurrency=args.concurrency,
                                     val_fraction=args.val_fraction, metrics_url=args.metrics_url,
                                     shared_models=args.shared_models, val_split=args.val_split))
    except ValueError as exc:  # build_server refuses the configuration (e.g. an unknown strategy)
        print(f"simulate: error: {exc}", file=sys.stderr)
        return 2
    out = args.results_dir / run.run_id
    if state.status != "finished":
        print(f"run {run.run_id} failed: {state.message}", file=sys.stderr)
        return 1
    acc = state.test_results.get("accuracy") if state.test_results else None
    print(f"run {run.run_id} finished: best round {state.best_round}, best val {state.best_val_accuracy}, "
          f"test accuracy {acc}; results in {out}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
