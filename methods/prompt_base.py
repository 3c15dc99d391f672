"""The frame shared by the prompt methods (L2P++, DualPrompt, CODA-Prompt), as in the CODA-Prompt code.

Specification: ``shared/reference/prompt-methods.md`` section 1. Per batch:

1. **Query pass** (``query``): the frozen backbone with no prompts, under ``no_grad``; the
   final-LayerNorm CLS token q (B, D). Computed once per batch and handed to every prompted block.
2. **Prompt selection** (``prompts``, the one hook a prompt method writes): from q, the key and
   value prefix tokens of each prompted block, plus the auxiliary loss (key/matching loss) when
   training. ``task`` is the ground-truth task in training and ``None`` at inference.
3. **Prompted pass**: the backbone again with those prefixes (``methods/prefix.py``); its
   final-LayerNorm CLS token feeds the linear head.
4. **Loss**: cross-entropy over the current task's classes (past logits masked, future ones not
   computed) plus the auxiliary loss with weight 1.

The head is one linear layer per task (PyTorch default init), concatenated in task order; this is
the same function as the reference's single Linear(D, C) under this masking, where the columns of
past and future classes get zero gradient and, with Adam rebuilt per task, no update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import ConfigError
from methods.base import Method, MethodConfig, TaskHeads
from methods.prefix import Prefix, add_prefix_attention, prefixes

# The CODA-Prompt code's recipe for all three methods: Adam, lr 1e-3, batch 128, per-epoch coda-cosine,
# 20 / 50 / 5 epochs; ImageNet-A has no reference config and takes the CIFAR-100 recipe. synth:
# the CPU recipe of docs/synthetic.md; methods add their tiny-ViT block lists.
CODA_CODE_RECIPES: dict[str, dict[str, Any]] = {
    # chosen on validation A_T (`sweep --dataset synth`, results/measured/synth_sweep.json) for
    # DualPrompt and CODA-P; L2P's own choice (lr and head lr 0.1) is set in methods/l2p.py
    "synth": dict(epochs=2, lr=3e-2, head_lr=3e-2),
    "cifar100": dict(epochs=20, lr=1e-3),
    "imagenet-r": dict(epochs=50, lr=1e-3),
    "imagenet-a": dict(epochs=20, lr=1e-3),
    "domainnet": dict(epochs=5, lr=1e-3),
}


@dataclass
class PromptConfig(MethodConfig):
    """Training settings shared by the prompt methods."""

    drop_last: bool = True  # as the CODA-Prompt code's training loaders


def split_prefix(prompt: torch.Tensor) -> Prefix:
    """A prompt (B, L, D) as prefix tokens: the first L // 2 for keys, the rest for values."""
    half = prompt.shape[1] // 2
    return prompt[:, :half], prompt[:, half:]


def cosine_matrix(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (B, M) of queries (B, D) and keys (M, D), in float32 even under
    autocast: in bf16, top-k choices flip and 1 - cos is coarse near 1, where trained keys sit."""
    with torch.autocast(queries.device.type, enabled=False):
        return F.normalize(queries.float(), dim=1) @ F.normalize(keys.float(), dim=1).T


def check_prompt_length(method: str, setting: str, length: int) -> None:
    """``ConfigError`` unless a prompt length splits into equal key and value halves."""
    if length < 2 or length % 2:
        raise ConfigError(f"{method} {setting} must be even and >= 2 (half key, half value prefix tokens), "
                          f"got {setting}={length}")


def uniform_prompt(*shape: int) -> nn.Parameter:
    """A prompt or key tensor initialised U[0, 1), as in the CODA-Prompt code."""
    return nn.Parameter(torch.rand(*shape))


class PromptMethod(Method):
    """Frozen ViT + query-selected prefix prompts + linear head (the CODA-Prompt frame)."""

    def __init__(self, backbone, task_sizes, cfg):
        super().__init__(backbone, task_sizes, cfg)
        self.prefix_layers = add_prefix_attention(backbone, self.prompt_blocks())
        self.heads = TaskHeads(self.feature_dim, self.task_sizes)

    # -- what a prompt method defines -----------------------------------------------------------
    def prompt_blocks(self) -> list[int]:
        """The backbone blocks that receive prefixes (called once, at construction)."""
        raise NotImplementedError

    def prompts(self, query: torch.Tensor, task: int | None) -> tuple[dict[int, Prefix], torch.Tensor]:
        """Prefixes per prompted block for the queries (B, D), and the auxiliary loss (a scalar;
        zero at inference). ``task``: the ground-truth task in training, ``None`` at inference."""
        raise NotImplementedError

    def prompt_parameters(self, task: int) -> list[nn.Parameter]:
        """The prompt-module parameters to optimise on ``task``."""
        raise NotImplementedError

    # -- the shared frame -----------------------------------------------------------------------
    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen, unprompted backbone's final-LayerNorm CLS token; carries no autograd graph."""
        return self.features(x)

    def prompted_logits(self, x: torch.Tensor, task: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over the seen classes of the prompted pass, and the auxiliary loss."""
        prefix_values, aux_loss = self.prompts(self.query(x), task)
        with prefixes(self.prefix_layers, prefix_values):
            features = self.features(x)
        return self.heads(features, self.current_task), aux_loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prompted_logits(x, None)[0]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Inference logits, in ``torch.inference_mode`` (both passes; no state is cached here);
        under ``torch.compile`` (``--compile``) in ``no_grad``, as inference tensors cannot be traced."""
        with torch.no_grad() if torch.compiler.is_compiling() else torch.inference_mode():
            return self(x)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, task: int) -> torch.Tensor:
        logits, aux_loss = self.prompted_logits(x, task)
        return self.masked_cross_entropy(logits, y, task) + aux_loss

    def trainable_parameters(self, task: int) -> list[dict[str, Any]]:
        return self.param_groups(self.prompt_parameters(task), self.heads.heads[task])
