"""``frozen``: the frozen pretrained backbone with one linear head per task, no adaptation.

The floor every adaptation must beat: only head t is trained on task t (cross-entropy over the
current task's classes, past logits masked), and inference is the argmax over the concatenated
heads of all seen tasks. Any gap between a method and this row is what its adaptation buys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.registry import register_method
from methods.base import Method, MethodConfig, TaskHeads


@dataclass
class FrozenConfig(MethodConfig):
    """Only the training recipe: there is nothing to adapt."""


@register_method("frozen")
class FrozenBackbone(Method):
    """Frozen features + per-task linear heads."""

    Config = FrozenConfig
    DATASET_DEFAULTS = {
        # synth: chosen on validation A_T (`sweep --dataset synth`, results/measured/synth_sweep.json)
        "synth": dict(epochs=3, lr=3e-2),
        "cifar100": dict(epochs=20, lr=1e-3),
        "imagenet-r": dict(epochs=50, lr=1e-3),
        "imagenet-a": dict(epochs=20, lr=1e-3),
        "domainnet": dict(epochs=5, lr=1e-3),
    }
    # synth: the grid its synth recipe was chosen from (validation A_T, results/measured/synth_sweep.json)
    DATASET_SEARCH_SPACES = {"synth": {"lr": [1e-2, 3e-2, 1e-1]}}

    def __init__(self, backbone, task_sizes, cfg):
        super().__init__(backbone, task_sizes, cfg)
        self.heads = TaskHeads(self.feature_dim, self.task_sizes)

    def trainable_parameters(self, task: int) -> list[dict]:
        return self.param_groups([], self.heads.heads[task])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # nothing below the heads is trained: skip the backbone's graph
            features = self.features(x)
        return self.heads(features, self.current_task)
