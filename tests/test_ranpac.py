"""RanPAC: ridge statistics and solve, lambda selection, projection, frozen backbone, PETL modules."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from benchmark import protocol
from benchmark.backbones import backbone_features, build_tiny_vit
from benchmark.config import resolve
from benchmark.errors import ConfigError
from benchmark.schedules import epoch_lr_factor
from methods import ridge as ridge_module
from methods.adaptformer import add_adaptformer
from methods.ranpac import RanPAC, RanPACConfig, random_projection
from methods.ridge import RIDGE_GRID, ridge_solve, select_ridge, validation_errors
from methods.ssf import ScaleShift, add_ssf
from tests.conftest import task_loader, tiny_config

SIZES = [4, 4, 4]  # three tasks of four classes
CPU = torch.device("cpu")


def make_method(task_sizes=SIZES, **settings) -> RanPAC:
    torch.manual_seed(0)
    vit = build_tiny_vit().eval().requires_grad_(False)
    with torch.no_grad():  # a random final LayerNorm affine map: features of unequal norms
        vit.norm.weight.normal_(1.0, 0.5)
        vit.norm.bias.normal_(0.0, 0.5)
    cfg = RanPACConfig(**{"projection_dim": 48, "adapter_bottleneck": 8, **settings})
    return RanPAC(vit, task_sizes, cfg).eval()


def batches(task: int, seed: int = 0, per_class: int = 5, task_sizes=SIZES) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random images of ``task``'s classes, in two batches (as a loader yields them)."""
    generator = torch.Generator().manual_seed(1000 * seed + task)
    start = sum(task_sizes[:task])
    labels = torch.arange(start, start + task_sizes[task]).repeat_interleave(per_class)
    images = torch.rand(len(labels), 3, 32, 32, generator=generator)
    half = len(labels) // 2
    return [(images[:half], labels[:half]), (images[half:], labels[half:])]


def statistics_pass(method: RanPAC, task: int, loader) -> None:
    method.enter_task(task)
    with torch.no_grad():
        method.end_task(task, loader)


def expanded(method: RanPAC, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """h (float64) and one-hot targets over all classes of every sample of ``loader``."""
    features, labels = method.collect(loader)
    return method.expand(features).double(), F.one_hot(labels, sum(method.task_sizes)).double()


@pytest.fixture
def fixed_ridge(monkeypatch):
    """Make every task choose lambda = 0.5 (the solve is then comparable with a batch solve)."""
    monkeypatch.setattr("methods.ranpac.select_ridge", lambda h, y, generator: (0.5, None))
    return 0.5


# -- statistics and solve ------------------------------------------------------------------------

def test_incremental_head_equals_the_batch_ridge_solution_in_any_task_order(fixed_ridge):
    method = make_method()
    data = [batches(t) for t in range(3)]
    for task in range(3):
        statistics_pass(method, task, data[task])
    h, y = expanded(method, [b for d in data for b in d])
    batch = torch.linalg.solve(h.T @ h + fixed_ridge * torch.eye(h.shape[1], dtype=torch.float64), h.T @ y)
    torch.testing.assert_close(method.readout, batch.T, rtol=1e-6, atol=1e-10)
    reordered = make_method()
    for task in (2, 0, 1):
        statistics_pass(reordered, task, data[task])
    torch.testing.assert_close(reordered.readout, method.readout, rtol=1e-6, atol=1e-10)


def test_the_head_satisfies_the_normal_equations(fixed_ridge):
    method = make_method()
    data = [batches(t) for t in range(2)]
    for task in range(2):
        statistics_pass(method, task, data[task])
    w = method.readout.T  # (M, C)
    eye = torch.eye(w.shape[0], dtype=torch.float64)
    torch.testing.assert_close((method.gram + fixed_ridge * eye) @ w, method.class_sums, rtol=1e-8, atol=1e-8)
    h, y = expanded(method, [b for d in data for b in d])
    gradient = 2 * h.T @ (h @ w - y) + 2 * fixed_ridge * w  # of ||H W - Y||^2 + lambda ||W||^2
    assert gradient.abs().max() < 1e-8 * (h.T @ y).abs().max()


def test_gram_and_class_sums_are_the_statistics_of_the_tasks_seen():
    method = make_method()
    data = [batches(t) for t in range(3)]
    for task in range(2):
        statistics_pass(method, task, data[task])
    gram, sums = method.gram.clone(), method.class_sums.clone()
    h, _ = expanded(method, [b for d in data[:2] for b in d])
    labels = torch.cat([y for d in data[:2] for _, y in d])
    torch.testing.assert_close(gram, gram.T, rtol=0, atol=0)
    assert torch.linalg.eigvalsh(gram).min() > -1e-9 * gram.diagonal().max()
    torch.testing.assert_close(gram.trace(), h.square().sum(), rtol=1e-10, atol=0)
    for c in range(8):
        torch.testing.assert_close(sums[:, c], h[labels == c].sum(0), rtol=1e-10, atol=1e-8)
    assert torch.equal(sums[:, 8:], torch.zeros_like(sums[:, 8:]))  # unseen classes: exactly 0
    assert torch.equal(method.readout[8:], torch.zeros_like(method.readout[8:]))
    other = make_method()  # altering a later task's data does not touch the statistics of 0..1
    for task in range(2):
        statistics_pass(other, task, data[task])
    assert torch.equal(other.gram, gram) and torch.equal(other.class_sums, sums)


# -- lambda selection ----------------------------------------------------------------------------

def noisy_regression(n: int, m: int, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose one-hot targets are a noisy linear function of them (an interior optimum)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=generator)
    centres = torch.randn(classes, m, generator=generator, dtype=torch.float64)
    h = centres[labels] + 3 * torch.randn(n, m, generator=generator, dtype=torch.float64)
    return h, F.one_hot(labels, classes + 2).double()  # two unseen classes, as in a run


def direct_errors(h_fit, y_fit, h_val, y_val, dual: bool = False) -> torch.Tensor:
    """The reference's loop, one solve per lambda, MSE over all validation entries; ``dual``: the
    same W from (H H^T + lambda I)^-1 (well conditioned at small lambda when n < M)."""
    g, q = (h_fit @ h_fit.T, y_fit) if dual else (h_fit.T @ h_fit, h_fit.T @ y_fit)
    weights = [h_fit.T @ ridge_solve(g, q, lam) if dual else ridge_solve(g, q, lam) for lam in RIDGE_GRID]
    return torch.stack([(h_val @ w - y_val).square().mean() for w in weights])


def test_the_grid_is_the_official_one():
    assert len(RIDGE_GRID) == 17
    assert RIDGE_GRID[0] == 1e-8 and RIDGE_GRID[8] == 1.0 and RIDGE_GRID[-1] == 1e8
    assert all(math.isclose(b / a, 10.0) for a, b in zip(RIDGE_GRID, RIDGE_GRID[1:]))


@pytest.mark.parametrize("n_fit, width", [(200, 30), (40, 120)])  # primal (n >= M) and dual (n < M) paths
def test_one_eigendecomposition_equals_a_solve_per_lambda(n_fit, width, monkeypatch):
    h, y = noisy_regression(n_fit + 50, width)
    fit, val = slice(0, n_fit), slice(n_fit, None)
    fast = validation_errors(h[fit], y[fit], h[val], y[val])
    torch.testing.assert_close(fast, direct_errors(h[fit], y[fit], h[val], y[val], dual=n_fit < width),
                               rtol=1e-9, atol=0)
    # the reference's (M x M) solves agree wherever they are well conditioned (rank-deficient G + 1e-8 I
    # is not, when n < M)
    reference = direct_errors(h[fit], y[fit], h[val], y[val])
    usable = slice(0, None) if n_fit >= width else slice(6, None)  # lambda >= 1e-2
    torch.testing.assert_close(fast[usable], reference[usable], rtol=1e-9, atol=0)
    monkeypatch.setattr(ridge_module, "CHUNK_ROWS", 7)  # chunked float64 accumulation: same numbers
    torch.testing.assert_close(validation_errors(h[fit].float(), y[fit], h[val].float(), y[val]),
                               validation_errors(h[fit].float().double(), y[fit], h[val].float().double(), y[val]),
                               rtol=1e-12, atol=0)


def test_lambda_is_the_argmin_of_the_80_20_validation_error():
    h, y = noisy_regression(250, 40)
    generator = torch.Generator().manual_seed(7)
    lam, errors = select_ridge(h, y, generator)
    order = torch.randperm(250, generator=torch.Generator().manual_seed(7))
    fit, val = order[:200], order[200:]  # the first 80 % of the random order fit, the last 20 % validate
    expected = direct_errors(h[fit], y[fit], h[val], y[val])
    torch.testing.assert_close(errors, expected, rtol=1e-9, atol=0)
    assert lam == RIDGE_GRID[int(expected.argmin())]
    assert 1e-8 < lam < 1e8  # the data make the optimum interior: the test can tell argmin from an edge


def test_lambda_depends_on_the_current_task_only():
    chosen = []
    for seed in (0, 1):  # task 0's images differ between the two runs, task 1's do not
        method = make_method()
        statistics_pass(method, 0, batches(0, seed=seed))
        statistics_pass(method, 1, batches(1))
        chosen.append(method.ridges.clone())
    assert chosen[0][1] == chosen[1][1]
    method = make_method()
    statistics_pass(method, 1, batches(1))
    assert method.ridges[1] == chosen[0][1]  # as if no earlier task had been seen
    h, y = expanded(method, batches(1))
    lam, _ = select_ridge(h, y, torch.Generator().manual_seed(method.cfg.seed * 1_000_003 + 1))
    assert method.ridges[1] == lam and lam in RIDGE_GRID


# -- projection and frozen state -----------------------------------------------------------------

def test_the_projection_is_fixed_standard_normal_and_never_changes():
    full = random_projection(768, 10000, seed=1)
    assert full.shape == (768, 10000)
    assert abs(full.mean()) < 0.01 and abs(full.var() - 1) < 0.01
    assert torch.equal(full, random_projection(768, 10000, seed=1))
    method = make_method()
    before = method.projection.clone()
    assert torch.equal(before, random_projection(128, 48, seed=1))
    shapes = {k: v.shape for k, v in method.checkpoint_state()["module"].items()}
    for task in range(3):
        statistics_pass(method, task, batches(task))
    assert torch.equal(method.projection, before)
    # the state does not grow with the samples seen: G (M x M), Q (M x C), W_o (C x M), lambdas
    assert {k: v.shape for k, v in method.checkpoint_state()["module"].items()} == shapes
    assert shapes["gram"] == (48, 48) and shapes["class_sums"] == (48, 12) and shapes["readout"] == (12, 48)
    assert "projection" not in method.checkpoint_state()["module"]  # regenerated, not stored
    h, _ = expanded(method, batches(0))
    assert (h >= 0).all() and (h > 0).any()


@pytest.mark.parametrize("petl", ["adapter", "ssf"])
def test_backbone_and_petl_are_bit_identical_after_the_first_task(petl):
    split, method = protocol.build_run(tiny_config("ranpac", n_tasks=10, petl=petl, projection_dim=64), CPU)
    tracked = {id(p) for p in method.backbone.parameters()}
    assert method.petl_parameters and all(id(p) in tracked for p in method.petl_parameters)  # PETL is inside
    steps = []
    for task in range(3):
        loader = task_loader(split, method, task)
        method.enter_task(task)
        steps.append(protocol.train_task(method, loader, task, CPU)["steps"])
        with torch.no_grad():
            method.end_task(task, loader)
        if task == 0:
            after_phase1 = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    assert steps[0] > 0 and steps[1:] == [0, 0]
    assert method.trainable_parameters(1) == method.trainable_parameters(2) == []
    for key, value in method.backbone.state_dict().items():
        assert torch.equal(value, after_phase1[key]), key


def test_no_optimiser_is_built_after_the_first_task(monkeypatch):
    split, method = protocol.build_run(tiny_config("ranpac", n_tasks=10, projection_dim=64), CPU)
    built = []
    original = protocol.build_optimizer
    monkeypatch.setattr(protocol, "build_optimizer", lambda groups, hp: built.append(1) or original(groups, hp))
    for task in range(2):
        method.enter_task(task)
        protocol.train_task(method, task_loader(split, method, task), task, CPU)
    assert built == [1]


# -- counts and recipe ---------------------------------------------------------------------------

@pytest.mark.parametrize("petl, count", [("adapter", 1_189_632), ("ssf", 205_824)])
def test_vit_b16_trainable_parameters_match_the_reference(petl, count):
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).requires_grad_(False)
    method = RanPAC(vit, [10] * 10, RanPACConfig(petl=petl, projection_dim=0))
    assert sum(p.numel() for p in method.petl_parameters) == count
    declared = sum(p.numel() for g in method.trainable_parameters(0) for p in g["params"])
    assert declared == count + 768 * 10 + 1  # + the phase-1 cosine head and its sigma


@pytest.mark.parametrize("dataset, petl", [("cifar100", "adapter"), ("imagenet-r", "ssf"), ("imagenet-a", "ssf"),
                                           ("domainnet", "adapter")])
def test_paper_presets_are_the_official_first_session_recipe(dataset, petl):
    hp = resolve("ranpac", dataset, device="cpu").hparams
    assert (hp["petl"], hp["projection_dim"], hp["head"]) == (petl, 10000, "ridge")
    assert (hp["optimizer"], hp["momentum"], hp["weight_decay"], hp["lr"], hp["head_lr"]) == ("sgd", 0.9, 5e-4, 0.01, 0)
    assert (hp["batch_size"], hp["epochs"], hp["schedule"]) == (48, 20, "cosine-annealing")
    assert [epoch_lr_factor(e, 20, hp["schedule"]) for e in range(20)] == pytest.approx(torch_cosine_lrs(1.0, 20))


def torch_cosine_lrs(lr: float, epochs: int) -> list[float]:
    """The lr of each epoch under torch's CosineAnnealingLR(T_max=epochs, eta_min=0) stepped per epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=0.0)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_the_first_session_runs_torchs_cosine_annealing_per_epoch():
    split, method = protocol.build_run(tiny_config("ranpac", n_tasks=10, epochs=4, batch_size=64, projection_dim=64), CPU)
    seen: dict[int, tuple] = {}

    def record(epoch, done, optimizer):
        group = optimizer.param_groups[0]
        seen.setdefault(epoch if done else epoch - 1, (group["lr"], type(optimizer), group["momentum"],
                                                        group["weight_decay"]))
    method.enter_task(0)
    protocol.train_task(method, task_loader(split, method, 0), 0, CPU, after_step=record)
    assert [seen[e][0] for e in range(4)] == pytest.approx(torch_cosine_lrs(method.cfg.lr, 4), rel=1e-12)
    assert {s[1:] for s in seen.values()} == {(torch.optim.SGD, 0.9, 5e-4)}


# -- heads ---------------------------------------------------------------------------------------

def test_the_ridge_head_is_a_plain_linear_readout():
    method = make_method()
    for task in range(2):
        statistics_pass(method, task, batches(task))
    x = torch.cat([b[0] for t in range(2) for b in batches(t, seed=5)])
    logits = method.predict(x)
    features, _ = method.collect([(x, torch.zeros(len(x), dtype=torch.long))])
    torch.testing.assert_close(logits, method.expand(features) @ method.readout[:8].T.float())
    method.readout.mul_(3.0)  # argmax invariant to scaling all of W_o ...
    assert torch.equal(method.predict(x).argmax(1), logits.argmax(1))
    norms = method.readout[:8].norm(dim=1, keepdim=True)
    method.readout[:8] /= norms  # ... but not to per-row scaling (a cosine head would be)
    assert not torch.equal(method.predict(x).argmax(1), logits.argmax(1))


def test_without_projection_h_is_f():
    method = make_method(projection_dim=0)
    features = torch.randn(3, 128)
    assert method.projection is None and method.gram.shape == (128, 128)
    assert torch.equal(method.expand(features), features)


def test_the_ncm_head_is_cosine_to_class_means_of_the_test_view():
    method = make_method(head="ncm", projection_dim=0)
    for task in range(2):
        statistics_pass(method, task, batches(task))
    features, labels = method.collect([b for t in range(2) for b in batches(t)])
    means = torch.stack([features[labels == c].mean(0) for c in range(8)])
    x = batches(0, seed=9)[0][0]
    expected = F.normalize(method.collect([(x, torch.zeros(len(x)))])[0], dim=1) @ F.normalize(means, dim=1).T
    torch.testing.assert_close(method.predict(x), expected)
    assert RanPAC.hook_transform == "test"


def test_ncm_without_phase1_predicts_as_simplecil():
    from methods.simplecil import SimpleCIL, SimpleCILConfig

    ours = make_method(petl="none", head="ncm", projection_dim=0)
    theirs = SimpleCIL(ours.backbone, SIZES, SimpleCILConfig()).eval()  # the same frozen backbone
    for method in (ours, theirs):
        for task in range(2):
            statistics_pass(method, task, batches(task))
    x = torch.cat([b[0] for t in range(2) for b in batches(t, seed=3)])
    logits = ours.predict(x).double()
    assert torch.equal(logits.argmax(1), theirs.predict(x).argmax(1))
    # the same cosines (SimpleCIL returns them minus each row's maximum)
    torch.testing.assert_close(logits - logits.max(1, keepdim=True).values, theirs.predict(x), rtol=0, atol=1e-6)


def test_bad_settings_are_one_line_config_errors():
    for settings, match in [({"petl": "lora"}, "petl must be one of"), ({"head": "svm"}, "head must be one of"),
                            ({"projection_dim": -1}, "projection_dim must be"),
                            ({"head": "ncm", "projection_dim": 10}, "set projection_dim=0")]:
        with pytest.raises(ConfigError, match=match):
            tiny_config("ranpac", **settings)


@pytest.mark.parametrize("name, petl, width, head", [("ranpac-no-rp", "adapter", 0, "ridge"),
                                                    ("ranpac-no-phase1", "none", 2000, "ridge"),
                                                    ("ranpac-no-rp-no-phase1", "none", 0, "ridge"),
                                                    ("ranpac-ncm", "adapter", 0, "ncm")])
def test_variants_resolve_their_ablation(name, petl, width, head):
    hp = tiny_config(name).hparams
    assert (hp["petl"], hp["projection_dim"], hp["head"]) == (petl, width, head)
    assert resolve(name, "cifar100", device="cpu").hparams["projection_dim"] == (width and 10000)


# -- PETL modules --------------------------------------------------------------------------------

def test_adaptformer_starts_as_the_pretrained_network_and_adds_a_parallel_branch():
    torch.manual_seed(0)
    vit, plain = build_tiny_vit().eval(), build_tiny_vit().eval()
    plain.load_state_dict(vit.state_dict())
    adapters = add_adaptformer(vit, bottleneck=8, scale=0.1, dropout=0.1)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone_features(vit, x), backbone_features(plain, x))
        for adapter in adapters:
            torch.nn.init.normal_(adapter.up.weight)
        block, reference = vit.blocks[0], plain.blocks[0]
        tokens = torch.randn(2, 17, 128)
        after_attn = tokens + reference.attn(reference.norm1(tokens))
        a = adapters[0]
        expected = after_attn + reference.mlp(reference.norm2(after_attn)) + 0.1 * a.up(F.relu(a.down(after_attn)))
        torch.testing.assert_close(block(tokens), expected)
    vit.train()
    assert not torch.equal(block(tokens), block(tokens))  # dropout 0.1 inside the adapter while training


def test_ssf_sites_merge_into_the_weights():
    torch.manual_seed(0)
    vit = build_tiny_vit().eval().requires_grad_(False)
    wrappers = add_ssf(vit)
    assert len(wrappers) == 2 + 6 * len(vit.blocks)
    assert sum(w.scale.numel() for w in wrappers) == 2 * 128 + len(vit.blocks) * (128 * 4 + 3 * 128 + 4 * 128)
    x = torch.rand(3, 3, 32, 32)
    for layer in (wrappers[0], wrappers[1], wrappers[2]):  # a Conv2d, a LayerNorm, a Linear
        inputs = torch.rand(2, 3, 32, 32) if layer is wrappers[0] else torch.randn(2, 17, 128)
        with torch.no_grad():
            torch.testing.assert_close(layer(inputs), layer.unmerged_forward(inputs), rtol=1e-5, atol=1e-5)
    trained = backbone_features(vit, x)  # autograd on, SSF trainable: the unmerged path
    trained.sum().backward()
    assert all(w.scale.grad is not None and w.shift.grad is not None for w in wrappers)
    with torch.no_grad():
        merged = backbone_features(vit, x)
        torch.testing.assert_close(merged, trained.detach(), rtol=1e-4, atol=1e-4)
        wrappers[-1].shift.add_(1.0)  # a changed parameter invalidates the cached merge
        torch.testing.assert_close(backbone_features(vit, x), merged + 1.0, rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="SSF wraps"):
        ScaleShift(torch.nn.GELU())


@pytest.mark.slow  # ten tasks of hooks with the synth recipe's M = 2,000, then timing rounds
def test_bench_times_the_first_session_or_no_training():
    from benchmark.bench import bench_method

    rows = {name: bench_method(name, "vit_tiny_synth", 8, "fp32", CPU, warmup=0, steps=1)
            for name in ("ranpac", "ranpac-no-phase1")}
    assert rows["ranpac"]["train_task"] == 0 and rows["ranpac"]["train_img_s"] > 0  # phase 1 is what trains
    assert rows["ranpac-no-phase1"]["train_task"] is None and rows["ranpac-no-phase1"]["train_ratio"] is None
    assert all(row["eval_img_s"] > 0 for row in rows.values())
    # the ridge solve of a paper-sized task (5,000 samples) is timed and set against the whole task
    assert all(row["solve_s"] > 0 and 0 < row["solve_fraction"] < 1 for row in rows.values())


def test_bench_times_exactly_the_head_update_of_one_task(monkeypatch):
    from benchmark.bench import ridge_solve_seconds

    _, method = protocol.build_run(tiny_config("ranpac", n_tasks=10, projection_dim=64), CPU)
    seen = []
    monkeypatch.setattr(method, "absorb", lambda task, features, labels: seen.append((task, features, labels)))
    assert ridge_solve_seconds(method, 9, 500) >= 0
    ((task, features, labels),) = seen
    assert task == 9 and features.shape == (500, method.feature_dim) and (features >= 0).all()
    assert set(labels.tolist()) == set(range(90, 100))


def test_vit_b16_is_the_reference_backbone_of_each_data_set():
    from benchmark.config import resolve

    backbones = {d: resolve("ranpac", d, device="cpu").backbone for d in ("cifar100", "imagenet-r", "imagenet-a",
                                                                           "domainnet")}
    assert backbones["cifar100"] == "vit_base_patch16_224.augreg_in21k"
    assert {backbones[d] for d in ("imagenet-r", "imagenet-a", "domainnet")} == {"vit_base_patch16_224.augreg_in21k_ft_in1k"}
    assert resolve("inflora", "imagenet-r", device="cpu").backbone == "vit_base_patch16_224.augreg_in21k"  # unchanged
