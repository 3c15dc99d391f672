"""``python run_benchmark.py preflight``: every selected run, end to end at its real configuration
but cut short, and what the full runs will cost.

For each run the ``run`` command would launch (same selection options):

1. Data: the data set under ``--data-root`` when it is there, else (or with ``--fake-data``) a
   generated stand-in in its on-disk format with its real class count and image size
   (``datasets/standin.py``). Weights: the cached pretrained weights when present, else the same
   architecture randomly initialised (shapes, memory and time do not depend on the values).
2. The cut run: ``protocol.run`` with every task, every hook (statistics passes, designs, memory
   updates, prompt selection, ridge solves at the real M, magnitude resets), a checkpoint after every
   task, evaluation over all seen classes and the result file, but each epoch cut to
   ``--train-batches`` batches, at most ``--max-epochs`` epochs, each task's training images cut to
   those batches (at least one image per class) and each evaluation to ``--test-images`` per task
   (``protocol.RunCaps``), at the probe batch size. Results and checkpoints go to the scratch
   folder, never to the results store.
3. Reload: a freshly built method loads the last checkpoint and must give the last evaluation row again.
4. Probes: a training step and a forward pass at two batch sizes (on CPU the probe batch and twice
   it; on CUDA the preset's batch and half of it, so the preset's is measured directly when it
   fits), each under ``peak_memory.measure`` and timed; the estimate at the preset's batch is the
   line through them (``projection.LinearCost``), and never below the cut run's own peak (the
   ridge solve or a statistics pass may be the peak).
5. Projection (``benchmark/projection.py``) of the full run's wall time on this device, or with
   ``--project-for DEVICE`` / ``--bench FILE`` on the device of a stored ``bench`` result.

A run that fails is reported as its one-line error and the others go on; the exit code is then 1.
The table ends with the total over the runs and a suggested ``--time-min`` / ``--mem-gb`` for
``--launcher slurm``; the report is also written to ``<results-dir>/preflight/`` as JSON, where
``run --launcher slurm --time-min auto`` reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from tabulate import tabulate
from tqdm.auto import tqdm

from benchmark import peak_memory, projection, protocol, store
from benchmark.backbones import SYNTH_VIT, backbone_input_size, build_backbone, weights_cached
from benchmark.bench import frozen_steps, sync, train_step_fn
from benchmark.checkpoint import Checkpointer
from benchmark.config import RunConfig
from benchmark.errors import ConfigError, one_line
from benchmark.registry import DATASETS, METHODS
from datasets import standin
from methods.base import Method

# --time-min auto: the longest projected run times this, plus SLACK_MIN minutes (start-up, data
# loading on a cold file system, a slower node); --mem-gb: the largest host estimate times MEM_MARGIN
TIME_MARGIN, SLACK_MIN, MEM_MARGIN = 1.5, 10, 1.25
REPORTS = "preflight"  # <results-dir>/preflight/preflight_<stamp>.json
PREFETCH_BATCHES = 4  # batches per epoch the CUDA prefetch check compares, at least


@dataclass(frozen=True)
class Settings:
    """How far a preflight cuts each run, and where it puts things."""

    scratch: Path
    train_batches: int = 2
    max_epochs: int = 2
    test_images: int = 2
    batch: int | None = None  # probe batch; None: see probe_batches
    fake_data: bool = False
    project_for: str | None = None
    bench: str | None = None
    bench_dirs: tuple[Path, ...] = ()


@dataclass
class Report:
    """One run's preflight: its error, or what it measured and projects."""

    label: str
    run_id: str | None = None
    error: str | None = None
    batch_size: int | None = None  # the preset's
    eval_batch: int | None = None  # the real run's evaluation batch
    trainable_params: int | None = None
    probe: dict[int, dict[str, float | None]] = field(default_factory=dict)  # batch -> peaks, seconds
    run_peak: dict[str, float | None] = field(default_factory=dict)
    estimate: dict[str, float | None] = field(default_factory=dict)  # MiB at the preset's batch
    hook_fixed_s: list[float] = field(default_factory=list)
    checkpoint_mb: float | None = None
    projection: dict[str, float] = field(default_factory=dict)
    projected_for: str = ""
    source: str = ""
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)


class TimedCheckpointer(Checkpointer):
    """A checkpointer that keeps how long each save took and how large the file is."""

    def __init__(self, path: Path):
        super().__init__(path, every_s=float("inf"))
        self.seconds: list[float] = []
        self.size_mb = 0.0

    def save(self, state: dict[str, Any]) -> None:
        start = time.perf_counter()
        super().save(state)
        self.seconds.append(time.perf_counter() - start)
        self.size_mb = self.path.stat().st_size / peak_memory.MB


class ReloadMismatch(RuntimeError):
    """A method rebuilt from the run's last checkpoint does not reproduce its last evaluation."""


def timed(step: Callable[[], Any], device: torch.device, least_s: float = 0.3, repeats: tuple[int, int] = (2, 20)
          ) -> float:
    """Median seconds of calls of ``step``: at least ``repeats[0]`` calls, more until ``least_s``
    seconds have passed, at most ``repeats[1]``."""
    times: list[float] = []
    while len(times) < repeats[0] or (sum(times) < least_s and len(times) < repeats[1]):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pretrained_available(config: RunConfig) -> bool:
    """Whether the run's backbone weights are here without a download: the shipped tiny ViT, a
    weights file, or timm's Hugging Face files in the local cache."""
    return config.backbone == SYNTH_VIT or bool(config.backbone_weights) or weights_cached(config.backbone)


def probe_batches(device: torch.device, preset_batch: int, batch: int | None, backbone: str) -> list[int]:
    """The batch sizes a run is cut to and probed at: on CUDA the preset's and half of it; on CPU
    ``batch`` and twice it (default 2; 32 for the tiny synth ViT, whose steps take milliseconds)."""
    if device.type == "cuda" and batch in (None, preset_batch):
        return sorted({max(preset_batch // 2, 1), preset_batch})
    first = batch or (32 if backbone == SYNTH_VIT else 2)
    return [first, 2 * first]


def forward_only_batches(device: torch.device, batches: list[int]) -> tuple[int, ...]:
    """A wider batch for the forward probe, whose memory per image is small against the allocator's
    noise: the real evaluation batch on CUDA, four times the larger probe batch on CPU."""
    wide = projection.EVAL_BATCH if device.type == "cuda" else 4 * max(batches)
    return () if wide <= max(batches) else (wide,)


def cut_batch_of(device: torch.device, preset_batch: int, batch: int | None, backbone: str) -> int:
    """The batch the cut run trains at: ``batch`` if given, else the preset's on CUDA, else the
    smaller probe batch."""
    return batch or (preset_batch if device.type == "cuda" else probe_batches(device, preset_batch, None, backbone)[0])


def classes_per_task(config: RunConfig) -> int:
    tasks = 1 if METHODS.get(config.method).single_task else config.n_tasks
    return DATASETS.get(config.dataset).num_classes // tasks


def per_class_needs(config: RunConfig, train_batches: int, test_images: int, batch: int) -> tuple[int, int]:
    """Training and test images per class a stand-in needs for ``train_batches`` batches of ``batch``
    and ``test_images`` test images per task of this run."""
    per_task = classes_per_task(config)
    return max(1, math.ceil(train_batches * batch / per_task)), max(1, math.ceil(test_images / per_task))


class Sources:
    """Where each data set and backbone of a preflight comes from, decided once and said once."""

    def __init__(self, settings: Settings, say: Callable[[str], None]):
        self.settings, self.say = settings, say
        self.data: dict[tuple, tuple[str | None, dict[str, Any]]] = {}
        self.weights: dict[tuple, bool] = {}

    def data_for(self, config: RunConfig, needs: tuple[int, int]) -> tuple[str | None, dict[str, Any]]:
        """(data root, data option overrides) of the run: the real data set, or a stand-in."""
        cls = DATASETS.get(config.dataset)
        if cls.folder is None:  # generated (synth): nothing to read
            return config.data_root, {}
        if not self.settings.fake_data:
            with contextlib.suppress(ConfigError):
                cls.check_location(config.data_root)
                key = ("real", config.dataset)
                if key not in self.data:
                    self.say(f"{config.dataset}: the real data set under {config.data_root}")
                    self.data[key] = (config.data_root, {})
                return self.data[key]
        options = cls.Options(**config.data_options)
        shape = json.dumps({"needs": needs, "options": {k: v for k, v in config.data_options.items()
                                                        if k in ("domains", "split_file")}}, sort_keys=True)
        name = f"{config.dataset}-{hashlib.sha256(shape.encode()).hexdigest()[:8]}"
        if ("standin", name) not in self.data:
            root = self.settings.scratch / "standins" / name
            overrides = standin.prepare(root, lambda folder: cls.write_standin(folder, *needs, options))
            why = "--fake-data" if self.settings.fake_data else f"no {cls.folder}/ under {config.data_root}"
            self.say(f"{config.dataset}: {why}, so a generated stand-in in its on-disk format ({cls.num_classes} "
                     f"classes, {needs[0]} training and {needs[1]} test images per class) in {root}")
            self.data[("standin", name)] = (str(root), overrides)
        return self.data[("standin", name)]

    def pretrained_for(self, config: RunConfig) -> bool:
        key = (config.backbone, config.backbone_weights)
        if key not in self.weights:
            self.weights[key] = pretrained_available(config)
            if not self.weights[key]:
                self.say(f"{config.backbone}: pretrained weights not in the cache, so randomly initialised "
                         "(shapes, memory and time only)")
        return self.weights[key]


def executed_config(config: RunConfig, settings: Settings, batch: int, data_root: str | None,
                    data_overrides: dict[str, Any], pretrained: bool) -> RunConfig:
    """The configuration the cut run executes: the real one at the probe batch, with at most
    ``max_epochs`` epochs, on the chosen data and weights."""
    hparams = {**config.hparams, "batch_size": batch, "epochs": min(config.hparams["epochs"], settings.max_epochs)}
    return dataclasses.replace(config, hparams=hparams, data_root=data_root, pretrained=pretrained,
                               data_options={**config.data_options, **data_overrides})


def reload_and_check(config: RunConfig, checkpointer: Checkpointer, caps: protocol.RunCaps,
                     result: dict[str, Any], device: torch.device) -> Method:
    """A freshly built method with the run's last checkpoint loaded, checked to reproduce the last
    evaluation row."""
    split, method = protocol.build_run(config, device, caps)
    saved = checkpointer.load(config.run_id())
    if saved is None:
        raise ReloadMismatch(f"no readable checkpoint at {checkpointer.path} after the run")
    method.load_checkpoint_state(saved["method"])
    last = method.current_task
    row, _, _ = protocol.evaluate(method, split, last, device, config.precision)
    if len(row) != len(result["acc_matrix"][-1]):
        raise ReloadMismatch(f"the method reloaded from its checkpoint has seen {len(row)} tasks, the run "
                             f"{len(result['acc_matrix'][-1])}")
    if row != result["acc_matrix"][-1]:
        task = next(j for j, (a, b) in enumerate(zip(row, result["acc_matrix"][-1])) if a != b)
        raise ReloadMismatch(f"the method reloaded from its checkpoint scores {row[task]:.2f} % on task {task + 1}'s "
                             f"test images, the run {result['acc_matrix'][-1][task]:.2f} %")
    return method


def probe(method, batches: list[int], image_size: int, precision: str, device: torch.device,
          forward_only: tuple[int, ...] = ()) -> dict[int, dict[str, float | None]]:
    """Peak memory (host MiB; CUDA MiB) and seconds of a training step (the first step untimed, so the
    optimiser's state exists in the timed ones) and of a forward pass (``predict``) at each batch
    size, smallest first, on the last task that trains (none: forward only); at the batches of
    ``forward_only`` the forward pass alone. Random inputs: the values do not change the cost."""
    last = method.current_task
    trained = next((t for t in (last, 0) if method.trainable_parameters(t)), None)
    task = last if trained is None else trained
    classes = method.task_classes(task)
    figures: dict[int, dict[str, float | None]] = {}
    for batch in sorted({*batches, *forward_only}):
        generator = torch.Generator().manual_seed(batch)
        x = torch.rand(batch, 3, image_size, image_size, generator=generator).to(device)
        y = (torch.arange(batch) % len(classes) + classes.start).to(device)
        row: dict[str, float | None] = {}
        if trained is not None and batch in batches:
            optimizer = protocol.build_optimizer(protocol.declare_trainable(method, trained), method.cfg)
            step = train_step_fn(method, method.training_loss, optimizer, x, y, trained, precision)
            with peak_memory.measure(device) as peak:
                step()  # the second step (timed) runs with the optimiser's state
                seconds = timed(step, device, repeats=(1, 20))
            row.update(train_host_mb=peak.host_mb, train_device_mb=peak.device_mb, train_s=seconds)

        @torch.no_grad()
        def forward() -> None:
            method.eval()
            with protocol.autocast(device, precision):
                method.predict(x)

        with peak_memory.measure(device) as peak:
            forward()
            seconds = timed(forward, device, repeats=(1, 20))
        row.update(eval_host_mb=peak.host_mb, eval_device_mb=peak.device_mb, eval_s=seconds)
        figures[batch] = row
    method.eval()
    return figures


def bound_times(backbone: str, precision: str, batch: int, device: torch.device) -> tuple[float, float]:
    """Seconds of the frozen backbone's training step and forward (bench's bounds) at ``batch``, on a
    fresh copy built for the timing and released after it (so it never adds to a run's measured
    memory). Timed right after each run's probes, so that the method's ratio to the bound is not
    skewed by the machine's drifting speed: the reference for a method's speed on another device
    when the stored bench has only the bound."""
    torch.manual_seed(0)
    plain = build_backbone(backbone, pretrained=False).to(device)
    size = backbone_input_size(backbone)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    train, forward = frozen_steps(plain, x, precision)
    train()  # warm-up at this batch and precision
    forward()
    return timed(train, device, repeats=(1, 20)), timed(forward, device, repeats=(1, 20))


def run_shape(config: RunConfig, result: dict[str, Any], caps: protocol.RunCaps, batch: int,
              forward_here: projection.LinearCost, checkpoint_s: float, uses_standin: bool) -> projection.RunShape:
    """What the full run does, from the cut run's record: the uncut (or, on a stand-in, the
    published) task sizes, which tasks train, the hooks' passes and fixed costs."""
    cls = METHODS.get(config.method)
    n_tasks = len(result["acc_matrix"])
    if uses_standin:
        sizes = DATASETS.get(config.dataset).full_sizes(config.dataset_options())
        full = projection.published_task_images(n_tasks, sizes)
    else:
        full = result["data_info"]["uncut_task_images"]
    cut = result["data_info"]["task_images"]
    tasks = result["timings"]["tasks"]
    passes, fixed = [], []
    for t, timing in enumerate(tasks):
        per_pass = cut[t]["train"] if cls.hook_transform != "train" else min(cut[t]["train"], caps.train_batches * batch)
        passes.append(timing["hook_images"] / per_pass if per_pass else 0.0)
        data_s = timing["hook_images"] * forward_here.at(batch) / batch
        fixed.append(max(timing["begin_s"] + timing["end_s"] - data_s, 0.0))
    tasks_s = sum(timing[k] for timing in tasks for k in ("begin_s", "train_s", "end_s", "eval_s"))
    setup_s = max(result["timings"]["total_s"] - tasks_s - checkpoint_s * n_tasks, 0.0)
    return projection.RunShape(task_images=full, epochs=config.hparams["epochs"], batch_size=config.hparams["batch_size"],
                               drop_last=config.hparams["drop_last"], trains=[p > 0 for p in result["trainable_params"]],
                               hook_passes=passes, hook_fixed_s=fixed, checkpoint_s=checkpoint_s, setup_s=setup_s)


def _estimate(points: list[tuple[int, float | None]], batch: int) -> float | None:
    points = [(int(b), v) for b, v in points if v is not None]
    return projection.LinearCost.fit(points).at(batch) if points else None


def estimate_peaks(probe: dict, run_peak: dict, preset_batch: int, eval_batch: int) -> dict[str, float | None]:
    """Peak MiB (host; CUDA) at the preset's batch: the largest of the cut run's peak, the training
    probes extrapolated to ``preset_batch`` and the forward probes extrapolated to ``eval_batch`` (the
    real evaluation batch: 256, or a task's test images when fewer)."""
    estimate: dict[str, float | None] = {}
    for kind in ("host", "device"):
        train = _estimate([(b, f.get(f"train_{kind}_mb")) for b, f in probe.items()], preset_batch)
        forward = _estimate([(b, f.get(f"eval_{kind}_mb")) for b, f in probe.items()], eval_batch)
        measured = [v for v in (run_peak[f"{kind}_mb"], train, forward) if v is not None]
        estimate[f"{kind}_mb"] = round(max(measured)) if measured else None
    return estimate


def preflight_run(config: RunConfig, settings: Settings, device: torch.device, sources: Sources,
                  needs: tuple[int, int], target: tuple[Path, dict] | None) -> Report:
    """Preflight of one run (see the module docstring); raises on any failure."""
    started = time.time()
    preset_batch = config.hparams["batch_size"]
    batches = probe_batches(device, preset_batch, settings.batch, config.backbone)
    cut_batch = cut_batch_of(device, preset_batch, settings.batch, config.backbone)
    data_root, overrides = sources.data_for(config, needs)
    executed = executed_config(config, settings, cut_batch, data_root, overrides, sources.pretrained_for(config))
    caps = protocol.RunCaps(settings.train_batches, settings.test_images)
    checkpointer = TimedCheckpointer(store.checkpoint_path(settings.scratch, executed.run_id()))
    checkpointer.remove()
    report = Report(label=label(config), run_id=config.run_id(), batch_size=preset_batch)
    with peak_memory.measure(device) as run_peak:
        result = protocol.run(executed, progress=False, checkpointer=checkpointer, caps=caps)
    store.write_result(settings.scratch, result)
    report.run_peak = {"batch": cut_batch, "host_mb": run_peak.host_mb, "device_mb": run_peak.device_mb}
    method = reload_and_check(executed, checkpointer, caps, result, device)
    checkpointer.remove()
    size = backbone_input_size(config.backbone)
    report.probe = probe(method, batches, size, config.precision, device, forward_only_batches(device, batches))
    report.trainable_params = max(result["trainable_params"])
    report.checkpoint_mb = round(checkpointer.size_mb, 1)
    trains = any(p > 0 for p in result["trainable_params"])
    train_here = projection.LinearCost.fit([(b, f["train_s"]) for b, f in report.probe.items()
                                            if "train_s" in f]) if trains else None
    forward_here = projection.LinearCost.fit([(b, f["eval_s"]) for b, f in report.probe.items()])
    checkpoint_s = statistics.mean(checkpointer.seconds) if checkpointer.seconds else 0.0
    uses_standin = data_root != config.data_root
    shape = run_shape(config, result, caps, cut_batch, forward_here, checkpoint_s, uses_standin)
    report.hook_fixed_s = [round(s, 3) for s in shape.hook_fixed_s]
    report.eval_batch = min(projection.EVAL_BATCH, max(t["test"] for t in shape.task_images))
    report.estimate = estimate_peaks(report.probe, report.run_peak, preset_batch, report.eval_batch)
    if not run_peak.resettable:
        report.notes.append("host peaks are the process's lifetime peak (/proc/self/clear_refs is not writable here)")
    if target is None:
        report.projection = projection.project(shape, train_here, forward_here)
        report.projected_for = protocol.environment(device)["device_name"] or device.type
        report.source = "measured here"
    else:
        path, bench = target
        top = max(batches)
        bound_train, bound_forward = bound_times(config.backbone, config.precision, top, device)
        train_ratio = report.probe[top]["train_s"] / bound_train if trains else None
        speed = projection.bench_speed(bench, path, config.method, train_ratio, report.probe[top]["eval_s"] / bound_forward)
        report.projection = projection.project(shape, speed.train_step, speed.forward)
        report.projected_for = bench["environment"].get("device_name") or bench["environment"].get("device", "?")
        report.source = speed.source
        if bench["rows"][0].get("precision") != config.precision:
            report.notes.append(f"the bench ran {bench['rows'][0].get('precision')}, this run is {config.precision}")
    report.wall_s = round(time.time() - started, 1)
    return report


def label(config: RunConfig) -> str:
    return f"{config.method} {config.dataset} T{config.n_tasks} s{config.seed}"


def one_line_error(err: BaseException) -> str:
    """``Type: message`` on one line (the last line of a multi-line message)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return "out of GPU memory (CUDA OutOfMemoryError); lower the batch size or use --precision bf16"
    text = one_line(err) if isinstance(err, ConfigError) else (
        f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}".rstrip(": "))
    return text[:300]


def bench_target(settings: Settings, backbones: set[str]) -> tuple[Path, dict] | None:
    """The stored bench result to project with (``--bench FILE``, or the newest for ``--project-for``)."""
    if settings.bench:
        path = Path(settings.bench)
        try:
            return path, projection.read_bench(path)
        except ValueError as err:
            raise ConfigError(f"--bench: {err}") from None
    if not settings.project_for:
        return None
    found = {projection.find_bench(settings.project_for, backbone, list(settings.bench_dirs)) for backbone in backbones}
    if None in found or len(found) != 1:
        where = ", ".join(str(d) for d in settings.bench_dirs)
        raise ConfigError(f"--project-for {settings.project_for}: no stored bench result for that device and backbone "
                          f"{', '.join(sorted(backbones))} under {where}; run `run_benchmark.py bench --backbone vit-b16` "
                          "on that device, or name a file with --bench")
    path = found.pop()
    return path, projection.read_bench(path)


def check_prefetch(config: RunConfig, caps: protocol.RunCaps, device: torch.device, workers: int = 2,
                   epochs: int = 2) -> tuple[bool, int, float, float]:
    """CUDA side-stream prefetch against the synchronous path on one run's first task: (the batches
    equal bit for bit, batches compared, seconds per training step without and with prefetch), over
    ``epochs`` epochs with ``workers`` loader processes."""
    split, method = protocol.build_run(config, device, caps)
    method.enter_task(0)
    groups = protocol.declare_trainable(method, 0)
    optimizer = protocol.build_optimizer(groups, method.cfg) if groups else None
    seen, seconds = {}, {}
    for ahead in (False, True):
        loader = protocol.Loader(split.train_set(0), method.cfg.batch_size, shuffle=True, seed=0, num_workers=workers,
                                 pin_memory=True, device=device, prefetch=ahead)
        batches, steps = [], 0
        sync(device)
        start = time.perf_counter()
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if optimizer is not None:
                    train_step_fn(method, method.training_loss, optimizer, x, y, 0, config.precision)()
                batches.append((x.cpu(), y.cpu()))
                steps += 1
        sync(device)
        seconds[ahead] = (time.perf_counter() - start) / max(steps, 1)
        seen[ahead] = batches
        loader.close()
    same = len(seen[False]) == len(seen[True]) and all(
        torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(seen[False], seen[True]))
    return same, len(seen[False]), seconds[False], seconds[True]


def prefetch_check(reports: list[Report], configs: list[RunConfig], settings: Settings, sources: Sources,
                   needs: dict[str, tuple[int, int]], device: torch.device, say: Callable[[str], None]) -> list[Report]:
    """``check_prefetch`` on the first run that passed, said in one line; a failed row if the batches differ."""
    first = next((r for r in reports if not r.error), None)
    if first is None:
        return []
    config = next(c for c in configs if c.run_id() == first.run_id)
    root, overrides = sources.data_for(config, needs[config.dataset])
    executed = executed_config(config, settings, config.hparams["batch_size"], root, overrides,
                               sources.pretrained_for(config))
    caps = protocol.RunCaps(max(settings.train_batches, PREFETCH_BATCHES), 2)
    same, count, without, ahead = check_prefetch(executed, caps, device)
    say(f"prefetch check ({first.label}, 2 epochs, 2 workers): {count} batches {'bit-identical' if same else 'DIFFER'} "
        f"with and without --prefetch; step {without * 1e3:.1f} ms without, {ahead * 1e3:.1f} ms with")
    if same:
        return []
    return [Report(label="prefetch check", error="--prefetch delivers other batches than the synchronous path; "
                                                 "leave --prefetch off")]


def _mb(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def table(reports: list[Report], cuda: bool) -> str:
    """The preflight table: one row per run."""
    headers = ["run", "status", "trainable", "host MiB (cut run)", "host MiB est. @preset batch"]
    if cuda:
        headers += ["GPU MiB (cut run)", "GPU MiB est. @preset batch"]
    headers += ["checkpoint MiB", "hook fixed s/task", "projected / run", "speed from"]
    rows = []
    for r in reports:
        if r.error:
            rows.append([r.label, r.error] + [""] * (len(headers) - 2))
            continue
        row = [r.label, "ok", f"{r.trainable_params:,}", f"{_mb(r.run_peak['host_mb'])} (b{r.run_peak['batch']})",
               f"{_mb(r.estimate['host_mb'])} (b{r.batch_size})"]
        if cuda:
            row += [f"{_mb(r.run_peak['device_mb'])} (b{r.run_peak['batch']})", f"{_mb(r.estimate['device_mb'])} (b{r.batch_size})"]
        fixed = max(r.hook_fixed_s, default=0.0)
        row += [_mb(r.checkpoint_mb), f"{fixed:.2f}" if fixed >= 0.01 else "0", _hours(r.projection["total_s"]),
                r.source.split(": ")[-1]]
        rows.append(row)
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def slurm_suggestion(reports: list[Report]) -> dict[str, int] | None:
    """``--time-min`` (the longest projected run x TIME_MARGIN + SLACK_MIN) and ``--mem-gb`` (the
    largest host estimate x MEM_MARGIN) for the runs' job array; None when no run succeeded."""
    done = [r for r in reports if not r.error]
    if not done:
        return None
    longest = max(r.projection["total_s"] for r in done)
    host = max(r.estimate["host_mb"] for r in done)
    return {"time_min": math.ceil(TIME_MARGIN * longest / 60 + SLACK_MIN), "mem_gb": math.ceil(MEM_MARGIN * host / 1024)}


def config_precisions(configs: list[RunConfig]) -> str:
    return "/".join(sorted({c.precision for c in configs})) or "?"


def write_report(results_dir: str | Path, reports: list[Report], settings: Settings, device: torch.device) -> Path:
    """The report as JSON under ``<results-dir>/preflight/`` (read by ``--time-min auto``)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(results_dir) / REPORTS / f"preflight_{stamp}.json"
    settings_dict = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()
                     if k != "bench_dirs"}
    store.write_json_atomic(path, {"created": stamp, "device": str(device), "settings": settings_dict,
                                   "environment": protocol.environment(device),
                                   "runs": [dataclasses.asdict(r) for r in reports],
                                   "slurm": slurm_suggestion(reports)})
    return path


def run_preflight(runs: list[tuple[str, RunConfig | None, str | None]], settings: Settings, device: torch.device,
                  results_dir: str, progress: bool = True) -> int:
    """Preflight every run of ``runs`` ((label, resolved config or None, its resolution error)), print
    the table and the totals over the runs, write the report; exit status 1 if any run failed."""
    say = (lambda text: print(text, file=sys.stderr))
    settings.scratch.mkdir(parents=True, exist_ok=True)
    configs = [c for _, c, _ in runs if c is not None]
    target = bench_target(settings, {c.backbone for c in configs}) if configs else None
    if target:
        say(f"projected for {target[1]['environment'].get('device_name', '?')} from the stored bench result {target[0]}")
    sources = Sources(settings, say)
    needs: dict[str, tuple[int, int]] = {}
    for config in configs:
        cut_batch = cut_batch_of(device, config.hparams["batch_size"], settings.batch, config.backbone)
        batches = max(settings.train_batches, PREFETCH_BATCHES) if device.type == "cuda" else settings.train_batches
        train, test = per_class_needs(config, batches, settings.test_images, cut_batch)
        old = needs.get(config.dataset, (0, 0))
        needs[config.dataset] = (max(old[0], train), max(old[1], test))
    reports = []
    started = time.time()
    for name, config, error in tqdm(runs, desc="preflight", unit="run", disable=not progress):
        if config is None:
            reports.append(Report(label=name, error=error))
        else:
            try:
                reports.append(preflight_run(config, settings, device, sources, needs[config.dataset], target))
            except Exception as err:  # any failure of one run is that run's line; the others go on
                reports.append(Report(label=name, run_id=config.run_id(), error=one_line_error(err)))
        state = reports[-1].error or f"ok, {_hours(reports[-1].projection['total_s'])} projected"
        tqdm.write(f"{name}: {state}", file=sys.stderr)
    if device.type == "cuda":
        try:
            reports += prefetch_check(reports, configs, settings, sources, needs, device, say)
        except Exception as err:  # reported as its own row, never a traceback that loses the table
            reports.append(Report(label="prefetch check", error=one_line_error(err)))
    cuda = device.type == "cuda"
    print()
    print(table(reports, cuda))
    done = [r for r in reports if not r.error]
    projected_for = done[0].projected_for if done else "?"
    total = sum(r.projection["total_s"] for r in done)
    print(f"\n{len(done)} of {len(reports)} runs ok; preflight took {_hours(time.time() - started)}. "
          f"Projected for {projected_for} ({config_precisions(configs)}): {total / 3600:.2f} h for the "
          f"{len(done)} run(s), one device each" + (f", from {target[0].name}" if target else "") + ".")
    print("host MiB: peak resident memory of the process (cut run at its batch; estimate at the preset's batch "
          "from two probe batches, never below the cut run's peak)"
          + ("; GPU MiB: torch's peak allocated" if cuda else "") + "; hook fixed: the hooks' time beyond their "
          "data passes (design, memory update, ridge solve, re-initialisation), measured here"
          + ("; speed from: the bench's row of the method, or the bench's frozen bound divided by the method's "
             "ratio to that bound measured here (hook fixed costs stay as measured here: an upper bound for a GPU)"
             if target else ""))
    for r in done:
        for note in r.notes:
            print(f"note: {r.label}: {note}")
    suggestion = slurm_suggestion(reports)
    if suggestion:
        print(f"--launcher slurm: --time-min {suggestion['time_min']} (or --time-min auto: {TIME_MARGIN} x the longest "
              f"projected run + {SLACK_MIN} min) --mem-gb {suggestion['mem_gb']} ({MEM_MARGIN} x the largest host "
              "estimate)")
    path = write_report(results_dir, reports, settings, device)
    print(f"wrote {path}", file=sys.stderr)
    return 1 if any(r.error for r in reports) else 0


def auto_time_min(results_dir: str | Path, run_ids: list[str]) -> tuple[int, str]:
    """``--time-min auto``: minutes for a job array of ``run_ids``, from the newest preflight report
    holding each run (TIME_MARGIN x the longest projected run + SLACK_MIN), and where they came from.
    ``ConfigError`` naming the fix when a run has no projection."""
    reports = sorted((Path(results_dir) / REPORTS).glob("preflight_*.json"), reverse=True)
    projected: dict[str, tuple[float, str, str]] = {}
    for path in reports:
        try:
            rows = json.loads(path.read_text())["runs"]
        except (OSError, ValueError, KeyError, TypeError):
            print(f"warning: unreadable preflight report {path} (skipped)", file=sys.stderr)
            continue
        for row in rows:
            if row.get("run_id") in run_ids and not row.get("error") and row["run_id"] not in projected:
                projected[row["run_id"]] = (row["projection"]["total_s"], row["projected_for"], path.name)
    missing = [run_id for run_id in run_ids if run_id not in projected]
    if missing:
        raise ConfigError(f"--time-min auto: no preflight projection of {len(missing)} of the {len(run_ids)} runs "
                          f"(e.g. {missing[0]}) under {Path(results_dir) / REPORTS}; run `python run_benchmark.py "
                          "preflight` with the same options (and --project-for DEVICE for the cluster's GPUs) first")
    longest_s, device, source = max(projected.values())
    minutes = math.ceil(TIME_MARGIN * longest_s / 60 + SLACK_MIN)
    return minutes, (f"{TIME_MARGIN} x the longest projected run, {longest_s / 60:.1f} min on {device}, "
                     f"+ {SLACK_MIN} min; {source}")
