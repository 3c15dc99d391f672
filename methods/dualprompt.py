"""``dualprompt``: DualPrompt (Wang et al., ECCV 2022) as in the CODA-Prompt code.

Specification: ``shared/reference/prompt-methods.md`` sections 1 and 3 (GT-RIPL/CODA-Prompt,
6417d4f). A task-shared g-prompt of length 6 at blocks 0-1 (3 key + 3 value prefix tokens) and,
at blocks 2-4, a pool of T e-prompts of length 20 (one per task; 10 + 10 prefix tokens) with one
key each; every e-block has its own keys (GT-RIPL/CODA-Prompt issue #3). Training on task t uses
the ground-truth e-prompt t at every e-block, with key loss sum_b (1 - cos(q_b, key_t)) per e-block,
summed over the e-blocks with weight 1. At inference each e-block takes its own top-1 key match
over the whole pool (as the code does: keys of tasks not trained yet are candidates too, but stay
at their U[0, 1) init and rarely win). Prompts and keys start U[0, 1). Past e-prompts get no
gradient; the previous task's prompt is not copied into the new slot (unlike the original).
Where a block has both, its prefix is the e-prompt's tokens followed by the g-prompt's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark.errors import ConfigError
from benchmark.registry import register_method
from benchmark.search_space import LR_LADDER, Around, Scaled
from methods.prompt_base import (CODA_CODE_RECIPES, PromptConfig, PromptMethod, check_prompt_length, cosine_matrix,
                                 split_prefix, uniform_prompt)


@dataclass
class DualPromptConfig(PromptConfig):
    """DualPrompt hyperparameters; defaults are the CODA-Prompt code's (``--prompt_param T 20 6``)."""

    g_length: int = 6
    g_blocks: list[int] = field(default_factory=lambda: [0, 1])
    e_length: int = 20
    e_blocks: list[int] = field(default_factory=lambda: [2, 3, 4])
    key_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("g_length", "e_length"):
            check_prompt_length("DualPrompt", name, getattr(self, name))
        if not self.e_blocks:
            raise ConfigError("DualPrompt needs at least one e-prompt block (e_blocks)")


class EPromptPool(nn.Module):
    """One e-block's task-specific prompts (T, L, D) and keys (T, D), both U[0, 1)."""

    def __init__(self, n_tasks: int, length: int, dim: int):
        super().__init__()
        self.prompts = uniform_prompt(n_tasks, length, dim)
        self.keys = uniform_prompt(n_tasks, dim)


@register_method("dualprompt")
class DualPrompt(PromptMethod):
    """Shared g-prompts in the early blocks, task-keyed e-prompts in the middle blocks."""

    Config = DualPromptConfig
    # the tiny synth ViT has 4 blocks, so its e-prompts sit at blocks 2-3
    DATASET_DEFAULTS = {**CODA_CODE_RECIPES, "synth": dict(CODA_CODE_RECIPES["synth"], e_blocks=[2, 3])}
    SEARCH_SPACE = {"lr": Around(LR_LADDER), "e_length": Scaled((0.5, 1, 2))}
    # synth: the grid its synth recipe was chosen from (validation A_T, results/measured/synth_sweep.json)
    DATASET_SEARCH_SPACES = {"synth": {"lr": [1e-2, 3e-2, 1e-1], "head_lr": [1e-2, 3e-2, 1e-1, 3e-1]}}

    def __init__(self, backbone, task_sizes, cfg: DualPromptConfig):
        super().__init__(backbone, task_sizes, cfg)
        dim = self.feature_dim
        g_blocks = [b for b in cfg.g_blocks if b in self.prefix_layers]  # those the backbone has
        e_blocks = [b for b in cfg.e_blocks if b in self.prefix_layers]
        if not e_blocks:
            raise ConfigError(f"DualPrompt e_blocks {cfg.e_blocks} do not exist in this backbone "
                              f"(blocks 0-{len(backbone.blocks) - 1}); fix --set e_blocks=...")
        self.g_prompts = nn.ParameterDict({str(b): uniform_prompt(cfg.g_length, dim) for b in g_blocks})
        self.e_pools = nn.ModuleDict({str(b): EPromptPool(len(task_sizes), cfg.e_length, dim) for b in e_blocks})

    def prompt_blocks(self) -> list[int]:
        return sorted(set(self.cfg.g_blocks) | set(self.cfg.e_blocks))

    def e_prompt_index(self, query: torch.Tensor, pool: EPromptPool, task: int | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample: the e-prompt to use (B,) and its cosine with the query (B,)."""
        cosine = cosine_matrix(query, pool.keys)  # (B, T)
        if task is None:
            index = cosine.argmax(dim=1)
        else:
            index = torch.full((len(query),), task, dtype=torch.long, device=query.device)
        return index, cosine.gather(1, index[:, None])[:, 0]

    def prompts(self, query, task):
        batch = len(query)
        tokens: dict[int, list[torch.Tensor]] = {b: [] for b in self.prefix_layers}  # key/value parts
        key_loss = query.new_zeros((), dtype=torch.float32)
        for block, pool in self.e_pools.items():
            index, cosine = self.e_prompt_index(query, pool, task)
            tokens[int(block)].append(pool.prompts.index_select(0, index))  # deterministic backward
            if task is not None:
                key_loss = key_loss + self.cfg.key_loss_weight * (1 - cosine).sum()
        for block, prompt in self.g_prompts.items():
            tokens[int(block)].append(prompt.expand(batch, -1, -1))
        values = {}
        for block, parts in tokens.items():
            halves = [split_prefix(part) for part in parts]
            values[block] = (torch.cat([k for k, _ in halves], 1), torch.cat([v for _, v in halves], 1))
        return values, key_loss

    def prompt_parameters(self, task: int) -> list[nn.Parameter]:
        return list(self.g_prompts.parameters()) + list(self.e_pools.parameters())
