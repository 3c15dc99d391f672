"""``python run_benchmark.py prepare``: data sets, split files and pretrained weights, ready for a run.

For each named data set, the files of its ``DOWNLOADS`` table are brought into the data root
(``datasets/download.py``: download or ``--from``, verify, unpack into the loader's layout) and the
data set is then loaded as a run would load it and checked against its known counts (classes,
training and test images). ``--check`` does only the second part, with no network. ``--weights``
caches the ViT-B/16 weights the chosen methods pin in the Hugging Face cache (as timm finds them),
so that compute nodes without internet can run. One table at the end says what is ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tabulate import tabulate

from benchmark.errors import ConfigError
from benchmark.registry import DATASETS, METHODS
from datasets.base import BenchmarkDataset
from datasets.download import Fetcher, downloads_dir, mib, moved_aside, root_lock


@dataclass
class Row:
    """One line of the closing table."""

    name: str
    state: str  # ready, missing, wrong, failed, cached
    detail: str

    @property
    def ok(self) -> bool:
        return self.state in ("ready", "cached")


def preparable() -> list[str]:
    """The registered data sets that have official files to fetch."""
    return sorted(name for name in DATASETS.names() if DATASETS.get(name).downloads)


def select(names: list[str]) -> list[str]:
    """The data sets named (``all``: every preparable one), checked, in the order given."""
    known = preparable()
    unknown = [name for name in dict.fromkeys(names) if name not in known and name != "all"]
    if unknown:
        generated = [name for name in unknown if name in DATASETS.names()]
        hint = f" ({', '.join(generated)} is generated, nothing to prepare)" if generated else ""
        raise ConfigError(f"cannot prepare {', '.join(unknown)}{hint}; choose from {', '.join(known)} or all")
    return known if "all" in names else list(dict.fromkeys(names))


def verified(cls: type[BenchmarkDataset], root: Path) -> Row:
    """The data set loaded from ``root`` as a run loads it, checked against its known counts."""
    try:
        return Row(cls.name, "ready", cls.check_prepared(root))
    except ConfigError as err:
        return Row(cls.name, "wrong", str(err))


def check_only(cls: type[BenchmarkDataset], root: Path) -> Row:
    """``--check``: what of the data set is missing, else whether it verifies (no network); either
    way the copies that failed their checksum and wait, moved aside, for deletion."""
    row = missing_or_verified(cls, root)
    bad = [path.name for item in cls.downloads for path in moved_aside(root, item)]
    if bad:
        row.detail += (f"; {len(bad)} download(s) moved aside after a failed checksum, never used: "
                       f"{', '.join(bad)} in {downloads_dir(root)} (delete them)")
    return row


def missing_or_verified(cls: type[BenchmarkDataset], root: Path) -> Row:
    """What of the data set is missing, else whether it verifies."""
    missing = [item for item in cls.downloads if not (root / item.target).exists()]
    if not missing:
        return verified(cls, root)
    parts = []
    for item in missing:
        partial = downloads_dir(root) / f"{item.name}.part"
        downloaded = downloads_dir(root) / item.name
        note = (" (downloaded, not unpacked)" if downloaded.is_file() else
                f" (partial download, {mib(partial.stat().st_size)})" if partial.is_file() else "")
        parts.append(f"{item.target}{note}")
    return Row(cls.name, "missing", f"{', '.join(parts)}; run prepare {cls.name} without --check")


def fetch_and_verify(cls: type[BenchmarkDataset], fetcher: Fetcher) -> Row:
    """Bring the data set's files into place (those in place already are skipped; one that fails
    does not stop the others), then verify it."""
    fetched, errors = [], []
    for item in cls.downloads:
        try:
            if fetcher.ensure(item):
                fetched.append(item.name)
        except ConfigError as err:  # DataError, DownloadError, StorageError: one line each
            errors.append(str(err))
    if errors:
        more = f" ({len(errors) - 1} more file(s) failed; rerun prepare {cls.name} for them)" if len(errors) > 1 else ""
        return Row(cls.name, "failed", errors[0] + more)
    row = verified(cls, fetcher.root)
    if row.ok:
        row.detail += f"; {'fetched ' + ', '.join(fetched) if fetched else 'already in place, nothing fetched'}"
    return row


def cache_weights(methods: list[str], check: bool) -> list[Row]:
    """Cache the pinned ViT-B/16 weights of ``methods`` in the Hugging Face cache (as timm loads
    them), then build each backbone from the cache as a run does; one row per weights tag. With
    ``check``: only whether they are cached."""
    from benchmark.backbones import VIT_B16, build_backbone, resolve_backbone_name, weights_cached

    users_of: dict[str, list[str]] = {}
    for method in methods:
        users_of.setdefault(resolve_backbone_name(VIT_B16, METHODS.get(method).pretrained_tag), []).append(method)
    rows = []
    for name, user_list in users_of.items():
        users = ", ".join(user_list)
        was_cached = weights_cached(name)
        if check:
            rows.append(Row(name, "cached", f"in the Hugging Face cache (methods: {users})") if was_cached else
                        Row(name, "missing", f"not in the Hugging Face cache; run prepare --weights (methods: "
                                             f"{users})"))
            continue
        try:
            build_backbone(name, pretrained=True)  # timm downloads into the Hugging Face cache, then loads
        except ConfigError as err:
            cause = err.__cause__
            rows.append(Row(name, "failed", f"could not download it from the Hugging Face hub ("
                                            f"{type(cause).__name__ if cause else err}); check the network or "
                                            f"$HF_ENDPOINT, or give runs --pretrained-path FILE (methods: {users})"))
            continue
        if not weights_cached(name):
            rows.append(Row(name, "failed", f"timm loaded {name} but not from the Hugging Face cache; set HF_HOME "
                                            f"to a folder the compute nodes share"))
            continue
        rows.append(Row(name, "cached", f"{'already in' if was_cached else 'downloaded into'} the Hugging Face "
                                        f"cache; loads as a run loads it (methods: {users})"))
    return rows


def prepare(datasets: list[str], root: Path, *, check: bool = False, source_dir: Path | None = None,
            mirror: str | None = None, weights: bool = False, methods: list[str] | None = None,
            progress: bool = True, keep_archives: bool = False) -> int:
    """The ``prepare`` command: prints the table; 0 when everything asked for is ready, else 1."""
    names = select(datasets)
    if not names and not weights:
        raise ConfigError("prepare needs data sets (or all) and/or --weights; e.g. prepare imagenet-r --data-root "
                          "./data")
    if source_dir is not None and not source_dir.is_dir():
        raise ConfigError(f"--from {source_dir} is not a folder; give the folder holding the downloaded archives")
    if check and (source_dir is not None or mirror is not None):
        raise ConfigError("--check only verifies what is in the data root; drop --from / --mirror")
    if methods and not weights:
        raise ConfigError("--methods chooses whose weights --weights caches; add --weights")
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--data-root {root} is a file, not a folder")
    if mirror is not None and urlsplit(mirror).scheme not in ("http", "https"):
        raise ConfigError(f"--mirror {mirror} is not an http(s) URL; give the base URL of the folder holding the files, "
                          f"e.g. https://mirror.example.org/cl-data")
    rows = []
    if names:
        if check:
            rows += [check_only(DATASETS.get(name), root) for name in names]
        else:
            fetcher = Fetcher(root, mirror=mirror, source_dir=source_dir, progress=progress,
                              keep_archives=keep_archives)
            with root_lock(root):
                rows += [fetch_and_verify(DATASETS.get(name), fetcher) for name in names]
    if weights:
        chosen = list(dict.fromkeys(METHODS.canonical(m) for m in methods)) if methods else METHODS.names()
        rows += cache_weights(chosen, check)
    print(tabulate([[row.name, row.state, row.detail] for row in rows], headers=["data set / weights", "state",
                                                                                 "detail"], tablefmt="github"))
    if names:
        print(f"\ndata root: {root.resolve()}; runs read it with --data-root {root}")
    return 0 if all(row.ok for row in rows) else 1
