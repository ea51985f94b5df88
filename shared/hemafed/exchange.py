"""The one model-exchange type: weights + num_examples + metrics + round.

Weights travel as a safetensors blob (never pickle). The non-tensor fields ride in the
safetensors header's ``__metadata__`` under the key ``hemafed`` as JSON, so one
``application/octet-stream`` body carries a whole message in either direction.

Tensor names are zero-padded positions (``"0000"``, ``"0001"``, ...) in the order of the
model's exchanged variables; :func:`check_weights` compares a decoded list against the
receiving side's expected shapes and dtypes and rejects non-finite values.

A hospital's reply may leave out the tensors it sends back exactly as it received them
(:func:`omit_unchanged`: a classifier re-training round changes only the classifier, FedBABU
everything but it): ``extra["unchanged"]`` lists their positions, and the aggregator puts back
what it sent (:func:`fill_unchanged`) before anything else looks at the update. The reply then
carries only what training changed, so frozen layers do not travel upstream.

The other way round, the aggregator leaves out of a request the tensors the hospital already
holds from the last weights it received (:func:`refer_to_held`): ``extra["held"]`` lists
``[position, SHA-256 digest]`` pairs, and the hospital takes those tensors from what it holds
(:func:`resolve_held`), by digest, so a tensor is never taken for another; :func:`request_digest`
names a request by what it asks for, not by its bytes, so a resend that refers to held tensors is
recognised as the request it repeats. A hospital that does
not hold one (restarted) answers 412 and gets the request whole; references are used only with a
hospital whose /fit reply said it accepts them (``extra["accepts"]``). In classifier rounds the frozen
feature extractor then travels neither way.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

CONTENT_TYPE = "application/octet-stream"
META_KEY = "hemafed"
#: Safetensors headers are small JSON documents; anything bigger is not ours.
MAX_HEADER_BYTES = 10 * 1024 * 1024
ALLOWED_DTYPES = frozenset({"float32", "float16", "float64", "int32", "int64"})
#: the same, as safetensors header codes (checked before the tensors are decoded)
_HEADER_DTYPES = frozenset({"F32", "F16", "F64", "I32", "I64"})


class ExchangeError(ValueError):
    """A model-exchange message that cannot be accepted; the message names the problem."""


@dataclass
class ModelExchange:
    """Weights plus what travels with them, in either direction."""

    weights: list[np.ndarray]
    round: int
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    #: free-form JSON-serialisable extras (instructions, hospital id, ...)
    extra: dict[str, Any] = field(default_factory=dict)
    #: named auxiliary tensor lists (e.g. SCAFFOLD control variates), same rules as weights
    aux: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        tensors = {f"{i:04d}": np.ascontiguousarray(w) for i, w in enumerate(self.weights)}
        for group, arrays in self.aux.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", group):
                raise ExchangeError(f"bad aux group name {group!r}")
            tensors.update({f"aux.{group}.{i:04d}": np.ascontiguousarray(a) for i, a in enumerate(arrays)})
        meta = {
            "round": int(self.round),
            "num_examples": int(self.num_examples),
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "extra": self.extra,
        }
        return st_save(tensors, metadata={META_KEY: json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes) -> "ModelExchange":
        meta = _read_metadata(data)
        try:
            tensors = st_load(data)
        except (SafetensorError, ValueError, TypeError, KeyError) as exc:  # malformed body
            raise ExchangeError(f"malformed safetensors body: {exc}") from exc
        names = sorted(n for n in tensors if not n.startswith("aux."))
        if names != [f"{i:04d}" for i in range(len(names))]:
            raise ExchangeError("tensor names must be consecutive positions 0000, 0001, ...")
        weights = [tensors[n] for n in names]
        aux_names: dict[str, list[str]] = {}
        for n in tensors:
            if n.startswith("aux."):
                parts = n.split(".")
                if len(parts) != 3 or not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", parts[1]):
                    raise ExchangeError(f"bad aux tensor name {n!r}")
                aux_names.setdefault(parts[1], []).append(n)
        aux = {}
        for group, group_names in aux_names.items():
            group_names.sort()
            if [n.rsplit(".", 1)[1] for n in group_names] != [f"{i:04d}" for i in range(len(group_names))]:
                raise ExchangeError(f"aux group {group!r}: names must be consecutive positions")
            aux[group] = [tensors[n] for n in group_names]
        for i, w in enumerate(weights + [a for arrs in aux.values() for a in arrs]):
            if str(w.dtype) not in ALLOWED_DTYPES:
                raise ExchangeError(f"tensor {i}: dtype {w.dtype} is not allowed")
        try:
            rnd = int(meta["round"])
            num_examples = int(meta.get("num_examples", 0))
            metrics = {str(k): float(v) for k, v in dict(meta.get("metrics", {})).items()}
            extra = dict(meta.get("extra", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ExchangeError(f"bad metadata: {exc}") from exc
        if rnd < 0 or num_examples < 0:
            raise ExchangeError("round and num_examples must be non-negative")
        return cls(weights=weights, round=rnd, num_examples=num_examples, metrics=metrics, extra=extra, aux=aux)

    @property
    def nbytes(self) -> int:
        return int(sum(w.nbytes for w in self.weights) + sum(a.nbytes for arrs in self.aux.values() for a in arrs))


def _read_metadata(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise ExchangeError("body too short to be a safetensors message")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise ExchangeError("safetensors header length is out of range")
    try:
        header = json.loads(data[8 : 8 + header_len])
        raw = header.get("__metadata__", {}).get(META_KEY)
        if raw is None:
            raise ExchangeError(f"missing '{META_KEY}' metadata in safetensors header")
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError) as exc:
        raise ExchangeError(f"unreadable safetensors header: {exc}") from exc
    if not isinstance(meta, dict):
        raise ExchangeError("metadata must be a JSON object")
    for name, entry in header.items():
        # an unknown or non-numpy dtype (e.g. BF16) would fail inside the decoder with a KeyError
        if name != "__metadata__" and isinstance(entry, dict) and entry.get("dtype") not in _HEADER_DTYPES:
            raise ExchangeError(f"tensor {str(name)[:40]!r}: dtype {str(entry.get('dtype'))[:10]!r} is not allowed")
    return meta


#: key in a reply's ``extra``: positions of the tensors left out because they are unchanged
UNCHANGED_KEY = "unchanged"


def omit_unchanged(weights: list[np.ndarray], received: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """The tensors of ``weights`` that differ from ``received`` (same position), and the positions
    of those left out because they are bit for bit what was received (same shape, dtype and
    bytes). What a hospital receives is checked finite, so a tensor that training made non-finite
    always travels, and is rejected at the aggregator."""
    if len(weights) != len(received):
        raise ValueError(f"{len(weights)} tensors against {len(received)} received")
    kept: list[np.ndarray] = []
    left_out: list[int] = []
    for i, (w, r) in enumerate(zip(weights, received)):
        same = (w.shape == r.shape and w.dtype == r.dtype
                and np.ascontiguousarray(w).tobytes() == np.ascontiguousarray(r).tobytes())
        if same:
            left_out.append(i)
        else:
            kept.append(w)
    return kept, left_out


def fill_unchanged(sent: list[np.ndarray], partial: list[np.ndarray], unchanged: Any) -> list[np.ndarray]:
    """Rebuild a full reply from the tensors it carried (``partial``) and the positions it left
    out (``unchanged``, from ``extra["unchanged"]``; None: nothing left out), filled from ``sent``.
    Raises :class:`ExchangeError` when the positions are not a strictly increasing list of valid
    positions or do not account for every tensor."""
    if unchanged is None:
        return partial
    if not isinstance(unchanged, list) or not all(type(i) is int for i in unchanged):
        raise ExchangeError(f"'{UNCHANGED_KEY}' must be a list of tensor positions")
    if any(i < 0 or i >= len(sent) for i in unchanged):
        raise ExchangeError(f"'{UNCHANGED_KEY}' names a position outside the {len(sent)} tensors sent")
    if any(b <= a for a, b in zip(unchanged, unchanged[1:])):
        raise ExchangeError(f"'{UNCHANGED_KEY}' must be strictly increasing")
    if len(partial) + len(unchanged) != len(sent):
        raise ExchangeError(f"{len(partial)} tensors carried and {len(unchanged)} left out do not make the "
                            f"{len(sent)} sent")
    left_out = set(unchanged)
    carried = iter(partial)
    return [sent[i] if i in left_out else next(carried) for i in range(len(sent))]


#: key in a request's ``extra``: ``[[position, digest], ...]`` of the tensors the receiver holds
HELD_KEY = "held"
#: key in a hospital's /fit reply: what its requests may use (``["held"]``); an older hospital
#: does not say so, and then gets every request whole
ACCEPTS_KEY = "accepts"
_DIGEST = re.compile(r"[0-9a-f]{64}")


class MissingTensors(ExchangeError):
    """A request refers to tensors the receiver does not hold (it restarted, or got another request
    in between): the sender must send them."""


def tensor_digest(w: np.ndarray) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (hex): equal digests, equal tensors."""
    h = hashlib.sha256(f"{w.dtype.str}{tuple(int(d) for d in w.shape)}".encode())
    h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def refer_to_held(weights: list[np.ndarray], held: set[str] | frozenset[str],
                  digests: list[str] | None = None) -> tuple[list[np.ndarray], list[list[Any]]]:
    """The tensors of ``weights`` to send, and ``[position, digest]`` of those left out because the
    receiver holds them (their digest is in ``held``). ``digests``: the weights' digests, if known."""
    digests = digests if digests is not None else [tensor_digest(w) for w in weights]
    carried = [w for w, d in zip(weights, digests) if d not in held]
    return carried, [[i, d] for i, d in enumerate(digests) if d in held]


def resolve_held(carried: list[np.ndarray], refs: Any, held: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The full weight list of a request: ``carried`` with the tensors named in ``refs`` (from
    ``extra["held"]``; None: nothing left out) taken from ``held`` (digest -> tensor). Raises
    :class:`MissingTensors` when a digest is not held, :class:`ExchangeError` when ``refs`` is malformed."""
    if refs is None:
        return carried
    if not isinstance(refs, list) or not all(
            isinstance(r, list) and len(r) == 2 and type(r[0]) is int and isinstance(r[1], str)
            and _DIGEST.fullmatch(r[1]) for r in refs):
        raise ExchangeError(f"'{HELD_KEY}' must be a list of [position, SHA-256 hex digest] pairs")
    positions = [r[0] for r in refs]
    total = len(carried) + len(refs)
    if any(i < 0 or i >= total for i in positions) or any(b <= a for a, b in zip(positions, positions[1:])):
        raise ExchangeError(f"'{HELD_KEY}' positions must be strictly increasing and below {total}")
    missing = [i for i, d in refs if d not in held]
    if missing:
        raise MissingTensors(f"{len(missing)} of the {len(refs)} tensors referred to are not held here "
                             f"(positions {missing[:5]}{'...' if len(missing) > 5 else ''}): send them")
    by_position = dict((i, held[d]) for i, d in refs)
    rest = iter(carried)
    return [by_position[i] if i in by_position else next(rest) for i in range(total)]


def request_digest(msg: ModelExchange, weight_digests: list[str] | None = None) -> str:
    """SHA-256 (hex) of what a request asks for, however its tensors travelled: round, example count,
    metrics, ``extra`` without the references (``held``), and the digests of its full weights (after
    :func:`resolve_held`; ``weight_digests`` if already computed) and of its aux tensors. A request sent
    whole and the same request referring to held tensors have the same digest."""
    digests = weight_digests if weight_digests is not None else [tensor_digest(w) for w in msg.weights]
    if len(digests) != len(msg.weights):
        raise ValueError(f"{len(digests)} digests for {len(msg.weights)} weights")
    content = {
        "round": msg.round,
        "num_examples": msg.num_examples,
        "metrics": msg.metrics,
        "extra": {k: v for k, v in msg.extra.items() if k != HELD_KEY},
        "weights": digests,
        "aux": {g: [tensor_digest(a) for a in arrays] for g, arrays in sorted(msg.aux.items())},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


WeightSpec = list[tuple[tuple[int, ...], str]]


def spec_of(weights: list[np.ndarray]) -> WeightSpec:
    """Shapes and dtypes of a weight list, for :func:`check_weights`."""
    return [(tuple(int(d) for d in w.shape), str(w.dtype)) for w in weights]


def check_weights(weights: list[np.ndarray], spec: WeightSpec, *, max_norm: float | None = None) -> None:
    """Raise :class:`ExchangeError` unless ``weights`` matches ``spec`` and is finite."""
    if len(weights) != len(spec):
        raise ExchangeError(f"expected {len(spec)} tensors, got {len(weights)}")
    for i, (w, (shape, dtype)) in enumerate(zip(weights, spec)):
        if tuple(w.shape) != tuple(shape):
            raise ExchangeError(f"tensor {i}: shape {tuple(w.shape)} != expected {tuple(shape)}")
        if str(w.dtype) != dtype:
            raise ExchangeError(f"tensor {i}: dtype {w.dtype} != expected {dtype}")
        if not np.all(np.isfinite(w)):
            raise ExchangeError(f"tensor {i}: contains NaN or Inf")
    if max_norm is not None:
        norm = float(np.sqrt(sum(float(np.sum(np.square(w, dtype=np.float64))) for w in weights)))
        if norm > max_norm:
            raise ExchangeError(f"update norm {norm:.3g} exceeds the limit {max_norm:.3g}")
