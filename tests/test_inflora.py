"""InfLoRA as a method: trainable set, start-of-task identity, merged/folded equivalence, resume."""

import io

import pytest
import timm
import torch

from benchmark import protocol
from methods.inflora import InfLoRA, InfLoRAConfig
from methods.seq_lora import SeqLoRA, SeqLoRAConfig
from tests.conftest import begin_task as _begin, finish_task as _finish, probe_images as _probe, tiny_config

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
        _begin(method, split, task)
        _finish(method, split, task)
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
        _begin(method, split, task)
        _finish(method, split, task)
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
