"""Decoded-image cache: a list of image files decoded once (as ``ImageFiles`` decodes them: PIL,
RGB) into one uint8 file on disk, read back through a memory map, so later epochs, runs and seeds
do no JPEG decoding.

A cache is two files in the cache folder named by a key, the sha256 of the data set folder's
absolute path and the ordered relative file paths: ``<key>.u8``, the images' HWC uint8 pixels
back to back at their original size (nothing is resized: the cache changes no pixel), and
``<key>.npy``, an (N, 3) int64 index of (byte offset, height, width) per image. The index is
written last, by atomic rename, so a cache whose index exists is complete and an interrupted
build starts again. Another file list (other split, other domains, an added file) gives another
key. Not detected: an image replaced in place under the same name; delete the cache folder then.
Size: height x width x 3 bytes per image.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from datasets.pixels import read_rgb

CHUNK = 256  # images decoded concurrently per step of the build


def cache_key(folder: Path, rel_paths: Sequence[str]) -> str:
    """The cache's name: sha256 of the absolute data set folder and the ordered relative paths."""
    digest = hashlib.sha256(f"{Path(folder).resolve()}\n".encode())
    digest.update("".join(f"{rel}\n" for rel in rel_paths).encode())
    return digest.hexdigest()[:24]


def _header_size(path: str) -> tuple[int, int]:
    """(height, width) from the file header (no decoding); ``DataError`` if unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError):
        read_rgb(path)  # raises the loader's DataError naming the file
        raise
    return height, width


def _decoded(path: str) -> np.ndarray:
    return np.asarray(read_rgb(path))


class DecodedCache:
    """Decoded images (HWC uint8) of one file list; ``image`` and ``region`` copy out of the map."""

    def __init__(self, pixels_path: Path, index: np.ndarray):
        self.pixels_path, self.index = pixels_path, index
        self._pixels: np.memmap | None = None  # opened per process, on first use

    @classmethod
    def open_or_build(cls, folder: Path, rel_paths: Sequence[str], cache_dir: Path,
                      progress: bool = True) -> DecodedCache:
        """The cache of ``folder/rel_paths`` in ``cache_dir``, decoded now if it does not exist."""
        cache_dir = Path(cache_dir).expanduser()
        key = cache_key(folder, rel_paths)
        pixels_path, index_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.npy"
        if index_path.is_file() and pixels_path.is_file():
            return cls(pixels_path, np.load(index_path))
        cache_dir.mkdir(parents=True, exist_ok=True)
        paths = [f"{folder}/{rel}" for rel in rel_paths]
        threads = min(32, os.cpu_count() or 1)
        with ThreadPoolExecutor(threads) as pool:  # PIL decodes without holding the GIL
            shapes = np.array(list(pool.map(_header_size, paths, chunksize=64)), dtype=np.int64).reshape(-1, 2)
            sizes = shapes[:, 0] * shapes[:, 1] * 3
            index = np.column_stack([np.cumsum(sizes) - sizes, shapes])
            partial = pixels_path.with_suffix(f".u8.partial{os.getpid()}")
            pixels = np.memmap(partial, dtype=np.uint8, mode="w+", shape=(max(int(sizes.sum()), 1),))
            bar = tqdm(total=len(paths), desc=f"decoding {len(paths)} images into {cache_dir}", unit="img",
                       disable=not progress)
            for start in range(0, len(paths), CHUNK):
                for i, array in enumerate(pool.map(_decoded, paths[start:start + CHUNK]), start=start):
                    if array.shape[:2] != tuple(shapes[i]):
                        raise RuntimeError(f"{paths[i]}: decoded size {array.shape[:2]} differs from its header")
                    pixels[index[i, 0]:index[i, 0] + sizes[i]] = array.reshape(-1)
                bar.update(min(CHUNK, len(paths) - start))
            bar.close()
        pixels.flush()
        del pixels
        os.replace(partial, pixels_path)
        partial_index = index_path.with_suffix(f".partial{os.getpid()}.npy")
        np.save(partial_index, index)
        os.replace(partial_index, index_path)  # last: marks the cache complete
        return cls(pixels_path, index)

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}  # worker processes open their own map

    def shape(self, i: int) -> tuple[int, int]:
        """(height, width) of image ``i``."""
        return int(self.index[i, 1]), int(self.index[i, 2])

    def _image_view(self, i: int) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.memmap(self.pixels_path, dtype=np.uint8, mode="r")
        offset, height, width = (int(v) for v in self.index[i])
        return self._pixels[offset:offset + height * width * 3].reshape(height, width, 3)

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as a (H, W, 3) uint8 tensor."""
        return torch.from_numpy(np.array(self._image_view(i)))

    def region(self, i: int, top: int, left: int, height: int, width: int) -> torch.Tensor:
        """The (height, width, 3) uint8 box of image ``i`` at (top, left); only its rows are read."""
        return torch.from_numpy(np.array(self._image_view(i)[top:top + height, left:left + width]))
