"""The throughput benchmark (benchmark/bench.py): rows, ratios, JSON and target verdicts."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from benchmark import cli
from benchmark.backbones import SYNTH_VIT_KWARGS, backbone_features, build_tiny_vit
from benchmark import bench
from benchmark.bench import (OP_CLASSES, OTHER_CLASS, PAPER_EPOCHS, PAPER_TASK_SAMPLES, add_utilisation, break_even_steps,
                             design_fraction, gemm_peak_tflops, op_class, paired_throughput, step_flops, target_verdict)


def test_bench_writes_one_row_per_method_with_ratios(tmp_path, capsys):
    code = cli.main(["bench", "--methods", "frozen", "inflora", "coda-prompt", "--batch-size", "8", "--warmup", "0",
                     "--steps", "1", "--device", "cpu", "--results-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "bounds: the frozen" in out
    [path] = (tmp_path / "bench").glob("bench_vit_tiny_synth_cpu_fp32_b8_*.json")
    record = json.loads(path.read_text())
    rows = {r["method"]: r for r in record["rows"]}
    assert list(rows) == ["frozen", "inflora", "coda"]
    for row in rows.values():
        assert row["backbone"] == "vit_tiny_synth" and row["device"] == "cpu" and row["batch_size"] == 8
        assert row["train_img_s"] > 0 and row["eval_img_s"] > 0 and row["peak_mem_mb"] is None
        assert row["train_ratio"] > 0 and row["eval_ratio"] > 0  # their pairing: test_paired_throughput_...
    # utilisation: FLOPs counted once, at the timed speeds, against the GEMM peak measured in the run
    assert "bound % peak" in out and "operator time by class: attention" in out and record["peak_tflops"] > 0
    for row in rows.values():
        assert row["peak_tflops"] == record["peak_tflops"] and row["train_gflop"] > 0
        assert 0 < row["bound_train_util"] <= 1 and 0 < row["train_util"] <= 1
        assert row["bound_train_tflops"] == pytest.approx(row["bound_train_util"] * row["peak_tflops"], rel=0.01)
        assert "compile_s" not in row
    assert rows["inflora"]["bound_train_gflop"] == rows["coda"]["bound_train_gflop"]  # the same frozen bound
    assert rows["frozen"]["train_gflop"] < rows["frozen"]["bound_train_gflop"]  # frozen trains its head only
    breakdown = record["bound_breakdown"]
    assert sum(breakdown[c] for c in (*OP_CLASSES, OTHER_CLASS)) == pytest.approx(1, abs=0.01)
    assert breakdown["gemm"] > 0 and breakdown["attention"] > 0 and breakdown["busy"] is None  # busy: CUDA only
    assert 0 < rows["inflora"]["design_fraction"] and "design_fraction" not in rows["coda"]


def test_paired_throughput_takes_the_median_of_per_round_ratios(monkeypatch):
    """Rounds alternate bound and method; the ratio is the median of the rounds' own ratios, so a
    slow round (a neighbour's burst) hits both sides of its ratio instead of one side's median."""
    # rounds of (bound s, method s): the machine slows 4x in round 2 and 3x in round 4
    timed = iter([1.0, 1.2, 4.0, 4.8, 1.0, 1.3, 3.0, 3.6, 1.0, 1.1])
    monkeypatch.setattr(bench, "_seconds", lambda step, steps, device: next(timed))
    method_img_s, bound_img_s, ratio = paired_throughput(lambda: None, lambda: None, batch_size=8,
                                                         device=torch.device("cpu"), warmup=0, steps=2)
    assert ratio == pytest.approx(1.2)  # per-round ratios 1.2, 1.2, 1.3, 1.2, 1.1
    assert method_img_s == pytest.approx(16 / 1.3) and bound_img_s == pytest.approx(16 / 1.0)  # medians


def test_design_fraction_extrapolates_the_hooks_linearly_and_never_below_their_fixed_cost():
    task_train_s = PAPER_EPOCHS * PAPER_TASK_SAMPLES / 100.0  # at 100 img/s
    # 1 s fixed + 0.01 s per sample: 1 batch of 8 takes 1.08 s, 3 batches 1.24 s
    assert design_fraction(1.08, 1.24, 8, 100.0) == pytest.approx((1 + 0.01 * PAPER_TASK_SAMPLES) / task_train_s)
    # three batches faster than one (noise): the slope counts as 0, the fixed part stays
    assert design_fraction(1.08, 1.0, 8, 100.0) == pytest.approx(1.08 / task_train_s)


def test_bad_bench_values_are_one_line(capsys):
    assert cli.main(["bench", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_target_verdicts():
    row = {"method": "inflora", "train_ratio": 1.2, "eval_ratio": 1.0, "design_fraction": 0.01}
    assert target_verdict(row) == "train > 1.15x"
    assert target_verdict({**row, "train_ratio": 1.1}) == "met"
    assert target_verdict({"method": "coda", "train_ratio": 1.4, "eval_ratio": 2.2}) == "eval > 2.10x"
    assert target_verdict({"method": "frozen", "train_ratio": 0.4, "eval_ratio": 1.06}) == "eval > 1.05x"
    assert target_verdict({**row, "design_fraction": 0.06}) == "train > 1.15x, design > 5%"


def test_flops_of_a_linear_layer_are_counted_by_hand():
    layer = nn.Linear(32, 48)
    x = torch.randn(5, 7, 32)
    assert step_flops(lambda: layer(x)) == 2 * 35 * 32 * 48
    layer.requires_grad_(False)  # the bound's backward: input gradients only
    inputs = x.clone().requires_grad_(True)
    assert step_flops(lambda: layer(inputs).sum().backward()) == 2 * (2 * 35 * 32 * 48)
    layer.requires_grad_(True)  # and the weight gradient
    assert step_flops(lambda: layer(x).sum().backward()) == 2 * (2 * 35 * 32 * 48)
    assert step_flops(lambda: layer(inputs).sum().backward()) == 3 * (2 * 35 * 32 * 48)


def test_tiny_vit_flops_are_its_linears_patch_embedding_and_attention():
    vit = build_tiny_vit().requires_grad_(False)
    batch, d, depth, patch = 2, SYNTH_VIT_KWARGS["embed_dim"], SYNTH_VIT_KWARGS["depth"], SYNTH_VIT_KWARGS["patch_size"]
    patches = (SYNTH_VIT_KWARGS["img_size"] // patch) ** 2
    tokens = batch * (patches + 1)  # with the class token
    linears = 2 * tokens * depth * (3 * d * d + d * d + 2 * 4 * d * d)  # qkv, proj, fc1, fc2 (MLP ratio 4)
    patch_embedding = 2 * batch * patches * 3 * patch * patch * d
    attention = depth * 2 * (2 * batch * (patches + 1) ** 2 * d)  # q k^T and (softmax) v, all heads
    x = torch.rand(batch, 3, 32, 32)
    assert step_flops(lambda: backbone_features(vit, x)) == linears + patch_embedding + attention
    inputs = x.clone().requires_grad_(True)  # backward: every input gradient once more, attention's 2.5 times
    assert step_flops(lambda: backbone_features(vit, inputs).sum().backward()) == \
        2 * (linears + patch_embedding) + 3.5 * attention


def test_peak_and_utilisation():
    assert gemm_peak_tflops(torch.device("cpu"), "fp32", size=256, repeats=2) > 0
    row = {"train_tflops": 2.0, "bound_train_tflops": 1.0}
    add_utilisation(row, 4.0)
    assert row == {"train_tflops": 2.0, "bound_train_tflops": 1.0, "peak_tflops": 4.0, "train_util": 0.5,
                   "bound_train_util": 0.25}
    row = {"train_tflops": None}  # a training-free method
    add_utilisation(row, 4.0)
    assert row["train_util"] is None and row["bound_train_util"] is None


def test_operator_classes():
    assert op_class("aten::addmm") == op_class("aten::mm") == op_class("aten::convolution_backward") == "gemm"
    assert op_class("aten::_scaled_dot_product_flash_attention_backward") == "attention"
    assert op_class("aten::_efficient_attention_forward") == op_class("aten::_softmax") == "attention"
    assert op_class("aten::native_layer_norm_backward") == "norm" and op_class("aten::copy_") == "copy"
    assert op_class("aten::gelu") == op_class("aten::add_") == OTHER_CLASS


def test_compile_break_even():
    # 60 s to compile, 10 s each later task, 0.1 s saved per step over 10 tasks: 150 s / 1 s per step-of-10
    assert break_even_steps(60.0, 10.0, eager_step_s=0.3, compiled_step_s=0.2) == pytest.approx(150)
    assert break_even_steps(60.0, 10.0, eager_step_s=0.2, compiled_step_s=0.2) is None  # no saving: never
    assert break_even_steps(-1.0, -1.0, 0.3, 0.2) == 0  # noise: a compile faster than an eager step


@pytest.mark.slow  # compiles seq-lora's training step (the fused LoRA projection) twice on CPU
def test_compiled_training_reports_its_cost_and_break_even():
    from benchmark import protocol
    from benchmark.bench import frozen_steps, train_figures
    from tests.conftest import tiny_config

    cpu = torch.device("cpu")
    _, method = protocol.build_run(tiny_config("seq-lora"), cpu)
    method.enter_task(0)
    plain = build_tiny_vit().requires_grad_(False)
    x, y = torch.rand(8, 3, 32, 32), torch.tensor(list(method.task_classes(0)) * 2)[:8]
    bound = frozen_steps(plain, x, "fp32")[0]  # eager: only the method's step compiles here
    row = train_figures(method, 0, bound, plain, x, y, "fp32", warmup=0, steps=1, compile=True)
    assert row["compile_s"] > 0 and row["recompile_s"] is not None and row["eager_train_img_s"] > 0
    assert row["train_img_s"] > 0 and row["train_tflops"] > 0
    expected = break_even_steps(row["compile_s"], row["recompile_s"], 8 / row["eager_train_img_s"],
                                8 / row["train_img_s"])
    # the row derives the compiled step time back from its img/s: equal up to float rounding
    assert (row["break_even_steps"] is None) if expected is None else row["break_even_steps"] == pytest.approx(expected)
    assert expected is None or row["break_even_epochs"] == pytest.approx(expected / 625)  # 5,000 images / batch 8
