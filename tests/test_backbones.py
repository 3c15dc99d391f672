"""Backbone names, pinned pretrained tags, local weight files and their errors (benchmark/backbones.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from benchmark.backbones import backbone_input_size, build_backbone, resolve_backbone_name
from benchmark.config import resolve
from benchmark.errors import ConfigError
from benchmark.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
SMALL_VIT = "vit_tiny_patch16_224.augreg_in21k"  # 5.7 M parameters: a cheap stand-in for ViT-B/16


def test_aliases_and_the_methods_reference_tags():
    assert resolve_backbone_name("tiny", "x") == "vit_tiny_synth"
    assert METHODS.get("inflora").pretrained_tag == "augreg_in21k"  # InfLoRA's code: in21k AugReg
    assert METHODS.get("coda").pretrained_tag == "augreg_in21k_ft_in1k"  # CODA: timm 0.4.12 default
    assert METHODS.get("l2p").pretrained_tag == METHODS.get("dualprompt").pretrained_tag == "augreg_in21k_ft_in1k"
    assert resolve_backbone_name("vit-b16", "augreg_in21k") == "vit_base_patch16_224.augreg_in21k"
    assert resolve_backbone_name("vit_base_patch16_224", "augreg_in21k_ft_in1k") == \
        "vit_base_patch16_224.augreg_in21k_ft_in1k"
    assert resolve_backbone_name("vit_base_patch16_224.orig_in21k", "augreg_in21k") == \
        "vit_base_patch16_224.orig_in21k"  # an explicit tag is kept
    assert backbone_input_size("vit_tiny_synth") == 32
    assert backbone_input_size("vit_base_patch16_224.augreg_in21k") == 224


@pytest.mark.parametrize("name, message", [("resnet_nope", "unknown backbone"),
                                           ("vit_base_patch16_224.no_such_tag", "Invalid pretrained tag")])
def test_unknown_backbones_are_config_errors(name, message):
    with pytest.raises(ConfigError, match=message):
        resolve_backbone_name(name, "augreg_in21k")


def test_synth_refuses_a_224px_backbone():
    with pytest.raises(ConfigError, match="synth images are 32 px"):
        resolve("coda", "synth", backbone="vit-b16")


def test_missing_weights_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_backbone(SMALL_VIT, weights=str(tmp_path / "absent.safetensors"))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_load_from_a_local_file(tmp_path, suffix):
    torch.manual_seed(0)
    source = build_backbone(SMALL_VIT, pretrained=False)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    torch.manual_seed(1)
    loaded = build_backbone(SMALL_VIT, weights=str(path))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert not any(p.requires_grad for p in loaded.parameters())


def test_a_corrupt_weights_file_is_a_config_error(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"not an npz archive")
    with pytest.raises(ConfigError, match="could not load pretrained weights .* --pretrained-path"):
        build_backbone(SMALL_VIT, weights=str(path))


def test_weights_missing_from_the_offline_cache_give_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    code = ("from benchmark.backbones import build_backbone\n"
            "from benchmark.errors import ConfigError\n"
            f"try:\n    build_backbone({SMALL_VIT!r})\nexcept ConfigError as err:\n    print(err)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "Hugging Face cache" in lines[0] and "--pretrained-path" in lines[0]
