"""Generated stand-ins of the real data sets, in their on-disk formats, for a preflight without the data.

A stand-in has the data set's real class count and image size but only a few images per class:
each data set module writes its own format (``write_standin`` of its class) with the helpers here.
Images are a small pool of pre-encoded JPEGs (smooth colour gradients with noise, ``STANDIN_SIZE``),
reused for every file, so writing thousands of files takes seconds. A finished stand-in carries a
marker file, so it is written once per scratch folder and size, and an interrupted one is rewritten.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

STANDIN_SIZE = (256, 320)  # (height, width) of the stand-in JPEGs: larger than 224, not square
POOL = 8
DONE = ".standin-complete"


@functools.lru_cache(maxsize=1)
def jpeg_pool() -> tuple[bytes, ...]:
    """A few encoded JPEGs of ``STANDIN_SIZE``: random colour gradients with a little noise."""
    rng = np.random.default_rng(0)
    height, width = STANDIN_SIZE
    ramp_y, ramp_x = np.mgrid[0:height, 0:width]
    pool = []
    for _ in range(POOL):
        start, slope_y, slope_x = rng.uniform(0, 255, 3), rng.uniform(-0.5, 0.5, 3), rng.uniform(-0.5, 0.5, 3)
        image = start + ramp_y[..., None] * slope_y + ramp_x[..., None] * slope_x + rng.normal(0, 8, (height, width, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        pool.append(buffer.getvalue())
    return tuple(pool)


def write_jpegs(folder: Path, names: Sequence[str], offset: int = 0) -> None:
    """The pool's JPEGs under ``folder`` with file names ``names`` (parents created)."""
    folder.mkdir(parents=True, exist_ok=True)
    pool = jpeg_pool()
    for k, name in enumerate(names):
        (folder / name).write_bytes(pool[(offset + k) % len(pool)])


def wnid_names(count: int, offset: int) -> list[str]:
    """``count`` sorted WordNet-style folder names; different offsets give disjoint sets."""
    return [f"n{offset + 7919 * i:08d}" for i in range(count)]


def stratified_total(train: int, test: int) -> int:
    """Images per class such that the loaders' per-class 80/20 split (``stratified_split``) leaves
    at least ``train`` for training and ``test`` for testing."""
    def test_part(total: int) -> int:
        return min(max(round(total * 0.2), 1), total - 1)

    total = train + test
    while total - test_part(total) < train or test_part(total) < test:
        total += 1
    return total


def prepare(root: Path, write: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Make ``root`` hold a complete stand-in, written by ``write(root)`` unless its marker says it
    is complete already (a partial one is removed and rewritten); returns the data options that
    point the loader at it (``write``'s result, kept in the marker)."""
    marker = root / DONE
    if marker.is_file():
        return json.loads(marker.read_text())
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    options = write(root)
    marker.write_text(json.dumps(options))
    return options
