"""The preflight's cost model (benchmark/projection.py), its cut splits and loaders, and the
stand-ins of the real data sets (datasets/standin.py) as the loaders read them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from benchmark import projection
from benchmark.projection import LinearCost, RunShape, pass_batches, project
from benchmark.registry import DATASETS
from datasets.base import ClassIncrementalData, CutSplit, Loader, TaskSplit, TensorImages, spread_over_classes


def test_linear_cost_goes_through_two_points_and_keeps_one_proportional():
    line = LinearCost.fit([(2, 1.0), (4, 1.5)])
    assert line == LinearCost(0.5, 0.25) and line.at(128) == pytest.approx(32.5)
    assert LinearCost.fit([(8, 2.0)]).at(128) == pytest.approx(32.0)
    # a falling line is noise: flat at the larger cost; a line below zero at batch 0: proportional
    assert LinearCost.fit([(2, 1.0), (4, 0.9)]).at(8) == pytest.approx(1.0)
    assert LinearCost.fit([(2, 1.0), (4, 1.0)]).at(64) == pytest.approx(1.0)
    assert LinearCost.fit([(2, 1.0), (4, 3.0)]) == LinearCost(0.0, 0.75)
    assert LinearCost.throughput(100.0).at(50) == pytest.approx(0.5)


def test_pass_batches_keep_or_drop_the_last_partial_batch():
    assert pass_batches(300, 128) == [128, 128, 44]
    assert pass_batches(300, 128, drop_last=True) == [128, 128]
    assert pass_batches(100, 128, drop_last=True) == [100]  # smaller than a batch: kept, as the Loader does
    assert pass_batches(0, 128) == []


def test_project_adds_training_hooks_evaluation_and_checkpoints():
    shape = RunShape(task_images=[{"train": 300, "test": 100}, {"train": 200, "test": 300}], epochs=3, batch_size=128,
                     drop_last=False, trains=[True, False], hook_passes=[2.0, 0.0], hook_fixed_s=[1.5, 0.5],
                     checkpoint_s=0.25, setup_s=4.0)
    step, forward = LinearCost(0.1, 0.01), LinearCost(0.0, 0.001)
    parts = project(shape, step, forward)
    epoch = (0.1 + 1.28) * 2 + (0.1 + 0.44)
    assert parts["train_s"] == pytest.approx(round(3 * epoch, 1))  # task 1 does not train
    assert parts["hooks_s"] == pytest.approx(round(1.5 + 2 * 0.3 + 0.5, 1))
    assert parts["eval_s"] == pytest.approx(round(0.1 + (0.1 + 0.3), 1))  # all seen tasks after each task
    assert parts["checkpoint_s"] == 0.5 and parts["setup_s"] == 4.0
    assert parts["total_s"] == pytest.approx(sum(parts[k] for k in ("train_s", "hooks_s", "eval_s",
                                                                    "checkpoint_s", "setup_s")), abs=0.2)
    assert project(shape, None, forward)["train_s"] == 0  # a method that never trains


def test_bench_speed_uses_the_methods_row_or_the_bound_over_the_measured_ratio(tmp_path):
    bench = {"environment": {"device_name": "NVIDIA H200"},
             "rows": [{"method": "seq-lora", "backbone": "vit_base_patch16_224.augreg_in21k_ft_in1k",
                       "precision": "bf16", "compile": True, "bound_train_img_s": 4000.0, "bound_eval_img_s": 10000.0,
                       "train_img_s": 3200.0, "eval_img_s": 8000.0}]}
    path = tmp_path / "bench_x_cuda_bf16_b128_20261201T000000Z.json"
    path.write_text(json.dumps(bench))
    own = projection.bench_speed(bench, path, "seq-lora", 1.3, 1.1)
    assert own.train_step.at(128) == pytest.approx(128 / 3200) and "own row" in own.source
    other = projection.bench_speed(bench, path, "inflora", 1.25, 1.1)
    assert other.train_step.at(100) == pytest.approx(100 * 1.25 / 4000)
    assert other.forward.at(100) == pytest.approx(100 * 1.1 / 10000) and "ratio here" in other.source
    assert projection.bench_speed(bench, path, "simplecil", None, 1.0).train_step is None
    assert projection.find_bench("h200", "vit_base_patch16_224.augreg_in21k", [tmp_path]) == path
    assert projection.find_bench("a100", "vit_base_patch16_224.augreg_in21k", [tmp_path]) is None
    assert projection.find_bench("h200", "vit_small_patch16_224.augreg_in21k", [tmp_path]) is None


def test_the_shipped_bench_result_is_found_for_h200():
    path = projection.find_bench("h200", "vit_base_patch16_224.augreg_in21k", [projection.MEASURED_DIR])
    assert path is not None and projection.read_bench(path)["rows"][0]["bound_train_img_s"] > 0


def _data(per_class: int, classes: int = 12) -> ClassIncrementalData:
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = torch.randint(0, 255, (len(labels), 3, 4, 4), dtype=torch.uint8)
    return ClassIncrementalData(classes, TensorImages(images, labels), TensorImages(images, labels),
                                labels.numpy(), labels.numpy())


def test_cut_split_keeps_every_class_and_the_full_splits_order():
    data = _data(per_class=5)
    full, cut = TaskSplit(data, 3, seed=1), CutSplit(data, 3, seed=1, train_images=2, test_images=3)
    assert cut.order == full.order and cut.task_sizes == full.task_sizes
    for task in range(3):
        labels = cut.train_set(task).labels.tolist()
        assert sorted(set(labels)) == list(cut_classes := range(4 * task, 4 * task + 4)) and len(labels) == 4
        assert set(cut.test_set(task).labels.tolist()) <= set(cut_classes) and len(cut.test_set(task)) == 3
    assert cut.task_image_counts() == [{"train": 4, "test": 3}] * 3
    assert cut.task_image_counts(uncut=True) == full.task_image_counts() == [{"train": 20, "test": 20}] * 3


def test_spread_over_classes_takes_each_class_in_turn():
    indices, labels = np.arange(9), np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    assert spread_over_classes(indices, labels, 4).tolist() == [0, 1, 3, 5]
    assert spread_over_classes(indices, labels, 20).tolist() == list(range(9))


def test_loader_max_batches_cuts_every_pass_and_counts_images():
    data = _data(per_class=5)
    loader = Loader(data.train, 8, shuffle=True, seed=3, max_batches=2)
    assert len(loader) == 2
    first = [y for _, y in loader]
    assert [len(y) for y in first] == [8, 8] and loader.images_read == 16
    loader.set_epoch(0, skip_batches=1)
    assert torch.equal(next(iter(loader))[1], first[1])
    full = Loader(data.train, 8, shuffle=True, seed=3)
    assert torch.equal(torch.cat([y for _, y in full])[:16], torch.cat(first))


@pytest.mark.parametrize("name", ["cifar100", "imagenet-r", "imagenet-a", "domainnet"])
def test_standins_load_with_the_real_class_count(tmp_path, name):
    cls = DATASETS.get(name)
    options = cls.Options()
    if name == "domainnet":
        options = dataclasses.replace(options, domains=["clipart", "sketch"])
    overrides = cls.write_standin(tmp_path, 2, 1, options)
    data = cls.load(dataclasses.replace(options, **overrides), str(tmp_path))
    assert data.num_classes == cls.num_classes
    assert np.bincount(data.train_targets, minlength=cls.num_classes).min() >= 2
    assert np.bincount(data.test_targets, minlength=cls.num_classes).min() >= 1
    image, _ = data.train[0]
    assert image.shape == (3, 224, 224)
    assert all(size > 0 for size in cls.full_sizes(options))


def test_imagenet_r_standin_writes_coda_split_files_when_asked(tmp_path):
    cls = DATASETS.get("imagenet-r")
    overrides = cls.write_standin(tmp_path, 3, 2, cls.Options(split_file="from-the-run"))
    data = cls.load(cls.Options(**overrides), str(tmp_path))
    assert data.info["split"] == "coda-yaml" and len(data.train) == 200 * 6 and len(data.test) == 200 * 2
