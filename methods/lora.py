"""Low-rank branches on a ViT block's fused qkv projection, written once for every LoRA method.

``LoRAQKV`` wraps timm's ``attn.qkv`` Linear (weight W of shape (3d, d)) and adds any number of
branches. A branch holds, per target projection (``"k"``, ``"v"`` and/or ``"q"``), a
down-projection D (rank x d) and an up-projection U (d x rank); it adds U D x to that
projection's output, with no alpha/r scaling and no bias (as in the InfLoRA code). Sequential
LoRA trains one branch; InfLoRA adds one branch per task with a designed, frozen D.

Compute paths (identical results up to float rounding):
* with autograd off (evaluation), every branch is merged into one weight W + sum(U D), so
  inference costs the same as the plain backbone whatever the number of branches;
* with autograd on, frozen branches (no parameter requiring grad) are merged into the weight
  and trainable ones run as low-rank products, so only the low-rank factors get gradients.
Merged weights are cached (the two most recent sets of branches: the training and the
evaluation merge) and recomputed when any parameter changes, tracked by the tensors' version
counters and storage; in-place optimiser steps and ``copy_`` bump the version, but an edit
through ``param.data`` does not and must be followed by ``clear_cache()``. Merging always runs
in the weights' own precision, outside autocast.

``ScaledLoRAQKV`` (SD-LoRA) holds the same branches, each scaled by a learnable magnitude that one
``Magnitudes`` module shares across every wrapped layer: the live branch adds alpha U D x, a
normalised (frozen past) branch adds alpha U D x / (||U||_F ||D||_F). Since the magnitudes stay
trainable, training runs every branch as a low-rank product (the frozen ones' unit-norm factors
cached); evaluation merges them all into one weight, as ``LoRAQKV`` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.backbones import fit_blocks
from benchmark.errors import ConfigError

TARGET_INDEX = {"q": 0, "k": 1, "v": 2}


class LoRABranch(nn.Module):
    """One low-rank increment per target projection: Delta W_target = up[target] @ down[target]."""

    def __init__(self, dim: int, rank: int, targets: tuple[str, ...]):
        super().__init__()
        self.targets = targets
        self.down = nn.ParameterDict({t: nn.Parameter(torch.empty(rank, dim)) for t in targets})
        self.up = nn.ParameterDict({t: nn.Parameter(torch.zeros(dim, rank)) for t in targets})
        for weight in self.down.values():  # standard LoRA init: random down, zero up
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))

    def is_trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def delta(self, target: str) -> torch.Tensor:
        """The (d, d) weight increment on one target projection."""
        return self.up[target] @ self.down[target]


class LoRAQKV(nn.Module):
    """A frozen fused qkv Linear plus LoRA branches on some of its q/k/v outputs."""

    def __init__(self, base: nn.Linear, targets: tuple[str, ...] = ("k", "v")):
        super().__init__()
        unknown = set(targets) - set(TARGET_INDEX)
        if unknown:
            raise ConfigError(f"unknown LoRA targets {sorted(unknown)}; valid: q, k, v")
        self.base = base
        self.targets = tuple(targets)
        self.dim = base.in_features
        self.branches = nn.ModuleList()
        self._merged_cache: dict[tuple[int, ...], tuple[tuple, torch.Tensor]] = {}

    def add_branch(self, rank: int) -> LoRABranch:
        """Append a new branch (random down, zero up) on this layer's targets and return it."""
        branch = LoRABranch(self.dim, rank, self.targets).to(self.base.weight.device)
        self.branches.append(branch)
        return branch

    def delta_weight(self, branches: list[LoRABranch]) -> torch.Tensor:
        """Sum of the branches' increments laid out like the fused (3d, d) weight."""
        blocks = [torch.zeros_like(self.base.weight[:self.dim]) for _ in TARGET_INDEX]
        for branch in branches:
            for target in branch.targets:
                blocks[TARGET_INDEX[target]] = blocks[TARGET_INDEX[target]] + branch.delta(target)
        return torch.cat(blocks, 0)

    def merged_weight(self, indices: tuple[int, ...]) -> torch.Tensor:
        """W + sum of the given branches' increments, cached until a parameter changes."""
        tensors = [self.base.weight] + [p for i in indices for p in self.branches[i].parameters()]
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        cached = self._merged_cache.get(indices)
        if cached is not None and cached[0] == key:
            return cached[1]
        device_type = self.base.weight.device.type
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(device_type, enabled=False):
            weight = self.base.weight + self.delta_weight([self.branches[i] for i in indices])
        others = [(k, v) for k, v in self._merged_cache.items() if k != indices]
        self._merged_cache = dict([(indices, (key, weight))] + others[:1])  # newest first, at most 2
        return weight

    def clear_cache(self) -> None:
        """Drop the merged weights (needed only after editing parameters through ``.data``)."""
        self._merged_cache = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, self.merged_weight(tuple(range(len(self.branches)))), self.base.bias)
        frozen = tuple(i for i, b in enumerate(self.branches) if not b.is_trainable())
        weight = self.merged_weight(frozen) if frozen else self.base.weight
        out = F.linear(x, weight, self.base.bias)
        live = [b for b in self.branches if b.is_trainable()]
        if not live:
            return out
        q, k, v = out.split(self.dim, dim=-1)
        parts = {"q": q, "k": k, "v": v}
        for branch in live:
            for target in branch.targets:
                parts[target] = parts[target] + (x @ branch.down[target].t()) @ branch.up[target].t()
        return torch.cat([parts["q"], parts["k"], parts["v"]], dim=-1)

    def unmerged_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reference path: base projection plus every branch as an explicit low-rank product."""
        out = F.linear(x, self.base.weight, self.base.bias)
        return out + F.linear(x, self.delta_weight(list(self.branches)))


def add_lora_qkv(vit: nn.Module, blocks: list[int] | None = None,
                 targets: tuple[str, ...] = ("k", "v")) -> list[LoRAQKV]:
    """Wrap ``attn.qkv`` of the chosen blocks (default: all) of a timm ViT; returns the wrappers."""
    n_blocks = len(vit.blocks)
    chosen = list(range(n_blocks)) if blocks is None else fit_blocks(list(blocks), n_blocks, "LoRA blocks")
    layers = []
    for index in chosen:
        attn = vit.blocks[index].attn
        if not isinstance(attn.qkv, LoRAQKV):
            attn.qkv = LoRAQKV(attn.qkv, targets)
        layers.append(attn.qkv)
    return layers


def _factor_key(tensors: list[torch.Tensor]) -> tuple:
    """Identity of tensors' current values (storage and in-place version), for the caches."""
    return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)


class Magnitudes(nn.Module):
    """One learnable scalar per branch index (SD-LoRA: per task), shared by every wrapped layer.

    Also which branches the layers apply: branch ``live`` (the task being learnt) unnormalised,
    every earlier branch normalised, later ones not at all; a ``dropped`` branch is never applied
    (SD-LoRA-KD's assimilated directions).
    """

    def __init__(self, n: int, init: float):
        super().__init__()
        self.values = nn.ParameterList(nn.Parameter(torch.tensor(float(init))) for _ in range(n))
        self.live = -1
        self.dropped = [False] * n

    def active(self) -> list[int]:
        """Indices of the applied branches, in order."""
        return [i for i in range(self.live + 1) if not self.dropped[i]]

    def layout(self) -> tuple:
        """What the layers' caches depend on besides the tensors."""
        return self.live, tuple(self.dropped)


class ScaledLoRAQKV(nn.Module):
    """A frozen fused qkv Linear plus LoRA branches scaled by shared magnitudes (SD-LoRA).

    Branch i adds g_i U_i D_i to each target projection, g_i = alpha_i for the live branch and
    alpha_i / (||U_i||_F ||D_i||_F) for a normalised one, the norms taken per target.
    """

    def __init__(self, base: nn.Linear, magnitudes: Magnitudes, targets: tuple[str, ...] = ("q", "v")):
        super().__init__()
        unknown = set(targets) - set(TARGET_INDEX)
        if unknown:
            raise ConfigError(f"unknown LoRA targets {sorted(unknown)}; valid: q, k, v")
        self.base = base
        self.targets = tuple(targets)
        self.dim = base.in_features
        self.branches = nn.ModuleList()
        self._shared = (magnitudes,)  # a reference, not a submodule: its owner saves it once
        self._unit_cache: dict[str, tuple[tuple, torch.Tensor, torch.Tensor]] = {}
        self._merged_cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def magnitudes(self) -> Magnitudes:
        return self._shared[0]

    def add_branch(self, rank: int) -> LoRABranch:
        """Append a new branch (random down, zero up) on this layer's targets and return it."""
        branch = LoRABranch(self.dim, rank, self.targets).to(self.base.weight.device)
        self.branches.append(branch)
        return branch

    def _unit_factors(self, target: str, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, U) of the normalised branches ``indices`` concatenated along the rank, each U divided
        by ||U||_F ||D||_F; cached while the factors are unchanged (they are frozen)."""
        downs = [self.branches[i].down[target] for i in indices]
        ups = [self.branches[i].up[target] for i in indices]
        tracked = torch.is_grad_enabled() and any(t.requires_grad for t in downs + ups)
        key = (tuple(indices), _factor_key(downs + ups))
        cached = self._unit_cache.get(target)
        if cached is not None and cached[0] == key and not tracked:
            return cached[1], cached[2]
        with torch.autocast(self.base.weight.device.type, enabled=False):
            # clamped: a zero factor gives a zero direction, not 0/0
            units = [u / (u.norm() * d.norm()).clamp_min(torch.finfo(u.dtype).tiny) for u, d in zip(ups, downs)]
            down, up = torch.cat(downs), torch.cat(units, dim=1)
        if not tracked:
            self._unit_cache[target] = (key, down, up)
        return down, up

    def low_rank_terms(self, target: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(D, U) over the applied branches, concatenated along the rank, each branch's columns of U
        multiplied by its gain: the target's increment is U @ D. None when no branch applies."""
        magnitudes = self.magnitudes
        active = magnitudes.active()
        if not active:
            return None
        past = [i for i in active if i < magnitudes.live]
        downs, ups = [], []
        if past:
            down, unit_up = self._unit_factors(target, past)
            alphas = torch.cat([magnitudes.values[i].expand(self.branches[i].down[target].shape[0]) for i in past])
            downs.append(down)
            ups.append(unit_up * alphas)
        if magnitudes.live in active:
            branch = self.branches[magnitudes.live]
            downs.append(branch.down[target])
            ups.append(branch.up[target] * magnitudes.values[magnitudes.live])
        return torch.cat(downs), torch.cat(ups, dim=1)

    def delta_weight(self) -> torch.Tensor:
        """Sum of the applied branches' scaled increments laid out like the fused (3d, d) weight."""
        blocks = [torch.zeros_like(self.base.weight[:self.dim]) for _ in TARGET_INDEX]
        for target in self.targets:
            terms = self.low_rank_terms(target)
            if terms is not None:
                blocks[TARGET_INDEX[target]] = terms[1] @ terms[0]
        return torch.cat(blocks, 0)

    def merged_weight(self) -> torch.Tensor:
        """W + every applied branch's scaled increment, cached until a parameter changes."""
        magnitudes = self.magnitudes
        tensors = [self.base.weight] + [p for i in magnitudes.active() for p in self.branches[i].parameters()]
        key = (magnitudes.layout(), _factor_key(tensors + list(magnitudes.values)))
        if self._merged_cache is not None and self._merged_cache[0] == key:
            return self._merged_cache[1]
        device_type = self.base.weight.device.type
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(device_type, enabled=False):
            weight = self.base.weight + self.delta_weight()
        self._merged_cache = (key, weight)
        return weight

    def clear_cache(self) -> None:
        """Drop the cached weights (needed only after editing parameters through ``.data``)."""
        self._unit_cache = {}
        self._merged_cache = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, self.merged_weight(), self.base.bias)
        out = F.linear(x, self.base.weight, self.base.bias)
        if not self.magnitudes.active():
            return out
        parts = dict(zip(("q", "k", "v"), out.split(self.dim, dim=-1)))
        for target in self.targets:
            down, up = self.low_rank_terms(target)
            parts[target] = parts[target] + (x @ down.t()) @ up.t()
        return torch.cat([parts["q"], parts["k"], parts["v"]], dim=-1)

    def unmerged_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reference path: the base projection plus the increments as one explicit weight."""
        return F.linear(x, self.base.weight, self.base.bias) + F.linear(x, self.delta_weight())


def add_scaled_lora_qkv(vit: nn.Module, magnitudes: Magnitudes,
                        targets: tuple[str, ...] = ("q", "v")) -> list[ScaledLoRAQKV]:
    """Wrap ``attn.qkv`` of every block of a timm ViT in a ``ScaledLoRAQKV``; returns the wrappers."""
    layers = []
    for block in vit.blocks:
        if not isinstance(block.attn.qkv, nn.Linear):
            raise ValueError(f"attn.qkv is already wrapped ({type(block.attn.qkv).__name__})")
        block.attn.qkv = ScaledLoRAQKV(block.attn.qkv, magnitudes, targets)
        layers.append(block.attn.qkv)
    return layers
