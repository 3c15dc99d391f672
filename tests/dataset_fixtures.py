"""Writers of the real data sets' on-disk formats in miniature: every class, a few tiny images each.

Each writer creates ``<root>/<data set folder>`` as the real archive unpacks (plus CODA-style split
YAMLs or DomainNet list files where asked) and returns a ``Written`` record of what it wrote,
from which tests compute the counts a loader must report. Images are a small pool of pre-encoded
12-16 px JPEGs of random colours, so writing thousands of files takes well under a second.
"""

from __future__ import annotations

import functools
import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from datasets.standin import wnid_names as wnids  # the same names the stand-ins use

DOMAINNET_CLASSES = 345
IMAGENET_CLASSES = 200


@dataclass
class Written:
    """What a writer put on disk; counts are per natural class id."""

    classes: list[str]  # class names (wnids, folder names) in natural order
    train_counts: list[int] = field(default_factory=list)  # when the files fix the split
    test_counts: list[int] = field(default_factory=list)
    all_counts: list[int] = field(default_factory=list)  # when the loader splits the images itself
    listed: dict[str, list[str]] = field(default_factory=dict)  # side -> paths in the split/list files
    split_dir: Path | None = None  # folder holding split YAMLs


@functools.lru_cache(maxsize=1)
def _jpeg_pool() -> tuple[bytes, ...]:
    """A few encoded JPEGs of random colours, square and not, reused for every file."""
    rng = np.random.default_rng(0)
    pool = []
    for height, width in [(12, 12), (12, 16), (16, 12)] * 3:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        pool.append(buffer.getvalue())
    return tuple(pool)


def write_jpeg(path: Path, index: int = 0) -> None:
    """A tiny valid JPEG at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pool = _jpeg_pool()
    path.write_bytes(pool[index % len(pool)])


def corrupt(path: Path) -> None:
    """Overwrite an image with bytes no decoder accepts."""
    path.write_bytes(b"this is not an image" * 8)


def write_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> Written:
    """``<root>/cifar-100-python/{train,test,meta}`` pickles with the real files' dict layout."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"class_{i:02d}" for i in range(100)]
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(100), per_class)).tolist()
        batch = {"batch_label": f"{split} batch 1 of 1", "fine_labels": labels,
                 "coarse_labels": [label // 5 for label in labels],
                 "filenames": [f"img_{i}.png" for i in range(len(labels))],
                 "data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"fine_label_names": names, "coarse_label_names": [f"super_{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return Written(names, train_counts=[train_per_class] * 100, test_counts=[test_per_class] * 100)


def _class_images(folder: Path, classes: list[str], counts: Sequence[int]) -> dict[str, list[str]]:
    """``counts[i]`` JPEGs in ``folder/<classes[i]>/``; returns class -> sorted file names."""
    files = {}
    for i, (name, count) in enumerate(zip(classes, counts)):
        files[name] = [f"{name}_{k}.jpg" for k in range(count)]
        for k, file in enumerate(files[name]):
            write_jpeg(folder / name / file, i + k)
    return files


def write_imagenet_r(root: Path, per_class: int | Sequence[int] = 3, with_split_yaml: bool = False) -> Written:
    """``<root>/imagenet-r/<wnid>/*.jpg`` for 200 wnids (``per_class``: one count or one per class).

    With ``with_split_yaml``, CODA-style ``imagenet-r_{train,test}.yaml`` go to ``<root>/splits``:
    target ids are a shuffled (not wnid-sorted) assignment, each class's last image is listed as
    test and the rest as train, except class 0's second-to-last image, left unlisted (so needs
    ``per_class >= 3`` for class 0). Counts and ``classes`` are then in target-id order.
    """
    counts = [per_class] * IMAGENET_CLASSES if isinstance(per_class, int) else list(per_class)
    names = wnids(IMAGENET_CLASSES, 1_000_000)
    folder = Path(root) / "imagenet-r"
    files = _class_images(folder, names, counts)
    (folder / names[0] / "README.txt").write_text("not an image")  # ignored: not jpg/jpeg/png
    (folder / ".cache").mkdir()  # ignored: hidden
    if not with_split_yaml:
        return Written(names, all_counts=counts)
    targets = np.random.default_rng(1).permutation(IMAGENET_CLASSES).tolist()
    listed: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for i, (wnid, target) in enumerate(zip(names, targets)):
        class_files = [f"{wnid}/{file}" for file in files[wnid]]
        train = class_files[:-2] if i == 0 else class_files[:-1]
        listed["train"] += [(rel, target) for rel in train]
        listed["test"].append((class_files[-1], target))
    split_dir = Path(root) / "splits"
    split_dir.mkdir()
    for side, items in listed.items():
        content = {"data": [f"data/imagenet-r/{rel}" for rel, _ in items], "targets": [t for _, t in items]}
        (split_dir / f"imagenet-r_{side}.yaml").write_text(yaml.safe_dump(content))
    order = sorted(range(IMAGENET_CLASSES), key=lambda i: targets[i])
    train_counts = [counts[i] - (2 if i == 0 else 1) for i in order]
    return Written([names[i] for i in order], train_counts=train_counts, test_counts=[1] * IMAGENET_CLASSES,
                   listed={side: [rel for rel, _ in items] for side, items in listed.items()}, split_dir=split_dir)


def write_imagenet_a(root: Path, per_class: int = 3, presplit: bool = False) -> Written:
    """``<root>/imagenet-a/<wnid>/*.jpg`` for 200 wnids, or with ``presplit`` the PILOT copy
    ``<root>/imagenet-a/{train,test}/<wnid>/*.jpg`` with ``per_class`` train and 1 test image each."""
    names = wnids(IMAGENET_CLASSES, 2_000_000)
    folder = Path(root) / "imagenet-a"
    if not presplit:
        _class_images(folder, names, [per_class] * IMAGENET_CLASSES)
        return Written(names, all_counts=[per_class] * IMAGENET_CLASSES)
    _class_images(folder / "train", names, [per_class] * IMAGENET_CLASSES)
    _class_images(folder / "test", names, [1] * IMAGENET_CLASSES)
    return Written(names, train_counts=[per_class] * IMAGENET_CLASSES, test_counts=[1] * IMAGENET_CLASSES)


def write_domainnet(root: Path, domains: Sequence[str] = ("clipart", "sketch"), train_per_class: int = 2,
                    test_per_class: int = 1) -> Written:
    """``<root>/domainnet/<domain>/<class>/*.jpg`` and ``<domain>_{train,test}.txt`` for 345 classes."""
    folder = Path(root) / "domainnet"
    names = [f"class_{i:03d}" for i in range(DOMAINNET_CLASSES)]
    listed: dict[str, list[str]] = {"train": [], "test": []}
    for domain in domains:
        lines: dict[str, list[str]] = {"train": [], "test": []}
        for label, name in enumerate(names):
            (folder / domain / name).mkdir(parents=True)
            for k in range(train_per_class + test_per_class):
                rel = f"{domain}/{name}/{domain}_{label:03d}_{k:06d}.jpg"
                write_jpeg(folder / rel, label + k)
                side = "train" if k < train_per_class else "test"
                lines[side].append(f"{rel} {label}")
                listed[side].append(rel)
        for side, side_lines in lines.items():
            (folder / f"{domain}_{side}.txt").write_text("\n".join(side_lines) + "\n")
    n = len(domains)
    return Written(names, train_counts=[train_per_class * n] * DOMAINNET_CLASSES,
                   test_counts=[test_per_class * n] * DOMAINNET_CLASSES, listed=listed)
