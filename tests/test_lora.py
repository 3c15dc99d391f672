"""The shared LoRA layer: where the increments go, merging, caching and what gets gradients."""

import pytest
import torch
from torch import nn

from benchmark.backbones import backbone_features, build_tiny_vit
from methods.lora import LoRAQKV, Magnitudes, ScaledLoRAQKV, add_lora_qkv

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


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def _gradients(forward, x: torch.Tensor, tensors: list[torch.Tensor], precision: str):
    """The output and the gradients of a fixed random projection of it w.r.t. x and ``tensors``."""
    with _autocast(precision):
        out = forward(x)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return [out.float()] + list(torch.autograd.grad((out.float() * probe).sum(), [x] + tensors))


def _assert_matches_reference(layer: nn.Module, x: torch.Tensor, trainable: list[torch.Tensor], precision: str) -> None:
    """The fused training path's output and gradients against ``unmerged_forward``'s (plain autograd)."""
    fused = _gradients(layer, x, trainable, precision)
    reference = _gradients(layer.unmerged_forward, x, trainable, precision)
    if precision == "fp32":
        for a, b in zip(fused, reference, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        return
    # bf16 rounds both paths, differently: the fused one is within 1 % of the fp32 values (observed:
    # up to 0.5 %), or at most 3 times as far from them as the reference path (sums that cancel,
    # such as a magnitude's gradient, lose more than 1 % on both paths)
    exact = _gradients(layer.unmerged_forward, x, trainable, "fp32")
    for a, b, e in zip(fused, reference, exact, strict=True):
        assert (a - e).norm() <= max(1e-2 * e.norm(), 3 * (b - e).norm())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("targets", [("k", "v"), ("q", "v"), ("q", "k", "v"), ("v",)])
def test_fused_training_path_matches_the_reference(targets, precision):
    torch.manual_seed(0)
    layer = LoRAQKV(nn.Linear(D, 3 * D), targets)
    for _ in range(3):  # rank 3: the fused low-rank rows need padding to RANK_ALIGN
        for up in layer.add_branch(rank=3).up.values():
            nn.init.normal_(up)
    layer.requires_grad_(False)
    layer.branches[1].up.requires_grad_(True)  # InfLoRA's current task: designed (frozen) down, trained up
    layer.branches[2].requires_grad_(True)  # seq-lora: both factors trained; branch 0 frozen, merged
    trainable = [p for p in layer.parameters() if p.requires_grad]
    x = torch.randn(2, 5, D, requires_grad=True)
    _assert_matches_reference(layer, x, trainable, precision)
    with _autocast(precision):
        assert layer(x).dtype == layer.base(x).dtype  # the autocast dtype, as the plain Linear gives


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_scaled_lora_matches_the_reference(precision):
    torch.manual_seed(0)
    magnitudes = Magnitudes(3, init=0.8)
    layer = ScaledLoRAQKV(nn.Linear(D, 3 * D), magnitudes, ("q", "v"))
    for _ in range(3):
        for up in layer.add_branch(rank=5).up.values():
            nn.init.normal_(up)
    layer.requires_grad_(False)
    magnitudes.live = 2  # branches 0, 1 normalised (frozen), branch 2 live
    layer.branches[2].requires_grad_(True)
    trainable = list(magnitudes.values) + list(layer.branches[2].parameters())
    x = torch.randn(2, 5, D, requires_grad=True)
    _assert_matches_reference(layer, x, trainable, precision)


def test_fused_backward_skips_the_frozen_weights_gradient():
    """FLOPs of a training step of the layer: the frozen projection (forward and input gradient)
    plus the low-rank work only, counted by hand; no (3d, d) weight-gradient GEMM."""
    from benchmark.bench import step_flops

    tokens, rank = 6, 4  # 2 live ranks on k and v: 16 low-rank rows, already aligned
    layer = _layer(targets=("k", "v"), branches=2)
    x = torch.randn(tokens, D, requires_grad=True)
    flops = step_flops(lambda: layer(x).sum().backward())
    rows, span = 2 * 2 * rank, 2 * D
    bound = 2 * (2 * tokens * D * 3 * D)  # forward + input gradient
    forward = 2 * tokens * D * rows + 2 * tokens * rows * span  # low-rank rows in the GEMM; U added
    backward = 2 * tokens * span * rows + 2 * tokens * rows * D  # gradient of the low-rank part, into x
    factors = 2 * rows * tokens * D + 2 * span * tokens * rows  # gradients of D and U
    assert flops == bound + forward + backward + factors
