"""Helpers for tests: build small fake ``<class>/<file>`` image folders with PIL.

Kept in the package (not in a conftest) so that tests of other components (e.g. the hospital
agent) can build the same fixtures.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_image_folder", "solid_image", "write_corrupt_jpeg", "write_truncated_jpeg"]


def solid_image(
    colour: tuple[int, int, int], size: tuple[int, int] = (20, 16), noise_seed: int | None = None
) -> Image.Image:
    """An RGB image of one colour (plus mild noise when ``noise_seed`` is given, so JPEGs differ)."""
    arr = np.empty((size[1], size[0], 3), dtype=np.uint8)
    arr[...] = colour
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
        arr = np.clip(arr.astype(np.int16) + rng.integers(-6, 7, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def write_corrupt_jpeg(path: Path) -> Path:
    """A ``.jpg`` file that is not an image at all."""
    path.write_bytes(b"this is not a jpeg" * 10)
    return path


def write_truncated_jpeg(path: Path, size: tuple[int, int] = (48, 48)) -> Path:
    """A JPEG cut in half (``Image.verify()`` would not notice; a full decode does)."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    img.save(path, format="JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


_PALETTE: tuple[tuple[int, int, int], ...] = (
    (200, 40, 40),
    (40, 200, 40),
    (40, 40, 200),
    (200, 200, 40),
    (200, 40, 200),
    (40, 200, 200),
    (120, 120, 120),
    (240, 160, 60),
)


def make_image_folder(
    root: Path,
    counts: Mapping[str, int],
    *,
    size: tuple[int, int] = (20, 16),
    fmt: str = "png",
    prefix: str = "img",
    corrupt: int = 0,
    non_image: int = 0,
) -> Path:
    """Create ``root/<class>/<prefix>_<i>.<fmt>`` with ``counts[class]`` solid-colour images.

    Class ``k`` (in ``counts`` order) gets colour ``k`` of a fixed palette. ``corrupt`` adds that
    many garbage ``.jpg`` files and ``non_image`` that many ``.txt`` files to the first class.
    """
    root.mkdir(parents=True, exist_ok=True)
    for k, (cls, n) in enumerate(counts.items()):
        folder = root / cls
        folder.mkdir(exist_ok=True)
        for i in range(n):
            img = solid_image(_PALETTE[k % len(_PALETTE)], size, noise_seed=k * 1000 + i)
            img.save(folder / f"{prefix}_{i:04d}.{fmt}")
    first = root / next(iter(counts))
    for i in range(corrupt):
        write_corrupt_jpeg(first / f"{prefix}_corrupt_{i}.jpg")
    for i in range(non_image):
        (first / f"{prefix}_notes_{i}.txt").write_text("not an image")
    return root
