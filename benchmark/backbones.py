"""Frozen ViT backbones: the shipped tiny ViT for ``synth`` and timm ViT-B/16 for real benchmarks.

A backbone is a plain timm ``VisionTransformer`` with its classifier removed; methods adapt it by
injection (``methods/lora.py`` wraps projections, ``methods/prefix.py`` wraps attention), never by
copying it. Its features are the CLS token after the final LayerNorm, shape (B, embed_dim).
"""

from __future__ import annotations

import hashlib
import json
import warnings
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

SYNTH_VIT = "vit_tiny_synth"
VIT_B16 = "vit_base_patch16_224"
# Short names accepted by --backbone. A bare ViT-B/16 name gets the pretrained tag of the method's
# reference code (``Method.pretrained_tag``); any other timm name is used as given.
BACKBONE_ALIASES = {"tiny": SYNTH_VIT, "vit-b16": VIT_B16}
SYNTH_IMAGE_SIZE = 32


def resolve_backbone_name(name: str, pretrained_tag: str) -> str:
    """The full backbone name a run uses: aliases expanded, ViT-B/16 pinned to ``pretrained_tag``.

    ``ConfigError`` for a name timm does not know or a tag it has no weights for.
    """
    name = BACKBONE_ALIASES.get(name, name)
    if name == SYNTH_VIT:
        return name
    if name == VIT_B16:
        name = f"{VIT_B16}.{pretrained_tag}"
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise ConfigError(f"unknown backbone {name!r}; use tiny, vit-b16 or a timm ViT name such as "
                          f"{VIT_B16}.augreg_in21k")
    try:
        get_pretrained_cfg(name)
    except RuntimeError as err:
        raise ConfigError(f"backbone {name!r}: {err}") from None
    return name


def fit_blocks(blocks: list[int], depth: int, setting: str) -> list[int]:
    """The blocks of ``blocks`` that a ViT of ``depth`` blocks has, in the given order.

    Blocks beyond the depth (a reference setting such as blocks 0-4 on the 4-block tiny ViT) are
    dropped with a warning; a negative block, or none left, is a ``ConfigError`` naming ``setting``.
    """
    negative = [b for b in blocks if b < 0]
    kept = [b for b in blocks if 0 <= b < depth]
    if negative or (blocks and not kept):
        raise ConfigError(f"{setting} {list(blocks)} do not exist in a ViT with blocks 0-{depth - 1}; "
                          f"fix --set {setting.split()[-1]}=...")
    dropped = [b for b in blocks if b >= depth]
    if dropped:
        warnings.warn(f"{setting}: the backbone has blocks 0-{depth - 1}, so blocks {dropped} are left out",
                      stacklevel=3)
    return kept


def backbone_input_size(name: str) -> int:
    """The square input size (pixels) of a resolved backbone name."""
    if name == SYNTH_VIT:
        return SYNTH_IMAGE_SIZE
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return cfg.input_size[-1] if cfg is not None else 224


def build_tiny_vit(num_classes: int = 0) -> VisionTransformer:
    """The tiny ViT architecture with random init (``num_classes=0``: no classifier)."""
    return VisionTransformer(num_classes=num_classes, **SYNTH_VIT_KWARGS)


def weights_cached(name: str) -> bool:
    """Whether timm's Hugging Face files of the timm model ``name`` (with its pretrained tag) are in
    the local Hugging Face cache, so that loading them needs no download."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    repo = getattr(get_pretrained_cfg(name), "hf_hub_id", None)
    return bool(repo) and any(isinstance(try_to_load_from_cache(repo, file), str)
                              for file in ("model.safetensors", "pytorch_model.bin"))


def build_backbone(name: str, weights: str | None = None, pretrained: bool = True) -> VisionTransformer:
    """Build a frozen backbone in eval mode with no classifier.

    Args:
        name: ``vit_tiny_synth`` (the shipped synth backbone) or a timm ViT name with its
            pretrained tag, e.g. ``vit_base_patch16_224.augreg_in21k`` (see ``resolve_backbone_name``).
        weights: optional path to a local checkpoint; for timm names the default is timm's cache.
        pretrained: load pretrained weights (False: random init, e.g. for timing runs).
    """
    if weights and not Path(weights).is_file():
        raise ConfigError(f"backbone weights file {weights} does not exist; check --pretrained-path")
    if name == SYNTH_VIT:
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

        if not timm.is_model(name):
            raise ConfigError(f"unknown backbone {name!r}; use tiny, vit-b16 or a timm ViT name")
        # a Google big_vision .npz goes through timm's own npz loader (custom_load)
        overlay = {"file": str(weights), "custom_load": str(weights).endswith(".npz")} if weights else None
        try:
            model = timm.create_model(name, pretrained=pretrained, num_classes=0,
                                      pretrained_cfg_overlay=overlay)
        except (OSError, RuntimeError, KeyError, ValueError) as err:
            where = f"from {weights}" if weights else "from the timm / Hugging Face cache (offline)"
            raise ConfigError(f"could not load pretrained weights for {name} {where} "
                              f"({type(err).__name__}); cache them with `python run_benchmark.py prepare --weights` "
                              "on a machine with internet (same $HF_HOME) or pass --pretrained-path FILE "
                              "(.safetensors, .pth or .npz)") from err
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
