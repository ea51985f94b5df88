"""``hemafed-split`` / ``python -m hemafed.data.split``: split a dataset into hospital folders.

Writes ``OUT/hospital-1..N/<class>/<file>``, ``OUT/test/<class>/<file>`` (a stratified, held-out
global test set) and ``OUT/manifest.json``. Folder sources are copied byte-for-byte; synthetic and
``.npz`` images are written as PNG. File names are ``<source>__<class>__<file>`` (folders) or
``<source>__<id>.png`` (arrays), so merged sources never collide.

Splits (all deterministic for a given dataset + ``--seed``):

* ``iid`` - every class dealt round-robin over the hospitals (equal shares, +-1);
* ``noniid`` - label skew: per class, hospital shares ~ Dirichlet(``--alpha``) (small alpha = more
  skew, large alpha ~ IID);
* ``source`` - hospitals differ by source, see ``--source-proportions``.

``--source-proportions`` syntax: one row per hospital separated by ``;``, one non-negative weight per
source separated by ``,``, in the order the sources appear in the dataset (and in the manifest), e.g.
``"1,0;0,1;0.5,0.5"`` for 3 hospitals and 2 sources. Each source's images are divided among the
hospitals in proportion to its column; a zero means that hospital gets none of that source. The
default (for N >= 2 hospitals) is the PBC+HRD study layout: hospital-1 only the first source,
hospital-2 only the second, every other hospital all sources evenly (row ``1/S,...,1/S``); with 2
sources and equal source sizes all hospitals end up the same size. Sources with an all-zero column
(e.g. a third source in the default for 2 hospitals) are left out and counted as ``unassigned``.

``--min-per-hospital``: after the draw, a hospital below the minimum gets images moved to it
deterministically from the largest hospitals (only from sources it may hold under a source split);
``noniid`` first re-draws the Dirichlet shares up to 100 times.

Before writing, only what the tool owns is removed: ``OUT/hospital-<number>``, ``OUT/test`` and
``OUT/manifest.json``; the new tree is built in a hidden staging folder in OUT and moved in place.

Exit status: 0 on success, 2 with a one-line ``hemafed-split: error: ...`` on bad input, 1 when
writing fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hemafed.data.loader import stratified_split
from hemafed.data.sources import Dataset, DatasetError, Record, SkippedFile, load_dataset

__all__ = [
    "SPLITS",
    "SplitError",
    "SplitOptions",
    "assign_by_source",
    "assign_dirichlet",
    "assign_iid",
    "build_parser",
    "default_source_weights",
    "hold_out_test",
    "largest_remainder",
    "main",
    "parse_source_proportions",
    "partition",
    "rebalance",
    "run_split",
    "weighted_deal",
]

SPLITS: tuple[str, ...] = ("iid", "noniid", "source")
MANIFEST_FORMAT = "hemafed-split/1"
#: at most this many skipped files are listed by name in the manifest (all are counted)
MAX_LISTED_SKIPPED = 1000
_DIRICHLET_TRIES = 100
_HOSPITAL_DIR = re.compile(r"^hospital-\d+$")


class SplitError(ValueError):
    """The split cannot be made as asked (too few images, bad proportions, ...); one-line message."""


# --------------------------------------------------------------------------- allocation helpers


def largest_remainder(total: int, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total``, proportional to ``weights`` (largest-remainder rounding;
    ties go to the lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    if total == 0 or w.sum() <= 0:
        return np.zeros(len(w), dtype=np.int64)
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return counts


def weighted_deal(n: int, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Deal ``n`` items to bins in proportion to ``weights`` (smooth weighted round-robin).

    Every prefix of the sequence is within one item of the exact proportions, so dealing a
    class-sorted list also stratifies by class. Zero-weight bins never receive anything.
    """
    w = np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    if total <= 0:
        raise ValueError("weights must have a positive sum")
    current = np.zeros_like(w)
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        current += w
        k = int(np.argmax(current))
        current[k] -= total
        out[i] = k
    return out


def _class_sorted(idx: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``idx`` shuffled, then stably sorted by label (random order within each class)."""
    shuffled = rng.permutation(idx)
    return shuffled[np.argsort(labels[shuffled], kind="stable")]


# --------------------------------------------------------------------------- assignment


def hold_out_test(
    labels: np.ndarray, sources: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(pool_idx, test_idx)``: the test set is stratified by class and source (every
    class/source group with >= 2 images gives at least one image to the test set when
    ``test_fraction`` > 0)."""
    strata = labels.astype(np.int64) * (int(sources.max(initial=0)) + 1) + sources
    return stratified_split(strata, test_fraction, seed)


def assign_iid(labels: np.ndarray, n_clients: int, rng: np.random.Generator) -> np.ndarray:
    """Hospital index per item: classes dealt round-robin, so shares are equal within +-1."""
    order = _class_sorted(np.arange(len(labels)), labels, rng)
    out = np.empty(len(labels), dtype=np.int64)
    out[order] = weighted_deal(len(order), np.ones(n_clients))
    return out


def assign_dirichlet(
    labels: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """Hospital index per item: for each class, shares ~ Dirichlet(alpha, ..., alpha)."""
    out = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        counts = largest_remainder(len(idx), rng.dirichlet(np.full(n_clients, alpha)))
        out[idx] = np.repeat(np.arange(n_clients), counts)
    return out


def assign_by_source(
    labels: np.ndarray, sources: np.ndarray, weights: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Hospital index per item (-1 = unassigned): each source's items, class-sorted, are dealt to
    hospitals in proportion to that source's column of ``weights`` (hospitals x sources)."""
    out = np.full(len(labels), -1, dtype=np.int64)
    for s in range(weights.shape[1]):
        col = weights[:, s]
        idx = np.flatnonzero(sources == s)
        if col.sum() <= 0 or idx.size == 0:
            continue
        order = _class_sorted(idx, labels, rng)
        out[order] = weighted_deal(len(order), col)
    return out


def rebalance(
    assign: np.ndarray, labels: np.ndarray, sources: np.ndarray, allowed: np.ndarray, min_per: int
) -> np.ndarray:
    """Move items so that every hospital has at least ``min_per`` (deterministic).

    The neediest hospital (lowest count, then lowest index) takes one item from the largest
    hospital that has more than ``min_per`` and holds an item of a source it may receive
    (``allowed``: hospitals x sources); the item comes from that donor's most plentiful class.
    Raises :class:`SplitError` when no legal move is left.
    """
    a = assign.copy()
    n = allowed.shape[0]
    while True:
        counts = np.bincount(a[a >= 0], minlength=n)
        if counts.min() >= min_per:
            return a
        h = int(np.argmin(counts))
        movable = (a >= 0) & (a != h) & allowed[h, sources]
        movable &= counts[np.maximum(a, 0)] > min_per
        if not movable.any():
            raise SplitError(
                f"cannot give hospital-{h + 1} --min-per-hospital {min_per} images (it has {counts[h]}); "
                "lower --min-per-hospital or --clients, or change --source-proportions"
            )
        donor = int(np.argmax(np.bincount(a[movable], minlength=n)))
        items = np.flatnonzero(movable & (a == donor))
        cls = int(np.argmax(np.bincount(labels[items])))
        a[items[labels[items] == cls][-1]] = h


def default_source_weights(n_clients: int, n_sources: int) -> np.ndarray:
    """Hospital-1 only source 1, hospital-2 only source 2, the others all sources evenly."""
    w = np.full((n_clients, n_sources), 1.0 / n_sources)
    for h in range(min(2, n_clients, n_sources)):
        w[h] = 0.0
        w[h, h] = 1.0
    return w


def parse_source_proportions(text: str, n_clients: int, n_sources: int) -> np.ndarray:
    """Parse ``"w11,w12;w21,w22;..."`` (rows = hospitals, columns = sources) into a weight matrix."""
    rows = [r for r in text.replace(" ", "").split(";") if r]
    if len(rows) != n_clients:
        raise SplitError(f"--source-proportions has {len(rows)} rows; need one per hospital ({n_clients})")
    cells = [r.split(",") for r in rows]
    if any(len(r) != n_sources for r in cells):
        raise SplitError(f"--source-proportions: every row needs {n_sources} weights (one per source)")
    try:
        w = np.array([[float(x) for x in r] for r in cells], dtype=np.float64)
    except ValueError:
        raise SplitError(
            f"--source-proportions must be numbers like '1,0;0,1;0.5,0.5', got {text!r}"
        ) from None
    if not np.isfinite(w).all() or (w < 0).any():
        raise SplitError("--source-proportions weights must be finite and >= 0")
    if (w.sum(axis=1) <= 0).any():
        raise SplitError("--source-proportions: every hospital needs a positive weight for some source")
    return w


def partition(
    labels: np.ndarray,
    sources: np.ndarray,
    *,
    n_clients: int,
    split: str,
    alpha: float = 0.5,
    min_per_hospital: int = 0,
    source_weights: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Hospital index (0-based, -1 = unassigned) for every item of the pool; see the module doc."""
    if len(labels) < n_clients * min_per_hospital:
        raise SplitError(
            f"too few images: {len(labels)} left for {n_clients} hospitals x --min-per-hospital "
            f"{min_per_hospital} = {n_clients * min_per_hospital}"
        )
    rng = np.random.default_rng([seed, 1])
    n_src = int(sources.max(initial=0)) + 1
    allowed = np.ones((n_clients, n_src), dtype=bool)
    if split == "iid":
        a = assign_iid(labels, n_clients, rng)
    elif split == "noniid":
        a = _best_dirichlet(labels, n_clients, alpha, min_per_hospital, rng)
    elif split == "source":
        if source_weights is None:
            source_weights = default_source_weights(n_clients, n_src)
        allowed = source_weights > 0
        a = assign_by_source(labels, sources, source_weights, rng)
    else:
        raise SplitError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    return rebalance(a, labels, sources, allowed, min_per_hospital)


def _best_dirichlet(
    labels: np.ndarray, n_clients: int, alpha: float, min_per: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw Dirichlet splits until every hospital has ``min_per`` (keep the best of 100 tries)."""
    best, best_min = None, -1
    for _ in range(_DIRICHLET_TRIES):
        a = assign_dirichlet(labels, n_clients, alpha, rng)
        low = int(np.bincount(a, minlength=n_clients).min())
        if low > best_min:
            best, best_min = a, low
        if low >= min_per:
            break
    assert best is not None
    return best


# --------------------------------------------------------------------------- options & run


@dataclass
class SplitOptions:
    """Everything the split needs (the CLI options)."""

    dataset: str = "synthetic"
    mapping: str | None = None
    clients: int = 3
    split: str = "iid"
    alpha: float = 0.5
    min_per_hospital: int = 20
    test_fraction: float = 0.15
    source_proportions: str | None = None
    seed: int = 0
    synthetic_per_class: int = 300
    synthetic_size: int = 64
    out: str = "data-mounts"
    cache_dir: str | None = None
    workers: int = 4

    def validate(self) -> None:
        """Raise :class:`SplitError` for out-of-range values."""
        checks = [
            (self.split in SPLITS, f"unknown split {self.split!r}; choose from {', '.join(SPLITS)}"),
            (self.clients >= 1, "--clients must be >= 1"),
            (self.alpha > 0, "--alpha must be > 0"),
            (self.min_per_hospital >= 0, "--min-per-hospital must be >= 0"),
            (0.0 <= self.test_fraction < 1.0, "--test-fraction must be in [0, 1)"),
            (self.synthetic_per_class >= 1, "--synthetic-per-class must be >= 1"),
            (8 <= self.synthetic_size <= 1024, "--synthetic-size must be in 8..1024"),
            (self.workers >= 1, "--workers must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise SplitError(message)


@dataclass
class SplitResult:
    """What :func:`run_split` did: the manifest written and the records per output folder."""

    manifest: dict[str, Any]
    folders: dict[str, list[Record]]


def _source_index(dataset: Dataset) -> tuple[list[str], np.ndarray]:
    """Source names that have records (spec order) and each record's index into them."""
    present = {r.source for r in dataset.records}
    names = [s.name for s in dataset.sources if s.name in present]
    pos = {n: i for i, n in enumerate(names)}
    return names, np.array([pos[r.source] for r in dataset.records], dtype=np.int64)


def _source_weights(opts: SplitOptions, n_sources: int, spec: str) -> np.ndarray | None:
    if opts.split != "source":
        return None
    if n_sources < 2:
        raise SplitError(
            f"--split source needs at least 2 sources, but dataset {spec!r} has one; "
            "use a comma list of datasets or synthetic (stains A and B)"
        )
    if opts.source_proportions:
        return parse_source_proportions(opts.source_proportions, opts.clients, n_sources)
    if opts.clients < 2:
        raise SplitError("--split source needs --clients >= 2 (or explicit --source-proportions)")
    return default_source_weights(opts.clients, n_sources)


def _plan(
    opts: SplitOptions, dataset: Dataset
) -> tuple[dict[str, list[Record]], list[str], np.ndarray | None]:
    """Decide which record goes where: ``{"hospital-1": [...], ..., "test": [...], "unassigned": [...]}``."""
    class_pos = {c: i for i, c in enumerate(dataset.classes)}
    labels = np.array([class_pos[r.label] for r in dataset.records], dtype=np.int64)
    names, sources = _source_index(dataset)
    weights = _source_weights(opts, len(names), opts.dataset)
    pool, test = hold_out_test(labels, sources, opts.test_fraction, opts.seed)
    assign = partition(
        labels[pool],
        sources[pool],
        n_clients=opts.clients,
        split=opts.split,
        alpha=opts.alpha,
        min_per_hospital=opts.min_per_hospital,
        source_weights=weights,
        seed=opts.seed,
    )
    folders: dict[str, list[Record]] = {f"hospital-{h + 1}": [] for h in range(opts.clients)}
    folders["test"] = [dataset.records[i] for i in test]
    folders["unassigned"] = []
    for i, h in zip(pool.tolist(), assign.tolist(), strict=True):
        folders["unassigned" if h < 0 else f"hospital-{h + 1}"].append(dataset.records[i])
    return folders, names, weights


def _counts(records: list[Record], classes: list[str], sources: list[str]) -> dict[str, Any]:
    by_class = Counter(r.label for r in records)
    by_source = Counter(r.source for r in records)
    return {
        "total": len(records),
        "classes": {c: by_class.get(c, 0) for c in classes},
        "sources": {s: by_source.get(s, 0) for s in sources},
    }


def _skipped_section(skipped: list[SkippedFile]) -> dict[str, Any]:
    return {
        "total": len(skipped),
        "reasons": dict(sorted(Counter(s.reason for s in skipped).items())),
        "files": [
            {"source": s.source, "file": s.file, "reason": s.reason} for s in skipped[:MAX_LISTED_SKIPPED]
        ],
        "files_truncated": len(skipped) > MAX_LISTED_SKIPPED,
    }


def build_manifest(
    opts: SplitOptions,
    dataset: Dataset,
    folders: dict[str, list[Record]],
    sources: list[str],
    weights: np.ndarray | None,
) -> dict[str, Any]:
    """The ``manifest.json`` content (counts only; skipped files listed by source-relative name)."""
    info = {s.name: s for s in dataset.sources}
    all_used = [r for recs in folders.values() for r in recs]
    per_source = {s: _counts([r for r in all_used if r.source == s], dataset.classes, [s]) for s in sources}
    return {
        "format": MANIFEST_FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "seed": opts.seed,
        "dataset": opts.dataset,
        "mapping": opts.mapping,
        "split": opts.split,
        "alpha": opts.alpha,
        "clients": opts.clients,
        "min_per_hospital": opts.min_per_hospital,
        "test_fraction": opts.test_fraction,
        "source_proportions": weights.tolist() if weights is not None else None,
        "synthetic": {"per_class": opts.synthetic_per_class, "image_size": opts.synthetic_size},
        "classes": list(dataset.classes),
        "sources": [
            {
                "name": s,
                "kind": info[s].kind,
                "location": info[s].location,
                "images": per_source[s]["total"],
                "classes": per_source[s]["classes"],
            }
            for s in sources
        ],
        "hospitals": {
            k: _counts(v, dataset.classes, sources) for k, v in folders.items() if k.startswith("hospital-")
        },
        "test": _counts(folders["test"], dataset.classes, sources),
        "unassigned": _counts(folders["unassigned"], dataset.classes, sources),
        "skipped": _skipped_section(dataset.skipped),
        "unused_mapping_keys": dataset.unused_mapping_keys,
    }


# --------------------------------------------------------------------------- writing


def _owned_entries(out: Path) -> list[Path]:
    """What the tool owns in ``out``: hospital-<n>, test, manifest.json (nothing else)."""
    if not out.is_dir():
        return []
    owned = [p for p in out.iterdir() if _HOSPITAL_DIR.match(p.name)]
    owned += [p for p in (out / "test", out / "manifest.json") if p.exists() or p.is_symlink()]
    return sorted(owned)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def _check_inputs_outside_outputs(dataset: Dataset, out: Path, n_clients: int) -> None:
    """Refuse to split a dataset that lives inside a folder this run would replace."""
    owned = [out / f"hospital-{h + 1}" for h in range(n_clients)] + [out / "test"] + _owned_entries(out)
    owned_resolved = [p.resolve() for p in owned]
    for info in dataset.sources:
        if info.kind not in ("folder", "npz"):
            continue
        loc = Path(info.location).resolve()
        for p in owned_resolved:
            if loc == p or loc.is_relative_to(p):
                raise SplitError(f"dataset {info.location} lies inside {p}, which this split would replace")


def _write_tree(stage: Path, folders: dict[str, list[Record]], classes: list[str], workers: int) -> None:
    """Create ``<stage>/<folder>/<class>/`` for every folder and class, then copy/write the images."""
    jobs: list[tuple[Record, Path]] = []
    for folder, records in folders.items():
        if folder == "unassigned":
            continue
        for c in classes:
            (stage / folder / c).mkdir(parents=True, exist_ok=True)
        jobs.extend((r, stage / folder / r.label / r.output_name()) for r in records)
    names = [dst for _, dst in jobs]
    if len(set(names)) != len(names):  # cannot happen with unique source names; guard anyway
        raise SplitError("internal error: two output files would have the same name")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda job: job[0].write_to(job[1]), jobs, chunksize=64))


def _publish(stage: Path, out: Path) -> None:
    """Remove the owned entries of ``out`` and move the staged tree into place."""
    for p in _owned_entries(out):
        _remove(p)
    for p in sorted(stage.iterdir()):
        os.replace(p, out / p.name)


def run_split(opts: SplitOptions, log: Callable[[str], None] = print) -> SplitResult:
    """Load, split and write; returns the manifest. Raises :class:`DatasetError`/:class:`SplitError`."""
    opts.validate()
    out = Path(opts.out).expanduser()
    if out.exists() and not out.is_dir():
        raise SplitError(f"--out {opts.out} exists and is not a folder")
    dataset = load_dataset(
        opts.dataset,
        mapping=opts.mapping,
        synthetic_per_class=opts.synthetic_per_class,
        synthetic_size=opts.synthetic_size,
        seed=opts.seed,
        cache_dir=opts.cache_dir,
        workers=opts.workers,
    )
    if dataset.unused_mapping_keys:
        log(f"warning: mapping keys matched no class: {', '.join(dataset.unused_mapping_keys)}")
    _check_inputs_outside_outputs(dataset, out, opts.clients)
    folders, sources, weights = _plan(opts, dataset)
    manifest = build_manifest(opts, dataset, folders, sources, weights)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".hemafed-split-", dir=out))
    try:
        _write_tree(stage, folders, dataset.classes, opts.workers)
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return SplitResult(manifest, folders)


def format_summary(manifest: dict[str, Any], out: str) -> str:
    """A short hospital x class table of counts, plus test, unassigned and skipped totals."""
    classes: list[str] = manifest["classes"]
    rows = dict(manifest["hospitals"])
    rows["test"] = manifest["test"]
    if manifest["unassigned"]["total"]:
        rows["unassigned"] = manifest["unassigned"]
    head_w = max(len(k) for k in rows)
    widths = [max(len(c), 5) for c in classes]
    title = (
        f"{manifest['split']} split of {manifest['dataset']!r} (seed {manifest['seed']}, "
        f"{len(manifest['sources'])} source(s)) -> {out}"
    )
    lines = [
        title,
        " " * head_w + "".join(f" {c:>{w}}" for c, w in zip(classes, widths, strict=True)) + f" {'total':>6}",
    ]
    for name, cnt in rows.items():
        cells = "".join(f" {cnt['classes'][c]:>{w}}" for c, w in zip(classes, widths, strict=True))
        lines.append(f"{name:<{head_w}}{cells} {cnt['total']:>6}")
    sk = manifest["skipped"]
    reasons = ", ".join(f"{k} {v}" for k, v in sk["reasons"].items())
    lines.append(f"skipped: {sk['total']}" + (f" ({reasons})" if reasons else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgError(message)


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser (see the module doc for the semantics)."""
    p = _Parser(prog="hemafed-split", description="Split a blood-cell dataset into hospital folders.")
    p.add_argument(
        "--dataset",
        default="synthetic",
        help="synthetic[:A+B], a <class>/<file> folder, a .npz, bloodmnist[:64], or a comma list "
        "(items may be NAME=TARGET); default: synthetic",
    )
    p.add_argument(
        "--mapping", help="YAML/JSON {source_class: canonical_class|null}; unmapped classes are kept"
    )
    p.add_argument("--clients", type=int, default=3, help="number of hospitals (default 3)")
    p.add_argument("--split", default="iid", help="iid | noniid | source (default iid)")
    p.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet concentration for noniid (default 0.5)"
    )
    p.add_argument(
        "--min-per-hospital", type=int, default=20, help="minimum images per hospital (default 20)"
    )
    p.add_argument(
        "--test-fraction", type=float, default=0.15, help="held-out global test share (default 0.15)"
    )
    p.add_argument(
        "--source-proportions",
        help="split=source weights: rows=hospitals ';', columns=sources ',' e.g. '1,0;0,1;0.5,0.5'",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--synthetic-per-class", type=int, default=300, help="synthetic images per class (default 300)"
    )
    p.add_argument("--synthetic-size", type=int, default=64, help="synthetic image side in px (default 64)")
    p.add_argument("--out", default="data-mounts", help="output folder (default data-mounts)")
    p.add_argument("--cache-dir", help="where bloodmnist downloads go (default ~/.medmnist)")
    p.add_argument("--workers", type=int, default=4, help="threads for checking/copying files (default 4)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 bad input, 1 write failure)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _ArgError as exc:
        print(f"hemafed-split: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    opts = SplitOptions(**vars(args))
    try:
        result = run_split(opts, log=lambda m: print(m, file=sys.stderr))
    except (DatasetError, SplitError) as exc:
        print(f"hemafed-split: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hemafed-split: error: writing {opts.out} failed: {exc}", file=sys.stderr)
        return 1
    print(format_summary(result.manifest, opts.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
