"""The shared LoRA layer: where the increments go, merging, caching and what gets gradients."""

import pytest
import torch
from torch import nn

from benchmark.backbones import backbone_features, build_tiny_vit
from methods.lora import LoRAQKV, add_lora_qkv

D = 16


def _layer(targets=("k", "v"), branches=1, seed=0):
    torch.manual_seed(seed)
    layer = LoRAQKV(nn.Linear(D, 3 * D), targets)
    layer.base.requires_grad_(False)
    for _ in range(branches):
        branch = layer.add_branch(rank=4)
        for up in branch.up.values():
            nn.init.normal_(up)  # non-zero so the increments are visible
    return layer


def test_zero_initialised_branch_is_the_identity():
    layer = LoRAQKV(nn.Linear(D, 3 * D))
    layer.add_branch(rank=4)
    x = torch.randn(2, 5, D)
    assert torch.equal(layer(x), layer.base(x))


def test_increments_touch_only_the_targets():
    layer = _layer(targets=("k", "v"))
    x = torch.randn(2, 5, D)
    out, base = layer(x), layer.base(x)
    assert torch.equal(out[..., :D], base[..., :D])  # q untouched
    branch = layer.branches[0]
    for i, target in ((1, "k"), (2, "v")):
        expected = base[..., i * D:(i + 1) * D] + x @ (branch.up[target] @ branch.down[target]).t()
        torch.testing.assert_close(out[..., i * D:(i + 1) * D], expected, atol=1e-5, rtol=1e-5)


def test_merged_and_unmerged_outputs_match():
    layer = _layer(branches=3)
    layer.branches[0].requires_grad_(False)  # one frozen branch folded into the weight
    x = torch.randn(4, 7, D)
    training_path = layer(x)
    with torch.no_grad():
        merged = layer(x)
        reference = layer.unmerged_forward(x)
    torch.testing.assert_close(training_path, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged, reference, atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_trainable_branches():
    layer = _layer(branches=2)
    layer.branches[0].requires_grad_(False)
    layer(torch.randn(2, 3, D)).square().sum().backward()
    assert all(p.grad is None for p in layer.branches[0].parameters())
    assert all(p.grad is not None for p in layer.branches[1].parameters())
    assert layer.base.weight.grad is None


def test_merged_cache_follows_parameter_changes():
    layer = _layer()
    x = torch.randn(2, 3, D)
    with torch.no_grad():
        before = layer(x)
        layer.branches[0].up["v"].add_(1.0)  # in-place update, as an optimiser step does
        after = layer(x)
        reference = layer.unmerged_forward(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference, atol=1e-5, rtol=1e-5)


def test_merged_model_matches_unmerged_on_a_vit():
    vit = build_tiny_vit().eval().requires_grad_(False)
    layers = add_lora_qkv(vit)
    for layer in layers:
        branch = layer.add_branch(rank=10)
        for up in branch.up.values():
            nn.init.normal_(up, std=0.05)
    x = torch.rand(3, 3, 32, 32)
    unmerged = backbone_features(vit, x)  # grad mode: low-rank products
    with torch.inference_mode():
        merged = backbone_features(vit, x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert len(layers) == len(vit.blocks)


def test_bad_blocks_and_targets_are_rejected():
    vit = build_tiny_vit()
    with pytest.raises(ValueError, match="do not exist"):
        add_lora_qkv(vit, blocks=[9])
    with pytest.raises(ValueError, match="do not exist"):
        add_lora_qkv(vit, blocks=[-1, 0])
    with pytest.warns(UserWarning, match="blocks \\[9\\] are left out"):
        assert len(add_lora_qkv(vit, blocks=[0, 9])) == 1
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        LoRAQKV(nn.Linear(D, 3 * D), ("k", "o"))


def test_merged_cache_is_bounded_and_merges_outside_autocast():
    layer = _layer(branches=6)
    x = torch.randn(2, 3, D)
    for frozen in range(6):  # a different frozen set each "task", as InfLoRA has
        for i, branch in enumerate(layer.branches):
            branch.requires_grad_(i >= frozen)
        layer(x)
        with torch.no_grad():
            layer(x)
        assert len(layer._merged_cache) <= 2
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        layer.clear_cache()
        weight = layer.merged_weight(tuple(range(6)))
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, layer.base.weight + layer.delta_weight(list(layer.branches)))


def test_design_warns_when_fewer_free_directions_than_the_rank():
    from methods.subspace import SubspaceMemory, design_down_projection

    memory = SubspaceMemory(8, dual=False)
    memory.basis = torch.eye(8, dtype=torch.float64)[:, :6]
    with pytest.warns(RuntimeWarning, match="only 2 input directions are free"):
        design_down_projection(torch.eye(8, dtype=torch.float64), memory, rank=4)
