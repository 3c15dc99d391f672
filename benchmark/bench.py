"""Throughput benchmark: each method's training and evaluation speed against the frozen backbone.

``python run_benchmark.py bench`` builds every method on a random-init backbone (weights do not
change the cost) with 10 tasks of 10 classes, takes it through all tasks' ``begin_task`` /
``end_task`` hooks on a few synthetic batches (so InfLoRA has all its branches and CODA-Prompt all
its components: the worst case for "any number of tasks"), then times, after warm-up and in
alternation with the same work on a second, unwrapped copy of the frozen backbone (so the
machine's speed drifts cancel; each figure is the median of 5 rounds):

* a training step of the last task that trains (autocast, ``training_loss``, backward, optimiser
  step), as the protocol runs it: the last task, or task 0 for a method that trains only on its
  first (RanPAC), none for one that never trains (its train columns stay empty), against the
  frozen backbone's forward + backward with input gradients only (no weight gradients):
  ``train_ratio``;
* evaluation (``predict`` without grad) against the frozen backbone's forward: ``eval_ratio``;
* for InfLoRA, ``begin_task`` + ``end_task`` (two statistics passes, the design and the memory
  update) timed on two loader sizes and extrapolated linearly to the paper's per-task sample
  count, as a fraction of that task's training time at the paper's epochs: ``design_fraction``.
* for RanPAC's ridge head, the per-task solve (``absorb``: G and Q updated, lambda chosen from the
  grid with one eigendecomposition, the readout solved) on the paper's per-task sample count of
  random features, once, in seconds (``solve_s``) and as a fraction of a training-free task, the
  solve plus the statistics pass over those samples at the frozen forward's speed
  (``solve_fraction``).

Arithmetic utilisation: the FLOPs of one training step of the method and of the bound are
counted once, outside the timed loops, by torch's ``FlopCounterMode`` (on the eager steps; with
the in-place ``addmm_`` of the fused LoRA projection and CPU's attention kernels added), and turned
into TFLOP/s at the timed speeds; the device's dense GEMM peak is measured in the same run (the
best of a few large square matmuls in the bench's precision, bf16 under ``--precision bf16``, fp32
otherwise, at the run's start and end), so ``bound_train_util`` (the bound's TFLOP/s over that
peak) is a ratio that holds on any device. Once per run, ``bound_profile`` profiles a few eager
bound steps (torch.profiler, CPU and CUDA activities) and splits the operators' time into GEMMs,
attention, norms, copies and other elementwise work; on CUDA also the fraction of the step's wall
time that the operators keep the device busy.

With ``--compile``, each method's training step is also timed eagerly, and its first compiled
call (less an eager step) gives the compile time; after the timings Dynamo is reset and the first
call again gives the recompile time every later task pays (the harness compiles afresh per task,
with Inductor's on-disk caches warm). ``break_even_steps``: the training steps per task from which
compiling saves time over a 10-task run, also in epochs of a CIFAR-100 task at the bench's batch.

Peak memory is CUDA's allocator peak per method; on CPU it is not measured (``None``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate
from torch.utils import flop_counter

from benchmark import protocol
from benchmark.backbones import (SYNTH_VIT, backbone_features, backbone_input_size, build_backbone,
                                 resolve_backbone_name)
from benchmark.registry import METHODS
from benchmark.store import write_json_atomic

N_TASKS, CLASSES_PER_TASK = 10, 10
# The paper setting the design fraction is extrapolated to: CIFAR-100, 10 tasks (5,000 training
# images per task), 20 epochs (InfLoRA's official config).
PAPER_TASK_SAMPLES, PAPER_EPOCHS = 5000, 20
# The issue's targets. Evaluation: 1.05x the frozen forward; the prompt methods' inference is two
# forward passes (the query pass is inherent), so theirs is 2 x 1.05.
PROMPT_METHODS = ("l2p", "dualprompt", "coda")
TARGETS = {"train_ratio": {"inflora": 1.15, "seq-lora": 1.15, **{m: 1.5 for m in PROMPT_METHODS}},
           "eval_ratio": {m: 2 * 1.05 for m in PROMPT_METHODS}, "design_fraction": 0.05}
EVAL_TARGET = 1.05
# Operator classes of the bound's time, matched in order against the aten operator names.
OP_CLASSES = {"attention": ("attention", "softmax"), "gemm": ("mm", "linear", "matmul", "conv"),
              "norm": ("norm",), "copy": ("copy", "cat", "clone", "contiguous")}
OTHER_CLASS = "elementwise"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA; nothing elsewhere), so that timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(step: Callable[[], Any], steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - start


def paired_throughput(method_step: Callable[[], Any], bound_step: Callable[[], Any], batch_size: int,
                      device: torch.device, warmup: int, steps: int, repeats: int = 5
                      ) -> tuple[float, float, float]:
    """(method img/s, bound img/s, ratio of their times per image), each the median over
    ``repeats`` rounds that time ``steps`` bound steps then ``steps`` method steps, so a drift of
    the machine's speed (frequency scaling, neighbours) hits both sides of each ratio alike."""
    for _ in range(warmup):
        bound_step()
        method_step()
    bound_times, method_times, ratios = [], [], []
    for _ in range(repeats):
        bound_times.append(_seconds(bound_step, steps, device))
        method_times.append(_seconds(method_step, steps, device))
        ratios.append(method_times[-1] / bound_times[-1])
    images = batch_size * steps
    return images / statistics.median(method_times), images / statistics.median(bound_times), statistics.median(ratios)


def frozen_steps(backbone: torch.nn.Module, x: torch.Tensor, precision: str,
                 compile: bool = False) -> tuple[Callable, Callable]:
    """The bounds as step functions: the frozen backbone's forward + backward with input
    gradients only (no weight gradients), and its forward without grad (compiled like the
    method's steps under ``compile``)."""
    backbone.requires_grad_(False)
    train_features = protocol.compiled(lambda inputs: backbone_features(backbone, inputs), compile)
    eval_features = protocol.compiled(lambda inputs: backbone_features(backbone, inputs), compile)

    def train_step():
        inputs = x.detach().requires_grad_(True)
        with protocol.autocast(x.device, precision):
            features = train_features(inputs)
        features.float().sum().backward()

    @torch.no_grad()
    def eval_step():
        with protocol.autocast(x.device, precision):
            eval_features(x)

    return train_step, eval_step


def _addmm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flops(grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


# Operators torch's FLOP counter does not know: the in-place addmm_ (the fused LoRA projection) and
# CPU's fused attention (CUDA's flash, efficient and cuDNN attention are counted already).
EXTRA_FLOP_FORMULAS = {torch.ops.aten.addmm_: _addmm_flops,
                       torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
                       torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops}


def step_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call of ``step`` (matrix products and attention; elementwise work counts 0)."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
        step()
    return counter.get_total_flops()


def gemm_peak_tflops(device: torch.device, precision: str, size: int | None = None, repeats: int = 5) -> float:
    """The device's dense GEMM peak as measured: the best TFLOP/s of ``repeats`` timings of an
    n x n matmul (n = 8192 on CUDA, 1024 on CPU) in bf16 for ``precision='bf16'``, else fp32."""
    n = size or (8192 if device.type == "cuda" else 1024)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=generator).to(device, dtype) for _ in range(2))
    calls = 10 if device.type == "cuda" else 1  # per timing: amortises the launch and the sync
    _seconds(lambda: a @ b, 1, device)  # warm-up: library handles, threads, clocks
    best = min(_seconds(lambda: a @ b, calls, device) for _ in range(repeats)) / calls
    return 2 * n ** 3 / best / 1e12


def op_class(name: str) -> str:
    """The class (``OP_CLASSES`` or ``OTHER_CLASS``) of an aten operator name."""
    op = name.removeprefix("aten::")
    return next((cls for cls, parts in OP_CLASSES.items() if any(p in op for p in parts)), OTHER_CLASS)


def time_breakdown(step: Callable[[], Any], device: torch.device, steps: int = 3) -> dict[str, float]:
    """Where ``step``'s time goes: each operator class's share of the aten operators' self time
    (device time on CUDA, CPU time on CPU) over ``steps`` profiled steps, and on CUDA ``busy``: that
    device time per step over the step's unprofiled wall time (below 1: the device waits for launches
    and Python; on CPU the profiler's own overhead inflates the operators' times, so None)."""
    step()
    wall_s = _seconds(step, steps, device) / steps
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(steps):
            step()
        sync(device)
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    times: dict[str, float] = defaultdict(float)
    for event in profile.key_averages():
        if event.key.startswith("aten::"):
            times[op_class(event.key)] += getattr(event, attribute)  # microseconds
    total = sum(times.values())
    shares = {cls: round(times[cls] / total, 3) for cls in (*OP_CLASSES, OTHER_CLASS)}
    busy = round(total / 1e6 / steps / wall_s, 3) if device.type == "cuda" else None
    return {**shares, "busy": busy, "step_s": round(wall_s, 5)}


def bound_profile(backbone_name: str, batch_size: int, precision: str, device: torch.device) -> dict[str, float]:
    """``time_breakdown`` of the frozen bound's eager training step (a fresh random-init backbone)."""
    torch.manual_seed(0)
    backbone = build_backbone(backbone_name, pretrained=False).to(device)
    x, _ = _batches(1, batch_size, backbone_input_size(backbone_name), 0, device)[0]
    return time_breakdown(frozen_steps(backbone, x, precision)[0], device)


def break_even_steps(compile_s: float, recompile_s: float, eager_step_s: float, compiled_step_s: float,
                     tasks: int = N_TASKS) -> float | None:
    """Training steps per task from which compiling saves time over a run of ``tasks`` tasks: the
    first task compiles (``compile_s``), each later one recompiles (``recompile_s``: the harness
    compiles afresh per task), and every step saves ``eager_step_s - compiled_step_s``. None when
    the compiled step is not faster (compiling never pays)."""
    saving = eager_step_s - compiled_step_s
    if saving <= 0:
        return None
    return max(compile_s + (tasks - 1) * recompile_s, 0.0) / (tasks * saving)


def compile_figures(eager_step: Callable[[], Any], compiled_step: Callable[[], Any], device: torch.device,
                    repeats: int = 3) -> tuple[float, float]:
    """(seconds of an eager step: the median of ``repeats``, compile seconds: the compiled step's
    first call less an eager step). Call before anything else runs ``compiled_step``."""
    eager_step()
    eager_s = statistics.median(_seconds(eager_step, 1, device) for _ in range(repeats))
    return eager_s, _seconds(compiled_step, 1, device) - eager_s


# Decimal places of the training figures in a row (3 where not listed); FLOP figures keep 4
# significant digits instead (from a tiny ViT on CPU to ViT-B/16 on a GPU).
DIGITS = {"train_img_s": 1, "bound_train_img_s": 1, "eager_train_img_s": 1, "compile_s": 2, "recompile_s": 2,
          "break_even_steps": 1, "break_even_epochs": 2}
SIGNIFICANT = ("train_gflop", "bound_train_gflop", "train_tflops", "bound_train_tflops", "train_util",
               "bound_train_util", "peak_tflops")


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _row_figure(key: str, value: float | None) -> float | None:
    """A training figure rounded for the row (``DIGITS``, ``SIGNIFICANT``)."""
    if key in SIGNIFICANT and value is not None:
        return float(f"{value:.4g}")
    return _rounded(value, DIGITS.get(key, 3))


def _batches(n: int, batch_size: int, size: int, task: int, device: torch.device) -> list:
    generator = torch.Generator().manual_seed(task)
    labels = torch.arange(batch_size) % CLASSES_PER_TASK + task * CLASSES_PER_TASK
    return [(torch.rand(batch_size, 3, size, size, generator=generator).to(device), labels.to(device))
            for _ in range(n)]


def _hooks_seconds(method, task: int, loader: list, precision: str) -> float:
    """Seconds of ``begin_task`` + ``end_task`` of ``task`` over ``loader``, run as the protocol does."""
    sync(method.device)
    start = time.perf_counter()
    protocol.run_hook(method.begin_task, task, loader, method.device, precision)
    protocol.run_hook(method.end_task, task, loader, method.device, precision)
    sync(method.device)
    return time.perf_counter() - start


def design_fraction(small_s: float, larger_s: float, batch_size: int, train_img_s: float) -> float:
    """InfLoRA's hooks on a paper-sized task as a fraction of that task's training time, from their
    seconds on one batch (``small_s``) and on three (``larger_s``): a linear fit in the samples. A
    negative slope is timing noise (more samples never cost less): then only the fixed part counts."""
    per_sample = max((larger_s - small_s) / (2 * batch_size), 0.0)
    fixed = max(small_s - per_sample * batch_size, 0.0)
    task_train_s = PAPER_EPOCHS * PAPER_TASK_SAMPLES / train_img_s
    return (fixed + per_sample * PAPER_TASK_SAMPLES) / task_train_s


def ridge_solve_seconds(method, task: int, samples: int) -> float:
    """Seconds of one ``absorb`` (RanPAC's statistics update, lambda search and solve) of task
    ``task`` on ``samples`` random non-negative features (the cost does not depend on the values)."""
    generator = torch.Generator().manual_seed(task)
    features = torch.randn(samples, method.feature_dim, generator=generator).abs().to(method.device)
    first = sum(method.task_sizes[:task])
    labels = (torch.arange(samples) % method.task_sizes[task] + first).to(method.device)
    sync(method.device)
    start = time.perf_counter()
    method.absorb(task, features, labels)
    sync(method.device)
    return time.perf_counter() - start


def train_step_fn(method, training_loss: Callable, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, task: int, precision: str) -> Callable[[], None]:
    """One training step as the protocol runs it: autocast, ``training_loss``, backward, step."""
    def step():
        method.train()
        with protocol.autocast(x.device, precision):
            loss = training_loss(x, y, task)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def add_utilisation(row: dict[str, Any], peak_tflops: float) -> None:
    """Set the row's measured GEMM peak and its training steps' TFLOP/s as fractions of it."""
    row["peak_tflops"] = _row_figure("peak_tflops", peak_tflops)
    for key in ("train", "bound_train"):
        tflops = row.get(f"{key}_tflops")
        row[f"{key}_util"] = None if tflops is None else _row_figure(f"{key}_util", tflops / peak_tflops)


def train_figures(method, task: int, bound_step: Callable[[], Any], plain: torch.nn.Module, x: torch.Tensor,
                  y: torch.Tensor, precision: str, warmup: int, steps: int, compile: bool = False
                  ) -> dict[str, float | None]:
    """A row's training figures for ``method`` on ``task``: throughput against ``bound_step`` (the
    bound's step on ``plain``, compiled like the method's under ``compile``), FLOPs per step and
    TFLOP/s, and with ``compile`` the compile and recompile seconds, the eager speed and the break-even.
    Resets Dynamo under ``compile``: run it before anything compiled is first called."""
    device, batch_size = x.device, x.shape[0]
    optimizer = protocol.build_optimizer(protocol.declare_trainable(method, task), method.cfg)
    eager_step = train_step_fn(method, method.training_loss, optimizer, x, y, task, precision)
    flops = step_flops(eager_step), step_flops(frozen_steps(plain, x, precision)[0])
    if compile:
        compiled_loss = protocol.compiled(method.training_loss, True)
        train_step = train_step_fn(method, compiled_loss, optimizer, x, y, task, precision)
        eager_s, compile_s = compile_figures(eager_step, train_step, device)
    else:
        train_step = eager_step
    timed = paired_throughput(train_step, bound_step, batch_size, device, warmup, steps)
    figures = dict(zip(("train_img_s", "bound_train_img_s", "train_ratio"), timed))
    train_tflops, bound_tflops = (f * img_s / batch_size / 1e12 for f, img_s in zip(flops, timed))
    figures.update(train_gflop=flops[0] / 1e9, bound_train_gflop=flops[1] / 1e9, train_tflops=train_tflops,
                   bound_train_tflops=bound_tflops)
    if compile:  # a later task's compile: Dynamo reset, Inductor's on-disk caches warm
        torch.compiler.reset()
        recompile_s = _seconds(train_step, 1, device) - eager_s
        steps_to_pay = break_even_steps(compile_s, recompile_s, eager_s, batch_size / figures["train_img_s"])
        figures.update(eager_train_img_s=batch_size / eager_s, compile_s=compile_s, recompile_s=recompile_s,
                       break_even_steps=steps_to_pay,
                       break_even_epochs=None if steps_to_pay is None else
                       steps_to_pay / math.ceil(PAPER_TASK_SAMPLES / batch_size))
    return figures


def bench_method(name: str, backbone_name: str, batch_size: int, precision: str, device: torch.device,
                 warmup: int, steps: int, compile: bool = False) -> dict[str, Any]:
    """One row of the benchmark for method ``name``; the bounds run on a second, unwrapped copy
    of the backbone, timed in alternation with the method."""
    cls = METHODS.get(name)
    size = backbone_input_size(backbone_name)
    torch.manual_seed(0)
    plain = build_backbone(backbone_name, pretrained=False).to(device)
    backbone = build_backbone(backbone_name, pretrained=False).to(device)
    # the tiny ViT has 4 blocks: use the block lists of the synth recipe (timing only)
    settings = cls.DATASET_DEFAULTS.get("synth", {}) if backbone_name == SYNTH_VIT else {}
    method = cls(backbone, [CLASSES_PER_TASK] * N_TASKS, cls.Config(**settings)).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    small, larger = _batches(1, batch_size, size, 0, device), _batches(3, batch_size, size, 0, device)
    design_times = []
    last = N_TASKS - 1
    for task in range(N_TASKS):
        method.enter_task(task)
        method.eval()
        loader = _batches(1, batch_size, size, task, device)
        if task == last and name.startswith("inflora"):  # linear fit of the hooks' cost in the samples
            design_times = [_hooks_seconds(method, task, batches, precision) for batches in (small, larger)]
        protocol.run_hook(method.begin_task, task, loader, device, precision)
        if task < last:
            protocol.run_hook(method.end_task, task, loader, device, precision)
    # the last task that trains (RanPAC trains on its first only; None: training-free on every task)
    trained = next((t for t in (last, 0) if method.trainable_parameters(t)), None)
    x, y = _batches(1, batch_size, size, last if trained is None else trained, device)[0]
    bound_train, bound_eval = frozen_steps(plain, x, precision, compile)
    train = {"train_img_s": None, "bound_train_img_s": None, "train_ratio": None} if trained is None else \
        train_figures(method, trained, bound_train, plain, x, y, precision, warmup, steps, compile)
    predict = protocol.compiled(method.predict, compile)

    @torch.no_grad()
    def eval_step():
        method.eval()
        with protocol.autocast(device, precision):
            predict(x)

    eval_img_s, bound_eval_img_s, eval_ratio = paired_throughput(eval_step, bound_eval, batch_size, device,
                                                                 warmup, steps)
    row = {"method": name, "backbone": backbone_name, "device": str(device), "precision": precision,
           "batch_size": batch_size, "compile": compile, "n_tasks": N_TASKS, "train_task": trained,
           **{key: _row_figure(key, value) for key, value in train.items()},
           "bound_eval_img_s": round(bound_eval_img_s, 1), "eval_img_s": round(eval_img_s, 1),
           "eval_ratio": round(eval_ratio, 3),
           "peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2 ** 20) if device.type == "cuda" else None}
    if design_times:
        row["design_fraction"] = round(design_fraction(*design_times, batch_size, train["train_img_s"]), 4)
    if getattr(method.cfg, "head", None) == "ridge":
        solve_s = ridge_solve_seconds(method, last, PAPER_TASK_SAMPLES)
        row["solve_s"] = round(solve_s, 3)
        row["solve_fraction"] = round(solve_s / (solve_s + PAPER_TASK_SAMPLES / bound_eval_img_s), 4)
    return row


def target_verdict(row: dict[str, Any]) -> str:
    """Which of the issue's targets the row misses (empty: none)."""
    missed = []
    method = row["method"].removesuffix("-b5")
    train_target = TARGETS["train_ratio"].get(method)
    if train_target and row["train_ratio"] > train_target:
        missed.append(f"train > {train_target}x")
    eval_target = TARGETS["eval_ratio"].get(method, EVAL_TARGET)
    if row["eval_ratio"] > eval_target:
        missed.append(f"eval > {eval_target:.2f}x")
    if row.get("design_fraction", 0) > TARGETS["design_fraction"]:
        missed.append(f"design > {TARGETS['design_fraction']:.0%}")
    return ", ".join(missed) or "met"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def _table(rows: list[dict[str, Any]], compile: bool) -> str:
    """The printed table: throughput, ratios, utilisation, the extras and, with ``compile``, its cost."""
    headers = ["method", "train img/s", "bound", "train ratio", "eval img/s", "bound", "eval ratio", "TFLOP/s",
               "bound TFLOP/s", "bound % peak", "design fraction", "ridge solve / task", "peak MB", "targets"]
    table = [[r["method"], r["train_img_s"], r["bound_train_img_s"], r["train_ratio"], r["eval_img_s"],
              r["bound_eval_img_s"], r["eval_ratio"], r.get("train_tflops"), r.get("bound_train_tflops"),
              _percent(r.get("bound_train_util")), r.get("design_fraction", ""),
              f"{r['solve_s']:.2f} s ({r['solve_fraction']:.0%})" if "solve_s" in r else "",
              r["peak_mem_mb"] if r["peak_mem_mb"] is not None else "–", target_verdict(r)] for r in rows]
    if compile:
        headers += ["eager img/s", "compile / recompile s", "break-even epochs"]
        for line, r in zip(table, rows):
            line += [r.get("eager_train_img_s"),
                     f"{r['compile_s']} / {r['recompile_s']}" if r.get("compile_s") is not None else "",
                     "never" if r.get("compile_s") is not None and r["break_even_epochs"] is None
                     else r.get("break_even_epochs")]
    return tabulate(table, headers=headers, tablefmt="github")


def run_bench(methods: list[str], backbone: str, batch_size: int, precision: str, device: torch.device,
              warmup: int, steps: int, results_dir: str, compile: bool = False) -> tuple[list[dict[str, Any]], Path]:
    """Bench every method; print the table and write the rows as JSON under ``results_dir/bench/``."""
    backbone_name = resolve_backbone_name(backbone, METHODS.get("frozen").pretrained_tag)
    peak_tflops = gemm_peak_tflops(device, precision)
    breakdown = bound_profile(backbone_name, batch_size, precision, device)
    rows = [bench_method(name, backbone_name, batch_size, precision, device, warmup, steps, compile)
            for name in methods]
    peak_tflops = max(peak_tflops, gemm_peak_tflops(device, precision))  # the best of the run's start and end
    for row in rows:
        add_utilisation(row, peak_tflops)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kind = precision + ("_compiled" if compile else "")
    path = Path(results_dir) / "bench" / f"bench_{backbone_name}_{device.type}_{kind}_b{batch_size}_{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"rows": rows, "environment": protocol.environment(device), "warmup": warmup,
                             "steps": steps, "peak_tflops": _row_figure("peak_tflops", peak_tflops),
                             "bound_breakdown": breakdown})
    print(f"{backbone_name}, {device}, {kind}, batch {batch_size}, {N_TASKS} tasks; bounds: the frozen "
          "backbone's forward+backward (input gradients only) and forward, timed before each method\n")
    print(_table(rows, compile))
    shares = ", ".join(f"{cls} {breakdown[cls]:.0%}" for cls in (*OP_CLASSES, OTHER_CLASS))
    print(f"\nratios: the method's time per image over the frozen bound's (1.0 = as fast as the bound); TFLOP/s: "
          f"counted FLOPs of a training step at the timed speed, against a measured dense "
          f"{'bf16' if precision == 'bf16' else 'fp32'} GEMM peak of {peak_tflops:.3g} TFLOP/s\n"
          f"the frozen bound's eager training step, operator time by class: {shares}"
          + ("" if breakdown["busy"] is None else f"; device busy {breakdown['busy']:.0%} of the step's wall time")
          + f"\nwrote {path}")
    return rows, path
