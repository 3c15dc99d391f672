"""The synthetic benchmark: deterministic, fixed split, distinct classes, shipped backbone."""

import json

import numpy as np
import torch

from benchmark.backbones import SYNTH_VIT_META, build_backbone, weights_digest
from datasets.synthetic import PRETEXT, TARGET, TEST, TRAIN, class_parts, generate


def test_generation_is_deterministic_and_shaped():
    x1, y1 = generate(10, 4, TRAIN)
    x2, y2 = generate(10, 4, TRAIN)
    assert x1.shape == (40, 3, 32, 32) and x1.dtype == np.uint8
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert sorted(np.bincount(y1)) == [4] * 10


def test_train_test_and_streams_are_different_draws():
    x_train, _ = generate(10, 4, TRAIN)
    x_test, _ = generate(10, 4, TEST)
    x_other, _ = generate(10, 4, TRAIN, stream=1)
    assert not np.array_equal(x_train, x_test)
    assert not np.array_equal(x_train, x_other)


def test_target_and_pretext_classes_are_disjoint_compositions():
    target = {tuple(class_parts(c, TARGET)["type"]) + tuple(class_parts(c, TARGET)["colour"]) for c in range(100)}
    pretext = [tuple(class_parts(c, PRETEXT)["type"]) + tuple(class_parts(c, PRETEXT)["colour"]) for c in range(200)]
    assert len(target) > 95  # classes differ from each other
    assert sum(p in target for p in pretext) < 5  # and from the pretext classes


def test_images_carry_class_information():
    # a ridge-regression classifier on raw pixels (10 classes, 60 images each) is far above chance
    x, y = generate(10, 60, TRAIN)
    xt, yt = generate(10, 20, TEST)
    pixels, test_pixels = x.reshape(len(x), -1) / 255.0, xt.reshape(len(xt), -1) / 255.0
    mean = pixels.mean(0)
    pixels, test_pixels = pixels - mean, test_pixels - mean
    weights = np.linalg.solve(pixels.T @ pixels + 50 * np.eye(pixels.shape[1]), pixels.T @ np.eye(10)[y])
    assert (np.argmax(test_pixels @ weights, 1) == yt).mean() > 0.5


def test_shipped_backbone_loads_with_recorded_provenance():
    meta = json.loads(SYNTH_VIT_META.read_text())
    assert meta["pretext_test_accuracy"] > 41.0  # well above the underfit prototype
    vit = build_backbone("vit_tiny_synth")
    assert not any(p.requires_grad for p in vit.parameters())
    assert meta["weights_digest"] == weights_digest(vit)
    assert vit(torch.rand(2, 3, 32, 32)).shape == (2, 128)


def test_results_record_the_digest_of_the_unwrapped_backbone():
    from benchmark import protocol
    from tests.conftest import tiny_config

    _, method = protocol.build_run(tiny_config("inflora", pretrained=True), torch.device("cpu"))
    assert method.backbone_digest == json.loads(SYNTH_VIT_META.read_text())["weights_digest"]


def test_the_pretext_keeps_the_classic_rendering_the_shipped_backbone_was_pretrained_on():
    import hashlib

    from datasets.synthetic import CLASSIC

    x, y = generate(20, 30, TRAIN, PRETEXT, stream=3)
    assert np.array_equal(x, generate(20, 30, TRAIN, PRETEXT, stream=3, settings=CLASSIC)[0])
    # pinned before the renderer took settings: the pretext images are unchanged
    assert hashlib.sha256(x.tobytes()).hexdigest()[:16] == "b21316d9361c3b39"
    assert hashlib.sha256(y.tobytes()).hexdigest()[:16] == "b7dba5b1351dc14f"


def test_the_benchmark_renders_border_clutter_and_records_it():
    from datasets.synthetic import BORDER_CLUTTER, CLASSIC, SynthBenchmark, SynthOptions

    data = SynthBenchmark.load(SynthOptions(train_per_class=2, test_per_class=1), None)
    x, _ = generate(100, 2, TRAIN, settings=BORDER_CLUTTER)
    assert np.array_equal(data.train.images.numpy(), x)
    assert not np.array_equal(x, generate(100, 2, TRAIN, settings=CLASSIC)[0])
    assert data.info["render"] == "border-clutter" and data.info["render_settings"]["clutter"] == BORDER_CLUTTER.clutter
    assert data.info["identity"] == SynthBenchmark.identity() and BORDER_CLUTTER.digest() in SynthBenchmark.identity()


def test_clutter_stays_in_a_band_along_one_side():
    from datasets.synthetic import BORDER_CLUTTER, IMAGE_SIZE, _paint_clutter

    canvas = np.zeros((400, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    _paint_clutter(canvas, np.random.default_rng(0), BORDER_CLUTTER)
    ink = canvas.max(-1) > 0.2  # where a clutter shape visibly painted (N, H, W); black shapes aside
    depth = int(BORDER_CLUTTER.clutter_band[1]) + 8  # band depth + the largest shape's visible reach
    assert depth < IMAGE_SIZE // 2
    inside = np.stack([~ink[:, depth:].any((1, 2)), ~ink[:, :-depth].any((1, 2)),  # top, bottom band
                       ~ink[:, :, depth:].any((1, 2)), ~ink[:, :, :-depth].any((1, 2))], 1)  # left, right
    assert ink.any((1, 2)).all() and inside.any(1).all()  # every image's clutter lies along one side
    assert (inside.sum(0) > 60).all()  # and every side is used


def test_the_generator_settings_are_part_of_the_run_id(monkeypatch):
    import dataclasses

    from datasets import synthetic
    from tests.conftest import tiny_config

    before = tiny_config("frozen")
    monkeypatch.setattr(synthetic, "BENCHMARK_RENDER", dataclasses.replace(synthetic.BORDER_CLUTTER, clutter=8))
    after = tiny_config("frozen")
    assert before.data_identity != after.data_identity and before.run_id() != after.run_id()
    assert before.seed == after.seed and tiny_config("frozen", seed=1).data_identity == after.data_identity
