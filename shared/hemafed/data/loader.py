"""Run-time loading of a hospital's mounted image folder (used by the hospital agent).

``load_image_folder`` reads ``root/<class>/<file>`` into memory as a uint8 array resized to the
task's image size; bad files are skipped and counted, never fatal. Nothing it returns contains a
file name, so its counts can go into API responses as they are. ``stratified_split`` makes the
local train/validation split.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from hemafed.data.imagefiles import ImageDecodeError, decode_rgb, scan_image_folder

__all__ = ["LoadedImages", "load_image_folder", "stratified_split"]

#: files decoded per batch by the thread pool (bounds the number of decoded images held at once)
_CHUNK = 512


@dataclass(frozen=True, eq=False)
class LoadedImages:
    """Images of one folder: ``images`` uint8 (N, S, S, 3), ``labels`` int64 indices into ``classes``.

    ``skipped`` is the number of files not loaded; ``skipped_reasons`` counts them per reason
    (``corrupt``, ``unreadable``, ``too_large``, ``unknown_class``, ``not_image``, ``no_class_folder``).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> dict[str, int]:
        """Number of loaded images per class (every class listed, zeros included)."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}


def _decode_or_reason(path: Path, size: int) -> np.ndarray | str:
    try:
        return decode_rgb(path, size)
    except ImageDecodeError as exc:
        return exc.reason


def _decode_all(paths: list[Path], size: int, workers: int) -> Iterator[np.ndarray | str]:
    """Decode ``paths`` in order (lazily, so only a few decoded images are alive at a time)."""
    if workers <= 1 or len(paths) <= 64:
        yield from (_decode_or_reason(p, size) for p in paths)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), _CHUNK):
            yield from pool.map(lambda p: _decode_or_reason(p, size), paths[start : start + _CHUNK])


def load_image_folder(
    path: str | Path,
    image_size: int,
    classes: Sequence[str] | None = None,
    *,
    workers: int = 1,
) -> LoadedImages:
    """Load every image under ``path/<class>/`` as RGB, resized to ``image_size`` x ``image_size``.

    ``classes``: the label order (e.g. the task's class list); folders not in it are skipped and
    counted as ``unknown_class``, and listed classes without a folder simply get no images. When
    ``None``, the classes are the sorted sub-folder names. Any image mode is converted to RGB;
    corrupt, truncated or unreadable files are skipped and counted. ``workers`` > 1 decodes in a
    thread pool (helps only for large images; small JPEGs are fastest with the default 1).
    Raises :class:`FileNotFoundError` if ``path`` does not exist.
    """
    if image_size < 1:
        raise ValueError("image_size must be >= 1")
    if classes is not None and len(set(classes)) != len(list(classes)):
        raise ValueError("classes must not contain duplicates")
    scan = scan_image_folder(path, list(classes) if classes is not None else None)
    index = {c: i for i, c in enumerate(scan.classes)}
    paths = [p for p, _ in scan.files]
    results = _decode_all(paths, image_size, workers)
    reasons: Counter[str] = Counter(reason for _, reason in scan.skipped)
    images = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty(len(paths), dtype=np.int64)
    n = 0
    for (_, cls), res in zip(scan.files, results, strict=True):
        if isinstance(res, str):
            reasons[res] += 1
            continue
        images[n] = res
        labels[n] = index[cls]
        n += 1
    return LoadedImages(
        images=images[:n].copy() if n < len(paths) else images,
        labels=labels[:n].copy(),
        classes=list(scan.classes),
        skipped=sum(reasons.values()),
        skipped_reasons=dict(sorted(reasons.items())),
    )


def _n_holdout(n: int, fraction: float) -> int:
    """How many of ``n`` items of one class to hold out: round(n * fraction), at least 1 and at
    most n - 1 when n >= 2 and fraction > 0; 0 for single-image classes."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, int(np.floor(n * fraction + 0.5))))


def stratified_split(
    labels: Sequence[int] | np.ndarray, val_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split into ``(train_idx, val_idx)`` (sorted int64 index arrays).

    Each class holds out ``round(n * val_fraction)`` images, at least one for every class with
    >= 2 images (and never its last one). Same labels + fraction + seed => same split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    y = np.asarray(labels).ravel()
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
    val: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = _n_holdout(len(idx), val_fraction)
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(val)).astype(np.int64)


def random_split(
    labels: Sequence[int] | np.ndarray, val_fraction: float, seed: int = 0, key: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split into ``(train_idx, val_idx)`` ignoring the classes: ``round(n *
    val_fraction)`` images drawn uniformly, at least one when ``n >= 2`` and never all of them.

    For sites too small to stratify: :func:`stratified_split` holds out one image of every class a
    site has twice, which at ~12 images a site keeps ~30% of them, and never a class the site has
    once (the rare ones), so the validation set misses exactly the rare classes. Drawn uniformly,
    each site's few validation images follow the site's own class mix and, over many sites, the
    federation's, provided the sites draw independently: ``key`` (the hospital id) is mixed into
    the seed, because sites cut from one pool by a stratified split hold the same label list in
    the same order, and one seed would hold out the same positions, hence the same classes, at
    every site. Same labels + fraction + seed + key => same split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    n = len(np.asarray(labels).ravel())
    salt = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    idx = np.random.default_rng([seed, salt]).permutation(n)
    k = _n_holdout(n, val_fraction)
    return np.sort(idx[k:]).astype(np.int64), np.sort(idx[:k]).astype(np.int64)


#: how a hospital holds out its validation images (HospitalSettings.val_split)
ValSplit = Literal["stratified", "random"]
VAL_SPLITS: tuple[str, ...] = get_args(ValSplit)


def validation_split(
    labels: Sequence[int] | np.ndarray, val_fraction: float, seed: int = 0, method: str = "stratified",
    key: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)`` by ``method``: ``stratified`` (per class, the default) or ``random``
    (drawn with ``key``, the hospital id, mixed into the seed; the stratified split ignores it)."""
    if method == "stratified":
        return stratified_split(labels, val_fraction, seed)
    if method == "random":
        return random_split(labels, val_fraction, seed, key)
    raise ValueError(f"unknown validation split {method!r}; choose one of {', '.join(VAL_SPLITS)}")


def remap_labels(labels: np.ndarray, from_classes: Sequence[str], to_classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Relabel indices into ``from_classes`` as indices into ``to_classes``.

    Returns the new labels of the kept examples and the boolean mask of kept examples
    (classes missing from ``to_classes`` are dropped)."""
    index = {c: i for i, c in enumerate(to_classes)}
    mapping = np.array([index.get(c, -1) for c in from_classes], dtype=np.int64)
    mapped = mapping[labels] if len(labels) else np.asarray(labels, dtype=np.int64)
    keep = mapped >= 0
    return mapped[keep], keep
