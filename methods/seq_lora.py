"""``seq-lora``: sequential LoRA, the "Seq-LoRA" baseline of the InfLoRA paper's appendix.

The same architecture InfLoRA uses (``shared/reference/inflora.md`` section 1): low-rank
branches on the key and value projections of every block (rank 10, no alpha/r scaling, no
bias), one linear head per task, cross-entropy on the current task's head, concatenated heads
at inference. Unlike InfLoRA there is one single branch, reused through all tasks, whose two
factors are both trained (standard LoRA init: down-projection random, up-projection zero), with
no protection against interference: the lower bound of what LoRA adaptation alone forgets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from benchmark.registry import register_method
from benchmark.search_space import LR_LADDER, Around, Scaled
from methods.base import Method, MethodConfig, TaskHeads
from methods.lora import add_lora_qkv


@dataclass
class SeqLoRAConfig(MethodConfig):
    """Hyperparameters; the training recipe defaults follow InfLoRA's official configs."""

    rank: int = 10
    blocks: list[int] | None = None  # adapted blocks; None = all
    targets: list[str] = field(default_factory=lambda: ["k", "v"])
    lr: float = 5e-4


@register_method("seq-lora")
class SeqLoRA(Method):
    """One shared, fully trained LoRA branch on k and v + per-task linear heads."""

    Config = SeqLoRAConfig
    pretrained_tag = "augreg_in21k"  # InfLoRA's code: ViT-B/16 ImageNet-21k AugReg (no 1k fine-tuning)
    # InfLoRA's official Adam recipes (liangyanshuo/InfLoRA configs); synth: chosen on validation A_T
    # (`sweep --dataset synth`, grid and scores in results/measured/synth_sweep.json)
    DATASET_DEFAULTS = {
        "synth": dict(epochs=3, lr=3e-3, head_lr=3e-2),
        "cifar100": dict(epochs=20, lr=5e-4),
        "imagenet-r": dict(epochs=50, lr=5e-4),
        "imagenet-a": dict(epochs=20, lr=5e-4),
        "domainnet": dict(epochs=5, lr=5e-4, rank=30),
    }
    SEARCH_SPACE = {"lr": Around(LR_LADDER), "rank": Scaled((0.5, 1, 2))}
    # synth: the grid its synth recipe was chosen from (validation A_T, results/measured/synth_sweep.json)
    DATASET_SEARCH_SPACES = {"synth": {"lr": [1e-3, 3e-3, 1e-2], "head_lr": [1e-2, 3e-2, 1e-1]}}

    def __init__(self, backbone, task_sizes, cfg: SeqLoRAConfig):
        super().__init__(backbone, task_sizes, cfg)
        self.lora_layers = add_lora_qkv(backbone, cfg.blocks, tuple(cfg.targets))
        self.branches = [layer.add_branch(cfg.rank) for layer in self.lora_layers]
        self.heads = TaskHeads(self.feature_dim, self.task_sizes)

    def trainable_parameters(self, task: int) -> list[dict]:
        lora = [p for branch in self.branches for p in branch.parameters()]
        return self.param_groups(lora, self.heads.heads[task])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.features(x), self.current_task)
