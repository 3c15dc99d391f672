"""SimpleCIL (shared/reference/simplecil.md section 6): no learning; prototypes are float64 class means
of the test-transform features, written once; nearest class mean under cosine; A_T independent of
the task count and the class order."""

from __future__ import annotations

import itertools

import pytest
import timm
import torch
import torch.nn.functional as F

from benchmark import protocol
from benchmark.backbones import backbone_features, build_tiny_vit, weights_digest
from benchmark.config import resolve
from datasets.base import Loader
from methods.simplecil import SimpleCIL, SimpleCILConfig, exact_class_mean
from tests.conftest import tiny_config
from tests.dataset_fixtures import write_cifar100

CPU = torch.device("cpu")


def shape_dependent(backbone: torch.nn.Module) -> None:
    """Make the backbone's output depend on the batch size, as GPU kernels chosen per shape do."""
    backbone.norm.register_forward_hook(lambda module, inputs, out: out + 1e-3 * out.shape[0])


def run(config, monkeypatch, gpu_like: bool = False):
    """``protocol.run(config)``; returns the result, the split and the method it built."""
    built = []
    build_run = protocol.build_run

    def capture(*args):
        split, method = build_run(*args)
        if gpu_like:
            shape_dependent(method.backbone)
        built.append((split, method))
        return split, method

    with monkeypatch.context() as patch:
        patch.setattr(protocol, "build_run", capture)
        result = protocol.run(config, progress=False)
    return (result, *built[0])


def fit(method: SimpleCIL, split, tasks: int) -> None:
    """The protocol's steps for tasks 0..tasks-1, hooks fed the test-transform view."""
    for task in range(tasks):
        loader = Loader(split.train_set(task, plain=True), method.cfg.batch_size, shuffle=False)
        method.enter_task(task)
        with torch.no_grad():
            method.begin_task(task, loader)
        assert protocol.train_task(method, loader, task, CPU)["steps"] == 0
        with torch.no_grad():
            method.end_task(task, loader)


def test_a_whole_run_builds_no_optimiser_and_leaves_the_backbone_bit_identical(monkeypatch):
    def no_optimiser(*args):
        raise AssertionError("SimpleCIL built an optimiser")

    monkeypatch.setattr(protocol, "build_optimizer", no_optimiser)
    config = tiny_config("simplecil", n_tasks=2)
    result, _, method = run(config, monkeypatch)
    assert result["trainable_params"] == [0, 0]
    assert weights_digest(method.backbone) == result["environment"]["backbone_digest"]
    _, fresh = protocol.build_run(config, CPU)
    for (key, value), original in zip(method.backbone.state_dict().items(), fresh.backbone.state_dict().values()):
        assert torch.equal(value, original), key


def test_the_recipe_fields_do_not_matter(monkeypatch):
    base, _, _ = run(tiny_config("simplecil", n_tasks=2), monkeypatch)
    other, _, _ = run(tiny_config("simplecil", n_tasks=2, epochs=3, lr=0.5, optimizer="sgd", schedule="constant"),
                      monkeypatch)
    assert base["acc_matrix"] == other["acc_matrix"]


def test_each_prototype_is_the_float64_mean_of_its_class_test_view_features():
    # 20 classes x 3 images per task = 3 full batches of 20: the test's own backbone calls have
    # the method's shapes and memory layout (contiguous), so the features are the same bits and
    # only the mean is checked
    split, method = protocol.build_run(tiny_config("simplecil", batch_size=20), CPU)
    fit(method, split, split.n_tasks)
    assert method.prototypes.dtype == torch.float64
    for task in range(split.n_tasks):
        images = split.train_set(task, plain=True)
        with torch.no_grad():
            features = torch.cat([backbone_features(method.backbone, x.contiguous())
                                  for x, _ in Loader(images, 20, shuffle=False)])
        for c in method.task_classes(task):
            expected = features[images.labels == c].double().mean(0)
            torch.testing.assert_close(method.prototypes[c], expected, rtol=0, atol=1e-12)


def test_class_means_are_exact_whatever_the_order_of_the_images():
    rows = torch.tensor([[1e20, 1.0], [1.0, 3e-8], [-1e20, 1.0]], dtype=torch.float32)
    tiny = float(rows[1, 1])
    expected = torch.tensor([1.0 / 3, (2.0 + tiny) / 3], dtype=torch.float64)
    for order in itertools.permutations(range(3)):
        assert torch.equal(exact_class_mean(rows[list(order)]), expected)
    with pytest.raises(ValueError, match="no training images"):
        exact_class_mean(rows[:0])


def test_prototypes_are_written_once_per_class_and_never_revisited():
    split, method = protocol.build_run(tiny_config("simplecil"), CPU)
    written = []
    for task in range(split.n_tasks):
        fit_one = Loader(split.train_set(task, plain=True), method.cfg.batch_size, shuffle=False)
        method.enter_task(task)
        with torch.no_grad():
            method.end_task(task, fit_one)
        seen = method.n_seen_classes
        assert (method.prototypes[seen:] == 0).all(), "a future class's row was written"
        assert (method.prototypes[:seen].norm(dim=1) > 0).all()
        written.append(method.prototypes[:seen].clone())
    for rows in written:
        assert torch.equal(method.prototypes[:len(rows)], rows)


def test_predictions_are_the_nearest_class_mean_under_cosine():
    split, method = protocol.build_run(tiny_config("simplecil"), CPU)
    fit(method, split, split.n_tasks)
    x = torch.cat([split.test_set(t).images for t in range(split.n_tasks)]).float() / 255
    with torch.no_grad():
        features = backbone_features(method.backbone, x).double()
    nearest = (F.normalize(features, dim=1) @ F.normalize(method.prototypes, dim=1).T).argmax(1)
    assert torch.equal(method.predict(x).argmax(1), nearest)
    # cosine: invariant to any positive scale of a row (sums instead of means) and to sigma > 0
    method.prototypes[3] *= 1e3
    method.prototypes[7] *= 1e-3
    method.sigma.fill_(7.5)
    assert torch.equal(method.predict(x).argmax(1), nearest)


def test_a_float32_cast_of_the_logits_cannot_tie_two_distinct_cosines():
    torch.manual_seed(0)
    method = SimpleCIL(build_tiny_vit().eval(), [2], SimpleCILConfig())
    method.enter_task(0)
    x = torch.rand(1, 3, 32, 32)
    f = method.image_features(x).double()[0]
    away = torch.randn_like(f)
    away -= (away @ f) / (f @ f) * f
    method.prototypes[0] = f + 1e-5 * f.norm() * away / away.norm()  # cosine 1 - 5e-11
    method.prototypes[1] = f  # cosine 1: the nearest
    raw = method(x).float()
    assert raw[0, 0] == raw[0, 1], "the test needs two cosines that are equal in float32"
    assert method.predict(x).float().argmax(1).item() == 1


def test_features_do_not_depend_on_the_batch_an_image_arrives_in():
    torch.manual_seed(0)
    method = SimpleCIL(build_tiny_vit().eval(), [10, 10], SimpleCILConfig(batch_size=8))
    shape_dependent(method.backbone)
    calls = []
    method.backbone.patch_embed.register_forward_pre_hook(lambda module, inputs: calls.append(len(inputs[0])))
    x = torch.rand(21, 3, 32, 32)
    whole = method.image_features(x)
    pieces = torch.cat([method.image_features(x[a:b]) for a, b in ((0, 1), (1, 6), (6, 21))])
    assert torch.equal(whole, pieces)
    assert set(calls) == {8}
    # synth's batches are channels-last; a padded chunk is contiguous: one layout for every call
    assert torch.equal(method.image_features(x.to(memory_format=torch.channels_last)), whole)


@pytest.mark.parametrize("gpu_like", [False, True], ids=["cpu", "shape-dependent-kernels"])
def test_prototypes_predictions_and_final_accuracy_ignore_task_count_and_class_order(gpu_like):
    """Per natural class, the prototype bits and the prediction of every test image are the same
    for 5 and 20 tasks and for another class order, even when the backbone's output depends on the
    batch size; so is A_T (only A_bar changes). Shipped weights: every seed has the same backbone."""
    outcomes = []
    for n_tasks, seed in ((5, 0), (20, 0), (10, 1)):
        split, method = protocol.build_run(tiny_config("simplecil", n_tasks, seed, pretrained=True, batch_size=8), CPU)
        if gpu_like:
            shape_dependent(method.backbone)
        fit(method, split, n_tasks)
        test = split.data.test  # natural labels, in a batching unrelated to the tasks
        logits = torch.cat([method.predict(x) for x in (test.images.float() / 255).split(50)])
        predicted = torch.tensor(split.order)[logits.argmax(1)]
        outcomes.append((predicted, method.prototypes[torch.from_numpy(split.label_map)]))
    (predicted, prototypes), *others = outcomes
    for other_predicted, other_prototypes in others:
        assert torch.equal(other_prototypes, prototypes)
        assert torch.equal(other_predicted, predicted)
    assert 0 < (predicted == split.data.test.labels).float().mean() < 1  # a non-trivial A_T


@pytest.mark.slow
def test_final_accuracy_is_the_same_for_5_10_20_tasks_and_any_class_order_on_the_default_synth_split():
    finals = {}
    for n_tasks, seed in ((5, 0), (10, 1), (20, 2)):
        config = resolve("simplecil", "synth", n_tasks=n_tasks, seed=seed, device="cpu")
        finals[n_tasks, seed] = protocol.run(config, progress=False)["final_acc"]
    assert len(set(finals.values())) == 1, finals


def test_prototypes_read_the_test_transform_view_of_the_training_images(tmp_path, monkeypatch):
    write_cifar100(tmp_path, train_per_class=2, test_per_class=1)
    config = resolve("simplecil", "cifar100", n_tasks=2, overrides={"batch_size": 20}, device="cpu",
                     backbone="tiny", pretrained=False, data_root=str(tmp_path))
    _, split, method = run(config, monkeypatch)  # the protocol's own hook loader
    for task in range(split.n_tasks):
        means = {}
        for view, loader in (("test", Loader(split.train_set(task, plain=True), 20, shuffle=False)),
                             ("train", Loader(split.train_set(task), 20, shuffle=True, seed=task))):
            with torch.no_grad():
                features, labels = zip(*((method.image_features(x), y) for x, y in loader))
            features, labels = torch.cat(features).double(), torch.cat(labels)
            means[view] = torch.stack([features[labels == c].mean(0) for c in method.task_classes(task)])
        classes = method.task_classes(task)
        rows = method.prototypes[classes.start:classes.stop]
        torch.testing.assert_close(rows, means["test"], rtol=0, atol=1e-12)
        assert (rows - means["train"]).abs().max() > 1e-3, "the augmented view gives the same means"


def test_vit_b16_head_storage_matches_the_reference_log():
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).requires_grad_(False)
    assert sum(p.numel() for p in vit.parameters()) == 85_798_656
    method = SimpleCIL(vit, [5] * 20, SimpleCILConfig())
    assert method.trainable_parameters(0) == []
    assert set(method.checkpoint_state()["module"]) == {"prototypes", "sigma"}
    assert method.prototypes.shape == (100, 768) and method.sigma.numel() == 1
    assert 85_798_656 + method.prototypes[:5].numel() + method.sigma.numel() == 85_802_497  # after 5 classes


def test_the_reference_backbone_and_view_are_pinned():
    config = resolve("simplecil", "cifar100", device="cpu")
    assert config.backbone == "vit_base_patch16_224.augreg_in21k"  # RevisitingCIL's in21k (timm 0.6.12)
    assert config.hparams["batch_size"] == 128
    assert SimpleCIL.hook_transform == "test"
