"""InfLoRA as a method: trainable set, start-of-task identity, merged/folded equivalence, resume."""

import io

import pytest
import timm
import torch

from benchmark import protocol
from methods.inflora import InfLoRA, InfLoRAConfig
from methods.seq_lora import SeqLoRA, SeqLoRAConfig
from tests.conftest import begin_task as _begin, finish_task as _finish, probe_images as _probe, run_task, tiny_config

CPU = torch.device("cpu")


def test_vit_b16_trainable_parameters_match_the_reference():
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).requires_grad_(False)
    method = InfLoRA(vit, [10] * 10, InfLoRAConfig())
    count = sum(p.numel() for g in method.trainable_parameters(3) for p in g["params"])
    assert count == 192_010  # 2 * 12 blocks * 768 * 10 + (768 * 10 + 10), reference/inflora.md §7
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).requires_grad_(False)
    seq = SeqLoRA(vit, [10] * 10, SeqLoRAConfig())
    assert sum(p.numel() for g in seq.trainable_parameters(0) for p in g["params"]) == 368_640 + 7_690


def test_only_the_current_up_projections_and_head_train():
    split, method = protocol.build_run(tiny_config("inflora", epochs=2), CPU)
    _begin(method, split, 0)
    _finish(method, split, 0)
    _begin(method, split, 1)
    snapshot = {k: v.clone() for k, v in method.state_dict().items()}
    _finish(method, split, 1)
    changed = {k for k, v in method.state_dict().items() if not torch.equal(v, snapshot[k])}
    assert changed, "task 1 trained nothing"
    for key in changed:
        assert key.startswith("heads.heads.1.") or (".branches.1.up." in key), key


def test_designing_a_new_branch_leaves_the_outputs_bit_identical():
    split, method = protocol.build_run(tiny_config("inflora"), CPU)
    x = _probe(split)
    for task in range(2):
        run_task(method, split, task)
    before = method.predict(x)
    _begin(method, split, 2)
    after = method.predict(x)[:, :before.shape[1]]
    assert torch.equal(before, after)


def test_new_down_projections_are_orthogonal_to_each_layers_memory():
    split, method = protocol.build_run(tiny_config("inflora"), CPU)
    _begin(method, split, 0)
    _finish(method, split, 0)
    _begin(method, split, 1)
    for branch, memory in zip(method.branches(1), method.memories):
        design = branch.down["k"].double()
        assert torch.equal(branch.down["k"], branch.down["v"])
        torch.testing.assert_close(design @ design.T, torch.eye(design.shape[0], dtype=torch.float64) / 3,
                                   atol=1e-5, rtol=0)
        old = memory.basis if memory.mode == "remove" else torch.eye(memory.dim, dtype=torch.float64) - memory.projector()
        assert (design @ old).norm() < 1e-5


def test_merged_folded_and_unfolded_logits_agree():
    split, method = protocol.build_run(tiny_config("inflora"), CPU)
    x = _probe(split)
    for task in range(3):
        run_task(method, split, task)
    merged = method.predict(x)  # no grad: every branch merged into the weights
    protocol.declare_trainable(method, 2)
    folded = method(x).detach()  # grad mode: past branches folded, branch 2 as a low-rank product
    method.requires_grad_(True)  # every branch "trainable": all as explicit low-rank products
    unfolded = method(x).detach()
    torch.testing.assert_close(merged, unfolded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded, unfolded, atol=1e-5, rtol=1e-5)


def test_resume_from_a_checkpoint_gives_identical_results():
    config = tiny_config("inflora")
    split, method = protocol.build_run(config, CPU)
    _begin(method, split, 0)
    _finish(method, split, 0)
    buffer = io.BytesIO()
    torch.save(method.checkpoint_state(), buffer)
    buffer.seek(0)
    _, resumed = protocol.build_run(config, CPU)
    resumed.load_checkpoint_state(torch.load(buffer, weights_only=True))
    for a, b in zip(method.memories, resumed.memories):
        assert a.mode == b.mode and torch.equal(a.basis, b.basis)
    for m in (method, resumed):
        _begin(m, split, 1)
        _finish(m, split, 1)
    x = _probe(split)
    assert torch.equal(method.predict(x), resumed.predict(x))


@pytest.mark.parametrize("name, blocks, dual", [("inflora", None, True), ("inflora-b5", [0, 1, 2, 3], False)])
def test_variants_resolve_their_presets(name, blocks, dual):
    hp = tiny_config(name).hparams
    assert hp["blocks"] == blocks and hp["dual"] is dual


def test_second_moments_are_the_token_mean_of_the_layernorm1_output():
    from benchmark.backbones import backbone_features, build_tiny_vit
    from methods.inflora import SecondMoments
    from methods.lora import add_lora_qkv

    vit = build_tiny_vit().eval().requires_grad_(False)
    layers = add_lora_qkv(vit)
    captured = {i: [] for i in range(len(layers))}
    hooks = [block.norm1.register_forward_hook(lambda m, i, out, k=k: captured[k].append(out.reshape(-1, out.shape[-1])))
             for k, block in enumerate(vit.blocks)]
    stats = SecondMoments(layers)
    with torch.no_grad():
        for batch in (torch.rand(3, 3, 32, 32), torch.rand(5, 3, 32, 32)):  # unequal batches
            backbone_features(vit, batch)
    stats.remove()
    means = stats.means()
    for hook in hooks:
        hook.remove()
    for k, mean in enumerate(means):
        tokens = torch.cat(captured[k]).double()
        assert tokens.shape[0] == 8 * 17  # every token of every image (16 patches + CLS)
        torch.testing.assert_close(mean, tokens.T @ tokens / tokens.shape[0], atol=1e-6, rtol=1e-6)
        assert mean.dtype == torch.float64
    assert not layers[0]._forward_pre_hooks  # hooks removed


def test_second_moments_are_accumulated_in_fp32_under_bf16_autocast():
    """The protocol runs the statistics passes under the run's autocast: the activations come from
    the bf16 forward, but x^T x is still an fp32 product (accumulated in fp64)."""
    from methods.inflora import SecondMoments
    from methods.lora import add_lora_qkv
    from benchmark.backbones import build_tiny_vit

    layer = add_lora_qkv(build_tiny_vit().eval().requires_grad_(False))[0]
    tokens = torch.randn(2, 17, layer.dim)
    means = {}
    for precision in ("fp32", "bf16"):
        stats = SecondMoments([layer])
        with torch.no_grad(), protocol.autocast(torch.device("cpu"), precision):
            stats._hook(0)(layer, (tokens,))
        means[precision] = stats.means()[0]
        stats.remove()
    flat = tokens.reshape(-1, layer.dim)
    assert torch.equal(means["bf16"], means["fp32"])
    torch.testing.assert_close(means["fp32"], (flat.T @ flat).double() / flat.shape[0])
