"""``coda`` (alias ``coda-prompt``): CODA-Prompt (Smith et al., CVPR 2023), its current code.

Specification: ``shared/reference/prompt-methods.md`` sections 1 and 4 (GT-RIPL/CODA-Prompt,
6417d4f). At each of blocks 0-4: M = 100 prompt components P (M, 8, D) with keys K (M, D) and
attention vectors A (M, D). Task t (0-based) of T owns the slice [s, f) = [t pt, (t+1) pt) with
pt = floor(M / T). For each sample, alpha_m = cos(q * A_m, K_m) (elementwise product, no softmax)
and the prompt is sum_m alpha_m P_m, of which the first 4 tokens are key and the last 4 value
prefix tokens. Training on task t uses components [0, f) with [0, s) detached; inference uses
[0, f) of the last trained task, with no task id; components >= f are never used. At the start
of every task the new slice of K, A and P (flattened to M x 8D) is re-initialised by classical
Gram-Schmidt against all earlier rows; the orthogonality penalty mu [o(K) + o(A) + o(P)],
o(X) = mean((X X^T - I)^2) over the visible slice, has weight 0 by default (the current scripts).

Deliberate differences from the reference code, none of which changes the function computed:
* the new slices are re-initialised in place at ``begin_task`` (also for task 0) instead of
  building new parameter objects (the optimiser is built after ``begin_task`` either way), from
  the method's own random generator (seeded at construction) instead of the global one;
* alpha is computed as (q (A * K^)^T) / sqrt(q^2 (A^2)^T), with K^ the unit-norm keys, which is
  cos(q * A_m, K_m) without materialising the (B, M, D) product;
* an earlier row of zero norm is skipped by Gram-Schmidt (the code would retry forever).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import ConfigError
from benchmark.registry import register_method
from benchmark.search_space import LR_LADDER, Around, Scaled
from methods.prompt_base import CODA_CODE_RECIPES, PromptConfig, PromptMethod, check_prompt_length, split_prefix


@dataclass
class CodaPromptConfig(PromptConfig):
    """CODA-Prompt hyperparameters; defaults are the code's (``--prompt_param 100 8 0.0``)."""

    pool_size: int = 100  # components per block, split evenly over the tasks
    length: int = 8
    blocks: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    ortho_weight: float = 0.0  # mu; the paper's version used 0.1 (with an internal 1e-6 factor)

    def __post_init__(self) -> None:
        check_prompt_length("CODA-Prompt", "length", self.length)
        if self.ortho_weight < 0:
            raise ConfigError(f"CODA-Prompt ortho_weight must be >= 0, got {self.ortho_weight}")


def gram_schmidt_rows(matrix: torch.Tensor, start: int, stop: int, generator: torch.Generator | None = None
                      ) -> None:
    """Replace rows [start, stop) of ``matrix`` (in place) by random unit rows orthogonalised
    against every earlier row (classical Gram-Schmidt; normal draws from ``generator``, a CPU
    generator, or the global torch RNG).

    Rows before ``start`` are kept as they are; the new rows are orthogonal to them exactly when
    they are themselves orthogonal (the reference code has the same property).
    """
    for row in range(start, stop):
        earlier = matrix[:row]
        earlier = earlier[(earlier * earlier).sum(1) >= 1e-8]
        candidate = torch.randn(matrix.shape[1], generator=generator).to(matrix)
        if len(earlier):
            coefficients = (earlier @ candidate) / (earlier * earlier).sum(1)
            candidate = candidate - coefficients @ earlier
        matrix[row] = candidate
    matrix[start:stop] = F.normalize(matrix[start:stop], dim=1)


def ortho_penalty(rows: torch.Tensor) -> torch.Tensor:
    """mean((X X^T - I)^2) of a (n, d) matrix."""
    gram = rows @ rows.T
    return ((gram - torch.eye(len(rows), device=rows.device, dtype=gram.dtype)) ** 2).mean()


class ComponentPool(nn.Module):
    """One block's prompt components (M, L, D), keys (M, D) and attention vectors (M, D).

    All start at zero; ``begin_task`` fills each task's slice by Gram-Schmidt.
    """

    def __init__(self, pool_size: int, length: int, dim: int):
        super().__init__()
        self.components = nn.Parameter(torch.zeros(pool_size, length, dim))
        self.keys = nn.Parameter(torch.zeros(pool_size, dim))
        self.attention = nn.Parameter(torch.zeros(pool_size, dim))

    @torch.no_grad()
    def initialise_slice(self, start: int, stop: int, generator: torch.Generator) -> None:
        for matrix in (self.keys, self.attention, self.components.view(len(self.components), -1)):
            gram_schmidt_rows(matrix, start, stop, generator)

    def visible(self, start: int, stop: int, detach_before_start: bool) -> tuple[torch.Tensor, ...]:
        """(components, keys, attention) of rows [0, stop), rows [0, start) detached if asked."""
        parts = []
        for tensor in (self.components, self.keys, self.attention):
            if detach_before_start:
                tensor = torch.cat([tensor[:start].detach(), tensor[start:stop]])
            parts.append(tensor[:stop])
        return tuple(parts)


def component_weights(query: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """alpha (B, M) with alpha_bm = cos(q_b * A_m, K_m), in float32 even under autocast."""
    with torch.autocast(query.device.type, enabled=False):
        query, keys, attention = query.float(), keys.float(), attention.float()
        unit_keys = F.normalize(keys, dim=1)
        numerator = query @ (attention * unit_keys).T
        norm = ((query * query) @ (attention * attention).T).clamp_min(0).sqrt()
        return numerator / norm.clamp_min(1e-12)


@register_method("coda", "coda-prompt")
class CodaPrompt(PromptMethod):
    """Input-conditioned weighted sums of a growing set of prompt components."""

    Config = CodaPromptConfig
    # the tiny synth ViT has 4 blocks: components at all of them
    DATASET_DEFAULTS = {**CODA_CODE_RECIPES, "synth": dict(CODA_CODE_RECIPES["synth"], blocks=[0, 1, 2, 3])}
    SEARCH_SPACE = {"lr": Around(LR_LADDER), "pool_size": Scaled((0.5, 1, 2)), "length": Scaled((0.5, 1, 2))}
    # synth: the grid its synth recipe was chosen from (validation A_T, results/measured/synth_sweep.json)
    DATASET_SEARCH_SPACES = {"synth": {"lr": [1e-2, 3e-2, 1e-1], "head_lr": [1e-2, 3e-2, 1e-1, 3e-1]}}

    def __init__(self, backbone, task_sizes, cfg: CodaPromptConfig):
        super().__init__(backbone, task_sizes, cfg)
        self.per_task = cfg.pool_size // len(task_sizes)
        if self.per_task < 1:
            raise ConfigError(f"CODA-Prompt needs at least one component per task: pool_size "
                              f"{cfg.pool_size} < {len(task_sizes)} tasks; raise --set pool_size")
        self.pools = nn.ModuleDict({str(b): ComponentPool(cfg.pool_size, cfg.length, self.feature_dim)
                                    for b in self.prefix_layers})
        # the Gram-Schmidt draws of every task: seeded from the run's seed at construction, so
        # they do not depend on what else consumes the global RNG, and saved with checkpoints
        self.init_generator = torch.Generator().manual_seed(int(torch.randint(2 ** 62, ()).item()))

    def prompt_blocks(self) -> list[int]:
        return list(self.cfg.blocks)

    def task_slice(self, task: int) -> tuple[int, int]:
        """The components [s, f) that ``task`` owns."""
        return task * self.per_task, (task + 1) * self.per_task

    def begin_task(self, task, train_loader) -> None:
        start, stop = self.task_slice(task)
        for pool in self.pools.values():
            pool.initialise_slice(start, stop, self.init_generator)

    def prompts(self, query, task):
        start, stop = self.task_slice(self.current_task if task is None else task)
        values, ortho_loss = {}, query.new_zeros((), dtype=torch.float32)
        for block, pool in self.pools.items():
            components, keys, attention = pool.visible(start, stop, detach_before_start=task is not None)
            alpha = component_weights(query, keys, attention)
            values[int(block)] = split_prefix(torch.einsum("bm,mld->bld", alpha, components))
            if task is not None and self.cfg.ortho_weight > 0:
                ortho_loss = ortho_loss + self.cfg.ortho_weight * (
                    ortho_penalty(keys) + ortho_penalty(attention) + ortho_penalty(components.flatten(1)))
        return values, ortho_loss

    def prompt_parameters(self, task: int) -> list[nn.Parameter]:
        return list(self.pools.parameters())

    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "init_generator": self.init_generator.get_state()}

    def load_checkpoint_state(self, state: dict) -> None:
        super().load_checkpoint_state(state)
        self.init_generator.set_state(state["init_generator"].cpu())
