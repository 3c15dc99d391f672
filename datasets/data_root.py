"""The data root and a data set's folder under it, checked before anything is read: a one-line
``DataError`` naming the fix (``--data-root`` / ``CL_DATA_ROOT``, the expected layout)."""

from __future__ import annotations

from pathlib import Path

from benchmark.errors import DataError

ROOT_HINT = "pass --data-root DIR or set CL_DATA_ROOT"


def check_data_root(data_root: str | Path | None) -> Path:
    """The data root as a ``Path``; ``DataError`` if it is not given or does not exist."""
    if data_root is None:
        raise DataError(f"no data root given; {ROOT_HINT}")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist; {ROOT_HINT}")
    return root


def check_dataset_folder(folder: Path, layout: str) -> Path:
    """``folder`` if it is a directory, else ``DataError`` stating the expected layout."""
    if not folder.is_dir():
        raise DataError(f"data set folder {folder} does not exist; expected {layout} under the data root "
                        f"({ROOT_HINT} to point elsewhere)")
    return folder
