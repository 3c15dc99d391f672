"""Shared fixtures: tiny configurations of the synthetic benchmark that run in seconds on CPU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from benchmark.config import resolve

torch.set_num_threads(2)

# 5 tasks x 20 classes, 3 training and 2 test images per class, one epoch: seconds per method.
TINY = {"epochs": 1, "batch_size": 32, "data.train_per_class": 3, "data.test_per_class": 2}


def tiny_config(method: str, n_tasks: int = 5, seed: int = 0, pretrained: bool = False, **overrides):
    """A resolved run configuration of ``method`` on a tiny synth split (random-init tiny ViT by
    default: the contract does not depend on the shipped weights)."""
    return resolve(method, "synth", n_tasks=n_tasks, seed=seed, overrides={**TINY, **overrides},
                   device="cpu", pretrained=pretrained)


needs_pdflatex = pytest.mark.skipif(shutil.which("pdflatex") is None,
                                    reason="pdflatex not installed (Debian: texlive-latex-recommended)")


def assert_latex_compiles(table: str, tmp_path: Path) -> None:
    """Compile ``table`` in a minimal booktabs document with pdflatex; fail with the end of its log."""
    document = "\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + table + "\\end{document}\n"
    (tmp_path / "t.tex").write_text(document)
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]


@pytest.fixture
def tmpfs(tmp_path):
    """A real 8 MiB tmpfs (a small disk that fills up); skips the test where mounting needs root."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def results_dir(tmp_path):
    return tmp_path / "results"


def task_loader(split, method, task: int):
    """The training loader the protocol would build for ``task`` (seeded)."""
    from datasets.base import Loader

    return Loader(split.train_set(task), method.cfg.batch_size, shuffle=True, seed=task,
                  drop_last=method.cfg.drop_last)


def begin_task(method, split, task: int) -> None:
    """The protocol's steps before training: enter the task, then ``begin_task`` without grad."""
    method.enter_task(task)
    with torch.no_grad():
        method.begin_task(task, task_loader(split, method, task))


def finish_task(method, split, task: int) -> None:
    """The protocol's steps after ``begin_task``: train, then ``end_task`` without grad."""
    from benchmark import protocol

    protocol.train_task(method, task_loader(split, method, task), task, torch.device("cpu"))
    with torch.no_grad():
        method.end_task(task, task_loader(split, method, task))


def run_task(method, split, task: int) -> None:
    begin_task(method, split, task)
    finish_task(method, split, task)


def probe_images(split, n: int = 16) -> torch.Tensor:
    """A few test images of task 0."""
    return torch.stack([split.test_set(0)[i][0] for i in range(n)])


def loader_batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every batch of the loader's current epoch, on the CPU."""
    return [(x.cpu(), y.cpu()) for x, y in loader]


def assert_resumes_exactly_and_ignores_workers(dataset, batch_size: int, skip: int) -> None:
    """Epoch 1 of a seeded shuffling loader over ``dataset``: resumed after ``skip`` batches it
    yields exactly the remaining batches, and with two workers exactly the batches of none."""
    from datasets.base import Loader

    loader = Loader(dataset, batch_size, shuffle=True, seed=2)
    loader.set_epoch(1)
    full = loader_batches(loader)
    loader.set_epoch(1, skip_batches=skip)
    resumed = loader_batches(loader)
    with_workers = Loader(dataset, batch_size, shuffle=True, seed=2, num_workers=2)
    with_workers.set_epoch(1)
    for (x, y), (x_other, y_other) in zip(full[skip:] + full, resumed + loader_batches(with_workers), strict=True):
        assert torch.equal(x, x_other) and torch.equal(y, y_other)
