"""Shared fixtures: tiny configurations of the synthetic benchmark that run in seconds on CPU."""

from __future__ import annotations

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
