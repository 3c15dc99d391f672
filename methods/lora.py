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
  and trainable ones run fused (``fused_lora_qkv``): their down-projections are appended as rows
  to the weight, so one GEMM gives the q/k/v outputs and the low-rank activations, and the
  up-projections are added into the targets' slices in place; the backward computes the input
  gradient and the low-rank factors' gradients only (never the frozen weight's).
Merged weights are cached (the two most recent sets of branches: the training and the
evaluation merge) and recomputed when any parameter changes, tracked by the tensors' version
counters and storage; in-place optimiser steps and ``copy_`` bump the version, but an edit
through ``param.data`` does not and must be followed by ``clear_cache()``. Merging always runs
in the weights' own precision, outside autocast.

``ScaledLoRAQKV`` (SD-LoRA) holds the same branches, each scaled by a learnable magnitude that one
``Magnitudes`` module shares across every wrapped layer: the live branch adds alpha U D x, a
normalised (frozen past) branch adds alpha U D x / (||U||_F ||D||_F). Since the magnitudes stay
trainable, training runs every branch fused into the projection, as ``LoRAQKV`` runs its trainable
ones (the frozen branches' unit-norm factors cached); evaluation merges them all into one weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.backbones import fit_blocks
from benchmark.errors import ConfigError

TARGET_INDEX = {"q": 0, "k": 1, "v": 2}
# The low-rank rows appended to the qkv weight are padded with zero rows to a multiple of this, so
# the fused GEMM's dimensions and its output's row stride (which q, k and v keep) stay multiples of
# 16 bytes in bf16, as cuBLAS's and the attention kernels' fastest paths want (a rank of 10 is not).
RANK_ALIGN = 8


class _FusedLoRAProjection(torch.autograd.Function):
    """x [W; D]^T + [b; 0] in one GEMM, then U times the low-rank part added in place to output
    columns ``start:start + len(U)``; returns the first ``len(W)`` columns (a view: no copy, rows
    ``len(W) + len(D)`` apart).

    Only x, D and U get gradients: the frozen W and b never do, so the backward skips the weight
    gradient that autograd through ``torch.cat([W, D])`` would compute for all of [W; D].
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, down: torch.Tensor,
                up: torch.Tensor, start: int) -> torch.Tensor:
        rows = weight.shape[0]
        bias = None if bias is None else torch.cat([bias, bias.new_zeros(down.shape[0])])
        out = F.linear(x, torch.cat([weight, down]), bias)
        low, projected = out[:, rows:].clone(), out[:, :rows]  # low: (tokens, rank), saved on its own
        projected[:, start:start + up.shape[0]].addmm_(low, up.t())
        ctx.save_for_backward(x, weight, down, up, low)
        ctx.start = start
        return projected

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, down, up, low = ctx.saved_tensors
        grad_span = grad[:, ctx.start:ctx.start + up.shape[0]]
        grad_low = grad_span @ up
        grad_x = (grad @ weight).addmm_(grad_low, down) if ctx.needs_input_grad[0] else None
        grad_down = grad_low.t() @ x if ctx.needs_input_grad[3] else None
        grad_up = grad_span.t() @ low if ctx.needs_input_grad[4] else None
        return grad_x, None, None, grad_down, grad_up, None


def fused_lora_qkv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   terms: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The fused qkv projection x W^T + b with U_t D_t x added to each target t's output slice.

    Args:
        x: input tokens (..., d).
        weight, bias: the frozen (3d, d) projection (merged frozen branches included) and its bias.
        terms: per target ("q", "k", "v"), the down-projection D (r, d) and up-projection U (d, r).

    Runs under autocast like ``F.linear``: in the autocast dtype when it is on. The low-rank part
    is padded to ``RANK_ALIGN`` with zero rows of D (and columns of U).
    """
    dim = weight.shape[1]
    device_type = x.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
    order = sorted(terms, key=TARGET_INDEX.get)
    rank = sum(terms[t][0].shape[0] for t in order)
    width = rank + -rank % RANK_ALIGN
    down = torch.cat([terms[t][0] for t in order] + [weight.new_zeros(width - rank, dim)])
    blocks, offset = [], 0  # U laid out over the rows of q..v that the targets span, zero elsewhere
    for target in list(TARGET_INDEX)[TARGET_INDEX[order[0]]:TARGET_INDEX[order[-1]] + 1]:
        if target in terms:
            up = terms[target][1]
            blocks.append(F.pad(up, (offset, width - offset - up.shape[1])))
            offset += up.shape[1]
        else:
            blocks.append(weight.new_zeros(dim, width))
    cast = [None if t is None else t.to(dtype) for t in (x.reshape(-1, dim), weight, bias, down, torch.cat(blocks))]
    out = _FusedLoRAProjection.apply(*cast, TARGET_INDEX[order[0]] * dim)
    return out.reshape(*x.shape[:-1], weight.shape[0])


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


class BranchedQKV(nn.Module):
    """A frozen fused qkv Linear and a list of LoRA branches on some of its q/k/v outputs: what
    ``LoRAQKV`` and ``ScaledLoRAQKV`` share (how the branches are applied is theirs)."""

    def __init__(self, base: nn.Linear, targets: tuple[str, ...]):
        super().__init__()
        unknown = set(targets) - set(TARGET_INDEX)
        if unknown:
            raise ConfigError(f"unknown LoRA targets {sorted(unknown)}; valid: q, k, v")
        self.base = base
        self.targets = tuple(targets)
        self.dim = base.in_features
        self.branches = nn.ModuleList()

    def add_branch(self, rank: int) -> LoRABranch:
        """Append a new branch (random down, zero up) on this layer's targets and return it."""
        branch = LoRABranch(self.dim, rank, self.targets).to(self.base.weight.device)
        self.branches.append(branch)
        return branch


class LoRAQKV(BranchedQKV):
    """A frozen fused qkv Linear plus LoRA branches on some of its q/k/v outputs."""

    def __init__(self, base: nn.Linear, targets: tuple[str, ...] = ("k", "v")):
        super().__init__(base, targets)
        self._merged_cache: dict[tuple[int, ...], tuple[tuple, torch.Tensor]] = {}

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
        live = [b for b in self.branches if b.is_trainable()]
        if not live:
            return F.linear(x, weight, self.base.bias)
        terms = {t: (torch.cat([b.down[t] for b in live]), torch.cat([b.up[t] for b in live], dim=1))
                 for t in self.targets}
        return fused_lora_qkv(x, weight, self.base.bias, terms)

    def unmerged_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reference path (tests): the base projection plus every branch's increment as one explicit weight."""
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


class ScaledLoRAQKV(BranchedQKV):
    """A frozen fused qkv Linear plus LoRA branches scaled by shared magnitudes (SD-LoRA).

    Branch i adds g_i U_i D_i to each target projection, g_i = alpha_i for the live branch and
    alpha_i / (||U_i||_F ||D_i||_F) for a normalised one, the norms taken per target.
    """

    def __init__(self, base: nn.Linear, magnitudes: Magnitudes, targets: tuple[str, ...] = ("q", "v")):
        super().__init__(base, targets)
        self._shared = (magnitudes,)  # a reference, not a submodule: its owner saves it once
        self._unit_cache: dict[str, tuple[tuple, torch.Tensor, torch.Tensor]] = {}
        self._merged_cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def magnitudes(self) -> Magnitudes:
        return self._shared[0]

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
        if not self.magnitudes.active():
            return F.linear(x, self.base.weight, self.base.bias)
        terms = {t: self.low_rank_terms(t) for t in self.targets}
        return fused_lora_qkv(x, self.base.weight, self.base.bias, terms)

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
