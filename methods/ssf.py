"""SSF: scaling and shifting of features (Lian et al., NeurIPS 2022) for timm ViTs, written once.

A ``ScaleShift`` wraps a layer whose output has one channel axis and applies y = gamma * x + beta
per channel to that output. ``add_ssf`` places one after every layer the SSF ViT of the RanPAC /
APER codes does (petl/vision_transformer_ssf.py, ``shared/reference/ranpac.md`` section 1.3):
the patch-embedding projection, and in every block norm1, the fused qkv projection, the
attention output projection, norm2, fc1 and fc2, and the final norm. Init: gamma ~ N(1, 0.02),
beta ~ N(0, 0.02) (so, unlike AdaptFormer, SSF perturbs the pretrained network from the start).
ViT-B/16: 2 * (768 + 12 * 8448 + 768) = 205,824 parameters.

Compute paths (identical up to float rounding):
* while gamma or beta is being trained (autograd on and a parameter requiring grad): the layer,
  then the affine map on its output;
* otherwise (evaluation, statistics passes, any frozen use) the affine map is merged into the
  layer's own weight and bias, W' = diag(gamma) W, b' = gamma * b + beta (a LayerNorm's affine
  weight and bias likewise), so SSF costs nothing at inference (the re-parameterisation of the
  SSF paper). The layer's tensors are never modified: the merged copies are cached and rebuilt
  when any of the tensors changes (tracked by version counters and storage, as ``methods/lora.py``
  does), always in the weights' own precision, outside autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from timm.models.vision_transformer import VisionTransformer


class ScaleShift(nn.Module):
    """A frozen Linear, LayerNorm or Conv2d followed by a learnable per-channel scale and shift."""

    def __init__(self, base: nn.Module, init_std: float = 0.02):
        super().__init__()
        if isinstance(base, nn.Linear):
            channels = base.out_features
        elif isinstance(base, nn.Conv2d):
            channels = base.out_channels
        elif isinstance(base, nn.LayerNorm) and len(base.normalized_shape) == 1:
            channels = base.normalized_shape[0]
        else:
            raise TypeError(f"SSF wraps nn.Linear, nn.Conv2d or a 1-d nn.LayerNorm, not {type(base).__name__}")
        device = next(base.parameters()).device
        self.base = base
        self.scale = nn.Parameter(torch.empty(channels, device=device).normal_(1.0, init_std))
        self.shift = nn.Parameter(torch.empty(channels, device=device).normal_(0.0, init_std))
        self._merged: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    def _channel_view(self, t: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-channel vector against the base layer's output."""
        return t.view(-1, 1, 1) if isinstance(self.base, nn.Conv2d) else t

    def merged_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the base layer with the scale and shift folded in, cached."""
        tensors = [t for t in (self.base.weight, self.base.bias, self.scale, self.shift) if t is not None]
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        if self._merged is not None and self._merged[0] == key:
            return self._merged[1]
        weight, bias = self.base.weight, self.base.bias
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(self.scale.device.type, enabled=False):
            if weight is None:  # LayerNorm without affine parameters
                weight = torch.ones_like(self.scale)
            scale = self.scale.to(weight.dtype).view(-1, *[1] * (weight.dim() - 1))
            merged_weight = weight * scale
            merged_bias = self.shift.to(weight.dtype) + (bias * self.scale if bias is not None else 0)
        self._merged = (key, (merged_weight, merged_bias))
        return merged_weight, merged_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return self.unmerged_forward(x)
        weight, bias = self.merged_parameters()
        if isinstance(self.base, nn.Linear):
            return F.linear(x, weight, bias)
        if isinstance(self.base, nn.Conv2d):
            return self.base._conv_forward(x, weight, bias)
        return F.layer_norm(x, self.base.normalized_shape, weight, bias, self.base.eps)

    def unmerged_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reference path: the base layer, then the affine map."""
        return self.base(x) * self._channel_view(self.scale) + self._channel_view(self.shift)


def add_ssf(vit: VisionTransformer, init_std: float = 0.02) -> list[ScaleShift]:
    """Wrap every SSF site of a timm ViT (see the module docstring); returns the wrappers."""
    sites: list[tuple[nn.Module, str]] = [(vit.patch_embed, "proj")]
    for block in vit.blocks:
        sites += [(block, "norm1"), (block.attn, "qkv"), (block.attn, "proj"), (block, "norm2"),
                  (block.mlp, "fc1"), (block.mlp, "fc2")]
    sites.append((vit, "norm"))
    wrappers = []
    for parent, name in sites:
        layer = getattr(parent, name)
        if isinstance(layer, ScaleShift):
            raise ValueError(f"{name} of {type(parent).__name__} already has SSF")
        wrapper = ScaleShift(layer, init_std)
        setattr(parent, name, wrapper)
        wrappers.append(wrapper)
    return wrappers
