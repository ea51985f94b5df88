"""Image-folder scanning and robust image decoding, shared by :mod:`.loader` and :mod:`.sources`.

Layout: ``root/<class>/<file>``; the class is the folder name. Rules (the same for the split tool
and for the hospital agent's loader):

* image files are ``.jpg .jpeg .png .bmp .tif .tiff`` (case-insensitive);
* hidden entries (names starting with ``.``, e.g. ``.DS_Store``, ``._x.jpg``) are ignored silently;
* other files inside a class folder are skipped with reason ``not_image``;
* image files directly in ``root`` (no class folder) are skipped with reason ``no_class_folder``;
* sub-folders of class folders are not descended into;
* a symlink (class folder or file) that resolves outside ``root`` is skipped with reason
  ``outside_root``: a mount's content cannot pull in files from elsewhere;
* a file that cannot be decoded is skipped with reason ``corrupt`` (this includes truncated
  files: they are fully decoded, not just ``verify()``-ed); ``unreadable`` when the OS refuses to
  read it; ``too_large`` for decompression bombs.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "FolderScan",
    "ImageDecodeError",
    "check_image",
    "decode_rgb",
    "is_image_name",
    "scan_image_folder",
    "to_rgb",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


class ImageDecodeError(Exception):
    """An image could not be used; ``reason`` is a short machine-readable word (e.g. ``corrupt``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def is_image_name(name: str) -> bool:
    """True when ``name`` has one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


@dataclass
class FolderScan:
    """Result of :func:`scan_image_folder`.

    ``files`` are ``(path, class_name)`` pairs sorted by class then file name; ``skipped`` lists
    ``(relative_path, reason)`` for files that will not be used.
    """

    root: Path
    classes: list[str]
    files: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skipped_reasons(self) -> dict[str, int]:
        """Counts of skipped files per reason."""
        return dict(Counter(reason for _, reason in self.skipped))


def _visible_entries(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _inside(root: str, path: str) -> bool:
    """True when ``path`` (symlinks resolved) is ``root`` or below it; ``root`` is already resolved."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _scan_class_dir(entry: os.DirEntry[str], scan: FolderScan, keep: bool) -> None:
    """Add the files of one class folder to ``scan`` (as usable, or skipped as unknown_class)."""
    root = os.path.realpath(scan.root)
    for f in _visible_entries(Path(entry.path)):
        if not f.is_file():
            continue
        rel = f"{entry.name}/{f.name}"
        if not _inside(root, f.path):
            scan.skipped.append((rel, "outside_root"))
            continue
        if not is_image_name(f.name):
            scan.skipped.append((rel, "not_image"))
        elif not keep:
            scan.skipped.append((rel, "unknown_class"))
        else:
            scan.files.append((Path(f.path), entry.name))


def scan_image_folder(root: str | Path, classes: list[str] | None = None) -> FolderScan:
    """List the image files of a ``root/<class>/<file>`` tree without opening them.

    When ``classes`` is given, only those class folders are used (in that order) and image files
    in any other folder are skipped as ``unknown_class``; otherwise the classes are the sorted
    names of the visible sub-folders. Raises :class:`FileNotFoundError` / :class:`NotADirectoryError`
    when ``root`` is missing or not a folder.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    entries = _visible_entries(root)
    dirs = [e for e in entries if e.is_dir()]
    wanted = list(classes) if classes is not None else [e.name for e in dirs]
    scan = FolderScan(root=root, classes=wanted)
    for e in entries:
        if e.is_file() and is_image_name(e.name):
            scan.skipped.append((e.name, "no_class_folder"))
    keep = set(wanted)
    real_root = os.path.realpath(root)
    for e in dirs:
        if not _inside(real_root, e.path):
            scan.skipped.append((e.name, "outside_root"))
            continue
        _scan_class_dir(e, scan, e.name in keep)
    order = {c: i for i, c in enumerate(wanted)}
    scan.files.sort(key=lambda pc: (order[pc[1]], pc[0].name))
    return scan


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grey images -> 8-bit ``L`` (16-bit by /257, others by min-max)."""
    arr = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16"):
        arr = arr / 257.0
    else:
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to ``RGB``; transparent pixels are composited onto white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return _high_bit_depth_to_l(im).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def decode_rgb(path: str | Path, size: int | None = None) -> np.ndarray:
    """Fully decode ``path`` to a ``uint8`` HxWx3 RGB array, resized to ``size`` x ``size`` if given.

    Resizing uses PIL bilinear filtering with anti-aliasing (an area-like average when shrinking);
    JPEGs are first decoded at a reduced DCT scale (``draft``) when that still leaves at least
    ``size`` pixels, which is several times faster. Non-square images are resized without cropping.
    Raises :class:`ImageDecodeError` (reason ``corrupt``, ``unreadable`` or ``too_large``).
    """
    try:
        with Image.open(path) as im:
            if size is not None and im.format == "JPEG":
                im.draft("RGB", (size, size))
            im.load()
            rgb = to_rgb(im)
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except (PermissionError, FileNotFoundError, IsADirectoryError) as exc:
        raise ImageDecodeError("unreadable", type(exc).__name__) from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_large", str(exc)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # any decoder failure on an untrusted file means "corrupt"
        raise ImageDecodeError("corrupt", f"{type(exc).__name__}: {exc}") from exc


def check_image(path: str | Path, size: int = 32) -> str | None:
    """Return ``None`` when ``path`` decodes cleanly, else the skip reason (see :func:`decode_rgb`).

    The whole file is decoded (JPEGs at a reduced DCT scale, which still reads all the data), so
    truncated files are caught, unlike with ``Image.verify()``.
    """
    try:
        decode_rgb(path, size)
    except ImageDecodeError as exc:
        return exc.reason
    return None
