"""ImageNet-A (``imagenet-a``): 200 classes, 10 tasks by default.

Layouts, detected in this order:

- pre-split (the protocol's choice, the copy PILOT/EASE distribute): ``<data root>/imagenet-a/train/<wnid>/``
  and ``<data root>/imagenet-a/test/<wnid>/``, 200 wnid folders each, same wnids; used as given.
- original (``imagenet-a.tar``): ``<data root>/imagenet-a/<wnid>/*.jpg``, 200 wnid folders, split by
  a seeded per-class 80/20 split (``data.split_seed``, never the class-order seed).

Only one of ``train``/``test`` present is an error. Natural class order: sorted wnid.
Transforms: train RandomResizedCrop + flip, test Resize(S*256/224) -> CenterCrop(S).
``info`` records the layout, the split, its hash, the counts and the transforms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.errors import DataError
from benchmark.registry import register_dataset
from datasets.base import BenchmarkDataset, ClassIncrementalData
from datasets.data_root import check_data_root, check_dataset_folder
from datasets.download import Download
from datasets.images import ImageOptions, class_folder_items, files_data, scan_class_folders, stratified_items
from datasets.standin import wnid_names, write_jpegs

FOLDER = "imagenet-a"
LAYOUT = ("imagenet-a/{train,test}/<wnid>/*.jpg (pre-split copy) or imagenet-a/<wnid>/*.jpg (imagenet-a.tar), "
          "200 wnid folders")
NUM_CLASSES = 200
TOTAL_IMAGES = 7_500
# The original archive (7,500 images; unpacks to imagenet-a/<wnid>/ and a README.txt); sha256 and
# size as tensorflow_datasets pins them (url_checksums/imagenet_a.txt). The pre-split copy PILOT/EASE
# use is not an official download (their README's Google Drive link): place it by hand.
DOWNLOADS = (
    Download("https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar", FOLDER,
             "sha256:3bb3632277e6ba6392ea64c02ddbf4dd2266c9caffd6bc09c9656d28f012589e", 687_552_512),
)


@dataclass
class ImageNetAOptions(ImageOptions):
    """``split_seed`` seeds the 80/20 split of the original layout (unused for the pre-split copy)."""

    split_seed: int = 0


@register_dataset("imagenet-a")
class ImageNetA(BenchmarkDataset):
    """ImageNet-A natural adversarial examples, 10 tasks of 20 classes by default."""

    folder, layout = FOLDER, LAYOUT
    num_classes = NUM_CLASSES
    default_n_tasks = 10
    Options = ImageNetAOptions
    # 7,500 images; the 80/20 split here (the pre-split copy's counts are not published: UNVERIFIED)
    published_sizes = (6_000, 1_500)  # about; prepare checks the total
    downloads = DOWNLOADS

    @classmethod
    def check_prepared(cls, root: Path) -> str:
        """The counts check: all 7,500 images of the original archive (the seeded 80/20 split's sizes
        vary with the classes'); for the pre-split copy only the classes (its counts are not published)."""
        if (root / FOLDER / "train").is_dir():
            return cls.check_counts(cls.Options(), root, None) + " (pre-split copy: its counts are not published)"
        return cls.check_counts(cls.Options(), root, TOTAL_IMAGES)  # the 80/20 split's sizes vary with the classes

    @classmethod
    def write_standin(cls, root: Path, train_per_class: int, test_per_class: int,
                      options: ImageNetAOptions) -> dict[str, Any]:
        """The pre-split layout (the protocol's choice): train/ and test/ with the same 200 wnid folders."""
        for label, wnid in enumerate(wnid_names(NUM_CLASSES, 2_000_000)):
            for side, count in (("train", train_per_class), ("test", test_per_class)):
                write_jpegs(root / FOLDER / side / wnid, [f"{wnid}_{k}.jpg" for k in range(count)], label)
        return {}

    @classmethod
    def load(cls, options: ImageNetAOptions, data_root: str | None) -> ClassIncrementalData:
        folder = check_dataset_folder(check_data_root(data_root) / FOLDER, LAYOUT)
        present = [side for side in ("train", "test") if (folder / side).is_dir()]
        if len(present) == 1:
            absent = folder / ("test" if present[0] == "train" else "train")
            raise DataError(f"{folder / present[0]} exists but {absent} does not; the pre-split layout needs both "
                            f"(expected {LAYOUT})")
        if present:
            train_classes = scan_class_folders(folder / "train", NUM_CLASSES, LAYOUT)
            test_classes = scan_class_folders(folder / "test", NUM_CLASSES, LAYOUT)
            names = [name for name, _ in train_classes]
            if names != [name for name, _ in test_classes]:
                raise DataError(f"{folder / 'train'} and {folder / 'test'} hold different class folders; "
                                f"re-extract the pre-split copy")
            train = [(f"train/{rel}", label) for rel, label in class_folder_items(train_classes)]
            test = [(f"test/{rel}", label) for rel, label in class_folder_items(test_classes)]
            info = {"layout": "pre-split train/test", "split": "pre-split folders"}
        else:
            classes = scan_class_folders(folder, NUM_CLASSES, LAYOUT)
            names = [name for name, _ in classes]
            train, test = stratified_items(class_folder_items(classes), options.split_seed)
            info = {"layout": "original", "split": f"stratified 80/20, split_seed {options.split_seed}"}
        return files_data(folder, NUM_CLASSES, train, test, options, {**info, "class_names": names})
