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
from datasets.data_root import check_data_root, check_dataset_folder
from datasets.download import Download
from datasets.images import ImageOptions, Labelled, check_listed_files, file_hash, files_data
from datasets.standin import write_jpegs

FOLDER = "domainnet"
DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
NUM_CLASSES = 345
LINE_FORMAT = "'<domain>/<class>/<file>.jpg <label>'"
LAYOUT = (f"domainnet/<domain>/<class>/*.jpg with list files domainnet/<domain>_{{train,test}}.txt "
          f"of {LINE_FORMAT} lines")
# (train, test) lines of each domain's official list files (586,575 images in all), as the
# tensorflow_datasets catalog gives them; prepare checks them after the download
LIST_SIZES = {"clipart": (33_525, 14_604), "infograph": (36_023, 15_582), "painting": (50_416, 21_850),
              "quickdraw": (120_750, 51_750), "real": (120_906, 52_041), "sketch": (48_212, 20_916)}

VISDA = "http://csr.bu.edu/ftp/visda/2019/multi-source"
# The six domain zips (each unpacks to <domain>/<class>/<file>.jpg; clipart and painting live under
# groundtruth/) and the twelve official list files; sha256 and sizes as tensorflow_datasets pins them
# (image_classification/domainnet/checksums.tsv), URLs as DomainBed's download script has them.
DOWNLOADS = (
    Download(f"{VISDA}/groundtruth/clipart.zip", f"{FOLDER}/clipart",
             "sha256:f8f248a3e8bbc9868c523ae24e6601b4c2ad102afc60c0efeb4f3255df22354d", 1_270_909_081),
    Download(f"{VISDA}/infograph.zip", f"{FOLDER}/infograph",
             "sha256:891e14f476317e97b6f06d6498c11d0a5b8d0c8b57210765ed9beb072da611fa", 4_338_659_804),
    Download(f"{VISDA}/groundtruth/painting.zip", f"{FOLDER}/painting",
             "sha256:fa47e6d405503ea0286cabd767f176bd30e988b63ddd7b9db16cf030c9770015", 3_679_366_174),
    Download(f"{VISDA}/quickdraw.zip", f"{FOLDER}/quickdraw",
             "sha256:9f37df2a8c3733703dbb35ad9964202a65f675ca30137756457537536b485d84", 459_920_701),
    Download(f"{VISDA}/real.zip", f"{FOLDER}/real",
             "sha256:d7fe010b430c5b510f85d657d38c4a1924822695fabea4fef57bd00dba251d63", 6_062_039_589),
    Download(f"{VISDA}/sketch.zip", f"{FOLDER}/sketch",
             "sha256:23a7dbae7016b343e934399beaa8a68728fb5e570ebe2c71df9b75cf91c499fc", 2_633_992_926),
    Download(f"{VISDA}/domainnet/txt/clipart_train.txt", f"{FOLDER}/clipart_train.txt",
             "sha256:affdadf5f95a7583e6b98030a3d35007e2613ee4dd942393c5a705ec2b429312", 1_443_819, unpack=False),
    Download(f"{VISDA}/domainnet/txt/clipart_test.txt", f"{FOLDER}/clipart_test.txt",
             "sha256:62c8e36aaba1c41ad9e249099739707220a44c08f167b37ef420f34a31628a6b", 628_917, unpack=False),
    Download(f"{VISDA}/domainnet/txt/infograph_train.txt", f"{FOLDER}/infograph_train.txt",
             "sha256:36b44cbd41a2915e0dc73b4f4be8862a6f3c220f93c8d63fb2439beeae3aefda", 1_683_098, unpack=False),
    Download(f"{VISDA}/domainnet/txt/infograph_test.txt", f"{FOLDER}/infograph_test.txt",
             "sha256:413cfa54ac92e7e6b242f4f09fbd9c8ace85c4deaf3cb6c81ff6b68264460136", 728_028, unpack=False),
    Download(f"{VISDA}/domainnet/txt/painting_train.txt", f"{FOLDER}/painting_train.txt",
             "sha256:f1da38d50a702fddf1329f85bc607d7a2abcae7e6aec75e1fd49cc1bd340d47b", 2_241_901, unpack=False),
    Download(f"{VISDA}/domainnet/txt/painting_test.txt", f"{FOLDER}/painting_test.txt",
             "sha256:11472b13b5188e09f06918b12eebb660588c97a20e43e268d9b02e3e37eb8f97", 971_888, unpack=False),
    Download(f"{VISDA}/domainnet/txt/quickdraw_train.txt", f"{FOLDER}/quickdraw_train.txt",
             "sha256:3a5edd3bc215772010eebc87f158707703dd7e48091d13b816af81326a9d1c0f", 5_164_600, unpack=False),
    Download(f"{VISDA}/domainnet/txt/quickdraw_test.txt", f"{FOLDER}/quickdraw_test.txt",
             "sha256:2a00a60650a453c65c356da748fec54084a197272137c440e7d52d08947357bf", 2_213_400, unpack=False),
    Download(f"{VISDA}/domainnet/txt/real_train.txt", f"{FOLDER}/real_train.txt",
             "sha256:19d483256d24aef19e581b65eda8333fd918aef3eb733fe499ff384120e3a289", 4_440_944, unpack=False),
    Download(f"{VISDA}/domainnet/txt/real_test.txt", f"{FOLDER}/real_test.txt",
             "sha256:2b3f75bcde309aeb5931292084b2162e936b5f189e3bb1ad716f0f74c460864c", 1_911_327, unpack=False),
    Download(f"{VISDA}/domainnet/txt/sketch_train.txt", f"{FOLDER}/sketch_train.txt",
             "sha256:72f4bc6afa5702a1ccba800d0053c1427de87439dfaf246dbc9a2e71abfec54f", 1_960_222, unpack=False),
    Download(f"{VISDA}/domainnet/txt/sketch_test.txt", f"{FOLDER}/sketch_test.txt",
             "sha256:3fb48fca18c507c4321f007c3f62b308ec232ff6928cbfe2af64e76ec366e840", 850_581, unpack=False),
)


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
    downloads = DOWNLOADS

    @classmethod
    def full_sizes(cls, options: DomainNetOptions) -> tuple[int, int]:
        """The official lists' sizes of the chosen domains."""
        return (sum(LIST_SIZES[d][0] for d in options.domains), sum(LIST_SIZES[d][1] for d in options.domains))

    @classmethod
    def check_prepared(cls, root: Path) -> str:
        """Each official list's line count (the one to fetch again is named), then the counts check."""
        options = cls.Options()
        for domain in options.domains:
            for side, expected in zip(("train", "test"), LIST_SIZES[domain]):
                path = root / FOLDER / f"{domain}_{side}.txt"
                if (found := len(read_list(path))) != expected:
                    raise DataError(f"{path} lists {found:,} images, the official list {expected:,}; delete it and "
                                    f"run prepare domainnet again")
        return cls.check_counts(options, root, cls.full_sizes(options))

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
