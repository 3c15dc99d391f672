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
