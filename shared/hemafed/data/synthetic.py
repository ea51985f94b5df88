"""Offline, deterministic generator of blood-cell-like RGB images (no downloads, no TensorFlow).

Eight classes named exactly like the PBC dataset folders (:data:`CLASSES`). Each image shows one
cell (or, for ``platelet``, a few small fragments) on a pale pinkish background with red blood
cells around it. The classes differ the way the real ones do:

============  ==========  =======================================  ==================================
class         cell size   nucleus                                  cytoplasm / granules
============  ==========  =======================================  ==================================
basophil      medium      irregular, hidden under granules         coarse dark-purple granules on top
eosinophil    medium      bilobed                                  coarse orange-red granules
erythroblast  small       round, very dense, eccentric             dark bluish-grey
ig            med-large   oval/bean, eccentric, paler              pinkish-blue, sparse purple granules
lymphocyte    small       big round, fills most of the cell        thin sky-blue rim
monocyte      large       kidney / folded, pale                    grey-blue with pale vacuoles
neutrophil    medium      3-5 segments joined by thin strands      fine pink granules
platelet      tiny        (none) 1-3 small purple fragments        dark granular centre
============  ==========  =======================================  ==================================

Every image gets random rotation, position, size, shape and colour jitter, a random number of red
blood cells (sometimes overlapping the cell), optical blur and sensor noise, so a small CNN at 32 px
learns it well above chance without it being trivial.

*Sources* model different labs: ``source="A"``, ``"B"``, ... changes the stain cast (hue rotation,
saturation and brightness, see :func:`stain_for`), so a split by source gives hospitals a real
domain shift. Output is a pure function of ``(seed, class, source, index, image_size)``.

Drawing is done with PIL ``ImageDraw`` on a 2x canvas that is then box-downsampled (anti-aliasing);
colour work is vectorised numpy. About 1 ms per 64 px image on one core.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "CLASSES",
    "DEFAULT_SOURCES",
    "Stain",
    "SyntheticImage",
    "generate",
    "render",
    "render_cell",
    "source_for_index",
    "stain_for",
    "write_image_folder",
]

#: Class names, identical to the PBC dataset folder names and in BloodMNIST label order.
CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)

#: Default stain sources: two labs, so a source split is possible out of the box.
DEFAULT_SOURCES: tuple[str, ...] = ("A", "B")

RGB = tuple[float, float, float]
Point = tuple[float, float]


# --------------------------------------------------------------------------- stains


@dataclass(frozen=True)
class Stain:
    """A lab's stain cast: hue rotation (degrees), saturation and brightness factors."""

    hue_deg: float = 0.0
    saturation: float = 1.0
    brightness: float = 1.0


_STAIN_PRESETS: dict[str, Stain] = {
    "A": Stain(0.0, 1.0, 1.0),
    "B": Stain(-24.0, 0.78, 1.06),  # bluer, washed-out, brighter
    "C": Stain(24.0, 1.3, 0.9),  # warmer, saturated, darker
}


def stain_for(source: str) -> Stain:
    """Stain cast of ``source``: presets for "A", "B", "C"; any other name gets a stable derived cast."""
    if source in _STAIN_PRESETS:
        return _STAIN_PRESETS[source]
    h = zlib.crc32(source.encode("utf-8"))
    hue = ((h & 0xFF) / 255.0 - 0.5) * 80.0
    sat = 0.7 + ((h >> 8) & 0xFF) / 255.0 * 0.6
    bri = 0.88 + ((h >> 16) & 0xFF) / 255.0 * 0.22
    return Stain(hue, sat, bri)


def _hue_matrix(deg: float) -> np.ndarray:
    """3x3 RGB matrix rotating hue by ``deg`` around the grey axis (keeps grey grey)."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    k = 1.0 / 3.0
    r = math.sqrt(k)
    return np.array(
        [
            [c + (1 - c) * k, k * (1 - c) - r * s, k * (1 - c) + r * s],
            [k * (1 - c) + r * s, c + k * (1 - c), k * (1 - c) - r * s],
            [k * (1 - c) - r * s, k * (1 - c) + r * s, c + k * (1 - c)],
        ],
        dtype=np.float32,
    )


def _stain_matrix(stain: Stain) -> np.ndarray:
    """One 3x3 RGB matrix = brightness x saturation (lerp to grey) x hue rotation (all linear)."""
    k = np.full((3, 3), 1.0 / 3.0, dtype=np.float32)
    sat = stain.saturation * np.eye(3, dtype=np.float32) + (1.0 - stain.saturation) * k
    return (stain.brightness * sat @ _hue_matrix(stain.hue_deg)).astype(np.float32)


def _apply_stain(img: np.ndarray, stain: Stain) -> np.ndarray:
    """Apply hue rotation, saturation and brightness to a float32 HxWx3 image in [0, 255]."""
    return img @ _stain_matrix(stain).T


# --------------------------------------------------------------------------- geometry helpers


def _ellipse_poly(cx: float, cy: float, rx: float, ry: float, angle: float, n: int = 28) -> list[Point]:
    """Polygon of a rotated ellipse."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return list(zip((cx + x * ca - y * sa).tolist(), (cy + x * sa + y * ca).tolist(), strict=True))


def _blob_poly(
    cx: float, cy: float, r: float, angle: float, rng: np.random.Generator, roughness: float, n: int = 24
) -> list[Point]:
    """Irregular closed blob: a circle with smooth random radial wobble."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    k = rng.uniform(-1.0, 1.0, size=(3, 2))
    wobble = sum(k[i, 0] * np.cos((i + 2) * t) + k[i, 1] * np.sin((i + 2) * t) for i in range(3))
    rad = r * (1.0 + roughness * wobble / 3.0)
    return list(
        zip((cx + rad * np.cos(t + angle)).tolist(), (cy + rad * np.sin(t + angle)).tolist(), strict=True)
    )


def _kidney_poly(cx: float, cy: float, r: float, angle: float, depth: float, n: int = 40) -> list[Point]:
    """Kidney/bean shape: an ellipse with a smooth notch of relative ``depth`` at ``angle``."""
    t = np.linspace(-np.pi, np.pi, n, endpoint=False)
    rad = r * (1.0 - depth * np.exp(-(t**2) / 0.35)) * (1.0 + 0.12 * np.cos(2 * t))
    return list(
        zip((cx + rad * np.cos(t + angle)).tolist(), (cy + rad * np.sin(t + angle)).tolist(), strict=True)
    )


def _rot(dx: float, dy: float, angle: float) -> Point:
    ca, sa = math.cos(angle), math.sin(angle)
    return dx * ca - dy * sa, dx * sa + dy * ca


def _jit(rng: np.random.Generator, colour: RGB, amount: float = 10.0) -> tuple[int, int, int]:
    """Colour with independent per-channel jitter, as an RGB int tuple."""
    c = np.clip(np.asarray(colour) + rng.normal(0.0, amount, 3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def _disc(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)


def _granules(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    cell: tuple[float, float, float, float, float],
    count: int,
    size: float,
    colour: RGB,
    spread: float = 0.92,
) -> None:
    """Scatter ``count`` granules of radius ~``size`` uniformly inside the (elliptic) cell."""
    cx, cy, rx, ry, angle = cell
    rad = spread * np.sqrt(rng.uniform(0.0, 1.0, count))
    th = rng.uniform(0.0, 2.0 * np.pi, count)
    x, y = rad * rx * np.cos(th), rad * ry * np.sin(th)
    ca, sa = math.cos(angle), math.sin(angle)
    xs, ys = cx + x * ca - y * sa, cy + x * sa + y * ca
    sizes = size * rng.uniform(0.6, 1.4, count)
    shade = rng.normal(0.0, 14.0, count)
    for px, py, s, d in zip(xs.tolist(), ys.tolist(), sizes.tolist(), shade.tolist(), strict=True):
        col = (
            int(min(255, max(0, colour[0] + d))),
            int(min(255, max(0, colour[1] + d))),
            int(min(255, max(0, colour[2] + d))),
        )
        draw.ellipse((px - s, py - s, px + s, py + s), fill=col)


# --------------------------------------------------------------------------- scene pieces

_BACKGROUND: RGB = (238, 220, 224)
_RBC: RGB = (224, 158, 162)
_RBC_PALLOR: RGB = (234, 196, 198)

#: mean cell radius as a fraction of the canvas side
_CELL_RADIUS: dict[str, float] = {
    "basophil": 0.27,
    "eosinophil": 0.31,
    "erythroblast": 0.22,
    "ig": 0.33,
    "lymphocyte": 0.22,
    "monocyte": 0.37,
    "neutrophil": 0.30,
}

_CYTOPLASM: dict[str, RGB] = {
    "basophil": (196, 160, 205),
    "eosinophil": (236, 186, 168),
    "erythroblast": (150, 140, 180),
    "ig": (214, 186, 212),
    "lymphocyte": (168, 196, 232),
    "monocyte": (192, 188, 216),
    "neutrophil": (228, 200, 214),
}

_NUCLEUS: dict[str, RGB] = {
    "basophil": (118, 70, 150),
    "eosinophil": (92, 46, 128),
    "erythroblast": (48, 22, 74),
    "ig": (122, 78, 160),
    "lymphocyte": (72, 34, 114),
    "monocyte": (132, 96, 168),
    "neutrophil": (90, 42, 126),
}


def _draw_rbcs(draw: ImageDraw.ImageDraw, rng: np.random.Generator, c: int, count: int) -> None:
    """Red blood cells: pinkish discs with a paler centre, anywhere on the canvas."""
    for _ in range(count):
        r = c * rng.uniform(0.14, 0.21)
        x, y = rng.uniform(-0.1, 1.1, 2) * c
        _disc(draw, x, y, r, _jit(rng, _RBC, 8))
        _disc(draw, x, y, r * rng.uniform(0.35, 0.5), _jit(rng, _RBC_PALLOR, 6))


def _nucleus(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    name: str,
    cell: tuple[float, float, float, float, float],
) -> None:
    """Draw the class-specific nucleus inside ``cell`` = (cx, cy, rx, ry, angle)."""
    cx, cy, rx, _ry, a = cell
    r = rx
    col = _jit(rng, _NUCLEUS[name], 10)
    if name == "lymphocyte":  # big round nucleus, slightly off-centre
        dx, dy = _rot(r * rng.uniform(0.05, 0.15), 0.0, a)
        draw.polygon(_blob_poly(cx + dx, cy + dy, r * rng.uniform(0.74, 0.84), a, rng, 0.08), fill=col)
    elif name == "erythroblast":  # small, very dense, eccentric round nucleus
        dx, dy = _rot(r * rng.uniform(0.18, 0.32), 0.0, a)
        draw.polygon(_blob_poly(cx + dx, cy + dy, r * rng.uniform(0.5, 0.6), a, rng, 0.06), fill=col)
    elif name == "eosinophil":  # two lobes joined by a strand
        w = max(1, int(r * 0.12))
        p1, p2 = _rot(-r * 0.38, r * 0.1, a), _rot(r * 0.38, r * 0.1, a)
        draw.line((cx + p1[0], cy + p1[1], cx + p2[0], cy + p2[1]), fill=col, width=w)
        for px, py in (p1, p2):
            draw.polygon(_blob_poly(cx + px, cy + py, r * rng.uniform(0.28, 0.35), a, rng, 0.15), fill=col)
    elif name == "neutrophil":  # 3-5 small segments along an arc, thin strands between
        k = int(rng.integers(3, 6))
        span = rng.uniform(2.4, 3.8)
        t0 = a - span / 2
        arc_r = r * rng.uniform(0.42, 0.52)
        pts = [
            (cx + arc_r * math.cos(t0 + span * i / (k - 1)), cy + arc_r * math.sin(t0 + span * i / (k - 1)))
            for i in range(k)
        ]
        draw.line([c for p in pts for c in p], fill=col, width=max(1, int(r * 0.07)))
        for px, py in pts:
            draw.polygon(_blob_poly(px, py, r * rng.uniform(0.17, 0.23), a, rng, 0.2, n=14), fill=col)
    elif name == "monocyte":  # large pale folded/kidney nucleus
        dx, dy = _rot(r * 0.12, 0.0, a)
        draw.polygon(
            _kidney_poly(cx + dx, cy + dy, r * rng.uniform(0.58, 0.68), a + math.pi, rng.uniform(0.3, 0.45)),
            fill=col,
        )
        fold = _jit(rng, (col[0] - 25, col[1] - 25, col[2] - 20), 4)
        p1, p2 = _rot(-r * 0.2, -r * 0.25, a), _rot(r * 0.25, r * 0.2, a)
        draw.line((cx + p1[0], cy + p1[1], cx + p2[0], cy + p2[1]), fill=fold, width=max(1, int(r * 0.06)))
    elif name == "ig":  # eccentric oval / bean nucleus, paler chromatin
        dx, dy = _rot(r * rng.uniform(0.22, 0.32), 0.0, a)
        draw.polygon(
            _kidney_poly(cx + dx, cy + dy, r * rng.uniform(0.48, 0.56), a, rng.uniform(0.0, 0.25)), fill=col
        )
    elif name == "basophil":  # irregular nucleus, later covered by granules
        draw.polygon(_blob_poly(cx, cy, r * rng.uniform(0.45, 0.55), a, rng, 0.35), fill=col)


def _draw_leukocyte(draw: ImageDraw.ImageDraw, rng: np.random.Generator, name: str, c: int) -> None:
    """One white cell (or erythroblast) with its cytoplasm, nucleus and granules."""
    r = c * _CELL_RADIUS[name] * rng.uniform(0.85, 1.15)
    cx, cy = c / 2 + rng.normal(0.0, c * 0.05, 2)
    a = rng.uniform(0.0, 2.0 * math.pi)
    cell = (float(cx), float(cy), r, r * rng.uniform(0.86, 1.0), a)
    draw.polygon(_blob_poly(cell[0], cell[1], r, a, rng, 0.05), fill=_jit(rng, _CYTOPLASM[name], 10))
    if name == "monocyte":  # pale vacuoles
        _granules(draw, rng, cell, int(rng.integers(3, 9)), r * 0.07, (232, 224, 236), 0.85)
    if name == "neutrophil":  # fine pink granules
        _granules(draw, rng, cell, 90, r * 0.03, _jit(rng, (206, 150, 186), 8))
    if name == "eosinophil":  # coarse orange-red granules
        _granules(draw, rng, cell, 85, r * 0.075, _jit(rng, (226, 96, 62), 10))
    if name == "ig":  # sparse purplish granules
        _granules(draw, rng, cell, int(rng.integers(10, 30)), r * 0.045, _jit(rng, (168, 84, 150), 10))
    _nucleus(draw, rng, name, cell)
    if name == "basophil":  # dark purple granules covering the nucleus
        _granules(draw, rng, cell, 70, r * 0.085, _jit(rng, (66, 26, 98), 10), 0.8)


def _draw_platelets(draw: ImageDraw.ImageDraw, rng: np.random.Generator, c: int) -> None:
    """1-3 small irregular purple fragments with a granular centre, near the middle."""
    for _ in range(int(rng.integers(1, 4))):
        r = c * rng.uniform(0.04, 0.085)
        x, y = c / 2 + rng.normal(0.0, c * 0.12, 2)
        a = rng.uniform(0.0, 2.0 * math.pi)
        draw.polygon(
            _blob_poly(float(x), float(y), r, a, rng, 0.4, n=16), fill=_jit(rng, (168, 128, 196), 10)
        )
        _granules(draw, rng, (float(x), float(y), r, r, a), 8, r * 0.18, _jit(rng, (92, 44, 132), 8), 0.6)


# --------------------------------------------------------------------------- rendering


def render_cell(
    class_name: str, rng: np.random.Generator, image_size: int = 64, source: str = "A"
) -> np.ndarray:
    """Render one image of ``class_name`` with the stain of ``source`` using ``rng``.

    Returns a ``uint8`` array of shape ``(image_size, image_size, 3)``.
    """
    if class_name not in CLASSES:
        raise ValueError(f"unknown class {class_name!r}; expected one of {', '.join(CLASSES)}")
    if image_size < 8:
        raise ValueError("image_size must be >= 8")
    c = image_size * 2
    img = Image.new("RGB", (c, c), _jit(rng, _BACKGROUND, 4))
    draw = ImageDraw.Draw(img)
    _draw_rbcs(draw, rng, c, int(rng.integers(2, 7)))
    if class_name == "platelet":
        _draw_platelets(draw, rng, c)
    else:
        _draw_leukocyte(draw, rng, class_name, c)
    if rng.random() < 0.35:  # an RBC overlapping the scene
        _draw_rbcs(draw, rng, c, 1)
    img = img.reduce(2).filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.8) * image_size / 64))
    arr = np.asarray(img, dtype=np.float32)
    base = stain_for(source)
    stain = Stain(
        base.hue_deg + rng.normal(0.0, 4.0),
        base.saturation * rng.uniform(0.92, 1.08),
        base.brightness * rng.uniform(0.95, 1.05),
    )
    arr = _apply_stain(arr, stain)
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(rng.uniform(3.0, 9.0))
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


def _image_rng(seed: int, class_name: str, source: str, index: int) -> np.random.Generator:
    """Independent RNG per image, so any image can be re-rendered on its own."""
    if class_name not in CLASSES:
        raise ValueError(f"unknown class {class_name!r}; expected one of {', '.join(CLASSES)}")
    key = [int(seed) & 0xFFFFFFFF, CLASSES.index(class_name), zlib.crc32(source.encode("utf-8")), int(index)]
    return np.random.default_rng(key)


def render(class_name: str, index: int, image_size: int = 64, source: str = "A", seed: int = 0) -> np.ndarray:
    """Deterministically render image number ``index`` of ``class_name`` for ``source`` and ``seed``."""
    return render_cell(class_name, _image_rng(seed, class_name, source, index), image_size, source)


class SyntheticImage(NamedTuple):
    """One generated image: ``image`` (uint8 HxWx3), ``class_name``, ``source`` (stain name) and ``index``."""

    image: np.ndarray
    class_name: str
    source: str
    index: int


def source_for_index(index: int, sources: Sequence[str]) -> str:
    """The stain source of image ``index`` of a class: sources take turns (0 -> first, 1 -> second, ...)."""
    return sources[index % len(sources)]


def _check_sources(sources: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sources)
    if not out:
        raise ValueError("at least one source is required")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate sources in {out}")
    return out


def generate(
    n_per_class: int, image_size: int = 64, sources: Sequence[str] = DEFAULT_SOURCES, seed: int = 0
) -> Iterator[SyntheticImage]:
    """Yield ``n_per_class`` images for every class (8 x n_per_class in all), class by class.

    The images of a class are spread evenly over ``sources`` (image ``i`` gets
    ``sources[i % len(sources)]``). Same arguments => identical images.
    """
    if n_per_class < 0:
        raise ValueError("n_per_class must be >= 0")
    srcs = _check_sources(sources)
    for name in CLASSES:
        for i in range(n_per_class):
            src = source_for_index(i, srcs)
            yield SyntheticImage(render(name, i, image_size, src, seed), name, src, i)


def write_image_folder(
    out_dir: str | Path,
    n_per_class: int,
    image_size: int = 64,
    sources: Sequence[str] = DEFAULT_SOURCES,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write :func:`generate` output as ``out_dir/<class>/<source>-<index>.png``; return counts per class.

    Existing files with the same names are overwritten; nothing else in ``out_dir`` is touched.
    ``progress``, if given, is called with the number of images written so far.
    """
    root = Path(out_dir)
    counts = dict.fromkeys(CLASSES, 0)
    for k, item in enumerate(generate(n_per_class, image_size, sources, seed), start=1):
        folder = root / item.class_name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(item.image).save(folder / f"{item.source}-{item.index:05d}.png", compress_level=3)
        counts[item.class_name] += 1
        if progress is not None:
            progress(k)
    return counts
