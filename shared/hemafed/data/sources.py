"""Dataset sources for the split tool: synthetic images, image folders, BloodMNIST ``.npz`` files.

A *source* yields :class:`Record` s: an id unique within the source, a class name, the source name
(used by ``--split source``) and a way to get the pixels (the original file, or an array).

Dataset spec (``--dataset``): one or more comma-separated items, each optionally ``NAME=TARGET``:

* ``synthetic`` - the built-in generator with stains A and B (sources ``synthetic-A``,
  ``synthetic-B``); ``synthetic:A+B+C`` picks the stains. With ``lab=synthetic`` the sources are
  ``lab-A``, ``lab-B``.
* a folder in ``<class>/<file>`` layout - source name = the folder's basename (or ``NAME``);
* a ``.npz`` in MedMNIST layout (``train_images``/``train_labels``/``val_*``/``test_*``; all
  splits present are pooled) - source name = the file's stem (or ``NAME``); labels are indices
  into the BloodMNIST class order (:data:`BLOODMNIST_CLASSES`), or into an optional ``classes``
  string array stored in the file;
* ``bloodmnist`` / ``bloodmnist:64`` (28, 64, 128, 224) - downloaded through the ``medmnist``
  package into a cache folder (default ``~/.medmnist``) and then read as an ``.npz``; if the file is
  already in the cache, nothing is downloaded and ``medmnist`` is not needed.

Example: ``pbc=/data/pbc-128,/data/bccd-crops,/data/bloodmnist_64.npz``.

Class mapping (``--mapping FILE``, YAML or JSON): ``{source_class: canonical_class}``. A key may be
``SOURCE:CLASS`` to apply to one source only (it wins over a plain ``CLASS`` key). **Unmapped
classes are kept under their own name**; map a class to ``null`` to drop it - dropped images are
counted (reason ``dropped_by_mapping``). Classes are sorted by name (for the PBC classes that is
the PBC/BloodMNIST order).
"""

from __future__ import annotations

import json
import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import yaml
from PIL import Image

from hemafed.data import synthetic
from hemafed.data.imagefiles import check_image, decode_rgb, scan_image_folder

__all__ = [
    "BLOODMNIST_CLASSES",
    "BLOODMNIST_SIZES",
    "Dataset",
    "DatasetError",
    "ImageFolderSource",
    "NpzSource",
    "Record",
    "ScanResult",
    "SkippedFile",
    "Source",
    "SourceInfo",
    "SyntheticSource",
    "apply_class_mapping",
    "bloodmnist_npz",
    "load_class_mapping",
    "load_dataset",
    "parse_dataset_spec",
]

#: BloodMNIST label order (label i = BLOODMNIST_CLASSES[i]); the PBC folder names.
BLOODMNIST_CLASSES: tuple[str, ...] = synthetic.CLASSES
BLOODMNIST_SIZES: tuple[int, ...] = (28, 64, 128, 224)

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class DatasetError(ValueError):
    """Bad dataset input (missing path, unreadable npz, bad mapping ...); the message is one line."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SkippedFile:
    """A file (or array item) that is not used, and why."""

    source: str
    file: str
    reason: str


@dataclass(frozen=True)
class Record:
    """One image: ``uid`` unique within ``source``, class ``label`` and where the pixels are.

    File-backed records have ``path`` (copied as-is by the split tool); array-backed ones have
    ``array_fn`` returning a uint8 HxWx3 array (written as PNG). ``original_label`` is the class
    name in the source before any mapping.
    """

    uid: str
    label: str
    source: str
    path: Path | None = None
    original_label: str = ""
    array_fn: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.original_label:
            object.__setattr__(self, "original_label", self.label)

    def load_array(self, size: int | None = None) -> np.ndarray:
        """The image as uint8 HxWx3 RGB (resized to ``size`` x ``size`` if given)."""
        if self.path is not None:
            return decode_rgb(self.path, size)
        if self.array_fn is None:
            raise ValueError(f"record {self.source}/{self.uid} has neither a path nor an array")
        arr = self.array_fn()
        if size is not None and arr.shape[:2] != (size, size):
            img = Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
        return arr

    def output_name(self) -> str:
        """File name for the split output: ``<source>__<uid>`` (``/`` -> ``__``), safe characters only.

        Unique across merged sources because source names are unique and uids are unique within a
        source; file-backed records keep their original extension, array-backed ones get ``.png``.
        """
        base = f"{self.source}__{self.uid.replace('/', '__')}"
        if self.path is None:
            base += ".png"
        return _SAFE_CHARS.sub("_", base)

    def write_to(self, dst: Path) -> None:
        """Copy the original file byte-for-byte to ``dst``, or write the array as PNG."""
        if self.path is not None:
            shutil.copyfile(self.path, dst)
        else:
            Image.fromarray(self.load_array()).save(dst, format="PNG", compress_level=3)


@dataclass
class ScanResult:
    """Usable records and skipped files of one source."""

    records: list[Record] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


@dataclass(frozen=True)
class SourceInfo:
    """Describes one record-source name for the manifest."""

    name: str
    kind: str
    location: str


# --------------------------------------------------------------------------- sources


class Source(ABC):
    """A dataset source: a spec item that produces records for one or more source names."""

    kind: ClassVar[str] = ""

    def __init__(self, name: str, location: str) -> None:
        self.name = name
        self.location = location

    def source_names(self) -> list[str]:
        """The ``Record.source`` values this source produces."""
        return [self.name]

    def infos(self) -> list[SourceInfo]:
        return [SourceInfo(n, self.kind, self.location) for n in self.source_names()]

    @abstractmethod
    def scan(self, *, check_images: bool = True, workers: int = 1) -> ScanResult:
        """List the records (and skipped files); ``check_images`` fully decodes files to find bad ones."""


class SyntheticSource(Source):
    """The built-in generator: ``per_class`` images per class, spread over ``stains``."""

    kind = "synthetic"

    def __init__(
        self,
        name: str = "synthetic",
        stains: Sequence[str] = synthetic.DEFAULT_SOURCES,
        per_class: int = 300,
        image_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(name, f"synthetic:{'+'.join(stains)}")
        if not stains or len(set(stains)) != len(stains):
            raise DatasetError(f"synthetic: stains must be distinct and non-empty, got {list(stains)}")
        if per_class < 1 or image_size < 8:
            raise DatasetError("synthetic: --synthetic-per-class must be >= 1 and --synthetic-size >= 8")
        self.stains = tuple(stains)
        self.per_class = per_class
        self.image_size = image_size
        self.seed = seed

    def source_names(self) -> list[str]:
        return [f"{self.name}-{s}" for s in self.stains]

    def scan(self, *, check_images: bool = True, workers: int = 1) -> ScanResult:
        out = ScanResult()
        for cls in synthetic.CLASSES:
            for i in range(self.per_class):
                stain = synthetic.source_for_index(i, self.stains)
                fn = partial(synthetic.render, cls, i, self.image_size, stain, self.seed)
                out.records.append(Record(f"{cls}-{i:05d}", cls, f"{self.name}-{stain}", None, cls, fn))
        return out


class ImageFolderSource(Source):
    """A ``<class>/<file>`` folder; source name = the folder's basename unless given."""

    kind = "folder"

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise DatasetError(f"dataset folder not found: {path}")
        super().__init__(name or p.resolve().name, str(p))
        self.path = p

    def scan(self, *, check_images: bool = True, workers: int = 1) -> ScanResult:
        fs = scan_image_folder(self.path)
        out = ScanResult(skipped=[SkippedFile(self.name, rel, why) for rel, why in fs.skipped])
        reasons: list[str | None] = [None] * len(fs.files)
        if check_images:
            paths = [p for p, _ in fs.files]
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                reasons = list(pool.map(check_image, paths, chunksize=32))
        for (p, cls), why in zip(fs.files, reasons, strict=True):
            uid = f"{cls}/{p.name}"
            if why is not None:
                out.skipped.append(SkippedFile(self.name, uid, why))
            else:
                out.records.append(Record(uid, cls, self.name, p, cls))
        return out


def _npz_class_names(data: Mapping[str, np.ndarray], path: Path) -> tuple[str, ...]:
    if "classes" not in data:
        return BLOODMNIST_CLASSES
    names = data["classes"]
    if names.dtype.kind != "U" or names.ndim != 1:
        raise DatasetError(f"{path}: 'classes' must be a 1-D string array")
    return tuple(str(n) for n in names)


def _npz_split(
    data: Mapping[str, np.ndarray], split: str, path: Path, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (images NxHxWx3 uint8, labels N int64) of one split."""
    images, labels = data[f"{split}_images"], data[f"{split}_labels"]
    if (
        images.dtype != np.uint8
        or images.ndim not in (3, 4)
        or (images.ndim == 4 and images.shape[3] not in (1, 3))
    ):
        raise DatasetError(
            f"{path}: {split}_images must be uint8 NxHxW or NxHxWx3, got {images.dtype} {images.shape}"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[3] == 1:
        images = np.repeat(images, 3, axis=3)
    labels = labels.reshape(labels.shape[0], -1) if labels.ndim > 1 else labels[:, None]
    if labels.shape != (images.shape[0], 1) or labels.dtype.kind not in "iu":
        raise DatasetError(f"{path}: {split}_labels must be N or Nx1 integers matching {split}_images")
    flat = labels[:, 0].astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= n_classes):
        raise DatasetError(f"{path}: {split}_labels outside 0..{n_classes - 1}")
    return images, flat


class NpzSource(Source):
    """A MedMNIST-style ``.npz``; all splits present are pooled (the split tool re-splits them)."""

    kind = "npz"
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test")

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DatasetError(f"dataset file not found: {path}")
        super().__init__(name or p.stem, str(p))
        self.path = p

    def _load(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as exc:  # zip/pickle/format errors all mean "not a usable npz"
            raise DatasetError(f"cannot read {self.path} as .npz: {type(exc).__name__}: {exc}") from exc

    def scan(self, *, check_images: bool = True, workers: int = 1) -> ScanResult:
        data = self._load()
        names = _npz_class_names(data, self.path)
        present = [s for s in self.SPLITS if f"{s}_images" in data or f"{s}_labels" in data]
        if not present:
            raise DatasetError(f"{self.path}: no train_/val_/test_ images+labels keys (found {sorted(data)})")
        out = ScanResult()
        for split in present:
            if f"{split}_images" not in data or f"{split}_labels" not in data:
                raise DatasetError(f"{self.path}: {split}_images and {split}_labels must both be present")
            images, labels = _npz_split(data, split, self.path, len(names))
            for i, lab in enumerate(labels.tolist()):
                fn = partial(images.__getitem__, i)
                out.records.append(Record(f"{split}-{i:06d}", names[lab], self.name, None, names[lab], fn))
        return out


# --------------------------------------------------------------------------- BloodMNIST download


def _bloodmnist_file(size: int) -> str:
    return "bloodmnist.npz" if size == 28 else f"bloodmnist_{size}.npz"


def bloodmnist_npz(size: int = 28, cache_dir: str | Path | None = None) -> Path:
    """Path of the BloodMNIST ``.npz`` of ``size`` px, downloading it with ``medmnist`` if needed.

    The file is looked for in ``cache_dir`` (default ``~/.medmnist``) first. Raises
    :class:`DatasetError` telling the user to pass a local ``.npz`` when ``medmnist`` is not
    installed or the download fails (e.g. no internet).
    """
    if size not in BLOODMNIST_SIZES:
        raise DatasetError(f"bloodmnist size must be one of {BLOODMNIST_SIZES}, got {size}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else Path.home() / ".medmnist"
    target = cache / _bloodmnist_file(size)
    if target.is_file():
        return target
    hint = (
        f"pass a local .npz path instead (e.g. --dataset /path/to/{target.name}, from https://medmnist.com)"
    )
    try:
        import medmnist  # optional dependency, imported only when a download is needed
    except ImportError as exc:
        raise DatasetError(
            f"cannot download BloodMNIST: the 'medmnist' package is not installed; {hint}"
        ) from exc
    try:
        cache.mkdir(parents=True, exist_ok=True)
        kwargs = {} if size == 28 else {"size": size}
        medmnist.BloodMNIST(split="test", download=True, root=str(cache), **kwargs)
    except Exception as exc:  # network, torch, API-version failures alike
        first = (str(exc).splitlines() or [""])[0]
        raise DatasetError(f"BloodMNIST download failed ({type(exc).__name__}: {first}); {hint}") from exc
    if not target.is_file():
        raise DatasetError(f"BloodMNIST download did not produce {target}; {hint}")
    return target


# --------------------------------------------------------------------------- spec parsing


def _parse_synthetic(name: str | None, arg: str | None, per_class: int, size: int, seed: int) -> Source:
    stains = tuple(s.strip() for s in arg.split("+")) if arg else synthetic.DEFAULT_SOURCES
    if any(not s or not _NAME.match(s) for s in stains):
        raise DatasetError(f"synthetic stains must be names joined by '+', e.g. synthetic:A+B, got {arg!r}")
    return SyntheticSource(name or "synthetic", stains, per_class, size, seed)


def _parse_bloodmnist(name: str | None, arg: str | None, cache_dir: str | Path | None) -> Source:
    try:
        size = int(arg) if arg else 28
    except ValueError:
        raise DatasetError(f"bloodmnist size must be a number, e.g. bloodmnist:64, got {arg!r}") from None
    path = bloodmnist_npz(size, cache_dir)
    return NpzSource(path, name or path.stem)


def _parse_item(item: str, per_class: int, size: int, seed: int, cache_dir: str | Path | None) -> Source:
    name: str | None = None
    target = item
    if "=" in item and not Path(item).expanduser().exists():
        name, target = (s.strip() for s in item.split("=", 1))
        if not _NAME.match(name):
            raise DatasetError(f"bad source name {name!r} in {item!r} (letters, digits, . _ - only)")
    kind, _, arg = target.partition(":")
    if kind.lower() == "synthetic":
        return _parse_synthetic(name, arg or None, per_class, size, seed)
    if kind.lower() == "bloodmnist":
        return _parse_bloodmnist(name, arg or None, cache_dir)
    path = Path(target).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, name)
    if path.is_file() and path.suffix.lower() == ".npz":
        return NpzSource(path, name)
    if path.exists():
        raise DatasetError(
            f"unsupported dataset {target!r}: expected a folder, a .npz, synthetic or bloodmnist"
        )
    raise DatasetError(f"dataset path not found: {target}")


def parse_dataset_spec(
    spec: str,
    *,
    synthetic_per_class: int = 300,
    synthetic_size: int = 64,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> list[Source]:
    """Turn a dataset spec (see the module doc) into sources; source names must be unique."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise DatasetError("empty --dataset")
    sources = [_parse_item(i, synthetic_per_class, synthetic_size, seed, cache_dir) for i in items]
    seen: set[str] = set()
    for s in sources:
        for n in s.source_names():
            if n in seen:
                raise DatasetError(f"duplicate source name {n!r}: name one of them, e.g. other={s.location}")
            seen.add(n)
    return sources


# --------------------------------------------------------------------------- class mapping


def load_class_mapping(path: str | Path) -> dict[str, str | None]:
    """Read a ``{source_class: canonical_class | null}`` mapping from a JSON or YAML file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"mapping file not found: {path}")
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise DatasetError(f"cannot parse mapping file {path}: {type(exc).__name__}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in data.items()
    ):
        raise DatasetError(f"mapping file {path} must be a flat {{class: class-or-null}} object")
    if any(v is not None and not v.strip() for v in data.values()):
        raise DatasetError(f"mapping file {path} maps a class to an empty name")
    return dict(data)


def apply_class_mapping(
    records: Iterable[Record], mapping: Mapping[str, str | None]
) -> tuple[list[Record], list[SkippedFile], list[str]]:
    """Relabel records: ``SOURCE:CLASS`` key first, then ``CLASS``; unmapped labels are kept.

    Returns ``(kept, dropped, unused_keys)``: records mapped to ``None`` are dropped (reason
    ``dropped_by_mapping``); ``unused_keys`` are mapping keys that matched nothing (likely typos).
    """
    kept: list[Record] = []
    dropped: list[SkippedFile] = []
    used: set[str] = set()
    for r in records:
        key = f"{r.source}:{r.label}" if f"{r.source}:{r.label}" in mapping else r.label
        if key not in mapping:
            kept.append(r)
            continue
        used.add(key)
        target = mapping[key]
        if target is None:
            dropped.append(SkippedFile(r.source, r.uid, "dropped_by_mapping"))
        else:
            kept.append(replace(r, label=target.strip()))
    return kept, dropped, sorted(set(mapping) - used)


# --------------------------------------------------------------------------- whole dataset


@dataclass
class Dataset:
    """All usable records of a spec, with canonical labels, and everything that was skipped."""

    records: list[Record]
    classes: list[str]
    sources: list[SourceInfo]
    skipped: list[SkippedFile]
    unused_mapping_keys: list[str] = field(default_factory=list)


def load_dataset(
    spec: str,
    *,
    mapping: str | Path | Mapping[str, str | None] | None = None,
    synthetic_per_class: int = 300,
    synthetic_size: int = 64,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    check_images: bool = True,
    workers: int = 4,
) -> Dataset:
    """Scan every source of ``spec``, apply the optional class ``mapping`` (a file or a dict).

    Records keep the spec's source order, then each source's own (sorted) order, so the result is
    deterministic. Raises :class:`DatasetError` for bad input or when nothing usable is left.
    """
    sources = parse_dataset_spec(
        spec,
        synthetic_per_class=synthetic_per_class,
        synthetic_size=synthetic_size,
        seed=seed,
        cache_dir=cache_dir,
    )
    records: list[Record] = []
    skipped: list[SkippedFile] = []
    for src in sources:
        res = src.scan(check_images=check_images, workers=workers)
        records.extend(res.records)
        skipped.extend(res.skipped)
    unused: list[str] = []
    if mapping is not None:
        table = load_class_mapping(mapping) if isinstance(mapping, (str, Path)) else mapping
        records, dropped, unused = apply_class_mapping(records, table)
        skipped.extend(dropped)
    if not records:
        raise DatasetError(f"no usable images in dataset {spec!r}")
    infos = [i for s in sources for i in s.infos()]
    return Dataset(records, sorted({r.label for r in records}), infos, skipped, unused)
