"""DomainNet (``domainnet``): 345 classes over six domains, 5 tasks by default.

Layout: ``<data root>/domainnet/<domain>/<class>/<file>.jpg`` (one zip per domain) with the official
list files ``<data root>/domainnet/<domain>_train.txt`` and ``<domain>_test.txt``, one
``<domain>/<class>/<file>.jpg <label>`` per line (path relative to ``domainnet/``, labels 0-344).

Split: the official lists of the domains in ``data.domains`` (default all six; CODA-Prompt's own
split leaves out quickdraw, see ``reference/protocol.md`` section 2), so every task mixes domains.
Every listed image must exist (checked at load) and every class must occur in the training
lists. Natural class order: the list label. Transforms: train RandomResizedCrop + flip, test
Resize(S*256/224) -> CenterCrop(S). ``info`` records the domains, per-list counts, the list
files' hash, the split hash and the transforms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError, DataError
from benchmark.registry import register_dataset
from datasets.base import BenchmarkDataset, ClassIncrementalData
from datasets.images import (ImageOptions, Labelled, check_data_root, check_dataset_folder, check_listed_files,
                             file_hash, files_data)
from datasets.standin import write_jpegs

FOLDER = "domainnet"
DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
NUM_CLASSES = 345
LINE_FORMAT = "'<domain>/<class>/<file>.jpg <label>'"
LAYOUT = (f"domainnet/<domain>/<class>/*.jpg with list files domainnet/<domain>_{{train,test}}.txt "
          f"of {LINE_FORMAT} lines")
# (train, test) lines of each domain's official list files, as the DomainNet page publishes them
# (586,575 images in all; UNVERIFIED here: count after download)
LIST_SIZES = {"clipart": (33_525, 14_604), "infograph": (36_023, 15_582), "painting": (50_416, 21_850),
              "quickdraw": (120_750, 51_750), "real": (120_906, 52_041), "sketch": (48_212, 20_916)}


@dataclass
class DomainNetOptions(ImageOptions):
    """``domains``: the DomainNet domains whose official train/test lists make up the benchmark."""

    domains: list[str] = field(default_factory=lambda: list(DOMAINS))

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [domain for domain in self.domains if domain not in DOMAINS]
        if unknown or not self.domains:
            raise ConfigError(f"data.domains must be a non-empty list of DomainNet domains, got {self.domains}; "
                              f"valid: {', '.join(DOMAINS)}")
        if len(set(self.domains)) != len(self.domains):
            raise ConfigError(f"data.domains lists a domain twice: {self.domains}")


def read_list(path: Path) -> Labelled:
    """(path relative to domainnet/, label) of every line of a list file; ``DataError`` on bad input."""
    if not path.is_file():
        raise DataError(f"missing list file {path}; expected {LAYOUT} under the data root")
    items = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rel, label_text = line.rsplit(maxsplit=1)
            label = int(label_text)
        except ValueError:  # not two fields, or the label is not an integer
            raise DataError(f"{path}:{number}: malformed line {line!r}; expected {LINE_FORMAT}") from None
        if not 0 <= label < NUM_CLASSES:
            raise DataError(f"{path}:{number}: label {label} is outside 0-{NUM_CLASSES - 1}")
        items.append((rel, label))
    return items


@register_dataset("domainnet")
class DomainNet(BenchmarkDataset):
    """DomainNet with the official lists of the chosen domains, 5 tasks of 69 classes by default."""

    folder, layout = FOLDER, LAYOUT
    num_classes = NUM_CLASSES
    default_n_tasks = 5
    Options = DomainNetOptions

    @classmethod
    def full_sizes(cls, options: DomainNetOptions) -> tuple[int, int]:
        """The official lists' sizes of the chosen domains."""
        return (sum(LIST_SIZES[d][0] for d in options.domains), sum(LIST_SIZES[d][1] for d in options.domains))

    @classmethod
    def write_standin(cls, root: Path, train_per_class: int, test_per_class: int,
                      options: DomainNetOptions) -> dict[str, Any]:
        """The chosen domains' class folders and list files, the class's images spread over the domains."""
        counts = {"train": math.ceil(train_per_class / len(options.domains)),
                  "test": math.ceil(test_per_class / len(options.domains))}
        for domain in options.domains:
            lines: dict[str, list[str]] = {"train": [], "test": []}
            for label in range(NUM_CLASSES):
                files = [f"{domain}_{label:03d}_{k:06d}.jpg" for k in range(counts["train"] + counts["test"])]
                write_jpegs(root / FOLDER / domain / f"class_{label:03d}", files, label)
                for k, file in enumerate(files):
                    lines["train" if k < counts["train"] else "test"].append(f"{domain}/class_{label:03d}/{file} {label}")
            for side, side_lines in lines.items():
                (root / FOLDER / f"{domain}_{side}.txt").write_text("\n".join(side_lines) + "\n")
        return {}

    @classmethod
    def load(cls, options: DomainNetOptions, data_root: str | None) -> ClassIncrementalData:
        folder = check_dataset_folder(check_data_root(data_root) / FOLDER, LAYOUT)
        sides: dict[str, Labelled] = {"train": [], "test": []}
        counts, list_files = {}, []
        for domain in options.domains:
            for side, items in sides.items():
                path = folder / f"{domain}_{side}.txt"
                listed = read_list(path)
                check_listed_files([folder / rel for rel, _ in listed], f"list file {path}")
                items += listed
                counts[f"{domain}_{side}"] = len(listed)
                list_files.append(path)
        absent = sorted(set(range(NUM_CLASSES)) - {label for _, label in sides["train"]})
        if absent:
            raise DataError(f"the training lists of {', '.join(options.domains)} have no images of {len(absent)} "
                            f"classes (e.g. label {absent[0]}); all {NUM_CLASSES} must occur (expected {LAYOUT})")
        info = {"domains": list(options.domains), "counts": counts, "list_files": [str(p) for p in list_files],
                "list_file_hash": file_hash(list_files), "split": "official lists"}
        return files_data(folder, NUM_CLASSES, sides["train"], sides["test"], options, info)
