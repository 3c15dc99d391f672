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

Peak memory is CUDA's allocator peak per method; on CPU it is not measured (``None``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(step: Callable[[], Any], steps: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
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


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _batches(n: int, batch_size: int, size: int, task: int, device: torch.device) -> list:
    generator = torch.Generator().manual_seed(task)
    labels = torch.arange(batch_size) % CLASSES_PER_TASK + task * CLASSES_PER_TASK
    return [(torch.rand(batch_size, 3, size, size, generator=generator).to(device), labels.to(device))
            for _ in range(n)]


def _hooks_seconds(method, task: int, loader: list, precision: str) -> float:
    """Seconds of ``begin_task`` + ``end_task`` of ``task`` over ``loader``, run as the protocol does."""
    _sync(method.device)
    start = time.perf_counter()
    protocol.run_hook(method.begin_task, task, loader, method.device, precision)
    protocol.run_hook(method.end_task, task, loader, method.device, precision)
    _sync(method.device)
    return time.perf_counter() - start


def ridge_solve_seconds(method, task: int, samples: int) -> float:
    """Seconds of one ``absorb`` (RanPAC's statistics update, lambda search and solve) of task
    ``task`` on ``samples`` random non-negative features (the cost does not depend on the values)."""
    generator = torch.Generator().manual_seed(task)
    features = torch.randn(samples, method.feature_dim, generator=generator).abs().to(method.device)
    first = sum(method.task_sizes[:task])
    labels = (torch.arange(samples) % method.task_sizes[task] + first).to(method.device)
    _sync(method.device)
    start = time.perf_counter()
    method.absorb(task, features, labels)
    _sync(method.device)
    return time.perf_counter() - start


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
    training_loss, predict = (protocol.compiled(fn, compile) for fn in (method.training_loss, method.predict))

    @torch.no_grad()
    def eval_step():
        method.eval()
        with protocol.autocast(device, precision):
            predict(x)

    train_img_s = bound_train_img_s = train_ratio = None
    if trained is not None:
        optimizer = protocol.build_optimizer(protocol.declare_trainable(method, trained), method.cfg)

        def train_step():
            method.train()
            with protocol.autocast(device, precision):
                loss = training_loss(x, y, trained)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        train_img_s, bound_train_img_s, train_ratio = paired_throughput(train_step, bound_train, batch_size, device,
                                                                        warmup, steps)
    eval_img_s, bound_eval_img_s, eval_ratio = paired_throughput(eval_step, bound_eval, batch_size, device,
                                                                 warmup, steps)
    row = {"method": name, "backbone": backbone_name, "device": str(device), "precision": precision,
           "batch_size": batch_size, "compile": compile, "n_tasks": N_TASKS, "train_task": trained,
           "bound_train_img_s": _rounded(bound_train_img_s, 1), "bound_eval_img_s": round(bound_eval_img_s, 1),
           "train_img_s": _rounded(train_img_s, 1), "eval_img_s": round(eval_img_s, 1),
           "train_ratio": _rounded(train_ratio, 3), "eval_ratio": round(eval_ratio, 3),
           "peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2 ** 20) if device.type == "cuda" else None}
    if design_times:
        per_sample = (design_times[1] - design_times[0]) / (2 * batch_size)
        fixed = max(design_times[0] - per_sample * batch_size, 0.0)
        design_s = fixed + per_sample * PAPER_TASK_SAMPLES
        task_train_s = PAPER_EPOCHS * PAPER_TASK_SAMPLES / train_img_s
        row["design_fraction"] = round(design_s / task_train_s, 4)
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


def run_bench(methods: list[str], backbone: str, batch_size: int, precision: str, device: torch.device,
              warmup: int, steps: int, results_dir: str, compile: bool = False) -> tuple[list[dict[str, Any]], Path]:
    """Bench every method; print the table and write the rows as JSON under ``results_dir/bench/``."""
    backbone_name = resolve_backbone_name(backbone, METHODS.get("frozen").pretrained_tag)
    rows = [bench_method(name, backbone_name, batch_size, precision, device, warmup, steps, compile)
            for name in methods]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kind = precision + ("_compiled" if compile else "")
    path = Path(results_dir) / "bench" / f"bench_{backbone_name}_{device.type}_{kind}_b{batch_size}_{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"rows": rows, "environment": protocol.environment(device), "warmup": warmup,
                             "steps": steps})
    table = [[r["method"], r["train_img_s"], r["bound_train_img_s"], r["train_ratio"], r["eval_img_s"],
              r["bound_eval_img_s"], r["eval_ratio"], r.get("design_fraction", ""),
              f"{r['solve_s']:.2f} s ({r['solve_fraction']:.0%})" if "solve_s" in r else "",
              r["peak_mem_mb"] if r["peak_mem_mb"] is not None else "–", target_verdict(r)] for r in rows]
    print(f"{backbone_name}, {device}, {kind}, batch {batch_size}, {N_TASKS} tasks; bounds: the frozen "
          "backbone's forward+backward (input gradients only) and forward, timed before each method\n")
    print(tabulate(table, headers=["method", "train img/s", "bound", "train ratio", "eval img/s", "bound",
                                   "eval ratio", "design fraction", "ridge solve / task", "peak MB", "targets"], tablefmt="github"))
    print(f"\nratios: the method's time per image over the frozen bound's (1.0 = as fast as the bound); "
          f"wrote {path}")
    return rows, path
