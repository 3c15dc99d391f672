"""AdaptFormer adapters for timm ViT blocks (Chen et al., NeurIPS 2022), written once for any method.

The "parallel" AdaptFormer of the RanPAC / APER codes (petl/vision_transformer_adapter.py, as
``shared/reference/ranpac.md`` section 1.2 cites it): in every adapted block a bottleneck
branch runs beside the MLP on the residual stream *after* attention, with no LayerNorm of its
own, and its output is added to the MLP's:

    x = x + attn(norm1(x))
    x = x + mlp(norm2(x)) + s * up(dropout(relu(down(x))))

with bottleneck r (64), scale s (0.1) and dropout (0.1, active only in training). Init: the
down-projection kaiming_uniform(a=sqrt(5)), the up-projection's weight and both biases zero, so
a freshly adapted ViT computes exactly the pretrained one.

Injection, not a ViT copy: ``add_adaptformer`` replaces a block's ``mlp`` by ``AdaptFormerMLP``,
which holds the block's own ``norm2`` and ``mlp`` (the same tensors) and the adapter, and sets
the block's ``norm2`` to the identity, so the block's ``x + ls2(mlp(norm2(x)))`` becomes the
formula above (``ls2`` and drop-path are identities in ViT-B/16 and the tiny ViT).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from benchmark.backbones import fit_blocks


class Adapter(nn.Module):
    """Bottleneck branch: ``scale * up(dropout(relu(down(x))))``, zero at initialisation."""

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale, self.dropout = scale, dropout
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.dropout(F.relu(self.down(x)), p=self.dropout, training=self.training)
        return self.up(hidden) * self.scale


class AdaptFormerMLP(nn.Module):
    """A block's pre-MLP LayerNorm and MLP plus an adapter on the un-normalised input."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, adapter: Adapter):
        super().__init__()
        self.norm, self.mlp, self.adapter = norm, mlp, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x)) + self.adapter(x)


def add_adaptformer(vit: VisionTransformer, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1,
                    blocks: list[int] | None = None) -> list[Adapter]:
    """Put an AdaptFormer adapter beside the MLP of the chosen blocks (default: all) of a timm ViT.

    Returns the adapters (their parameters are the only new ones), created on the ViT's device and
    in its train/eval mode.
    """
    n_blocks = len(vit.blocks)
    chosen = list(range(n_blocks)) if blocks is None else fit_blocks(list(blocks), n_blocks, "adapter blocks")
    device = next(vit.parameters()).device
    adapters = []
    for index in chosen:
        block = vit.blocks[index]
        if isinstance(block.mlp, AdaptFormerMLP):
            raise ValueError(f"block {index} already has an AdaptFormer adapter")
        adapter = Adapter(vit.embed_dim, bottleneck, scale, dropout).to(device).train(vit.training)
        block.mlp = AdaptFormerMLP(block.norm2, block.mlp, adapter)
        block.norm2 = nn.Identity()
        adapters.append(adapter)
    return adapters
