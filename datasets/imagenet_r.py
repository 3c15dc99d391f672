"""ImageNet-R (``imagenet-r``): 200 classes, 10 tasks by default (5, 10 and 20 are standard).

Layout: ``<data root>/imagenet-r/<wnid>/*.jpg``, 200 wnid folders, as ``imagenet-r.tar`` unpacks.

Split, two kinds (``reference/protocol.md`` section 2):

- ``data.split_file`` set (the protocol's choice): CODA-Prompt's ``imagenet-r_train.yaml`` and
  ``imagenet-r_test.yaml`` (24,000 / 6,000 images). The option is the folder holding both files
  or the path of either one (the other is read from beside it). Keys ``data``: paths
  ``.../imagenet-r/<wnid>/<file>.jpg``, mapped to ``<data root>/imagenet-r/<wnid>/<file>.jpg`` by
  the part after the last ``imagenet-r/``; ``targets``: class ids. Exactly the listed files are
  used; a listed file that does not exist is an error. Natural class order: the YAML target ids
  (not wnid-sorted).
- unset: a seeded per-class 80/20 split (``data.split_seed``, never the class-order seed).
  Natural class order: sorted wnid.

Transforms: train RandomResizedCrop + flip, test Resize(S*256/224) -> CenterCrop(S).
``info`` records the split kind, its hash, the split files' hash, the counts and the transforms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmark.errors import ConfigError, DataError
from benchmark.registry import register_dataset
from datasets.base import BenchmarkDataset, ClassIncrementalData
from datasets.data_root import check_data_root
from datasets.download import Download
from datasets.images import (ImageOptions, Labelled, check_listed_files, class_folder_items, file_hash, files_data,
                             scan_class_folders, stratified_items)
from datasets.standin import stratified_total, wnid_names, write_jpegs

FOLDER = "imagenet-r"
LAYOUT = "imagenet-r/<wnid>/*.jpg with 200 wnid folders (extract imagenet-r.tar)"
NUM_CLASSES = 200
TOTAL_IMAGES = 30_000
SPLIT_NAMES = {"train": "imagenet-r_train.yaml", "test": "imagenet-r_test.yaml"}
SPLITS = "splits"  # where prepare puts CODA's split YAMLs, under the data root (--split-file <data root>/splits)
CODA_SPLITS = "https://raw.githubusercontent.com/GT-RIPL/CODA-Prompt/6417d4f68754be68b697c7ca2323ee61e791e1a3/dataloaders/splits"
# The official archive (30,000 images; unpacks to imagenet-r/<wnid>/ and a README.txt), sha256 and
# size as tensorflow_datasets pins them (url_checksums/imagenet_r.txt); CODA-Prompt's split YAMLs at a
# pinned commit, sha256 of those files (byte-identical to InfLoRA's utils/splits/ copies).
DOWNLOADS = (
    Download("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar", FOLDER,
             "sha256:18c6bf493b39a0d975d48e587437f562caab9c52ae6327dcfa9dd8eb54aa1b52", 2_191_079_936),
    Download(f"{CODA_SPLITS}/imagenet-r_train.yaml", f"{SPLITS}/imagenet-r_train.yaml",
             "sha256:6bcaa14ca9359915ac3a44c48ae71388146385686eb15da79a37844421a0b845", 1_137_662, unpack=False),
    Download(f"{CODA_SPLITS}/imagenet-r_test.yaml", f"{SPLITS}/imagenet-r_test.yaml",
             "sha256:57275ac242d68983a4f39ccb81ec34f48b1bd920b9cd79e6e8040d7c042db02a", 284_216, unpack=False),
)
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # safe_load's semantics, ~10x faster with libyaml


@dataclass
class ImageNetROptions(ImageOptions):
    """``split_file``: folder with CODA's imagenet-r_{train,test}.yaml or either file; None = seeded
    stratified 80/20 split with ``split_seed``."""

    split_file: str | None = None
    split_seed: int = 0


def split_files(split_file: str) -> dict[str, Path]:
    """The train and test YAML paths named by the ``split_file`` option; ``DataError`` if missing."""
    path = Path(split_file).expanduser()
    if path.is_dir():
        files = {side: path / name for side, name in SPLIT_NAMES.items()}
    elif path.name.endswith(("_train.yaml", "_test.yaml")):
        stem = path.name.rsplit("_", 1)[0]
        files = {side: path.with_name(f"{stem}_{side}.yaml") for side in SPLIT_NAMES}
    else:
        raise ConfigError(f"data.split_file {path} must be a folder holding {' and '.join(SPLIT_NAMES.values())} "
                          f"or the path of one of them")
    for file in files.values():
        if not file.is_file():
            raise DataError(f"split file {file} does not exist; data.split_file takes the folder holding "
                            f"CODA-Prompt's {' and '.join(SPLIT_NAMES.values())} or the path of one of them")
    return files


def read_split_yaml(path: Path) -> Labelled:
    """(path relative to imagenet-r/, target id) for every entry of a CODA split YAML."""
    try:
        content = yaml.load(path.read_text(), Loader=SAFE_LOADER)
    except yaml.YAMLError as err:
        raise DataError(f"{path} is not valid YAML ({err}); use CODA-Prompt's split files") from None
    data = content.get("data") if isinstance(content, dict) else None
    targets = content.get("targets") if isinstance(content, dict) else None
    if not isinstance(data, list) or not isinstance(targets, list) or len(data) != len(targets):
        raise DataError(f"{path} needs lists 'data' and 'targets' of equal length; use CODA-Prompt's split files")
    items = []
    for entry, target in zip(data, targets):
        if not isinstance(entry, str) or f"{FOLDER}/" not in entry:
            raise DataError(f"{path}: entry {entry!r} is not a path inside {FOLDER}/")
        if not isinstance(target, int) or not 0 <= target < NUM_CLASSES:
            raise DataError(f"{path}: target {target!r} of {entry} is not a class id in 0-{NUM_CLASSES - 1}")
        items.append((entry.rpartition(f"{FOLDER}/")[2], target))
    return items


def yaml_split(folder: Path, files: dict[str, Path]) -> tuple[Labelled, Labelled, list[str]]:
    """Train and test items of CODA's YAML split, checked, and the wnid of each target id."""
    train, test = read_split_yaml(files["train"]), read_split_yaml(files["test"])
    for side, items in (("train", train), ("test", test)):
        check_listed_files([folder / rel for rel, _ in items], f"split file {files[side]}")
    overlap = {rel for rel, _ in train} & {rel for rel, _ in test}
    if overlap:
        raise DataError(f"{len(overlap)} image(s) are in both {files['train']} and {files['test']}, "
                        f"e.g. {min(overlap)}; use CODA-Prompt's split files")
    wnids: dict[int, str] = {}
    for rel, target in train + test:
        wnid = rel.split("/")[0]
        if wnids.setdefault(target, wnid) != wnid:
            raise DataError(f"target {target} labels both {wnids[target]} and {wnid} in the split files "
                            f"{files['train']} / {files['test']}")
    if len({target for _, target in train}) != NUM_CLASSES:
        raise DataError(f"{files['train']} covers {len({t for _, t in train})} classes, expected {NUM_CLASSES}")
    return train, test, [wnids[target] for target in range(NUM_CLASSES)]


@register_dataset("imagenet-r")
class ImageNetR(BenchmarkDataset):
    """ImageNet-R renditions, 10 tasks of 20 classes by default."""

    folder, layout = FOLDER, LAYOUT
    num_classes = NUM_CLASSES
    default_n_tasks = 10
    Options = ImageNetROptions
    published_sizes = (24_000, 6_000)  # CODA's split YAMLs; the seeded 80/20 split of the 30,000 is about as large
    downloads = DOWNLOADS

    @classmethod
    def check_prepared(cls, root: Path) -> str:
        """The counts check: all 30,000 images (the seeded 80/20 split's sizes vary with the classes'),
        and, where prepare placed them, CODA's split YAMLs' 24,000 / 6,000."""
        line = cls.check_counts(cls.Options(), root, TOTAL_IMAGES)  # the 80/20 split's sizes follow the classes'
        if not (root / SPLITS).is_dir():
            return line
        coda = cls.Options(split_file=str(root / SPLITS))
        cls.check_counts(coda, root, cls.full_sizes(coda), redo=root / SPLITS)
        return f"{line}; CODA's split verified too (--split-file {root / SPLITS})"

    @classmethod
    def write_standin(cls, root: Path, train_per_class: int, test_per_class: int,
                      options: ImageNetROptions) -> dict[str, Any]:
        """200 wnid folders of JPEGs; with ``split_file`` set, CODA-style split YAMLs of them too."""
        per_class = stratified_total(train_per_class, test_per_class)
        listed: dict[str, dict[str, list]] = {side: {"data": [], "targets": []} for side in SPLIT_NAMES}
        for target, wnid in enumerate(wnid_names(NUM_CLASSES, 1_000_000)):
            files = [f"{wnid}_{k}.jpg" for k in range(per_class)]
            write_jpegs(root / FOLDER / wnid, files, target)
            for side, chosen in (("train", files[test_per_class:]), ("test", files[:test_per_class])):
                listed[side]["data"] += [f"data/{FOLDER}/{wnid}/{file}" for file in chosen]
                listed[side]["targets"] += [target] * len(chosen)
        if options.split_file is None:
            return {}
        (root / "splits").mkdir()
        for side, content in listed.items():
            (root / "splits" / SPLIT_NAMES[side]).write_text(yaml.safe_dump(content))
        return {"split_file": str(root / "splits")}

    @classmethod
    def load(cls, options: ImageNetROptions, data_root: str | None) -> ClassIncrementalData:
        folder = check_data_root(data_root) / FOLDER
        classes = scan_class_folders(folder, NUM_CLASSES, LAYOUT)
        if options.split_file is None:
            train, test = stratified_items(class_folder_items(classes), options.split_seed)
            names = [name for name, _ in classes]
            info = {"split": f"stratified 80/20, split_seed {options.split_seed}"}
        else:
            files = split_files(options.split_file)
            train, test, names = yaml_split(folder, files)
            info = {"split": "coda-yaml", "split_files": [str(f) for f in files.values()],
                    "split_file_hash": file_hash(files.values())}
        return files_data(folder, NUM_CLASSES, train, test, options, {**info, "class_names": names})
