"""Unpacking a data set's archives (``prepare``): tar in any compression, or zip, by file name."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from benchmark.errors import DataError


def unpack(archive: Path, into: Path, progress: bool) -> None:
    """Extract ``archive`` (``.zip``: zipfile; anything else: tarfile with its ``data`` filter, which
    refuses absolute paths, links out of ``into`` and device files) into ``into``; ``DataError``
    if it is damaged."""
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as zipped:  # zipfile drops absolute and ".." parts itself
                for member in tqdm(zipped.infolist(), desc=f"unpack {archive.name}", unit="file", leave=False,
                                   disable=not progress):
                    zipped.extract(member, into)
            return
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            tar.extractall(into, members=tqdm(members, desc=f"unpack {archive.name}", unit="file", leave=False,
                                              disable=not progress), filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{archive} is not a readable archive ({err}); delete it and rerun") from None
