"""Class-incremental task splits: class order by seed, label remapping, per-task data and loaders.

A dataset builder returns a ``ClassIncrementalData`` (train and test sets in natural label ids).
``TaskSplit`` orders the classes by seed (seed 0: natural order; seed s > 0: Python's
``random.shuffle`` seeded with s, as the CODA-Prompt code does), remaps every label to its
position in that order, and cuts consecutive equal chunks into tasks, so task t owns the global
class ids ``[t*k, (t+1)*k)``. The train/test split never depends on the seed.
"""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from benchmark.errors import ConfigError, DataError

if TYPE_CHECKING:
    from datasets.download import Download


class TensorImages(Dataset):
    """In-memory uint8 images (N, C, H, W) with int64 labels; items are float [0, 1] images."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError("TensorImages needs uint8 images (N, C, H, W) and N labels")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(255), int(self.labels[index])

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch at once (no per-item collation)."""
        return self.images[indices].float().div_(255), self.labels[indices]


class RemappedLabels(Dataset):
    """A subset of a dataset with labels mapped through ``label_map`` (natural id -> position)."""

    def __init__(self, base: Dataset, indices: np.ndarray, label_map: np.ndarray):
        self.subset, self.label_map = Subset(base, indices.tolist()), label_map

    def __len__(self) -> int:
        return len(self.subset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        x, y = self.subset[index]
        return x, int(self.label_map[y])

    @property
    def device_batch(self) -> Callable[[list[Any], torch.device], torch.Tensor] | None:
        """The base data set's batch step on the device, if it has one (see ``Loader``)."""
        return getattr(self.subset.dataset, "device_batch", None)


@dataclass
class ClassIncrementalData:
    """What a dataset builder returns: train/test sets with natural labels 0..num_classes-1."""

    num_classes: int
    train: Dataset
    test: Dataset
    train_targets: np.ndarray
    test_targets: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)  # recorded in the result (split hash, ...)
    # the training images under the *test* transform (what SimpleCIL's and RanPAC's statistics
    # read); None: ``train`` has no random augmentation and serves both
    train_plain: Dataset | None = None


def class_order(num_classes: int, seed: int, shuffle: bool = True) -> list[int]:
    """CODA-Prompt's rule: natural order for seed 0 (or ``shuffle=False``), else ``random.shuffle``."""
    order = list(range(num_classes))
    if shuffle and seed > 0:
        random.seed(seed)
        random.shuffle(order)
    return order


def check_n_tasks(num_classes: int, n_tasks: int, dataset: str) -> None:
    """Raise ``ConfigError`` unless ``n_tasks`` splits the classes into equal tasks."""
    if n_tasks < 1 or num_classes % n_tasks:
        divisors = [d for d in range(1, num_classes + 1) if num_classes % d == 0]
        raise ConfigError(f"--tasks {n_tasks} does not divide the {num_classes} classes of {dataset}; "
                          f"choose one of {divisors}")


class EpochOrder(Sampler):
    """The sample order of a ``Loader``'s current epoch, read when each pass starts (so one
    DataLoader, and its persistent workers, serves every epoch). Each index comes with the seed of
    its random augmentation this epoch (see ``SeededItems``)."""

    def __init__(self, loader: "Loader"):
        self.loader = loader

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # torch's CPU generator keeps 32 bits of a seed; the tuple hash of ints is deterministic
        seed, epoch = self.loader.seed, self.loader.epoch
        return iter((index, hash((seed, epoch, index)) & 0xFFFFFFFF) for index in self.loader._order().tolist())

    def __len__(self) -> int:
        return len(self.loader._order())


class SeededItems(Dataset):
    """Items drawn with the torch RNG seeded per (loader seed, epoch, index): random augmentation
    is then the same whatever the worker processes and wherever a pass (re)starts, so a run
    resumed inside an epoch sees exactly the images an uninterrupted one does."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def collate_items(batch: list[tuple[Any, int]]) -> tuple[list[Any], torch.Tensor]:
    """A batch of items of different sizes: (list of the items, tensor of the labels)."""
    items, labels = zip(*batch)
    return list(items), torch.tensor(labels, dtype=torch.int64)


PREFETCH = 2  # batches the device step runs ahead of the caller on CUDA (see ``prefetch``)

DeviceBatch = Callable[[list[Any], torch.device], torch.Tensor]


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.is_pinned() else tensor.pin_memory()


def _handed_over(ready: Future, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch prepared on the side stream, made safe to use on the caller's current stream."""
    x, y, done = ready.result()
    stream = torch.cuda.current_stream(device)
    stream.wait_event(done)
    x.record_stream(stream)  # the caching allocator must not reuse them before the caller's work on them
    y.record_stream(stream)
    return x, y


def prefetch(batches: Iterable[tuple[Any, torch.Tensor]], device: torch.device,
             device_batch: DeviceBatch | None = None, ahead: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` (inputs, labels) with the inputs finished by ``device_batch(items, device)``
    where given; on CUDA with ``ahead``, moved to ``device`` and run ahead.

    On CUDA a helper thread does each batch's device work on a side stream while the caller works
    on the batch before (up to ``PREFETCH`` batches ahead): host tensors are pinned (unless the
    DataLoader pinned them) and copied without blocking, and ``device_batch`` decodes and resizes
    there. A batch is handed over once the caller's stream waits for the event recorded after its
    work, with its tensors recorded on that stream. The batches themselves are still read here,
    in the caller's thread (the items' seeded RNG draws never run in the helper thread). Anywhere
    else, and without ``ahead``, this is a pass-through: the same batches in the same order, each
    finished as it comes (the caller moves them to the device).
    """
    if device.type != "cuda" or not ahead:
        for x, y in batches:
            yield (x if device_batch is None else device_batch(x, device)), y
        return
    if device.index is None:  # the helper thread's current device is not necessarily the caller's
        device = torch.device("cuda", torch.cuda.current_device())
    stream = torch.cuda.Stream(device)

    def prepare(x: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event]:
        with torch.cuda.device(device), torch.cuda.stream(stream):
            x = _pinned(x).to(device, non_blocking=True) if device_batch is None else device_batch(x, device)
            y = _pinned(y).to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        return x, y, done

    pending: deque[Future] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as helper:
        try:
            for x, y in batches:
                pending.append(helper.submit(prepare, x, y))
                if len(pending) > PREFETCH:
                    yield _handed_over(pending.popleft(), device)
            while pending:
                yield _handed_over(pending.popleft(), device)
        finally:  # the caller stopped early: drop what has not started
            for ready in pending:
                ready.cancel()


class Loader:
    """Batches of one task's data; shuffling is seeded per (seed, epoch) for exact reproducibility.

    In-memory ``TensorImages`` are sliced a batch at a time; any other dataset goes through one
    torch ``DataLoader`` kept for all epochs, with worker processes that persist across epochs and
    pinned memory; each item's random augmentation is seeded by (seed, epoch, index), so it does
    not depend on the workers or on where a pass starts. ``drop_last`` skips the last incomplete
    batch of each pass, unless the data set is smaller than one batch. A data set with a
    ``device_batch(items, device)`` method (the decoded cache's, ``datasets/cached_images.py``;
    device decoding's, ``datasets/encoded_images.py``) has its items collated as a list and each
    batch finished by that method on ``device``. With ``prefetch`` on a CUDA ``device`` the
    batches come already on it, prepared ahead on a side stream (``prefetch``; opt-in, ``--prefetch``,
    until a GPU run has checked it); otherwise as the host reads them. ``max_batches`` cuts every
    pass after that many batches (a preflight's short epochs, ``benchmark/preflight.py``).
    ``images_read`` counts the images the passes have yielded.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                 num_workers: int = 0, pin_memory: bool = False, drop_last: bool = False,
                 device: torch.device | str = "cpu", prefetch: bool = False, max_batches: int | None = None):
        self.dataset, self.batch_size, self.shuffle, self.device = dataset, batch_size, shuffle, torch.device(device)
        self.seed, self.epoch, self.skip = seed, 0, 0
        self.num_workers, self.pin_memory, self.prefetch = num_workers, pin_memory, prefetch
        self.drop_last = drop_last and len(dataset) >= batch_size
        self.max_batches = max_batches
        self.images_read = 0
        self._dataloader: DataLoader | None = None

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Passes from now on use ``epoch``'s order, the first of them without its first
        ``skip_batches`` batches (resuming inside an epoch)."""
        self.epoch, self.skip = epoch, skip_batches

    def close(self) -> None:
        """Stop the worker processes now (they persist across passes; a later pass starts new ones)."""
        self._dataloader = None

    def __len__(self) -> int:
        """Batches of a full pass (``skip_batches`` aside)."""
        full = len(self.dataset) // self.batch_size if self.drop_last else -(-len(self.dataset) // self.batch_size)
        return full if self.max_batches is None else min(full, self.max_batches)

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            order = torch.arange(len(self.dataset))
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(len(self.dataset), generator=generator)
        if self.drop_last or self.max_batches is not None:
            order = order[:len(self) * self.batch_size]
        return order[self.skip * self.batch_size:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in prefetch(self._host_batches(), self.device, getattr(self.dataset, "device_batch", None),
                             ahead=self.prefetch):
            self.images_read += len(y)
            yield x, y

    def _host_batches(self) -> Iterator[tuple[Any, torch.Tensor]]:
        """The pass's batches as the host reads them (items as a list for a ``device_batch`` data set)."""
        if isinstance(self.dataset, TensorImages):
            order = self._order()
            for start in range(0, len(order), self.batch_size):
                yield self.dataset.batch(order[start:start + self.batch_size])
            return
        if self._dataloader is None:
            collate = collate_items if getattr(self.dataset, "device_batch", None) else None
            self._dataloader = DataLoader(SeededItems(self.dataset), batch_size=self.batch_size,
                                          sampler=EpochOrder(self), collate_fn=collate,
                                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                                          persistent_workers=self.num_workers > 0,
                                          generator=torch.Generator().manual_seed(self.seed))
        yield from self._dataloader


VALIDATION_SEED = 7  # the held-out images are the same for every run seed


class ItemSubset(Subset):
    """``torch.utils.data.Subset`` that keeps the base data set's ``device_batch`` (see ``Loader``)."""

    @property
    def device_batch(self) -> Callable[[list[Any], torch.device], torch.Tensor] | None:
        return getattr(self.dataset, "device_batch", None)


def take(dataset: Dataset, indices: np.ndarray) -> Dataset:
    """The items ``indices`` of ``dataset`` (in-memory images stay in memory)."""
    if isinstance(dataset, TensorImages):
        index = torch.from_numpy(indices)
        return TensorImages(dataset.images[index], dataset.labels[index])
    return ItemSubset(dataset, indices.tolist())


def hold_out_validation(data: ClassIncrementalData, fraction: float) -> ClassIncrementalData:
    """The data with ``fraction`` of each class's training images (at least one, never all; a fixed
    seeded draw, independent of the run seed) moved into the evaluation side: training uses the
    rest, and evaluation reads the held-out images (under the test transform) instead of the test set."""
    targets = np.asarray(data.train_targets)
    keep, held = [], []
    for label in range(data.num_classes):
        members = np.nonzero(targets == label)[0]
        n_val = int(round(fraction * len(members)))
        if not 1 <= n_val < len(members):
            raise ConfigError(f"data.val_fraction {fraction} holds out {n_val} of the {len(members)} training images "
                              f"of class {label}; choose a fraction that leaves at least one on each side")
        members = np.random.default_rng([VALIDATION_SEED, label]).permutation(members)
        held.append(members[:n_val])
        keep.append(members[n_val:])
    keep, held = np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))
    plain = data.train_plain if data.train_plain is not None else data.train
    info = {**data.info, "evaluated_on": "validation", "val_fraction": fraction,
            "n_train": len(keep), "n_validation": len(held)}
    return ClassIncrementalData(
        num_classes=data.num_classes, train=take(data.train, keep), test=take(plain, held),
        train_targets=targets[keep], test_targets=targets[held], info=info,
        train_plain=None if data.train_plain is None else take(data.train_plain, keep))


class TaskSplit:
    """The tasks of one run: class order, per-task class ranges and per-task train/test data."""

    def __init__(self, data: ClassIncrementalData, n_tasks: int, seed: int, shuffle_classes: bool = True,
                 dataset_name: str = "dataset"):
        check_n_tasks(data.num_classes, n_tasks, dataset_name)
        self.data, self.n_tasks = data, n_tasks
        self.order = class_order(data.num_classes, seed, shuffle_classes)
        self.label_map = np.empty(data.num_classes, dtype=np.int64)
        self.label_map[self.order] = np.arange(data.num_classes)
        self.classes_per_task = data.num_classes // n_tasks

    @property
    def task_sizes(self) -> list[int]:
        return [self.classes_per_task] * self.n_tasks

    def _task_indices(self, positions: np.ndarray, task: int, side: str) -> np.ndarray:
        """Indices of ``task``'s images among items whose class positions are ``positions``."""
        lo, hi = task * self.classes_per_task, (task + 1) * self.classes_per_task
        return np.nonzero((positions >= lo) & (positions < hi))[0]

    def _task_data(self, dataset: Dataset, targets: np.ndarray, task: int, side: str) -> Dataset:
        positions = self.label_map[targets]
        indices = self._task_indices(positions, task, side)
        if isinstance(dataset, TensorImages):
            index = torch.from_numpy(indices)
            return TensorImages(dataset.images[index], torch.from_numpy(positions[indices]))
        return RemappedLabels(dataset, indices, self.label_map)

    def train_set(self, task: int, plain: bool = False) -> Dataset:
        """Task ``task``'s training images; ``plain``: under the test transform (no augmentation)."""
        dataset = self.data.train_plain if plain and self.data.train_plain is not None else self.data.train
        return self._task_data(dataset, self.data.train_targets, task, "train")

    def test_set(self, task: int) -> Dataset:
        return self._task_data(self.data.test, self.data.test_targets, task, "test")

    def task_image_counts(self, uncut: bool = False) -> list[dict[str, int]]:
        """Training and test images of each task (``uncut``: of the full split, where this one is cut)."""
        indices = TaskSplit._task_indices if uncut else type(self)._task_indices
        sides = {"train": self.label_map[self.data.train_targets], "test": self.label_map[self.data.test_targets]}
        return [{side: len(indices(self, positions, t, side)) for side, positions in sides.items()}
                for t in range(self.n_tasks)]


def spread_over_classes(indices: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """``count`` of ``indices`` (fewer if there are fewer), taken round-robin over their labels in
    sorted order (each class's first image, then each class's second, ...), so that every class has
    an image once ``count`` reaches the number of classes; sorted."""
    by_class = [indices[labels == label] for label in np.unique(labels)]
    rounds = max((len(members) for members in by_class), default=0)
    picked = [members[k] for k in range(rounds) for members in by_class if k < len(members)]
    return np.sort(np.asarray(picked[:count], dtype=np.int64))


class CutSplit(TaskSplit):
    """A ``TaskSplit`` whose tasks keep only a few images (a preflight, ``benchmark/preflight.py``):
    ``train_images`` training images per task, at least one of each of its classes (so class
    statistics have every class), and ``test_images`` test images per task, spread over its classes.
    Class order, label map and task sizes are those of the full split."""

    def __init__(self, data: ClassIncrementalData, n_tasks: int, seed: int, shuffle_classes: bool = True,
                 dataset_name: str = "dataset", train_images: int = 1, test_images: int = 1):
        super().__init__(data, n_tasks, seed, shuffle_classes, dataset_name)
        self.caps = {"train": max(train_images, self.classes_per_task), "test": test_images}

    def _task_indices(self, positions: np.ndarray, task: int, side: str) -> np.ndarray:
        indices = super()._task_indices(positions, task, side)
        return spread_over_classes(indices, positions[indices], self.caps[side])


@dataclass
class DatasetOptions:
    """Per-dataset options (``--set data.KEY=VALUE``); datasets subclass it."""

    # > 0: hold out this fraction of each class's training images and evaluate on them instead of
    # the test set (choosing recipes without looking at test data); see ``hold_out_validation``
    val_fraction: float = 0.0


class BenchmarkDataset:
    """A registered benchmark: class count, default task count and backbone, and its loader."""

    name: str
    num_classes: int
    default_n_tasks: int
    default_backbone: str = "vit-b16"  # a --backbone value: tiny, vit-b16 or a timm name
    fixed_image_size: int | None = None  # set when the images exist at one size only (synth)
    Options: type[DatasetOptions] = DatasetOptions
    folder: str | None = None  # the data set's folder under the data root (None: generated data)
    layout: str = ""  # the expected on-disk layout, named in errors
    # (training, test) images of the standard split, as published; what a preflight on a stand-in
    # projects its time with (None: generated data, whose sizes are its options)
    published_sizes: tuple[int, int] | None = None
    # the official files ``prepare`` fetches into the data root (``datasets/download.py``); () for generated data
    downloads: tuple[Download, ...] = ()

    @classmethod
    def check_location(cls, data_root: str | None) -> None:
        """``DataError`` (one line) when the data root or the data set's folder is missing: checked
        before jobs are submitted, so a wrong --data-root fails at once, not in every job
        (``load`` checks the whole layout)."""
        if cls.folder is not None:
            from datasets.data_root import check_data_root, check_dataset_folder

            check_dataset_folder(check_data_root(data_root) / cls.folder, cls.layout)

    @classmethod
    def identity(cls) -> str | None:
        """A digest of how a generated data set's images are made (part of the run id); None for
        data read from disk (their split and file hashes are recorded with each result)."""
        return None

    @classmethod
    def load(cls, options: DatasetOptions, data_root: str | None) -> ClassIncrementalData:
        """Load the train/test sets (natural labels) from ``data_root`` or generate them."""
        raise NotImplementedError

    @classmethod
    def full_sizes(cls, options: DatasetOptions) -> tuple[int, int] | None:
        """(training, test) images of the real data set under ``options`` (``published_sizes``)."""
        return cls.published_sizes

    @classmethod
    def check_prepared(cls, root: Path) -> str:
        """Load the data set from ``root`` as a run does (default options) and check its class and
        image counts against the known ones (``full_sizes``): the counts in one line, else
        ``DataError`` naming what differs (``prepare`` and ``prepare --check``)."""
        options = cls.Options()
        return cls.check_counts(options, root, cls.full_sizes(options))

    @classmethod
    def check_counts(cls, options: DatasetOptions, root: Path, expected: tuple[int, int] | int | None,
                     redo: Path | None = None) -> str:
        """``check_prepared`` for one set of options. ``expected``: the (training, test) images, or
        only their total where the split's sizes follow the data (a per-class 80/20 split of uneven
        classes), or None (any); ``redo``: what to delete when they differ (default: the data set's folder)."""
        data = cls.load(options, str(root))
        found = (len(data.train_targets), len(data.test_targets))
        classes = len(np.unique(data.train_targets))
        if isinstance(expected, int):
            ok, want = sum(found) == expected, f"{expected:,} images in all"
        else:
            ok, want = expected in (None, found), f"{expected[0]:,} / {expected[1]:,} images" if expected else "images"
        if classes != cls.num_classes or not ok:
            raise DataError(f"{cls.name} in {root} has {found[0]:,} training / {found[1]:,} test images of {classes} "
                            f"classes, expected {want} of {cls.num_classes} classes; delete "
                            f"{redo or root / str(cls.folder)} and run prepare {cls.name} again")
        return f"{classes} classes, {found[0]:,} training / {found[1]:,} test images"

    @classmethod
    def write_standin(cls, root: Path, train_per_class: int, test_per_class: int,
                      options: DatasetOptions) -> dict[str, Any]:
        """Write a stand-in of the data set under ``root`` (``root/<folder>`` in its on-disk format,
        every class with at least ``train_per_class`` training and ``test_per_class`` test images,
        ``datasets/standin.py``); returns the data options that point the loader at it."""
        raise ConfigError(f"{cls.name} has no stand-in; it needs no data root")
