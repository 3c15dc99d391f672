"""CIFAR-100 (``cifar100``): 100 classes, 10 tasks by default (``reference/protocol.md``).

Layout: ``<data root>/cifar-100-python/{train,test,meta}``, the Python pickles unpacked from
``cifar-100-python.tar.gz`` (read with ``encoding="latin1"``; pickles run code when loaded, so
the data root must be trusted, as with torchvision). ``train``/``test`` hold ``data`` (N, 3072)
uint8, the R, G, B 32x32 planes, and ``fine_labels``; ``meta`` holds ``fine_label_names``.

Split: the official 50,000 / 10,000. Natural class order: the fine-label id (alphabetical names).
Transforms (CODA-Prompt): train RandomResizedCrop + flip at the image size, test Resize to the
image size (no crop). The images stay in memory as uint8 and are transformed per item; with
``data.device_decode`` the workers draw the crop boxes and flips as that transform does and send
the 32 px crops, which are resized, flipped and scaled on the run's device (``TensorPixels`` of
``datasets/cached_images.py``; on CPU the same pixels as the default path, torch's kernel both).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.errors import ConfigError, DataError
from benchmark.registry import register_dataset
from datasets.base import BenchmarkDataset, ClassIncrementalData
from datasets.data_root import check_data_root, check_dataset_folder
from datasets.download import Download
from datasets.images import ImageOptions, TransformedTensors, transforms_for

FOLDER = "cifar-100-python"
LAYOUT = "cifar-100-python/{train,test,meta} (unpack cifar-100-python.tar.gz)"
NUM_CLASSES = 100
# The official archive; sha256 as Keras's cifar100.py and torchvision's prototype pin it (md5
# eb9058c3a382ffc7106e4002c42a8d85 in torchvision's cifar.py)
DOWNLOADS = (
    Download("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", FOLDER,
             "sha256:85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", 169_001_437),
)


def _unpickle(path: Path) -> Any:
    """The object pickled in ``path``; ``DataError`` naming the file if it is missing or not a pickle."""
    if not path.is_file():
        raise DataError(f"missing CIFAR-100 file {path}; expected {LAYOUT} under the data root")
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as err:  # unpickling arbitrary bytes can raise almost any exception type
        raise DataError(f"{path} is not a CIFAR-100 pickle ({type(err).__name__}: {err}); "
                        f"re-extract cifar-100-python.tar.gz") from None


def _read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and fine labels (N,) of the ``train`` or ``test`` pickle."""
    batch = _unpickle(path)
    if not isinstance(batch, dict) or "data" not in batch or "fine_labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path} is not a CIFAR-100 train/test pickle (needs 'data' and 'fine_labels', found "
                        f"{keys}; CIFAR-10 batches have 'labels' only); expected {LAYOUT}")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["fine_labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"{path}: 'data' must be uint8 (N, 3072) with N fine labels, got {data.dtype} "
                        f"{data.shape} and {len(labels)} labels; re-extract cifar-100-python.tar.gz")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: fine labels must lie in 0-{NUM_CLASSES - 1}, found {labels.min()}-{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(path: Path) -> list[str]:
    """The 100 fine label names from ``meta``."""
    meta = _unpickle(path)
    names = meta.get("fine_label_names") if isinstance(meta, dict) else None
    if names is None or len(names) != NUM_CLASSES:
        raise DataError(f"{path} is not the CIFAR-100 meta pickle (needs {NUM_CLASSES} 'fine_label_names'); "
                        f"re-extract cifar-100-python.tar.gz")
    return [str(name) for name in names]


@dataclass
class Cifar100Options(ImageOptions):
    """The image options; ``decoded_cache`` does not apply (the images are decoded in memory),
    ``device_decode`` resizes the crops on the device (nothing to decode)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decoded_cache:
            raise ConfigError("data.decoded_cache applies to the image-file data sets (imagenet-r, imagenet-a, "
                              "domainnet); CIFAR-100 is held decoded in memory already")


@register_dataset("cifar100")
class Cifar100(BenchmarkDataset):
    """CIFAR-100 in its official split, 10 tasks of 10 classes by default."""

    folder, layout = FOLDER, LAYOUT
    num_classes = NUM_CLASSES
    default_n_tasks = 10
    Options = Cifar100Options
    published_sizes = (50_000, 10_000)
    downloads = DOWNLOADS

    @classmethod
    def write_standin(cls, root: Path, train_per_class: int, test_per_class: int,
                      options: Cifar100Options) -> dict[str, Any]:
        """The three pickles in the real files' dict layout, random 32x32 pixels."""
        folder = root / FOLDER
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            labels = np.repeat(np.arange(NUM_CLASSES), per_class).tolist()
            batch = {"batch_label": f"{split} batch 1 of 1", "fine_labels": labels,
                     "coarse_labels": [label // 5 for label in labels],
                     "filenames": [f"standin_{i}.png" for i in range(len(labels))],
                     "data": rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)}
            (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
        meta = {"fine_label_names": [f"class_{i:02d}" for i in range(NUM_CLASSES)],
                "coarse_label_names": [f"superclass_{i:02d}" for i in range(20)]}
        (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
        return {}

    @classmethod
    def load(cls, options: Cifar100Options, data_root: str | None) -> ClassIncrementalData:
        folder = check_dataset_folder(check_data_root(data_root) / FOLDER, LAYOUT)
        names = _class_names(folder / "meta")
        x_train, y_train = _read_split(folder / "train")
        x_test, y_test = _read_split(folder / "test")
        absent = sorted(set(range(NUM_CLASSES)) - set(y_train.tolist()))
        if absent:
            raise DataError(f"{folder / 'train'} has no images of {len(absent)} classes (e.g. {absent[0]}); "
                            f"re-extract cifar-100-python.tar.gz")
        train_tf, test_tf, transform_info = transforms_for(options, test_resize="resize")
        info = {"split": "official", "n_train": len(y_train), "n_test": len(y_test), "class_names": names,
                **transform_info}
        x_train, x_test = torch.from_numpy(x_train), torch.from_numpy(x_test)
        if options.device_decode:
            from datasets.cached_images import CachedTestImages, CachedTrainImages, TensorPixels

            size, norm = options.size, options.normalize
            info["decoding"] = ("in memory; crop boxes and flips in the workers, resize, flip and scaling on the "
                                "run's device (torch antialiased bilinear)")
            return ClassIncrementalData(
                num_classes=NUM_CLASSES, train=CachedTrainImages(TensorPixels(x_train), y_train, size, norm),
                test=CachedTestImages(TensorPixels(x_test), y_test, size, "resize", norm),
                train_targets=y_train, test_targets=y_test, info=info,
                train_plain=CachedTestImages(TensorPixels(x_train), y_train, size, "resize", norm))
        return ClassIncrementalData(
            num_classes=NUM_CLASSES,
            train=TransformedTensors(x_train, y_train, train_tf),
            test=TransformedTensors(x_test, y_test, test_tf),
            train_targets=y_train, test_targets=y_test, info=info,
            train_plain=TransformedTensors(x_train, y_train, test_tf),
        )
