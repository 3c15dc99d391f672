"""Prefix-tuning attention for timm ViT blocks, written once for every prompt method.

``PrefixAttention`` wraps a block's timm ``Attention`` (its weights are reused, not copied). When
a prefix is set, per-sample key and value prefix tokens of shape (B, Lk, D) and (B, Lv, D) are
split into heads and concatenated **in front of** the block's K and V, after the qkv projection
(and after timm's optional q/k norm, which ViT-B/16 does not use), as in the CODA-Prompt code
(models/vit.py). Queries are unchanged, so attention is (B, H, N, Lk + N) and the block still
outputs N tokens. Attention runs through ``F.scaled_dot_product_attention`` (fused kernels where
the device has them). With no prefix set, the call goes straight to the wrapped timm module, so
the block is exactly the plain backbone.

Prefixes are per-forward state: set them with ``prefixes(layers, {block: (key, value)})`` around
a forward pass; they are always cleared on exit.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from timm.models.vision_transformer import Attention, VisionTransformer

from benchmark.backbones import fit_blocks

Prefix = tuple[torch.Tensor, torch.Tensor]  # key tokens (B, Lk, D), value tokens (B, Lv, D)


class PrefixAttention(nn.Module):
    """timm multi-head self-attention with optional key/value prefix tokens."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.attn = attn
        self.prefix: Prefix | None = None

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, H, L, d_h)."""
        batch, length, _ = tokens.shape
        return tokens.reshape(batch, length, self.attn.num_heads, self.attn.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if self.prefix is None:
            return self.attn(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise NotImplementedError("prefix attention does not support attention masks")
        attn = self.attn
        batch, n_tokens, _ = x.shape
        gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
        qkv = attn.qkv(x).reshape(batch, n_tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        key_prefix, value_prefix = self.prefix
        k = torch.cat([self._heads(key_prefix.to(k.dtype)), k], dim=2)
        v = torch.cat([self._heads(value_prefix.to(v.dtype)), v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, n_tokens, attn.num_heads * attn.head_dim)
        out = attn.norm(out) if hasattr(attn, "norm") else out
        if gate is not None:
            out = out * gate
        return attn.proj_drop(attn.proj(out))


def add_prefix_attention(model: VisionTransformer, blocks: list[int]) -> dict[int, PrefixAttention]:
    """Wrap the attention of ``blocks`` (0-based) in ``PrefixAttention``; returns block -> wrapper.

    Blocks the backbone does not have are left out with a warning (``fit_blocks``). Blocks
    already wrapped are reused, so several prompt modules can share one backbone.
    """
    layers = {}
    for index in sorted(set(fit_blocks(list(blocks), len(model.blocks), "prompt blocks"))):
        block = model.blocks[index]
        if not isinstance(block.attn, PrefixAttention):
            block.attn = PrefixAttention(block.attn)
        layers[index] = block.attn
    return layers


@contextlib.contextmanager
def prefixes(layers: dict[int, PrefixAttention], values: dict[int, Prefix]) -> Iterator[None]:
    """Set each block's prefix for the duration of a forward pass (blocks not in ``values``: none)."""
    unknown = set(values) - set(layers)
    if unknown:
        raise ValueError(f"no prefix attention installed at blocks {sorted(unknown)}")
    try:
        for index, layer in layers.items():
            layer.prefix = values.get(index)
        yield
    finally:
        for layer in layers.values():
            layer.prefix = None
