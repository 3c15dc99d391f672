"""A full disk while a checkpoint is written: one line naming the folder, the last good checkpoint
kept, and the same command resumes from it once space is freed. On a real tmpfs of a few MiB
(needs root to mount; skipped otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark import store

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--methods", "seq-lora", "--tasks", "5", "--epochs", "1", "--set", "data.train_per_class=3",
       "--set", "data.test_per_class=2", "--device", "cpu", "--no-progress"]


def cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_benchmark.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def test_a_full_disk_is_one_line_and_the_rerun_resumes(tmp_path, tmpfs):
    reference = tmp_path / "reference"
    done = cli([*RUN, "--results-dir", str(reference), "--keep-checkpoints"])
    assert done.returncode == 0, done.stderr
    (checkpoint,) = (reference / "checkpoints").glob("*.pt")
    expected = next(store.load_results(reference))["acc_matrix"]
    results = tmpfs / "results"
    results.mkdir()
    # room for one checkpoint but not for the second beside it (saves write a temp file, then rename)
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * (free_bytes(tmpfs) - int(1.5 * checkpoint.stat().st_size)))
    full = cli([*RUN, "--results-dir", str(results)])
    assert full.returncode == 2
    assert full.stderr.strip().splitlines() == [full.stderr.strip()]  # one line
    assert full.stderr.startswith(f"error: no space left in {results / 'checkpoints'} to write ")
    assert "Traceback" not in full.stderr
    (kept,) = (results / "checkpoints").glob("*.pt")
    assert torch.load(kept, weights_only=True)["task"] == 0  # the last good checkpoint, intact
    assert not list((results / "checkpoints").glob(".*.tmp"))  # no half-written file left behind
    filler.unlink()
    rerun = cli([*RUN, "--results-dir", str(results)])
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from its checkpoint at task 2" in rerun.stderr
    assert next(store.load_results(results))["acc_matrix"] == expected
