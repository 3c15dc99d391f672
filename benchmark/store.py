"""Results store: one JSON file per completed run under ``<results_dir>/runs/``, written atomically.

A file exists only for a run that finished (it is written by a temp file + rename once the last
task is evaluated), so "file exists" means "done". The file name is the run id, which hashes the
resolved configuration. Unreadable files are reported by name and skipped, never fatal.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from benchmark.errors import ConfigError, StorageError

REQUIRED_KEYS = ("run_id", "method", "dataset", "n_tasks", "seed", "acc_matrix", "final_acc", "avg_acc",
                 "timings")


def runs_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "runs"


def check_results_dir(results_dir: str | Path, writable: bool = True) -> None:
    """A one-line ``ConfigError`` when ``results_dir`` cannot hold results: it is a file, or (when
    ``writable``) it cannot be created or written to. Creates the folder when it is missing."""
    path = Path(results_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--results-dir {path} is a file, not a folder; name a folder (it is created if missing)")
    if not writable:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ConfigError(f"--results-dir {path} cannot be written ({err.strerror}: {err.filename}); "
                          "name a folder you can write to") from None


def result_path(results_dir: str | Path, run_id: str) -> Path:
    return runs_dir(results_dir) / f"{run_id}.json"


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def checkpoint_path(results_dir: str | Path, run_id: str) -> Path:
    """Where the checkpoint of an unfinished run lives (removed once its result is written)."""
    return Path(results_dir) / "checkpoints" / f"{run_id}.pt"


OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


def out_of_space(err: BaseException) -> bool:
    """Whether ``err`` (or the error it arose from: torch.save wraps the file's OSError in a
    RuntimeError) is a full disk or an exhausted quota."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in OUT_OF_SPACE:
            return True
        err = err.__cause__ or err.__context__
    return False


def write_atomic(path: Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write a file with ``write(handle)`` via a temp file in the same folder and a rename, so
    ``path`` is either the old file or the complete new one, never half-written. A full disk is a
    one-line ``StorageError`` naming the folder (the old file, e.g. the last good checkpoint, stays)."""
    try:
        _write_atomic(path, write, binary)
    except (OSError, RuntimeError) as err:
        if not out_of_space(err):
            raise
        raise StorageError(f"no space left in {path.parent} to write {path.name}; free space there (or use another "
                           "--results-dir) and rerun the same command: runs resume from their last checkpoint, "
                           "which is kept") from None


def _write_atomic(path: Path, write: Callable[[IO], None], binary: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide results from collaborators
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (``write_atomic``)."""
    write_atomic(path, lambda handle: json.dump(_json_safe(payload), handle, indent=1, allow_nan=False))


def write_result(results_dir: str | Path, result: dict[str, Any]) -> Path:
    """Store a completed run's result; returns its path."""
    path = result_path(results_dir, result["run_id"])
    write_json_atomic(path, result)
    return path


def diverged_path(results_dir: str | Path, run_id: str) -> Path:
    """Where a run whose loss became NaN or infinite leaves its note (never a result)."""
    return Path(results_dir) / "diverged" / f"{run_id}.json"


def write_diverged(results_dir: str | Path, run_id: str, message: str) -> None:
    write_json_atomic(diverged_path(results_dir, run_id), {"run_id": run_id, "error": message})


def diverged(results_dir: str | Path, run_id: str) -> str | None:
    """The error of a run that diverged (no result was written), or None."""
    try:
        return json.loads(diverged_path(results_dir, run_id).read_text())["error"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_complete(results_dir: str | Path, run_id: str) -> bool:
    return result_path(results_dir, run_id).is_file()


def read_result(path: Path) -> dict[str, Any]:
    """Parse one result file; ``ValueError`` naming the file if it is corrupt or incomplete."""
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"corrupt result file {path}: {err}") from None
    if not isinstance(result, dict):
        raise ValueError(f"corrupt result file {path}: not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise ValueError(f"corrupt result file {path}: missing {', '.join(missing)}")
    return result


def load_results(results_dir: str | Path, warn=None) -> Iterator[dict[str, Any]]:
    """Every readable result under ``results_dir``; corrupt files are reported via ``warn`` and skipped."""
    warn = warn or (lambda message: print(f"warning: {message} (skipped)", file=sys.stderr))
    for path in sorted(runs_dir(results_dir).glob("*.json")):
        try:
            yield read_result(path)
        except ValueError as err:
            warn(str(err))
