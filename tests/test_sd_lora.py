"""SD-LoRA's mechanism: counts, zero start, frozen past, shared magnitudes, merge, reset, RR, KD, recipe."""

import copy

import pytest
import timm
import torch

from benchmark import protocol
from benchmark.backbones import backbone_features, build_tiny_vit
from benchmark.config import resolve
from benchmark.errors import ConfigError
from methods.sd_lora import SDLoRA, SDLoRAConfig, SDLoRAKD, SDLoRARR, SDLoRARRConfig, assimilation
from tests.conftest import begin_task, run_task, task_loader, tiny_config

CPU = torch.device("cpu")
RR_RANKS = [10, 10, 10, 10, 8, 8, 8, 8, 6, 6]


def _tiny(method_cls=SDLoRA, n_tasks: int = 3, seed: int = 0, **cfg) -> SDLoRA:
    torch.manual_seed(seed)
    return method_cls(build_tiny_vit().eval().requires_grad_(False), [4] * n_tasks, method_cls.Config(**cfg))


def begin_task_direct(method: SDLoRA, task: int) -> None:
    """Enter ``task`` and run ``begin_task`` (SD-LoRA's reads no data)."""
    method.enter_task(task)
    with torch.no_grad():
        method.begin_task(task, [])


@torch.no_grad()
def _randomise_ups(method: SDLoRA, tasks) -> None:
    """Non-zero B for the given tasks, so that their directions are visible."""
    for task in tasks:
        for p in method.branch_parameters(task):
            if p.abs().sum() == 0:  # the zero-initialised up-projections
                p.normal_(std=0.05)


def test_vit_b16_counts_match_the_reference():
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).requires_grad_(False)
    method = SDLoRA(vit, [10] * 10, SDLoRAConfig())
    per_task = [sum(p.numel() for p in method.branch_parameters(t)) for t in range(10)]
    assert per_task == [368_640] * 10  # 12 blocks * 2 projections * (10 * 768 + 768 * 10)
    trainable = sum(p.numel() for g in method.trainable_parameters(9) for p in g["params"])
    assert trainable == 368_640 + 10 + 769 * 10  # A_9, B_9, alpha_0..alpha_9, the new head
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).requires_grad_(False)
    rr = SDLoRARR(vit, [10] * 10, SDLoRARRConfig())
    per_task = [sum(p.numel() for p in rr.branch_parameters(t)) for t in range(10)]
    assert sum(per_task) == 3_096_576 and per_task[-1] == 221_184  # reference section 8.1


def test_rr_ranks_follow_the_codes_zero_based_task_index():
    method = _tiny(SDLoRARR, n_tasks=10)
    for layer in method.lora_layers:
        for target in ("q", "v"):
            assert [b.down[target].shape[0] for b in layer.branches] == RR_RANKS
            assert [b.up[target].shape[1] for b in layer.branches] == RR_RANKS
    assert [SDLoRAConfig().task_rank(t) for t in range(10)] == [10] * 10
    hp = resolve("sd-lora-rr", "synth", device="cpu").hparams
    assert (hp["rank_drops"], hp["reduced_ranks"]) == ([4, 8], [8, 6])


def test_a_zero_start_equals_the_frozen_vit_bit_identically():
    method = _tiny()
    frozen = copy.deepcopy(method.backbone)
    for layer in frozen.blocks:  # the same ViT unwrapped
        layer.attn.qkv = layer.attn.qkv.base
    x = torch.rand(4, 3, 32, 32)
    begin_task_direct(method, 0)
    with torch.no_grad():
        reference = backbone_features(frozen, x)
        assert torch.equal(method.features(x), reference)  # merged path
    protocol.declare_trainable(method, 0)
    assert torch.equal(method.features(x).detach(), reference)  # training path, low-rank products


def test_after_a_task_past_directions_and_old_heads_are_bit_identical():
    split, method = protocol.build_run(tiny_config("sd-lora", epochs=2), CPU)
    run_task(method, split, 0)
    past = [p.detach().clone() for p in method.branch_parameters(0)]
    head = [p.detach().clone() for p in method.heads.heads[0].parameters()]
    assert any(p.abs().sum() > 0 for p in past), "task 0 trained no B"
    current = [p.detach().clone() for p in method.branch_parameters(1)]
    run_task(method, split, 1)
    assert all(torch.equal(a, b) for a, b in zip(past, method.branch_parameters(0)))
    assert all(torch.equal(a, b) for a, b in zip(head, method.heads.heads[0].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(current, method.branch_parameters(1))), "task 1 trained nothing"


def _projection_outputs(method: SDLoRA, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [layer(x).split(layer.dim, dim=-1) for layer in method.lora_layers]


def test_one_magnitude_per_task_acts_on_every_projection():
    method = _tiny(n_tasks=3)
    assert len(method.magnitudes.values) == 3 and all(a.numel() == 1 for a in method.magnitudes.values)
    _randomise_ups(method, [0, 1])
    method.magnitudes.live = 1  # task 0: normalised past direction, task 1: live
    x = torch.randn(2, 5, method.feature_dim)
    before = _projection_outputs(method, x)
    for task in (0, 1):
        alpha = method.magnitudes.values[task]
        with torch.no_grad():
            alpha.add_(0.5)
        after = _projection_outputs(method, x)
        with torch.no_grad():
            alpha.sub_(0.5)
        for (q0, k0, v0), (q1, k1, v1) in zip(before, after):  # all 2 x depth projections move, k does not
            assert not torch.allclose(q0, q1) and not torch.allclose(v0, v1) and torch.equal(k0, k1)
    with torch.no_grad():  # alpha_0 = 0 removes task 0's term from every projection
        method.magnitudes.values[0].zero_()
    zeroed = _projection_outputs(method, x)
    method.magnitudes.dropped[0] = True
    for a, b in zip(zeroed, _projection_outputs(method, x)):
        for p, q in zip(a, b):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=0)


def test_merged_weights_equal_the_branch_computation():
    method = _tiny(n_tasks=4)
    _randomise_ups(method, [0, 1, 2])
    with torch.no_grad():
        for alpha, value in zip(method.magnitudes.values, (0.3, 1.7, 0.9, 0.8)):
            alpha.fill_(value)
    method.magnitudes.live = 2  # tasks 0, 1 normalised, task 2 live, task 3 not applied
    method.requires_grad_(False)
    x = torch.randn(2, 5, method.feature_dim)
    for layer in method.lora_layers:
        expected = list(torch.nn.functional.linear(x, layer.base.weight, layer.base.bias).split(layer.dim, -1))
        for i, target in ((0, "q"), (2, "v")):
            for task in range(3):
                b, a = layer.branches[task].up[target], layer.branches[task].down[target]
                norm = b.norm() * a.norm() if task < 2 else 1.0  # the code's ||B|| ||A||, not ||BA||
                assert (b @ a).norm() <= b.norm() * a.norm()
                expected[i] = expected[i] + method.magnitudes.values[task] * (x @ (b @ a).T) / norm
        expected = torch.cat(expected, -1)
        with torch.no_grad():
            merged = layer(x)  # one merged weight
        layer.branches[2].requires_grad_(True)
        branched = layer(x).detach()  # low-rank products
        layer.branches[2].requires_grad_(False)
        torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(branched, expected, atol=1e-5, rtol=1e-5)
        wq = layer.merged_weight()[:layer.dim]
        torch.testing.assert_close(wq, layer.base.weight[:layer.dim] + layer.delta_weight()[:layer.dim])
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        merged = method.features(images)
    protocol.declare_trainable(method, 2)
    torch.testing.assert_close(merged, method.features(images).detach(), atol=1e-5, rtol=1e-5)


def test_every_magnitude_is_reset_at_each_task_as_the_code_does():
    split, method = protocol.build_run(tiny_config("sd-lora", epochs=2, lr="0.05"), CPU)
    run_task(method, split, 0)
    learned = method.magnitudes.values[0].item()
    assert learned != pytest.approx(0.8, abs=1e-6), "task 0 did not train its magnitude"
    begin_task(method, split, 1)
    assert all(torch.equal(a, torch.tensor(0.8)) for a in method.magnitudes.values)
    assert method.magnitudes.active() == [0, 1] and method.magnitudes.live == 1
    # KD (ours) keeps the learned magnitudes instead
    split, kd = protocol.build_run(tiny_config("sd-lora-kd", epochs=2, lr="0.05"), CPU)
    run_task(kd, split, 0)
    learned = kd.magnitudes.values[0].item()
    begin_task(kd, split, 1)
    assert kd.magnitudes.values[0].item() == learned and kd.magnitudes.values[1].item() == pytest.approx(0.8)


OFFICIAL_RECIPES = {  # exps/sdlora_*.json: (epochs, lr of task 0, lr of later tasks, milestones, gamma)
    "cifar100": (20, 8e-3, 8e-3, [], None),
    "imagenet-r": (20, 1e-2, 1e-2, [], None),
    "imagenet-a": (20, 1e-2, 5e-3, [10, 15], 0.05),
    "domainnet": (10, 2e-2, 2e-2, [4, 6, 8], 0.005),
}


@pytest.mark.parametrize("dataset", sorted(OFFICIAL_RECIPES))
def test_per_dataset_recipes_are_the_official_configs(dataset):
    epochs, init_lr, lr, milestones, gamma = OFFICIAL_RECIPES[dataset]
    hp = resolve("sd-lora", dataset, device="cpu").hparams
    assert (hp["optimizer"], hp["momentum"], hp["weight_decay"], hp["batch_size"]) == ("sgd", 0.9, 0.0, 128)
    assert (hp["schedule"], hp["epochs"], hp["milestones"], hp["lr"]) == ("step", epochs, milestones, lr)
    assert (hp["init_lr"] or hp["lr"]) == init_lr and (gamma is None or hp["gamma"] == gamma)


def test_each_epochs_lr_in_a_real_task_follows_torchs_multisteplr():
    """ImageNet-A's recipe (task 0 at 1e-2, later tasks at 5e-3, x0.05 at epochs 10 and 15) run by
    train_task on tiny synth data, against torch's SGD + MultiStepLR stepped once per epoch."""
    hp = resolve("sd-lora", "imagenet-a", device="cpu").hparams
    recipe = {k: hp[k] for k in ("epochs", "lr", "init_lr", "milestones", "gamma", "optimizer", "momentum")}
    overrides = {**recipe, "batch_size": 64, "data.train_per_class": 1}  # one step per epoch
    split, method = protocol.build_run(tiny_config("sd-lora", **overrides), CPU)
    for task, base_lr in ((0, hp["init_lr"]), (1, hp["lr"])):
        begin_task_direct(method, task)
        loader = task_loader(split, method, task)
        seen: dict[int, set] = {}

        def record(epoch, done, optimizer):
            assert isinstance(optimizer, torch.optim.SGD)
            assert all(g["momentum"] == 0.9 and g["weight_decay"] == 0 for g in optimizer.param_groups)
            seen.setdefault(epoch - 1 if done == 0 else epoch, set()).update(g["lr"] for g in optimizer.param_groups)

        protocol.train_task(method, loader, task, CPU, after_step=record)
        reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(reference, hp["milestones"], gamma=hp["gamma"])
        for epoch in range(hp["epochs"]):
            [lr] = seen[epoch]  # every group, every step of the epoch
            assert lr == pytest.approx(reference.param_groups[0]["lr"], rel=1e-9), (task, epoch)
            reference.step()
            scheduler.step()


def test_kd_assimilates_a_direction_in_the_span_without_changing_the_network():
    basis = torch.randn(3, 50, dtype=torch.float64)
    coeffs = torch.tensor([0.5, -1.25, 2.0], dtype=torch.float64)
    vectors = torch.cat([basis, (coeffs @ basis)[None]])
    found, residual = assimilation(vectors @ vectors.T)
    torch.testing.assert_close(found, coeffs)
    assert residual < 1e-6
    off_span = torch.tensor([[1.0, 0.0], [1.0, 0.3]], dtype=torch.float64)  # residual 0.3 (unsquared)
    assert assimilation(off_span @ off_span.T)[1] == pytest.approx(0.3)
    generic = torch.randn(4, 50, dtype=torch.float64)
    assert assimilation(generic @ generic.T)[1] > 0.1  # a direction outside the span

    twins = {}
    for threshold in (9e-4, 0.0):  # KD, and the same network without assimilation
        method = _tiny(SDLoRAKD, n_tasks=4, kd_threshold=threshold)
        begin_task_direct(method, 0)
        begin_task_direct(method, 1)
        _randomise_ups(method, [0])
        with torch.no_grad():  # d_1 = d_0: B_1 = 2 B_0, A_1 = A_0
            for layer in method.lora_layers:
                for target in ("q", "v"):
                    layer.branches[1].up[target].copy_(2 * layer.branches[0].up[target])
                    layer.branches[1].down[target].copy_(layer.branches[0].down[target])
            method.magnitudes.values[0].fill_(0.7)
            method.magnitudes.values[1].fill_(1.3)
            method.end_task(1, [])  # KD: d_1 is assimilated into alpha_0
        begin_task_direct(method, 2)  # the plain twin: direction 1 becomes alpha_1 d_1
        twins[threshold] = method
    kd, plain = twins[9e-4], twins[0.0]
    assert kd.magnitudes.dropped[1] and kd.magnitudes.active() == [0, 2] and plain.magnitudes.active() == [0, 1, 2]
    assert kd.magnitudes.values[0].item() == pytest.approx(0.7 + 1.3, abs=1e-5)
    images = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(kd.predict(images), plain.predict(images), atol=1e-5, rtol=1e-5)
    stored = sum(p.numel() for t in kd.magnitudes.active() if t < 2 for p in kd.branch_parameters(t))
    assert stored == sum(p.numel() for p in kd.branch_parameters(0))  # the parameter count did not grow
    declared = {id(p) for g in kd.trainable_parameters(2) for p in g["params"]}
    assert id(kd.magnitudes.values[1]) not in declared and id(kd.magnitudes.values[0]) in declared


def test_loss_gives_old_head_rows_exactly_zero_gradient():
    split, method = protocol.build_run(tiny_config("sd-lora"), CPU)
    run_task(method, split, 0)
    begin_task(method, split, 1)
    method.zero_grad(set_to_none=True)
    method.heads.requires_grad_(True)
    x, y = next(iter(task_loader(split, method, 1)))
    method.training_loss(x, y, 1).backward()
    assert torch.equal(method.heads.heads[0].weight.grad, torch.zeros_like(method.heads.heads[0].weight))
    assert method.heads.heads[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides, match", [
    ({"rank_drops": "4,8", "reduced_ranks": "8"}, "one rank per drop"),
    ({"rank_drops": "8,4", "reduced_ranks": "8,6"}, "increasing"),
    ({"kd_threshold": "1e-3"}, "keep_magnitudes"),
    ({"init_magnitude": "0"}, "init_magnitude"),
])
def test_bad_settings_are_one_line_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve("sd-lora", "synth", overrides=overrides, device="cpu")
