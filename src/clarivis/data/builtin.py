"""Built-in generated datasets (no downloads): procedurally drawn shapes and sklearn's digits."""

from __future__ import annotations

import colorsys
import csv
import math
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clarivis.errors import ConfigError, DataError

SHAPE_CLASSES: tuple[str, ...] = ("circle", "cross", "hexagon", "square", "star", "triangle")
LIGHTING_LEVELS: tuple[str, ...] = ("bright", "normal", "dark")
SPLITS: tuple[str, ...] = ("train", "val", "test")

SHAPES_ATTRIBUTES: tuple[str, ...] = ("lighting", "background", "color", "size")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noise", "stripes")
# Hue family -> centre hue in degrees. Sampled independently of the class, so colour
# carries no information about the label.
HUE_FAMILIES: dict[str, float] = {
    "red": 0.0, "orange": 30.0, "yellow": 55.0, "green": 125.0, "blue": 220.0, "purple": 280.0,
}  # fmt: skip

_SUPERSAMPLE = 4  # draw at 4x and downsample with LANCZOS: anti-aliased edges
_EXTENT_RANGE = (0.35, 0.75)  # shape diameter as a fraction of the image side
_LARGE_FROM = 0.55  # extents at or above this are "large"

# Streams of the per-dataset random generator; each item gets its own, so image i of a
# class is the same whatever per_class is, and no draw depends on the order of others.
_IMAGE_STREAM, _SPLIT_STREAM, _LIGHTING_STREAM = 0, 1, 2


@dataclass(frozen=True)
class _Row:
    """One written image and its manifest columns."""

    label: str
    index: int
    split: str
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"{self.split}/{self.label}/{self.label}_{self.index:05d}.png"


def make_shapes(
    out_dir: str | Path,
    *,
    per_class: int = 300,
    img_size: int = 64,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    lighting_weights: dict[str, float] | None = None,
) -> Path:
    """Write a 6-class shapes dataset with lighting/background/colour/size attributes; return out_dir."""
    _check_positive("per_class", per_class)
    _check_positive("img_size", img_size)
    _check_seed(seed)
    _check_split_fractions(split_fractions)
    lighting_probs = _lighting_probabilities(lighting_weights)

    out = Path(out_dir)
    with _fresh_dataset_dir(out) as staging:
        rows: list[_Row] = []
        for class_index, label in enumerate(SHAPE_CLASSES):
            splits = _allocate(
                per_class, SPLITS, split_fractions, _rng(seed, _SPLIT_STREAM, class_index)
            )
            # Quotas per class keep lighting independent of the class (no spurious shortcut).
            lightings = _allocate(
                per_class,
                LIGHTING_LEVELS,
                lighting_probs,
                _rng(seed, _LIGHTING_STREAM, class_index),
            )
            for index in range(per_class):
                rng = _rng(seed, _IMAGE_STREAM, class_index, index)
                pixels, attributes = _render_shape(label, img_size, lightings[index], rng)
                row = _Row(label, index, splits[index], attributes)
                _save_png(staging, row, Image.fromarray(pixels))
                rows.append(row)
        _write_manifests(staging, rows, SHAPES_ATTRIBUTES)
    return out


def make_digits(
    out_dir: str | Path,
    *,
    seed: int = 0,
    img_size: int = 32,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> Path:
    """Write scikit-learn's bundled 8x8 digits (1797 images) as dark-on-light grayscale PNGs."""
    _check_positive("img_size", img_size)
    _check_seed(seed)
    _check_split_fractions(split_fractions)
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    digits = load_digits()
    # Values are ink amounts 0..16; drawn as dark ink on light paper (0 -> 255, 16 -> 0).
    paper = np.rint(255.0 - digits.images * (255.0 / 16.0)).astype(np.uint8)
    targets = np.asarray(digits.target)

    out = Path(out_dir)
    with _fresh_dataset_dir(out) as staging:
        rows: list[_Row] = []
        for digit in range(10):
            members = np.flatnonzero(targets == digit)
            splits = _allocate(
                len(members), SPLITS, split_fractions, _rng(seed, _SPLIT_STREAM, digit)
            )
            for index, member in enumerate(members):
                row = _Row(str(digit), index, splits[index])
                small = Image.fromarray(paper[member])
                _save_png(
                    staging, row, small.resize((img_size, img_size), Image.Resampling.BILINEAR)
                )
                rows.append(row)
        _write_manifests(staging, rows, ())
    return out


BUILTIN_DATASETS: dict[str, Callable[..., Path]] = {"shapes": make_shapes, "digits": make_digits}


def make_dataset(name: str, out_dir: str | Path, *, seed: int = 0, per_class: int | None = None,
                 img_size: int | None = None) -> Path:
    """Write the built-in dataset `name` (`clarivis datasets make`); what is left None takes the
    dataset's own default. `per_class` is for shapes only: digits has a fixed size."""
    if name not in BUILTIN_DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; choose one of {', '.join(BUILTIN_DATASETS)}")
    sizes = {"img_size": img_size} if img_size is not None else {}
    if per_class is not None:
        if name != "shapes":
            raise ConfigError("--per-class applies to shapes only; digits has a fixed size")
        sizes["per_class"] = per_class
    return BUILTIN_DATASETS[name](out_dir, seed=seed, **sizes)


# --- arguments -----------------------------------------------------------------------------


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_seed(seed: int) -> None:
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def _check_split_fractions(fractions: Sequence[float]) -> None:
    if (
        len(fractions) != 3
        or any(f < 0 for f in fractions)
        or not math.isclose(sum(fractions), 1.0)
    ):
        raise ConfigError(
            f"split_fractions must be three non-negative numbers (train, val, test) summing to 1, "
            f"got {tuple(fractions)}"
        )
    if fractions[0] == 0:
        raise ConfigError("split_fractions must give the train split a positive fraction")


def _lighting_probabilities(weights: dict[str, float] | None) -> tuple[float, ...]:
    """Lighting weights (missing levels count as 0) normalised to probabilities; default uniform."""
    if weights is None:
        return tuple(1.0 / len(LIGHTING_LEVELS) for _ in LIGHTING_LEVELS)
    unknown = set(weights) - set(LIGHTING_LEVELS)
    if unknown:
        raise ConfigError(f"unknown lighting levels {sorted(unknown)}; use {list(LIGHTING_LEVELS)}")
    values = [float(weights.get(level, 0.0)) for level in LIGHTING_LEVELS]
    if any(v < 0 or not math.isfinite(v) for v in values) or sum(values) <= 0:
        raise ConfigError(
            f"lighting_weights must be non-negative with a positive sum, got {weights}"
        )
    return tuple(v / sum(values) for v in values)


# --- allocation ----------------------------------------------------------------------------


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _quotas(n: int, fractions: Sequence[float]) -> list[int]:
    """Split n into integer counts proportional to fractions (largest remainder)."""
    exact = [n * f for f in fractions]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    # A tiny class must still reach every split that asked for some share of it.
    for i, f in enumerate(fractions):
        if f > 0 and counts[i] == 0:
            donor = max(range(len(counts)), key=lambda j: counts[j])
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    return counts


def _allocate(
    n: int, names: Sequence[str], fractions: Sequence[float], rng: np.random.Generator
) -> list[str]:
    """n names with exact proportional quotas, in a seeded random order."""
    pool = [name for name, count in zip(names, _quotas(n, fractions), strict=False) for _ in range(count)]
    return [pool[i] for i in rng.permutation(n)]


# --- shape rendering -----------------------------------------------------------------------


def _render_shape(
    label: str, size: int, lighting: str, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, str]]:
    """One image (uint8 HxWx3) of the shape class, and its attributes."""
    color_name = list(HUE_FAMILIES)[rng.integers(len(HUE_FAMILIES))]
    color = _sample_color(HUE_FAMILIES[color_name], rng)
    background_kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    # The background sits in the luminance band away from the shape's, so every shape
    # stays visible whatever its colour.
    background = _background(background_kind, size, light=_luma(color) < 0.5, rng=rng)
    extent = float(rng.uniform(*_EXTENT_RANGE))
    alpha = _shape_mask(label, size, extent, rng)[..., None]
    image = background * (1.0 - alpha) + color * alpha
    image = _apply_lighting(image, lighting, rng)
    attributes = {
        "lighting": lighting,
        "background": background_kind,
        "color": color_name,
        "size": "large" if extent >= _LARGE_FROM else "small",
    }
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8), attributes


def _sample_color(hue_degrees: float, rng: np.random.Generator) -> np.ndarray:
    """A saturated colour of the hue family, as RGB floats in 0..1."""
    hue = ((hue_degrees + rng.uniform(-8.0, 8.0)) % 360.0) / 360.0
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.65, 1.0)))


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _background(kind: str, size: int, *, light: bool, rng: np.random.Generator) -> np.ndarray:
    """A size x size x 3 float background of the given kind in a light or dark band."""
    value = rng.uniform(0.78, 0.95) if light else rng.uniform(0.04, 0.25)
    tint = (rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.25))  # hue, saturation: near grey
    base = np.array(colorsys.hsv_to_rgb(*tint, value))
    other = base + (-0.12 if light else 0.12)  # a second tone, still away from the shape's band
    if kind == "plain":
        return np.broadcast_to(base, (size, size, 3)).copy()
    if kind == "noise":
        coarse = _upsample(rng.normal(0.0, 0.08, (4, 4)), size)
        fine = rng.normal(0.0, 0.04, (size, size))
        return np.clip(base + (coarse + fine)[..., None], 0.0, 1.0)
    along = _projection(size, rng.uniform(0.0, 2.0 * math.pi))
    if kind == "gradient":
        weight = np.clip(along / size + 0.5, 0.0, 1.0)[..., None]
    else:  # stripes
        half_period = rng.uniform(size / 16.0, size / 6.0)
        weight = (np.floor(along / half_period) % 2)[..., None]
    return base * (1.0 - weight) + other * weight


def _projection(size: int, angle: float) -> np.ndarray:
    """Each pixel's signed distance from the centre along the direction `angle`."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) - (size - 1) / 2.0
    return xs * math.cos(angle) + ys * math.sin(angle)


def _upsample(values: np.ndarray, size: int) -> np.ndarray:
    """Smoothly resize a small float grid to size x size (low-frequency blotches)."""
    small = Image.fromarray(values.astype(np.float32))
    return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)


def _shape_mask(label: str, size: int, extent: float, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased coverage (size x size floats in 0..1) of one randomly placed, rotated shape."""
    big = size * _SUPERSAMPLE
    radius = extent * big / 2.0
    margin = _SUPERSAMPLE  # keep a pixel of background around the shape
    low, high = radius + margin, big - radius - margin
    cx, cy = rng.uniform(low, high), rng.uniform(low, high)
    angle = rng.uniform(0.0, 2.0 * math.pi)

    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    if label == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
    else:
        outline = _OUTLINES[label]()
        points = [
            (cx + radius * (x * math.cos(angle) - y * math.sin(angle)),
             cy + radius * (x * math.sin(angle) + y * math.cos(angle)))
            for x, y in outline
        ]  # fmt: skip
        draw.polygon(points, fill=255)
    small = canvas.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float64) / 255.0


def _regular_polygon(sides: int) -> list[tuple[float, float]]:
    """Vertices on the unit circle."""
    return [
        (math.cos(2 * math.pi * k / sides), math.sin(2 * math.pi * k / sides)) for k in range(sides)
    ]


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    """A star outline: alternate outer (unit) and inner vertices."""
    vertices = []
    for k in range(2 * points):
        r = 1.0 if k % 2 == 0 else inner
        theta = math.pi * k / points
        vertices.append((r * math.cos(theta), r * math.sin(theta)))
    return vertices


def _cross(arm: float = 0.3) -> list[tuple[float, float]]:
    """A plus sign reaching the unit circle, arms `arm` wide on each side of the centre line."""
    a = arm
    return [(a, 1), (a, a), (1, a), (1, -a), (a, -a), (a, -1),
            (-a, -1), (-a, -a), (-1, -a), (-1, a), (-a, a), (-a, 1)]  # fmt: skip


_OUTLINES: dict[str, Callable[[], list[tuple[float, float]]]] = {
    "cross": _cross,
    "hexagon": lambda: _regular_polygon(6),
    "square": lambda: _regular_polygon(4),
    "star": _star,
    "triangle": lambda: _regular_polygon(3),
}


def _apply_lighting(image: np.ndarray, lighting: str, rng: np.random.Generator) -> np.ndarray:
    """Simulate exposure: 'dark' is strongly underexposed and noisy, 'bright' washed out."""
    if lighting == "dark":
        gain = rng.uniform(0.25, 0.4)
        return image * gain + rng.normal(0.0, 0.015, image.shape)
    if lighting == "bright":
        # Pull every value towards white: brighter and with less contrast.
        contrast = rng.uniform(0.5, 0.7)
        return 1.0 - contrast * (1.0 - image) * rng.uniform(0.85, 1.0)
    return image * rng.uniform(0.9, 1.1)


# --- writing -------------------------------------------------------------------------------


@contextmanager
def _fresh_dataset_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a staging folder that becomes out_dir only if generation finishes.

    A crash or interrupt then never leaves a half-written dataset that looks complete.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} is a file; choose a new folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir} is not empty; choose a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Next to out_dir so the final rename stays on one file system; mkdir (not mkdtemp)
    # so the folder gets the usual permissions rather than owner-only ones.
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _save_png(root: Path, row: _Row, image: Image.Image) -> None:
    path = root / row.path
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def _write_manifests(root: Path, rows: list[_Row], attributes: Sequence[str]) -> None:
    """manifest.csv with every row, and train/val/test.csv with that split's rows."""
    columns = ["path", "label", "split", *attributes]
    _write_csv(root / "manifest.csv", columns, rows)
    for split in SPLITS:
        _write_csv(root / f"{split}.csv", columns, [r for r in rows if r.split == split])


def _write_csv(path: Path, columns: list[str], rows: list[_Row]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")  # "\n" on every OS: byte-identical output
        writer.writerow(columns)
        for row in rows:
            writer.writerow(
                [row.path, row.label, row.split, *(row.attributes[a] for a in columns[3:])]
            )
