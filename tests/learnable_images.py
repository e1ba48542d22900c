"""A dataset a small net provably learns: ten classes of drawn textures, each image with its own random colours,
scale (period) and position (phase), written as JPEGs with a labels file (the layout `data shard` reads).

Every class is unchanged by a horizontal flip and recognisable in any crop that holds a period or two, so the train
augmentation (random resized crops, flips) keeps the label true, while colour, scale and position vary within a
class: a net cannot pass by remembering pixels, only by telling the patterns apart. Train and val images are drawn
from separate random streams, never the same image.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np

SIZE = 64  # pixels
# The shared set of the tests (`learnable_shards_s3`): 500 train and 200 val images.
TRAIN_PER_CLASS = 50
VAL_PER_CLASS = 20
CLASSES: tuple[str, ...] = (
    "horizontal-stripes",
    "vertical-stripes",
    "checkerboard",
    "dots",
    "rings",
    "grid-lines",
    "waves",
    "blobs",
    "gradient",
    "speckles",
)

Pattern = Callable[[np.ndarray, np.ndarray, float, np.random.Generator], np.ndarray]


def _stripes(y: np.ndarray, x: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return np.sin(2 * np.pi * y / period) > 0


def _columns(y: np.ndarray, x: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return np.sin(2 * np.pi * x / period) > 0


def _checkerboard(y: np.ndarray, x: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return (np.floor(y / period) + np.floor(x / period)) % 2 == 0


def _dots(y: np.ndarray, x: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    dy, dx = (y % period) - period / 2, (x % period) - period / 2
    return dy**2 + dx**2 < (period * 0.3) ** 2


def _rings(y: np.ndarray, x: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    cy, cx = rng.uniform(0, SIZE, size=2)
    return np.sin(2 * np.pi * np.hypot(y - cy, x - cx) / period) > 0


def _grid_lines(y: np.ndarray, x: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    width = max(1.5, period * 0.2)
    return ((y % period) < width) | ((x % period) < width)


def _waves(y: np.ndarray, x: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return np.sin(2 * np.pi * (y + 0.5 * period * np.sin(2 * np.pi * x / (1.5 * period))) / period) > 0


def _blobs(y: np.ndarray, x: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    # Three plane waves in random directions: rounded, irregular patches with no lattice.
    field = np.zeros_like(y)
    for angle, phase in zip(rng.uniform(0, np.pi, 3), rng.uniform(0, 2 * np.pi, 3), strict=True):
        field += np.sin(2 * np.pi * (y * np.sin(angle) + x * np.cos(angle)) / (2 * period) + phase)
    return field > 0


def _gradient(y: np.ndarray, x: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    # No edge at all: one colour fades into the other (the two colours are mixed by this weight, see `draw`).
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (y - SIZE / 2) * np.sin(angle) + (x - SIZE / 2) * np.cos(angle)
    return np.clip(0.5 + ramp / SIZE, 0.0, 1.0)


def _speckles(y: np.ndarray, x: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    cells = rng.random((SIZE + 16, SIZE + 16)) > 0.5
    return cells[(y / 3).astype(int), (x / 3).astype(int)]


PATTERNS: tuple[Pattern, ...] = (
    _stripes,
    _columns,
    _checkerboard,
    _dots,
    _rings,
    _grid_lines,
    _waves,
    _blobs,
    _gradient,
    _speckles,
)


def draw(label: int, rng: np.random.Generator) -> np.ndarray:
    """One SIZE x SIZE RGB image of class `label`: random period (scale), phase (position) and two colours."""
    period = rng.uniform(6.0, 12.0)
    shift = rng.uniform(0, period, size=2)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    mask = PATTERNS[label](y + shift[0], x + shift[1], period, rng)
    while True:  # two colours far enough apart that the pattern shows
        fg, bg = rng.integers(0, 256, size=(2, 3))
        if np.abs(fg - bg).sum() > 150:
            break
    weight = mask[..., None].astype(np.float64)
    image = weight * fg + (1.0 - weight) * bg
    image += rng.normal(0, 8, size=image.shape)  # sensor noise: no two images share a pixel value pattern
    return np.clip(image, 0, 255).astype(np.uint8)


def write_split(root: Path, per_class: int, seed: int) -> Path:
    """`per_class` JPEGs of every class under `root`, plus `labels.tsv` (file, wnid, class_index, name)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(per_class * len(CLASSES)):
        label = index % len(CLASSES)
        name = f"{CLASSES[label]}-{index // len(CLASSES):04d}.jpg"
        Image.fromarray(draw(label, rng)).save(root / name, format="JPEG", quality=92)
        rows.append((name, f"t{label:08d}", label, CLASSES[label]))
    with open(root / "labels.tsv", "w", newline="") as f:
        writer = csv.writer(f, dialect="excel-tab")
        writer.writerow(("file", "wnid", "class_index", "name"))
        writer.writerows(rows)
    return root


def write_dataset(root: Path, train_per_class: int, val_per_class: int) -> Path:
    """`root/train` and `root/val` (a dataset root `data shard` splits), drawn from separate random streams."""
    write_split(root / "train", train_per_class, seed=1)
    write_split(root / "val", val_per_class, seed=2)
    return root
