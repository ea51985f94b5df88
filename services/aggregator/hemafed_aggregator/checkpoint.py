"""Checkpoint and resume of a federated run (pure numpy + safetensors + JSON, never pickle).

After every completed round the server writes ``<run dir>/checkpoint/``:

* ``round-NNNN.safetensors``: the global weights (``global.0000``...), the best round's weights
  (``best.0000``...), every tensor list of ``strategy.state_dict()`` (``strategy.<key>.0000``...) and
  the hospitals' last updates kept under DEPARTED=keep (``last.<j>.0000``...);
* ``checkpoint.json``: the commit point. The round counter, the server RNG
  (``numpy`` ``bit_generator.state``), best round and validation accuracy, the completed rounds
  (exactly the ``RoundCreate`` entries reported to the metrics service), the hospitals' states, the
  strategy's non-tensor state, the task and the weight spec, the name and SHA-256 of the tensor file.

Each file is written to a temporary name, flushed to disk and renamed (``os.replace``, atomic on
POSIX), tensors first, JSON last: a crash at any moment leaves either the previous checkpoint or
the new one, never a mix. Older tensor files are removed only after the new JSON is in place.

:func:`load` returns ``None`` when there is no checkpoint and raises :class:`CheckpointError`
when there is one that cannot be trusted (a missing or altered tensor file, unreadable JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

VERSION = 1
DIRNAME = "checkpoint"
INDEX = "checkpoint.json"

Weights = list[np.ndarray]


class CheckpointError(Exception):
    """A checkpoint exists but cannot be used (names what is wrong)."""


@dataclass
class Checkpoint:
    """Everything a resumed run needs, as written after round ``round``."""

    round: int
    weights: Weights
    best_weights: Weights | None
    strategy_name: str
    strategy_state: dict[str, Any]
    rng_state: dict[str, Any]
    best_round: int | None = None
    best_val_accuracy: float | None = None
    #: the figure best_val_accuracy is (RunConfig.best_by; checkpoints written before it: median)
    best_by: str = "median"
    rounds: list[dict[str, Any]] = field(default_factory=list)
    hospitals: dict[str, dict[str, Any]] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    spec: list[list[Any]] = field(default_factory=list)
    started_at: float | None = None
    #: rounds this run was resumed after, oldest first (a run may be resumed more than once)
    resumed_from: list[int] = field(default_factory=list)
    #: each hospital's last accepted update (num_examples, weights), kept by DEPARTED=keep
    last_updates: dict[str, tuple[int, Weights]] = field(default_factory=dict)


def directory(run_dir: Path) -> Path:
    return run_dir / DIRNAME


def _is_tensor_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(x, np.ndarray) for x in v)


def split_state(state: dict[str, Any]) -> tuple[dict[str, Weights], dict[str, Any]]:
    """``state_dict()`` -> (tensor lists by key, JSON-serialisable rest). Raises TypeError for
    anything else (a strategy must keep its state to arrays, lists of arrays and JSON values)."""
    tensors: dict[str, Weights] = {}
    rest: dict[str, Any] = {}
    for k, v in state.items():
        if not isinstance(k, str) or not k.replace("_", "").isalnum():
            raise TypeError(f"strategy state key {k!r} must be alphanumeric (with _)")
        if _is_tensor_list(v):
            tensors[k] = [np.ascontiguousarray(x) for x in v]
        elif isinstance(v, np.ndarray):
            tensors[k] = [np.ascontiguousarray(v)]
            rest[f"__array__{k}"] = True
        else:
            try:
                json.dumps(v)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"strategy state {k!r} is neither arrays nor JSON: {exc}") from None
            rest[k] = v
    return tensors, rest


def join_state(tensors: dict[str, Weights], rest: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in rest.items() if not k.startswith("__array__")}
    for k, arrs in tensors.items():
        out[k] = arrs[0] if rest.get(f"__array__{k}") else arrs
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically; returns the path of ``checkpoint.json``."""
    d = directory(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {f"global.{i:04d}": np.ascontiguousarray(w) for i, w in enumerate(ckpt.weights)}
    if ckpt.best_weights is not None:
        tensors.update({f"best.{i:04d}": np.ascontiguousarray(w) for i, w in enumerate(ckpt.best_weights)})
    state_tensors, state_rest = split_state(ckpt.strategy_state)
    for key, arrs in state_tensors.items():
        tensors.update({f"strategy.{key}.{i:04d}": a for i, a in enumerate(arrs)})
    last_ids = sorted(ckpt.last_updates)
    for j, hid in enumerate(last_ids):
        tensors.update({f"last.{j:04d}.{i:04d}": np.ascontiguousarray(w)
                        for i, w in enumerate(ckpt.last_updates[hid][1])})
    blob = st_save(tensors)
    name = f"round-{ckpt.round:04d}.safetensors"
    _write_atomic(d / name, blob)
    index = {
        "version": VERSION,
        "round": ckpt.round,
        "tensors": name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "num_weights": len(ckpt.weights),
        "has_best": ckpt.best_weights is not None,
        "strategy": {"name": ckpt.strategy_name, "state": state_rest, "tensor_keys": sorted(state_tensors)},
        "rng_state": ckpt.rng_state,
        "best_round": ckpt.best_round,
        "best_val_accuracy": ckpt.best_val_accuracy,
        "best_by": ckpt.best_by,
        "rounds": ckpt.rounds,
        "hospitals": ckpt.hospitals,
        "task": ckpt.task,
        "spec": ckpt.spec,
        "started_at": ckpt.started_at,
        "resumed_from": ckpt.resumed_from,
        "last_updates": [[hid, int(ckpt.last_updates[hid][0])] for hid in last_ids],
    }
    _write_atomic(d / INDEX, json.dumps(index, indent=1, default=_json_default).encode())
    for old in d.glob("round-*.safetensors"):  # the previous rounds' tensors, now unreferenced
        if old.name != name:
            old.unlink(missing_ok=True)
    return d / INDEX


def load(run_dir: Path) -> Checkpoint | None:
    d = directory(run_dir)
    index_path = d / INDEX
    if not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
        if index.get("version") != VERSION:
            raise CheckpointError(f"checkpoint version {index.get('version')!r} is not {VERSION}")
        blob = (d / index["tensors"]).read_bytes()
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"unreadable checkpoint in {d}: {exc}") from exc
    if hashlib.sha256(blob).hexdigest() != index["sha256"]:
        raise CheckpointError(f"checkpoint tensors {index['tensors']} do not match their SHA-256")
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"malformed checkpoint tensors: {exc}") from exc

    def group(prefix: str) -> Weights:
        names = sorted(n for n in tensors if n.startswith(prefix) and n[len(prefix):].isdigit())
        return [tensors[n] for n in names]

    weights = group("global.")
    if len(weights) != index["num_weights"]:
        raise CheckpointError(f"checkpoint has {len(weights)} global tensors, index says {index['num_weights']}")
    best = group("best.") if index.get("has_best") else None
    strat = index["strategy"]
    state = join_state({k: group(f"strategy.{k}.") for k in strat.get("tensor_keys", [])}, strat.get("state", {}))
    return Checkpoint(
        round=int(index["round"]), weights=weights, best_weights=best, strategy_name=strat["name"],
        strategy_state=state, rng_state=index["rng_state"], best_round=index.get("best_round"),
        best_val_accuracy=index.get("best_val_accuracy"), best_by=str(index.get("best_by", "median")),
        rounds=list(index.get("rounds", [])),
        hospitals=dict(index.get("hospitals", {})), task=dict(index.get("task", {})),
        spec=list(index.get("spec", [])), started_at=index.get("started_at"),
        resumed_from=list(index.get("resumed_from", [])),
        last_updates={hid: (int(n), group(f"last.{j:04d}.")) for j, (hid, n) in enumerate(index.get("last_updates", []))},
    )


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def restore_rng(state: dict[str, Any]) -> np.random.Generator:
    """A generator in exactly ``state`` (the bit generator named in it, e.g. PCG64)."""
    name = state.get("bit_generator", "PCG64")
    bitgen_cls = getattr(np.random, name, None)
    if bitgen_cls is None:
        raise CheckpointError(f"unknown bit generator {name!r} in checkpoint")
    bitgen = bitgen_cls()
    bitgen.state = state
    return np.random.Generator(bitgen)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")
