"""Frozen ViT backbones: the shipped tiny ViT for ``synth`` and timm ViT-B/16 for real benchmarks.

A backbone is a plain timm ``VisionTransformer`` with its classifier removed; methods adapt it by
injection (``methods/lora.py`` wraps projections, ``methods/prefix.py`` wraps attention), never by
copying it. Its features are the CLS token after the final LayerNorm, shape (B, embed_dim).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from benchmark.errors import ConfigError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SYNTH_VIT_FILE = WEIGHTS_DIR / "vit_tiny_synth.pt"
SYNTH_VIT_META = WEIGHTS_DIR / "vit_tiny_synth.json"

# The tiny ViT of the synthetic benchmark: 32 px input, 8 px patches (16 tokens + CLS), width 128,
# depth 4, 4 heads; 0.82 M parameters. Chosen for CPU speed (about 1,100 img/s training on 2 cores).
SYNTH_VIT_KWARGS = dict(img_size=32, patch_size=8, embed_dim=128, depth=4, num_heads=4,
                        global_pool="token", class_token=True)

BACKBONES = ("vit_tiny_synth", "vit_base_patch16_224")


def build_tiny_vit(num_classes: int = 0) -> VisionTransformer:
    """The tiny ViT architecture with random init (``num_classes=0``: no classifier)."""
    return VisionTransformer(num_classes=num_classes, **SYNTH_VIT_KWARGS)


def build_backbone(name: str, weights: str | None = None, pretrained: bool = True) -> VisionTransformer:
    """Build a frozen backbone in eval mode with no classifier.

    Args:
        name: ``vit_tiny_synth`` (the shipped synth backbone) or a timm ViT name such as
            ``vit_base_patch16_224``.
        weights: optional path to a local checkpoint; for timm names the default is timm's cache.
        pretrained: load pretrained weights (False: random init, e.g. for timing runs).
    """
    if name == "vit_tiny_synth":
        model = build_tiny_vit()
        if pretrained:
            path = Path(weights) if weights else SYNTH_VIT_FILE
            if not path.is_file():
                raise ConfigError(f"tiny ViT weights not found at {path}; rebuild them with "
                                  "`python scripts/pretrain_synth_backbone.py`")
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
    else:
        import timm

        if name not in timm.list_models():
            raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)} "
                              "or any timm ViT name")
        overlay = {"file": str(weights)} if weights else None
        try:
            model = timm.create_model(name, pretrained=pretrained, num_classes=0,
                                      pretrained_cfg_overlay=overlay)
        except (OSError, RuntimeError) as err:
            raise ConfigError(f"could not load pretrained weights for {name}: {err}. Put them in "
                              "timm's cache or pass --backbone-weights FILE") from err
    model.eval()
    model.requires_grad_(False)
    return model


def backbone_features(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """CLS token after the final LayerNorm (the features every method's heads read)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def weights_digest(model: torch.nn.Module) -> str:
    """Short sha256 of the parameters, recorded with results so runs can be traced to weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def synth_backbone_metadata() -> dict:
    """The recorded provenance of the shipped tiny ViT (pretext accuracy, command, seed)."""
    return json.loads(SYNTH_VIT_META.read_text()) if SYNTH_VIT_META.is_file() else {}
