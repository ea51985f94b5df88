"""The experiment runner: ``make experiment CONFIG=experiments/<name>.yaml [ONLY=<scenario>]``
(= ``.venv/bin/python -m tools.experiment experiments/<name>.yaml [--only ...] [--dry-run]``).

A YAML config declares a grid of federated runs; the runner expands it, runs the runs one after
another on the real stack (``make up``; ``make central`` for the centralized baseline; ``make down``
after each) or in the simulation engine (``python -m hemafed_aggregator.simulate``), and writes
``results/experiments/<name>/``: ``results.md`` and ``results.csv`` (one row per run),
``accuracy_per_round.csv`` and ``accuracy_per_round.png`` (one line per scenario), ``plan.json``,
and per run ``runs/<RUN_ID>.json`` (what was run, exit status, wall time) and ``logs/<RUN_ID>.log``.

Config (unknown keys are refused; see experiments/*.yaml)::

    name: thesis                    # [A-Za-z0-9_.-]; RUN_ID = <name>-<scenario>-<seed>
    description: ...
    engine: stack                   # stack | simulation (per scenario too)
    seeds: [0]                      # or repeats: 3 (= seeds 0, 1, 2); --seeds 1,2 overrides
    run_timeout_minutes: 120
    base: {dataset: ../shared/data/pbc-128, rounds: 5, ...}    # settings of every run
    scenarios:                      # each: name, settings, kind (federated | central), engine
      - {name: fl-iid, settings: {clients: 2, split: iid}}
    grid:  {learning_rate: [0.001, 0.01], local_epochs: [1, 2]}  # cartesian product (x scenarios)
    sweep: {batch_size: [16, 64]}   # one axis at a time around base (x scenarios)

Settings are the ``make up`` options in lower case (clients, split, alpha, dataset,
source_proportions, strategy, strategy_params (a mapping), rounds, schedule, participation, ...: every
field of the aggregator's RunConfig, plus the data options); ``seed`` and ``run_id`` are the
runner's. ``init_run`` (start from a finished run's final weights) may name an earlier scenario of
the same config: its run of the same seed. A grid/sweep axis may list values (``[0.001, 0.01]``) or name them
(``{slow: 0.001, fast: 0.01}``); scenario names derive from the values (``lr0.001-e2``).

Resumable: a run whose results exist (``results/<RUN_ID>/run.json`` finished and
``test_results.json``) is skipped (``--force`` deletes its results and runs it again). A failed run is
recorded as failed and the next one starts; run again, it resumes from the aggregator's checkpoint
of its last completed round where there is one. After every stack run the runner reads the run's
config back from the metrics API and flags a setting the aggregator did not receive (e.g. a
Makefile that does not forward it).

Exit status: 0 every planned run finished, 1 some failed, 2 bad config.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator,
                      model_validator)

from hemafed.data.loader import ValSplit

ROOT = Path(__file__).resolve().parents[1]
NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# --------------------------------------------------------------------------- settings

#: data / node options that are not RunConfig fields (make variables in lower case)
DATA_SETTINGS: dict[str, Any] = {
    "clients": int, "split": str, "alpha": float, "dataset": str, "source_proportions": str, "mapping": str,
    "tf_threads": int, "val_split": ValSplit,
}
#: options of the centralized baseline only (make central)
CENTRAL_SETTINGS: dict[str, Any] = {"epochs": int, "lr_warmup_epochs": int, "ema_decay": float}
#: options of the simulation engine only
SIMULATION_SETTINGS: dict[str, Any] = {
    "concurrency": int, "min_per_hospital": int, "val_fraction": float, "test_fraction": float,
    "synthetic_per_class": int, "synthetic_size": int,
}
#: the runner sets these itself
RESERVED = {"seed": "use `seeds: [...]` (or `repeats: n`)",
            "run_id": "the runner names runs <name>-<scenario>-<seed>"}
#: short labels of axes in generated scenario names; axes with word values (strategy, ...) use the value
AXIS_LABELS = {"clients": "c", "learning_rate": "lr", "local_epochs": "e", "batch_size": "b", "rounds": "r",
               "image_size": "px", "alpha": "a", "fraction_fit": "C", "min_clients": "m",
               "recycle_fraction": "rf",
               "dp_noise_multiplier": "z", "dp_clip_norm": "clip", "max_steps_per_epoch": "steps"}


def run_settings() -> dict[str, Any]:
    """RunConfig's fields and their types (imported, so new options are known without editing this)."""
    from hemafed_aggregator.settings import RunConfig

    out = {}
    for name, f in RunConfig.model_fields.items():
        if name in RESERVED or name in ("split", "dataset"):
            continue
        # with the field's constraints (ge, le, pattern)
        out[name] = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
    return out


def check_run_config(where: str, settings: dict[str, Any]) -> None:
    """The aggregator's own validation (field validators included) of a run's settings."""
    from hemafed_aggregator.settings import RunConfig
    from hemafed_aggregator.simulate import from_values

    fields = run_settings()
    values = {k: (json.dumps(v) if k == "strategy_params" else v) for k, v in settings.items() if k in fields}
    try:
        run = from_values(RunConfig, values)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                           for e in exc.errors(include_url=False))
        raise ConfigError(f"{where}: {errors}") from None
    # the strategy as the aggregator builds it: a misspelt strategy parameter fails here, not at start-up
    from hemafed_aggregator.app import strategy_of

    try:
        strategy_of(run)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: strategy {run.strategy!r} with {run.strategy_params}: {exc}") from None


def known_settings() -> dict[str, Any]:
    return {**run_settings(), **DATA_SETTINGS, **SIMULATION_SETTINGS, **CENTRAL_SETTINGS}


def _check_settings(where: str, values: dict[str, Any], engine: str | None, kind: str | None = None) -> None:
    known = known_settings()
    for key, value in values.items():
        if key in RESERVED:
            raise ValueError(f"{where}.{key}: set by the runner ({RESERVED[key]})")
        if key not in known:
            raise ValueError(f"{where}: unknown setting {key!r}; known: {', '.join(sorted(known))}")
        if engine == "stack" and key in SIMULATION_SETTINGS:
            raise ValueError(f"{where}.{key}: only for engine: simulation")
        if kind == "federated" and key in CENTRAL_SETTINGS:
            raise ValueError(f"{where}.{key}: only for kind: central (make central)")
        typ = known[key]
        if key == "strategy_params":
            if not isinstance(value, dict):
                raise ValueError(f"{where}.strategy_params: must be a mapping, e.g. {{server_lr: 0.5}}")
            continue
        try:
            TypeAdapter(typ).validate_python(value, strict=False)
        except ValidationError as exc:
            msg = exc.errors(include_url=False)[0]["msg"]
            raise ValueError(f"{where}.{key}: {value!r} is not valid ({msg})") from None


def _slug(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, dict):
        text = "-".join(f"{k}{_slug(v)}" for k, v in value.items())
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "x"


def axis_label(axis: str, value: Any) -> str:
    if isinstance(value, str) and axis not in AXIS_LABELS:
        return _slug(value)
    return f"{AXIS_LABELS.get(axis, axis.replace('_', ''))}{_slug(value)}"


# --------------------------------------------------------------------------- config


Engine = Literal["stack", "simulation"]


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=40)
    description: str = ""
    #: federated (make up / simulate) or central (the centralized baseline, make central)
    kind: Literal["federated", "central"] = "federated"
    engine: Engine | None = None
    settings: dict[str, Any] = Field(default_factory=dict)


Axis = list[Any] | dict[str, Any]


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=40)
    description: str = ""
    engine: Engine = "stack"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    repeats: int | None = Field(None, ge=1, le=100)
    run_timeout_minutes: float = Field(120, gt=0)
    base: dict[str, Any] = Field(default_factory=dict)
    scenarios: list[Scenario] = Field(default_factory=list)
    grid: dict[str, Axis] = Field(default_factory=dict)
    sweep: dict[str, Axis] = Field(default_factory=dict)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be unique")
        return v

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if self.repeats is not None:
            if "seeds" in self.model_fields_set:
                raise ValueError("give either seeds or repeats, not both")
            self.seeds = list(range(self.repeats))
        _check_settings("base", self.base, self.engine)
        names = [s.name for s in self.scenarios]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"scenario names must be unique: {', '.join(dupes)}")
        for s in self.scenarios:
            _check_settings(f"scenarios[{s.name}].settings", s.settings, s.engine or self.engine, s.kind)
            if s.kind == "central" and (s.engine or self.engine) != "stack":
                raise ValueError(f"scenarios[{s.name}]: kind central runs on engine stack (make central)")
        for label, axes in (("grid", self.grid), ("sweep", self.sweep)):
            for axis, values in axes.items():
                if not values:
                    raise ValueError(f"{label}.{axis}: give at least one value")
                vals = list(values.values()) if isinstance(values, dict) else values
                for v in vals:
                    _check_settings(f"{label}", {axis: v}, self.engine)
                if isinstance(values, dict):
                    for k in values:
                        if not re.match(NAME_PATTERN, k):
                            raise ValueError(f"{label}.{axis}: value name {k!r} must match {NAME_PATTERN}")
        overlap = set(self.grid) & set(self.sweep)
        if overlap:
            raise ValueError(f"an axis is in both grid and sweep: {', '.join(sorted(overlap))}")
        return self


class ConfigError(ValueError):
    """A config that cannot be used; the message says where."""


def with_engine(cfg: ExperimentConfig, engine: str) -> ExperimentConfig:
    """The same grid on another engine, as experiment ``<name>-sim`` / ``<name>-stack`` (its run ids
    and results stay apart); centralized scenarios need the stack and are left out of a simulation."""
    if all((s.engine or cfg.engine) == engine for s in cfg.scenarios) and cfg.engine == engine:
        return cfg
    scenarios = [s.model_copy(update={"engine": None}) for s in cfg.scenarios
                 if not (engine == "simulation" and s.kind == "central")]
    if cfg.scenarios and not scenarios:
        raise ConfigError(f"{cfg.name}: no scenario can run on engine {engine}")
    suffix = "sim" if engine == "simulation" else engine
    raw = {**cfg.model_dump(exclude={"repeats"}), "name": f"{cfg.name}-{suffix}", "engine": engine,
           "scenarios": [sc.model_dump() for sc in scenarios]}
    return parse_config(raw, f"{cfg.name} on engine {engine}")


def with_seeds(cfg: ExperimentConfig, seeds: str) -> ExperimentConfig:
    """The same grid on other seeds (``--seeds 1,2``, ``make experiment SEEDS=1,2``): replicate a
    config's runs without editing it. Run ids keep their ``-<seed>`` suffix, so the config's own
    seeds' results stay where they are and the tables list the seeds given here."""
    try:
        values = [int(v) for v in seeds.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: comma-separated integers, e.g. 0,1,2") from None
    if not values:
        raise ConfigError("--seeds: give at least one seed")
    raw = {**cfg.model_dump(exclude={"repeats"}), "seeds": values}
    return parse_config(raw, f"{cfg.name} with seeds {seeds}")


def load_config(path: str | Path) -> ExperimentConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, str(path))


def parse_config(raw: Any, where: str = "config") -> ExperimentConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping (name, base, scenarios, ...)")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for e in exc.errors(include_url=False):
            loc = ".".join(str(x) for x in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {msg}" if loc else msg)
        raise ConfigError(f"{where}: " + "; ".join(lines)) from None


# --------------------------------------------------------------------------- plan


@dataclass
class PlannedRun:
    run_id: str
    scenario: str
    seed: int
    kind: str
    engine: str
    settings: dict[str, Any]
    #: the settings that set this scenario apart from ``base``
    varied: dict[str, Any]


def _axis_points(axes: dict[str, Axis]) -> list[list[tuple[str, str, Any]]]:
    """Per axis the (axis, label, value) choices."""
    out = []
    for axis, values in axes.items():
        if isinstance(values, dict):
            out.append([(axis, str(k), v) for k, v in values.items()])
        else:
            out.append([(axis, axis_label(axis, v), v) for v in values])
    return out


def _variants(cfg: ExperimentConfig) -> list[tuple[str, dict[str, Any]]]:
    """(label, settings) of the grid x sweep variants; one unnamed variant when neither is given."""
    grid = [([lab for _, lab, _ in combo], {a: v for a, _, v in combo})
            for combo in itertools.product(*_axis_points(cfg.grid))] if cfg.grid else [([], {})]
    if not cfg.sweep:
        return [("-".join(labels), values) for labels, values in grid]
    out: list[tuple[str, dict[str, Any]]] = []
    for labels, values in grid:
        out.append(("-".join(labels), dict(values)))  # the base point of the sweep
        for choices in _axis_points(cfg.sweep):
            for axis, lab, v in choices:
                out.append(("-".join([*labels, lab]), {**values, axis: v}))
    return out


def _resolve_init_run(cfg: ExperimentConfig, settings: dict[str, Any], seed: int, *, earlier: set[str],
                      where: str) -> dict[str, Any]:
    """``init_run`` naming a scenario of this experiment means that scenario's run of the same seed
    (``<experiment>-<scenario>-<seed>``), which must come earlier; any other value is a RUN_ID."""
    init = settings.get("init_run")
    if init and init in earlier:
        return {**settings, "init_run": f"{cfg.name}-{init}-{seed}"}
    if init and init in {sc.name for sc in cfg.scenarios}:
        raise ConfigError(f"{where}: init_run {init!r} names a scenario that runs later (or is this one): "
                          "list it first")
    return settings


def expand(cfg: ExperimentConfig) -> list[PlannedRun]:
    """Every run of the experiment, in order (scenarios x grid/sweep variants x seeds); a variant
    of a scenario whose settings equal an earlier variant's is dropped (a sweep's base value)."""
    scenarios = cfg.scenarios or [Scenario(name="base")]
    seen: dict[str, str] = {}
    runs: list[PlannedRun] = []
    for sc in scenarios:
        for label, values in _variants(cfg):
            if cfg.scenarios and label:
                name = f"{sc.name}-{label}"
            else:
                name = label or sc.name
            settings = {**cfg.base, **sc.settings, **values}
            engine = sc.engine or cfg.engine
            key = json.dumps([sc.name, sc.kind, engine, settings], sort_keys=True, default=str)
            if key in seen:
                continue
            seen[key] = name
            check_run_config(f"scenario {name}", settings)
            varied = {k: v for k, v in settings.items() if k not in cfg.base or cfg.base[k] != v}
            for seed in cfg.seeds:
                run_id = f"{cfg.name}-{name}-{seed}"
                if not RUN_ID_RE.match(run_id):
                    raise ConfigError(f"run id {run_id!r} is not a valid RUN_ID (at most 64 of "
                                      "[A-Za-z0-9_.-]): "
                                      "shorten the experiment or scenario name, or name the axis values")
                resolved = _resolve_init_run(cfg, settings, seed, earlier={r.scenario for r in runs},
                                             where=f"scenario {name}")
                runs.append(PlannedRun(run_id, name, seed, sc.kind, engine, resolved, varied))
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(f"two runs would have the same RUN_ID: {', '.join(dup)} "
                          "(name the scenarios/values)")
    return runs


def select(runs: list[PlannedRun], only: str | None) -> list[PlannedRun]:
    """The runs whose scenario matches one of the comma-separated names/globs in ``only``."""
    if not only:
        return runs
    pats = [p.strip() for p in only.split(",") if p.strip()]
    chosen = [r for r in runs if any(fnmatch.fnmatchcase(r.scenario, p) for p in pats)]
    if not chosen:
        names = ", ".join(dict.fromkeys(r.scenario for r in runs))
        raise ConfigError(f"ONLY={only!r} matches no scenario; scenarios: {names}")
    return chosen


# --------------------------------------------------------------------------- commands


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


#: the settings a data split depends on (with the seed)
SPLIT_SETTINGS = ("dataset", "clients", "split", "alpha", "source_proportions", "mapping")


def split_folder(run: PlannedRun) -> str:
    """The DATA_MOUNTS sub-folder of a stack run's split: runs with the same split share it, and
    `make data` keeps a split that is already there (so it is made once per experiment)."""
    key = {k: run.settings.get(k) for k in SPLIT_SETTINGS} | {"seed": run.seed}
    return "split-" + hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def command_for(run: PlannedRun, *, results_dir: Path, python: str = sys.executable,
                data_mounts: Path | None = None) -> list[str]:
    """The command line of one run (stack runs: their split in ``data_mounts/split-<hash>``)."""
    if run.engine == "simulation":
        cmd = [python, "-m", "hemafed_aggregator.simulate", "--run-id", run.run_id, "--results-dir",
               str(results_dir), "--seed", str(run.seed)]
        for k, v in run.settings.items():
            cmd += [f"--{k.replace('_', '-')}", _value_text(v)]
        return cmd
    target = "central" if run.kind == "central" else "up"
    cmd = ["make", "--no-print-directory", target, f"RUN_ID={run.run_id}", f"RESULTS_DIR={results_dir}",
           f"SEED={run.seed}"]
    if data_mounts is not None:
        cmd.append(f"DATA_MOUNTS={data_mounts / split_folder(run)}")
    cmd += [f"{k.upper()}={_value_text(v)}" for k, v in run.settings.items()]
    return cmd


#: variables a calling make exports that must not leak into a run (the config decides them)
def clean_env(env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "RUN_ID", "HOSPITALS", "DATASET_LABEL"):
        env.pop(k, None)
    for k in known_settings():
        env.pop(k.upper(), None)
    env.pop("SEED", None)
    return env


CommandRunner = Callable[[list[str], dict[str, str], Path, float], int]


def subprocess_runner(cmd: list[str], env: dict[str, str], log_path: Path, timeout: float) -> int:
    """Run ``cmd`` in the repository root, output to ``log_path`` and (progress lines) to stdout;
    124 on timeout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", buffering=1) as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True)
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if line.startswith(("[", "run ", "round ", "simulation ", "results:")) or "round " in line[:40]:
                print("    " + line.rstrip()[:160], flush=True)
            if time.monotonic() > deadline:
                break
        try:
            return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=60)
            log.write(f"\n[runner] timed out after {timeout:.0f}s\n")
            return 124
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)


ConfigFetcher = Callable[[str], dict[str, Any] | None]


def metrics_config_fetcher(port: int, scheme: str = "http", cafile: str | None = None) -> ConfigFetcher:
    """Reads a run's recorded config from the stack's metrics API (None when unreachable)."""

    def fetch(run_id: str) -> dict[str, Any] | None:
        import httpx

        verify: Any = cafile if scheme == "https" and cafile and Path(cafile).is_file() else True
        try:
            r = httpx.get(f"{scheme}://127.0.0.1:{port}/api/runs/{run_id}", timeout=10, verify=verify)
            body = r.json() if r.status_code == 200 else {}
        except (httpx.HTTPError, ValueError, OSError):
            return None
        return body.get("config") if isinstance(body, dict) else None

    return fetch


def unforwarded(run: PlannedRun, recorded: dict[str, Any]) -> list[str]:
    """Settings of ``run`` that the aggregator's recorded config does not show (not forwarded)."""
    out = []
    fields = run_settings()
    for k, v in run.settings.items():
        if k not in fields or k not in recorded:
            continue
        got = recorded[k]
        if k == "strategy" and isinstance(got, dict):  # the run records the strategy's description
            got = got.get("name")
        want: Any = v
        try:
            want = TypeAdapter(fields[k]).validate_python(v, strict=False) if k != "strategy_params" else v
        except ValidationError:
            pass
        if k == "strategy_params":
            same = json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
        elif isinstance(want, float) or isinstance(got, float):
            same = isinstance(got, int | float) and math.isclose(float(got), float(want), rel_tol=1e-9)
        else:
            same = got == want or str(got) == str(want)
        if not same:
            out.append(f"{k}={_value_text(v)} (aggregator used {got!r})")
    return out


# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    run_id: str
    scenario: str
    seed: int
    kind: str
    engine: str
    status: str  # finished / failed / not run
    varied: dict[str, Any] = field(default_factory=dict)
    best_round: int | None = None
    best_val: float | None = None
    test_accuracy: float | None = None
    macro_f1: float | None = None
    #: with test-time augmentation (TTA=true) test_accuracy is the 8-view mean's; this the single view's
    test_accuracy_single_view: float | None = None
    #: the last round's model, when validation picked an earlier round (test_results' final_model)
    final_round: int | None = None
    final_test_accuracy: float | None = None
    wall_seconds: float | None = None
    train_seconds: float | None = None
    bytes_per_round: float | None = None
    #: test accuracy per data source of the test images (hemafed.report.per_source_metrics)
    test_by_source: dict[str, float] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


def is_complete(results_dir: Path, run_id: str) -> bool:
    """The run finished and its test results exist."""
    d = results_dir / run_id
    run = _read_json(d / "run.json")
    if not (d / "test_results.json").is_file():
        return False
    return run is None or run.get("status") in (None, "finished")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def collect(run: PlannedRun, results_dir: Path, record: dict[str, Any] | None) -> RunResult:
    """What a run left behind: results/<RUN_ID>/run.json + test_results.json, and the runner's record."""
    d = results_dir / run.run_id
    state = _read_json(d / "run.json") or {}
    test = _read_json(d / "test_results.json") or {}
    res = RunResult(run.run_id, run.scenario, run.seed, run.kind, run.engine, "not run", dict(run.varied))
    if record:
        res.wall_seconds = _num(record.get("wall_seconds"))
        res.message = record.get("message", "")
    if is_complete(results_dir, run.run_id):
        res.status = "finished"
        if record and record.get("status") != "finished":
            res.message = ""  # an earlier failed attempt; this one finished
    elif record or state:
        res.status = "failed"
        if not res.message:
            res.message = state.get("message", "") or "no test results"
    rounds = []
    for r in state.get("rounds") or []:
        g = r.get("global") or {}
        hospitals = r.get("hospitals") or {}
        sent = [h.get("update_bytes") for h in hospitals.values() if isinstance(h, dict)]
        sent = [b for b in sent if isinstance(b, int | float)]
        rounds.append({
            "round": r.get("round"),
            "val_accuracy_median": _num(g.get("val_accuracy_median", r.get("val_accuracy"))),
            "val_accuracy_mean": _num(g.get("val_accuracy_mean")),
            "val_loss": _num(g.get("val_loss", r.get("val_loss"))),
            "duration_seconds": _num(r.get("duration_seconds")),
            "bytes": sum(sent) if sent else None,
            "hospitals_ok": sum(1 for h in hospitals.values()
                                if isinstance(h, dict) and h.get("status") == "ok"),
        })
    res.rounds = rounds
    res.best_round = state.get("best_round")
    res.best_val = _num(state.get("best_val_accuracy"))
    if res.best_val is None and rounds:
        vals = [(r["val_accuracy_median"], r["round"]) for r in rounds
                if r["val_accuracy_median"] is not None]
        if vals:
            res.best_val, res.best_round = max(vals, key=lambda t: (t[0], t[1]))
    res.test_accuracy = _num(test.get("accuracy"))
    res.macro_f1 = _num(test.get("macro_f1"))
    tta = test.get("test_time_augmentation")
    if isinstance(tta, dict) and isinstance(tta.get("single_view"), dict):
        res.test_accuracy_single_view = _num(tta["single_view"].get("accuracy"))
    final = test.get("final_model")
    if isinstance(final, dict):
        res.final_round, res.final_test_accuracy = final.get("round"), _num(final.get("accuracy"))
    res.test_by_source = _by_source(test, d / "per_image.csv")
    started, finished = _num(state.get("started_at")), _num(state.get("finished_at"))
    if started is not None and finished is not None:
        res.train_seconds = finished - started
    sent = [r["bytes"] for r in rounds if r["bytes"] is not None]
    # a centralized run sends nothing: its "rounds" are epochs
    res.bytes_per_round = statistics.mean(sent) if sent and run.kind != "central" else None
    return res


def _by_source(test: dict[str, Any], per_image: Path) -> dict[str, float]:
    """Test accuracy per source: the report's ``per_source``, or for a run scored before reports had
    it, the same figures from its ``per_image.csv`` (file, top-1 class, true class)."""
    per_source = test.get("per_source")
    if not isinstance(per_source, dict) and isinstance(test.get("classes"), list) and per_image.is_file():
        from hemafed.report import per_source_metrics

        index = {c: i for i, c in enumerate(test["classes"])}
        try:
            with per_image.open(newline="") as f:
                rows = [(r["file"], index[r["true"]], index[r["top1"]]) for r in csv.DictReader(f)]
            per_source = per_source_metrics([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                                            test["classes"]) if rows else None
        except (OSError, KeyError, ValueError):
            per_source = None
    if not isinstance(per_source, dict):
        return {}
    out = {str(k): _num(v.get("accuracy")) for k, v in per_source.items() if isinstance(v, dict)}
    return {k: v for k, v in out.items() if v is not None}


def _source_text(by_source: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in by_source.items())


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _settings_text(varied: dict[str, Any]) -> str:
    return " ".join(f"{k}={_value_text(v)}" for k, v in varied.items())


CSV_COLUMNS = ["scenario", "seed", "run_id", "kind", "engine", "status", "settings", "best_round", "best_val",
               "test_accuracy", "macro_f1", "test_accuracy_single_view", "final_round", "final_test_accuracy", "wall_seconds", "train_seconds",
               "bytes_per_round", "test_accuracy_by_source", "message"]


def write_results(cfg: ExperimentConfig, results: list[RunResult], out: Path, *, base_note: str = "") -> None:
    """results.csv, results.md, accuracy_per_round.csv and accuracy_per_round.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in results:
            w.writerow([r.scenario, r.seed, r.run_id, r.kind, r.engine, r.status, _settings_text(r.varied),
                        r.best_round if r.best_round is not None else "", _fmt(r.best_val),
                        _fmt(r.test_accuracy),
                        _fmt(r.macro_f1), _fmt(r.test_accuracy_single_view),
                        r.final_round if r.final_round is not None else "", _fmt(r.final_test_accuracy),
                        _fmt(r.wall_seconds, 1),
                        _fmt(r.train_seconds, 1),
                        _fmt(r.bytes_per_round, 0), _source_text(r.test_by_source), r.message])
    with (out / "accuracy_per_round.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scenario", "seed", "run_id", "round", "val_accuracy_median", "val_accuracy_mean",
                    "val_loss", "duration_seconds", "bytes", "hospitals_ok"])
        for r in results:
            for rd in r.rounds:
                w.writerow([r.scenario, r.seed, r.run_id, rd["round"], _fmt(rd["val_accuracy_median"]),
                            _fmt(rd["val_accuracy_mean"]), _fmt(rd["val_loss"]),
                            _fmt(rd["duration_seconds"], 2),
                            rd["bytes"] if rd["bytes"] is not None else "", rd["hospitals_ok"]])
    (out / "results.md").write_text(markdown(cfg, results, base_note))
    plot(cfg, results, out / "accuracy_per_round.png")


def markdown(cfg: ExperimentConfig, results: list[RunResult], base_note: str = "") -> str:
    lines = [f"# Experiment `{cfg.name}`", ""]
    if cfg.description:
        lines += [cfg.description.strip(), ""]
    lines += [f"Engine: {cfg.engine}. Base settings: `{_settings_text(cfg.base) or '(defaults)'}`. "
              f"Seeds: {', '.join(map(str, cfg.seeds))}.", ""]
    if base_note:
        lines += [base_note, ""]
    # a test set drawn from several sources gets a column per source: a small hospital's images can
    # be served badly while the whole test set, dominated by a large one, scores well
    sources = sorted({k for r in results for k in r.test_by_source})
    if len(sources) < 2:
        sources = []
    lines += ["`best val`: the global validation accuracy that picked the best round (the median of the "
              "hospitals' accuracies; pooled over their validation images with `best_by=pooled`; a "
              "centralized run's: its best epoch's).", ""]
    lines += ["| scenario | seed | settings | status | best round | best val | test accuracy "
              "| macro F1 | wall (s) | train (s) | MB/round |" + "".join(f" test: {s} |" for s in sources),
              "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(sources)]
    for r in results:
        mb = _fmt(r.bytes_per_round / 1e6, 2) if r.bytes_per_round is not None else ""
        status = r.status if r.status != "failed" else f"failed: {r.message[:80]}"
        lines.append(f"| {r.scenario} | {r.seed} | {_settings_text(r.varied).replace('|', '/')} | "
                     f"{status.replace('|', '/')} | {_fmt(r.best_round)} | {_fmt(r.best_val)} | "
                     f"{_test_cell(r)} | {_fmt(r.macro_f1)} | {_fmt(r.wall_seconds, 0)} | "
                     f"{_fmt(r.train_seconds, 0)} | {mb} |" + "".join(f" {_fmt(r.test_by_source.get(s))} |"
                                                                   for s in sources))
    if len(cfg.seeds) > 1:
        lines += ["", "Mean ± standard deviation over seeds (finished runs):", "",
                  "| scenario | runs | test accuracy | macro F1 | best val |", "|---|---|---|---|---|"]
        for name, group in _by_scenario(results).items():
            done = [r for r in group if r.status == "finished"]
            acc = _mean_sd([r.test_accuracy for r in done])
            lines.append(f"| {name} | {len(done)}/{len(group)} | {acc} | "
                         f"{_mean_sd([r.macro_f1 for r in done])} | {_mean_sd([r.best_val for r in done])} |")
    lines += ["", "Accuracy per round: `accuracy_per_round.png` / `.csv`; each run's files: "
              "`results/<run id>/`.", ""]
    return "\n".join(lines)


def _test_cell(r: RunResult) -> str:
    """The test accuracy (of the best round's model); beside it, with test-time augmentation the
    single view's, and the last round's model's when validation picked an earlier round."""
    notes = []
    if r.test_accuracy_single_view is not None:
        notes.append(f"8-view TTA; 1 view {_fmt(r.test_accuracy_single_view)}")
    if r.final_test_accuracy is not None:
        notes.append(f"final round {r.final_round}: {_fmt(r.final_test_accuracy)}")
    return _fmt(r.test_accuracy) + (f" ({'; '.join(notes)})" if notes else "")


def _by_scenario(results: list[RunResult]) -> dict[str, list[RunResult]]:
    out: dict[str, list[RunResult]] = {}
    for r in results:
        out.setdefault(r.scenario, []).append(r)
    return out


def _mean_sd(vals: list[float | None]) -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return ""
    return f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def plot(cfg: ExperimentConfig, results: list[RunResult], path: Path) -> None:
    """Global validation accuracy (median over hospitals) per round, one line per scenario (mean over
    its seeds); centralized runs dashed. Colours: tab20's ten dark shades, then its ten light ones with
    square markers (then triangles past 20 lines), so that no two lines look alike."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    tab20 = plt.get_cmap("tab20").colors
    colours = tab20[0::2] + tab20[1::2]
    markers = "os^"
    drawn = 0
    for name, group in _by_scenario(results).items():
        per_round: dict[int, list[float]] = {}
        for r in group:
            for rd in r.rounds:
                if rd["val_accuracy_median"] is not None and rd["round"] is not None:
                    per_round.setdefault(int(rd["round"]), []).append(rd["val_accuracy_median"])
        if not per_round:
            continue
        xs = sorted(per_round)
        ys = [statistics.mean(per_round[x]) for x in xs]
        style = "--" if group[0].kind == "central" else "-"
        ax.plot(xs, ys, style, color=colours[drawn % len(colours)],
                marker=markers[min(drawn // 10, len(markers) - 1)], markersize=3, label=name)
        drawn += 1
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round (centralized: epoch)")
    ax.set_ylabel("global validation accuracy (median over hospitals)")
    seeds = f" (mean of {len(cfg.seeds)} seeds)" if len(cfg.seeds) > 1 else ""
    ax.set_title(f"{cfg.name}: accuracy per round{seeds}")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no rounds recorded yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- the run loop


@dataclass
class Runner:
    cfg: ExperimentConfig
    results_dir: Path
    run_command: CommandRunner = subprocess_runner
    fetch_config: ConfigFetcher | None = None
    python: str = sys.executable
    env: dict[str, str] | None = None
    force: bool = False
    out: Callable[[str], None] = print
    #: where stack runs put their splits (one sub-folder per distinct split); None: the Makefile's
    data_mounts: Path | None = None

    @property
    def exp_dir(self) -> Path:
        return self.results_dir / "experiments" / self.cfg.name

    def _record_path(self, run: PlannedRun) -> Path:
        return self.exp_dir / "runs" / f"{run.run_id}.json"

    def run(self, runs: list[PlannedRun]) -> list[RunResult]:
        """Run ``runs`` one after another (skipping complete ones), then write the tables for the
        whole plan. Returns the results of ``runs``."""
        plan = expand(self.cfg)
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        (self.exp_dir / "plan.json").write_text(json.dumps([asdict(r) for r in plan], indent=2, default=str))
        env = clean_env(self.env)
        for i, run in enumerate(runs, 1):
            head = f"[{i}/{len(runs)}] {run.run_id} ({run.kind}, {run.engine})"
            if not self.force and is_complete(self.results_dir, run.run_id):
                self.out(f"{head}: results exist, skipped")
                continue
            self.out(f"{head}: {_settings_text(run.varied) or 'base settings'}")
            self._one(run, env)
        results = [collect(r, self.results_dir, _read_json(self._record_path(r))) for r in plan]
        write_results(self.cfg, results, self.exp_dir)
        chosen = {r.run_id for r in runs}
        return [r for r in results if r.run_id in chosen]

    def _one(self, run: PlannedRun, env: dict[str, str]) -> None:
        cmd = command_for(run, results_dir=self.results_dir, python=self.python, data_mounts=self.data_mounts)
        old = self.results_dir / run.run_id
        if self.force and old.is_dir():  # a fresh run: no resume from the old run's checkpoint
            shutil.rmtree(old)
        log_path = self.exp_dir / "logs" / f"{run.run_id}.log"
        t0 = time.monotonic()
        started = time.time()
        try:
            rc = self.run_command(cmd, env, log_path, self.cfg.run_timeout_minutes * 60)
        except Exception as exc:  # noqa: BLE001 - the next run goes on
            rc, err = -1, f"{type(exc).__name__}: {exc}"
        else:
            err = ""
        wall = time.monotonic() - t0
        notes = []
        check = "not applicable"  # did the aggregator receive every setting? (stack runs: read back)
        aggregator_config: dict[str, Any] | None = None
        if run.engine == "stack" and run.kind == "federated" and self.fetch_config is not None:
            recorded = self.fetch_config(run.run_id)
            check = "unavailable"
            if recorded is not None:
                aggregator_config = recorded
                missing = unforwarded(run, recorded)
                check = "mismatch" if missing else "ok"
                if missing:
                    notes.append("settings not received by the aggregator: " + "; ".join(missing))
        if run.engine == "stack":
            down_rc = self.run_command(["make", "--no-print-directory", "down"], env,
                                       self.exp_dir / "logs" / f"{run.run_id}.down.log", 600)
            if down_rc != 0:
                notes.append(f"make down exited {down_rc}")
        complete = rc == 0 and is_complete(self.results_dir, run.run_id)
        if complete:
            message = "; ".join(notes)
        else:
            why = err or (f"exit status {rc}" + (" (timed out)" if rc == 124 else ""))
            state = _read_json(self.results_dir / run.run_id / "run.json") or {}
            if err:
                pass
            elif state.get("message"):
                why += f": {state['message']}"
            elif rc == 0:
                why += ", but no test results were written"
            else:
                why += f": {_log_tail(log_path)}"
            message = "; ".join([why, *notes])
        record = {"run_id": run.run_id, "scenario": run.scenario, "seed": run.seed, "kind": run.kind,
                  "engine": run.engine, "settings": run.settings, "command": cmd, "returncode": rc,
                  "status": "finished" if complete else "failed", "started_at": started,
                  "wall_seconds": round(wall, 1), "message": message, "config_check": check,
                  "aggregator_config": aggregator_config, "log": str(log_path)}
        path = self._record_path(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str))
        self.out(f"    -> {record['status']} in {wall:.0f}s" + (f" ({message})" if message else ""))


def _log_tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return " / ".join(lines[-n:])[:400]


# --------------------------------------------------------------------------- CLI


def print_plan(runs: list[PlannedRun], results_dir: Path, python: str, out: Callable[[str], None] = print,
               data_mounts: Path | None = None) -> None:
    out(f"{len(runs)} run(s):")
    for r in runs:
        state = "exists, skip" if is_complete(results_dir, r.run_id) else "to run"
        out(f"  {r.run_id:<48} {r.kind:<9} {r.engine:<10} [{state}] {_settings_text(r.varied)}")
        cmd = command_for(r, results_dir=results_dir, python=python, data_mounts=data_mounts)
        out("      $ " + " ".join(cmd))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="experiments/<name>.yaml")
    p.add_argument("--only", help="scenario names or globs, comma-separated (make experiment ONLY=...)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the expanded plan and the commands; run nothing")
    p.add_argument("--force", action="store_true", help="run again runs whose results exist")
    p.add_argument("--report-only", action="store_true", help="only (re)write the tables and the plot")
    p.add_argument("--engine", choices=["stack", "simulation"],
                   help="run the whole grid on this engine, as experiment <name>-sim / <name>-stack "
                        "(make experiment ENGINE=simulation); centralized scenarios need the stack")
    p.add_argument("--seeds", help="run the config's runs on these seeds instead of its own, comma-separated "
                                   "(make experiment SEEDS=1,2)")
    p.add_argument("--results-dir", type=Path,
                   default=Path(os.environ.get("RESULTS_DIR") or ROOT / "results"))
    p.add_argument("--data-mounts", type=Path,
                   default=Path(os.environ.get("DATA_MOUNTS") or ROOT / "data-mounts"),
                   help="stack runs split into DATA_MOUNTS/split-<hash> (one folder per distinct split)")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config)
        if a.engine:
            cfg = with_engine(cfg, a.engine)
        if a.seeds is not None:
            cfg = with_seeds(cfg, a.seeds)
        plan = expand(cfg)
        runs = select(plan, a.only)
    except ConfigError as exc:
        print(f"experiment: error: {exc}", file=sys.stderr)
        return 2
    results_dir = a.results_dir.resolve()
    data_mounts = a.data_mounts.resolve()
    if a.dry_run:
        print_plan(runs, results_dir, sys.executable, data_mounts=data_mounts)
        return 0
    # where `make up` publishes the metrics API (the Makefile exports these)
    certs = os.environ.get("CERTS_DIR")
    fetch = metrics_config_fetcher(int(os.environ.get("METRICS_PORT") or 8090),
                                   os.environ.get("HEMAFED_SCHEME") or "http",
                                   os.path.join(certs, "ca.pem") if certs else None)
    runner = Runner(cfg, results_dir, fetch_config=fetch, force=a.force, data_mounts=data_mounts)
    if a.report_only:
        results = [collect(r, results_dir, _read_json(runner._record_path(r))) for r in plan]
        write_results(cfg, results, runner.exp_dir)
        print(f"tables: {runner.exp_dir}/results.md")
        return 0
    results = runner.run(runs)
    failed = [r for r in results if r.status != "finished"]
    print(f"\n{len(results) - len(failed)}/{len(results)} run(s) finished; "
          f"table: {runner.exp_dir}/results.md, "
          f"plot: {runner.exp_dir}/accuracy_per_round.png")
    for r in failed:
        print(f"  failed: {r.run_id}: {r.message}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
