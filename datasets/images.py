"""Shared pieces of the real image benchmarks: options, image datasets, splits, layout checks.

The transforms and the reading of image files are ``datasets/pixels.py``'s (``transforms_for``
builds a data set's pair from its options); the data root checks are ``datasets/data_root.py``'s.

Unreadable images: ``ImageFiles`` raises ``DataError`` naming the file when it cannot decode it,
and never skips it silently (skipping would change the test set behind a result's back). The fix
is to delete or re-extract the file. Decoding on the device (``data.device_decode``,
``datasets/encoded_images.py``) raises the same one-line error.

Splits made here (``stratified_split``) depend only on the labels and the split seed, never on
the class-order seed of a run.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from benchmark.errors import ConfigError, DataError
from datasets.base import ClassIncrementalData, DatasetOptions
from datasets.cached_images import CachedTestImages, CachedTrainImages
# the data set modules (cifar100.py, imagenet_r.py, ...) import these two from here too
from datasets.data_root import check_dataset_folder
from datasets.decoded_cache import DecodedCache
from datasets.encoded_images import DECODING, EncodedTestImages, EncodedTrainImages
from datasets.pixels import NORMALIZATIONS, Transform, build_transform, describe_transform, read_rgb

DEFAULT_IMAGE_SIZE = 224
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

Labelled = list[tuple[str, int]]  # (image path relative to the data set folder, natural label)


@dataclass
class ImageOptions(DatasetOptions):
    """Options shared by the image benchmarks.

    ``image_size`` None means "the backbone's input size", filled in by the harness before
    ``load``; a loader called without it uses 224. ``normalize``: none ([0, 1] pixels),
    imagenet (ImageNet mean/std) or half (mean = std = 0.5). ``decoded_cache``: read the images
    from a decoded-image cache and finish their transforms on the run's device
    (``datasets/decoded_cache.py``, ``datasets/cached_images.py``), kept in ``cache_dir``
    (default ``<data root>/decoded-cache``; where it lies does not enter the run id).
    ``device_decode``: the workers send the files' bytes, and decoding (JPEG) and the transforms
    run on the run's device (``datasets/encoded_images.py``); CIFAR-100: the resize of the crops.
    """

    image_size: int | None = None
    normalize: str = "none"
    decoded_cache: bool = False
    cache_dir: str | None = None
    device_decode: bool = False

    def __post_init__(self) -> None:
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 1):
            raise ConfigError(f"data.image_size must be a positive integer, got {self.image_size!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError(f"data.normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}")
        if self.decoded_cache and self.device_decode:
            raise ConfigError("data.decoded_cache and data.device_decode exclude each other (the cache holds "
                              "decoded images, device_decode decodes the files on the device); choose one")

    @property
    def size(self) -> int:
        """The image side length transforms produce."""
        return DEFAULT_IMAGE_SIZE if self.image_size is None else self.image_size


def transforms_for(options: ImageOptions, test_resize: str) -> tuple[Transform, Transform, dict[str, object]]:
    """Train and test transforms for ``options`` and their description for ``info``."""
    size, norm = options.size, options.normalize
    info = {"image_size": size, "normalize": norm,
            "train_transform": describe_transform(size, True, test_resize, norm),
            "test_transform": describe_transform(size, False, test_resize, norm)}
    return (build_transform(size, True, test_resize, norm), build_transform(size, False, test_resize, norm), info)


class ImageFiles(Dataset):
    """Image files with int labels; items are (transformed float tensor, label)."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int] | np.ndarray, transform: Transform):
        if len(paths) != len(labels):
            raise ValueError(f"ImageFiles got {len(paths)} paths but {len(labels)} labels")
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(read_rgb(self.paths[index])), int(self.labels[index])


class TransformedTensors(Dataset):
    """In-memory uint8 images (N, 3, H, W) with int labels, transformed per item."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int] | np.ndarray, transform: Transform):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError("TransformedTensors needs uint8 images (N, 3, H, W) and N labels")
        self.images, self.labels, self.transform = images, np.asarray(labels, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


def stratified_split(labels: Sequence[int] | np.ndarray, test_fraction: float = 0.2,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-class seeded split: sorted (train_indices, test_indices) into ``labels``.

    Each class's items (in the given order) are shuffled by a NumPy generator seeded with
    ``(seed, class)``, so a class's split does not depend on the other classes; the first
    ``round(n * test_fraction)`` go to test, at least 1 and at most n - 1 when n >= 2.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    test = []
    for label in np.unique(labels):
        members = np.nonzero(labels == label)[0]
        n = len(members)
        n_test = min(max(round(n * test_fraction), 1), n - 1) if n >= 2 else 0
        test.append(np.random.default_rng([seed, int(label)]).permutation(members)[:n_test])
    test_indices = np.sort(np.concatenate(test)) if test else np.empty(0, dtype=np.int64)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[test_indices] = False
    return np.nonzero(train_mask)[0], test_indices


def split_hash(train_items: Iterable[str], test_items: Iterable[str]) -> str:
    """Short sha256 over the sorted relative paths of each side of a split."""
    digest = hashlib.sha256()
    for side, items in (("train", train_items), ("test", test_items)):
        digest.update(f"[{side}]\n".encode())
        digest.update("".join(f"{item}\n" for item in sorted(items)).encode())
    return digest.hexdigest()[:16]


def file_hash(paths: Iterable[Path]) -> str:
    """Short sha256 over the bytes of files (split or list files), in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def scan_class_folders(folder: Path, expected: int, layout: str) -> list[tuple[str, list[Path]]]:
    """Sorted class sub-folders of ``folder`` with their sorted image files (jpg/jpeg/png).

    Raises ``DataError`` if ``folder`` is missing, holds other than ``expected`` class folders
    (hidden folders are ignored), or a class folder has no images. ``layout`` describes the
    expected layout for the messages.
    """
    check_dataset_folder(folder, layout)
    names = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    if len(names) != expected:
        raise DataError(f"found {len(names)} class folders in {folder}, expected {expected}; "
                        f"expected layout: {layout}")
    classes = []
    for name in names:
        files = sorted(Path(entry.path) for entry in os.scandir(folder / name)
                       if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {folder / name} has no images ({', '.join(IMAGE_SUFFIXES)}); "
                            f"re-extract the data set (expected layout: {layout})")
        classes.append((name, files))
    return classes


def missing_files(paths: Iterable[Path]) -> list[Path]:
    """The paths that do not exist, listing each parent folder once (fast on network file systems)."""
    listings: dict[Path, set[str]] = {}
    missing = []
    for path in paths:
        parent = path.parent
        if parent not in listings:
            listings[parent] = set(os.listdir(parent)) if parent.is_dir() else set()
        if path.name not in listings[parent]:
            missing.append(path)
    return missing


def check_listed_files(paths: Sequence[Path], listed_in: str) -> None:
    """``DataError`` naming the first listed image that does not exist, and how many are missing."""
    missing = missing_files(paths)
    if missing:
        raise DataError(f"{listed_in} lists {len(missing)} image(s) that do not exist, e.g. {missing[0]}; "
                        f"re-extract the data set under the data root")


def class_folder_items(classes: Sequence[tuple[str, Sequence[Path]]]) -> Labelled:
    """(relative path, label) of every image of ``scan_class_folders``' result; label = class position."""
    return [(f"{name}/{path.name}", label) for label, (name, files) in enumerate(classes) for path in files]


def stratified_items(items: Labelled, seed: int) -> tuple[Labelled, Labelled]:
    """The seeded per-class 80/20 split of ``items`` (see ``stratified_split``)."""
    train, test = stratified_split([label for _, label in items], 0.2, seed)
    return [items[i] for i in train], [items[i] for i in test]


def files_data(folder: Path, num_classes: int, train: Labelled, test: Labelled, options: ImageOptions,
               info: dict[str, object]) -> ClassIncrementalData:
    """``ClassIncrementalData`` of image files under ``folder`` with the resize -> centre-crop test
    transform; ``info`` gains the split hash, the image counts and the transforms."""
    train_tf, test_tf, transform_info = transforms_for(options, test_resize="resize_crop")
    sides = []
    for items, transform in ((train, train_tf), (test, test_tf)):
        labels = np.array([label for _, label in items], dtype=np.int64)
        sides.append((ImageFiles([f"{folder}/{rel}" for rel, _ in items], labels, transform), labels))
    (train_set, train_labels), (test_set, test_labels) = sides
    train_plain = ImageFiles(train_set.paths, train_labels, test_tf)
    if options.decoded_cache:
        cache_dir = Path(options.cache_dir) if options.cache_dir else folder.parent / "decoded-cache"
        train_cache, test_cache = (DecodedCache.open_or_build(folder, [rel for rel, _ in items], cache_dir)
                                   for items in (train, test))
        train_set = CachedTrainImages(train_cache, train_labels, options.size, options.normalize)
        test_set = CachedTestImages(test_cache, test_labels, options.size, "resize_crop", options.normalize)
        train_plain = CachedTestImages(train_cache, train_labels, options.size, "resize_crop", options.normalize)
        transform_info["decoding"] = ("decoded cache; resize, flip and scaling on the run's device "
                                      "(torch antialiased bilinear)")
    if options.device_decode:
        train_paths, test_paths = train_set.paths, test_set.paths
        train_set = EncodedTrainImages(train_paths, train_labels, options.size, options.normalize)
        test_set = EncodedTestImages(test_paths, test_labels, options.size, "resize_crop", options.normalize)
        train_plain = EncodedTestImages(train_paths, train_labels, options.size, "resize_crop", options.normalize)
        transform_info["decoding"] = DECODING
    info = {**info, "split_hash": split_hash((rel for rel, _ in train), (rel for rel, _ in test)),
            "n_train": len(train), "n_test": len(test), **transform_info}
    return ClassIncrementalData(num_classes, train_set, test_set, train_labels, test_labels, info, train_plain)
