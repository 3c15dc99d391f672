"""``l2p``: Learning to Prompt (Wang et al., CVPR 2022) as L2P++, the CODA-Prompt code's version.

Specification: ``shared/reference/prompt-methods.md`` sections 1-2 (GT-RIPL/CODA-Prompt, 6417d4f).
A pool of M = 30 prompts of length L = 20 with one key each, at block 0 (``deep``: blocks 0-4,
"Deep L2P++"). Each sample matches its frozen query q against the keys by cosine similarity and
takes its own top-5 prompts, in training and at inference; the 5 selected prompts give
5 x L/2 key-prefix and 5 x L/2 value-prefix tokens (prefix-tuning, not the original's input
prompt-tuning). The key loss is the sum over the batch and the selected keys of 1 - cos(q, key),
weight 1; top-k is not differentiable, so keys learn only from it, and prompts only from the
classification loss. Prompts and keys start U[0, 1). Every prompt may be updated in every task.

Deliberate difference from the reference code: the key loss gathers each sample's own top-k
cosines. The code indexes ``cos_sim[:, k_idx]``, a (B, B, k) tensor that pulls every query
toward every key selected anywhere in the batch, whose size depends on the per-GPU batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmark.errors import ConfigError
from benchmark.registry import register_method
from benchmark.search_space import LR_LADDER, Around, Scaled
from methods.prompt_base import (CODA_CODE_RECIPES, PromptConfig, PromptMethod, check_prompt_length, cosine_matrix,
                                 uniform_prompt)

DEEP_BLOCKS = (0, 1, 2, 3, 4)


@dataclass
class L2PConfig(PromptConfig):
    """L2P++ hyperparameters; defaults are the CODA-Prompt code's (``--prompt_param 30 20 -1``)."""

    pool_size: int = 30
    length: int = 20  # tokens per prompt: length/2 key and length/2 value prefix tokens
    top_k: int = 5
    deep: bool = False  # Deep L2P++: prompts at blocks 0-4 (every block of a shallower backbone)
    key_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        check_prompt_length("L2P", "length", self.length)
        if not 1 <= self.top_k <= self.pool_size:
            raise ConfigError(f"L2P needs 1 <= top_k <= pool_size, got top_k={self.top_k}, "
                              f"pool_size={self.pool_size}")


class PromptPool(nn.Module):
    """One block's pool: prompts (M, L, D) and keys (M, D), both U[0, 1)."""

    def __init__(self, pool_size: int, length: int, dim: int):
        super().__init__()
        self.prompts = uniform_prompt(pool_size, length, dim)
        self.keys = uniform_prompt(pool_size, dim)


@register_method("l2p")
class L2P(PromptMethod):
    """A shared prompt pool per prompted block; per-sample top-k key matching."""

    Config = L2PConfig
    # synth: its own choice on validation A_T (results/measured/synth_sweep.json)
    DATASET_DEFAULTS = {**CODA_CODE_RECIPES, "synth": dict(CODA_CODE_RECIPES["synth"], lr=1e-1, head_lr=1e-1)}
    SEARCH_SPACE = {"lr": Around(LR_LADDER), "length": Scaled((0.5, 1, 2))}
    # synth: the grid its synth recipe was chosen from (validation A_T, results/measured/synth_sweep.json)
    DATASET_SEARCH_SPACES = {"synth": {"lr": [1e-2, 3e-2, 1e-1, 3e-1], "head_lr": [1e-2, 3e-2, 1e-1, 3e-1]}}

    def __init__(self, backbone, task_sizes, cfg: L2PConfig):
        super().__init__(backbone, task_sizes, cfg)
        self.pools = nn.ModuleDict({str(b): PromptPool(cfg.pool_size, cfg.length, self.feature_dim)
                                    for b in self.prefix_layers})

    def prompt_blocks(self) -> list[int]:
        if not self.cfg.deep:
            return [0]
        return list(DEEP_BLOCKS[:len(self.backbone.blocks)])

    def select(self, query: torch.Tensor, pool: PromptPool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample top-k: indices (B, k) and their cosines (B, k), differentiable in the keys."""
        cosine = cosine_matrix(query, pool.keys)
        top = cosine.topk(self.cfg.top_k, dim=1).indices
        return top, cosine.gather(1, top)

    def prompts(self, query, task):
        values, key_loss = {}, query.new_zeros((), dtype=torch.float32)
        for block, pool in self.pools.items():
            top, cosine = self.select(query, pool)
            # (B, k, L, D); index_select: its backward is deterministic on CPU, p[top]'s is not
            selected = pool.prompts.index_select(0, top.flatten()).unflatten(0, top.shape)
            half = self.cfg.length // 2
            values[int(block)] = (selected[:, :, :half].flatten(1, 2), selected[:, :, half:].flatten(1, 2))
            if task is not None:
                key_loss = key_loss + self.cfg.key_loss_weight * (1 - cosine).sum()
        return values, key_loss

    def prompt_parameters(self, task: int) -> list[nn.Parameter]:
        return list(self.pools.parameters())
