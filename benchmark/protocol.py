"""The class-incremental protocol: the one training loop every method runs through.

For each task t: ``begin_task`` -> a fresh optimiser and per-epoch schedule over the parameters
the method declares (everything else frozen) -> epochs of ``training_loss`` steps -> ``end_task``
-> evaluation on the test data of every task seen so far, argmax over all seen classes with no
task id. The result holds the accuracy matrix, its task-aware twin (argmax restricted to the true
task's classes) and every metric of ``benchmark.metrics``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import random
import sys
import time
from typing import Any, Callable

import numpy as np
import timm
import torch
from tqdm.auto import tqdm

from benchmark.backbones import backbone_input_size, build_backbone
from benchmark.checkpoint import Checkpointer, restore_rng, rng_state
from benchmark.config import RunConfig
from benchmark.errors import ConfigError
from benchmark.metrics import summarize
from benchmark.schedules import epoch_lr_factor
from benchmark.registry import DATASETS, METHODS
from datasets.base import ClassIncrementalData, CutSplit, Loader, TaskSplit, hold_out_validation
from methods.base import Method

EVAL_BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True)
class RunCaps:
    """A preflight's cuts of a run (``benchmark/preflight.py``): every training epoch stops after
    ``train_batches`` batches, each task keeps ``train_batches`` x batch size of its training images
    (at least one per class) and ``test_images`` of its test images. Every hook, evaluation and
    checkpoint still runs, at the run's real shapes."""

    train_batches: int
    test_images: int


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run is aborted and no result is written."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def auto_device(name: str) -> str:
    """``name``, or for ``auto`` cuda if this machine has it, else cpu."""
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; ``ConfigError`` if it is not available here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use cpu or cuda[:N]")
    return device


def build_optimizer(groups: list[dict], hp) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    optimizer_cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
    return optimizer_cls(groups, lr=hp.lr, betas=(0.9, 0.999), weight_decay=hp.weight_decay)


def declare_trainable(method: Method, task: int) -> list[dict]:
    """Freeze everything, then unfreeze exactly the parameters the method declares for ``task``."""
    groups = method.trainable_parameters(task)
    method.requires_grad_(False)
    seen: set[int] = set()
    for group in groups:
        for param in group["params"]:
            if id(param) in seen:
                raise ValueError(f"{method.name} declares a parameter twice for task {task}")
            seen.add(id(param))
            param.requires_grad_(True)
    return groups


def autocast(device: torch.device, precision: str):
    """bf16 autocast on ``device`` for ``precision='bf16'``, else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_hook(hook: Callable[[int, Any], None], task: int, loader: Any, device: torch.device, precision: str) -> None:
    """``begin_task`` / ``end_task`` as the protocol runs them: without grad, under the run's
    autocast (so InfLoRA's statistics passes run at the training precision; its covariance is
    accumulated in fp32/fp64 regardless)."""
    with torch.no_grad(), autocast(device, precision):
        hook(task, loader)


StepHook = Callable[[int, int, torch.optim.Optimizer], None]


def compiled(fn: Callable, enabled: bool) -> Callable:
    """``torch.compile(fn)`` for the ``--compile`` fast path, else ``fn`` itself. Dynamo's caches
    are reset first, so each task (and each evaluation) compiles afresh: a method's state changes
    between tasks (new heads, merged LoRA weights) and the recompile limit is never reached.
    ``begin_task`` / ``end_task`` (InfLoRA's statistics hooks) always run eagerly."""
    if not enabled:
        return fn
    torch.compiler.reset()
    return torch.compile(fn)


def train_task(method: Method, loader: Loader, task: int, device: torch.device, precision: str = "fp32",
               progress: bool = False, resume: dict[str, Any] | None = None,
               after_step: StepHook | None = None, compile: bool = False) -> dict[str, Any]:
    """Train ``method`` on one task with a fresh optimiser and schedule; returns step counts.

    ``resume`` (``epoch``, ``step``: batches done in that epoch, ``optimizer``: its state) continues
    an interrupted task; ``after_step(epoch, steps_done_in_epoch, optimizer)`` runs after every
    optimiser step (the run's checkpointing); ``compile``: ``torch.compile`` the loss (``compiled``).
    """
    hp = method.cfg
    groups = declare_trainable(method, task)
    params = [p for g in groups for p in g["params"]]
    if not params:  # a training-free task (SimpleCIL; RanPAC after its first): no optimiser, no step
        method.eval()
        return {"steps": 0, "trainable_params": 0}
    optimizer = build_optimizer(groups, hp)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    start_epoch, start_step = (resume["epoch"], resume["step"]) if resume else (0, 0)
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
    method.train()
    training_loss = compiled(method.training_loss, compile)
    steps, last_loss = 0, None
    bar = tqdm(range(start_epoch, hp.epochs), desc=f"{method.name} task {task + 1}", leave=False,
               disable=not progress)
    for epoch in bar:
        factor = epoch_lr_factor(epoch, hp.epochs, hp.schedule, hp.milestones, hp.gamma)
        for group, base_lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base_lr * factor
        skipped = start_step if epoch == start_epoch else 0
        loader.set_epoch(epoch, skip_batches=skipped)
        for step, (x, y) in enumerate(loader, start=skipped):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, precision):
                loss = training_loss(x, y, task)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"{method.name}: loss is {loss.item()} at task {task + 1}, epoch "
                                         f"{epoch + 1}, step {step + 1}; lower the learning rate (--lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if hp.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, hp.grad_clip)
            optimizer.step()
            steps += 1
            if after_step is not None:  # the position to resume from: an epoch's end is the next's start
                after_step(*((epoch + 1, 0) if step + 1 == len(loader) else (epoch, step + 1)), optimizer)
            last_loss = loss
        if last_loss is not None:  # an epoch resumed at its end has no step
            bar.set_postfix(loss=f"{last_loss.item():.3f}")
    loader.set_epoch(loader.epoch)  # later passes (end_task) see whole epochs
    method.eval()
    return {"steps": steps, "trainable_params": sum(p.numel() for p in params)}


@torch.no_grad()
def evaluate(method: Method, split: TaskSplit, up_to_task: int, device: torch.device,
             precision: str = "fp32", compile: bool = False, prefetch: bool = False
             ) -> tuple[list[float], list[float], list[int]]:
    """Class-incremental and task-aware accuracy (percent) on each seen task's test data."""
    method.eval()
    predict = compiled(method.predict, compile)
    accs, aware, counts = [], [], []
    for task in range(up_to_task + 1):
        classes = method.task_classes(task)
        hits = aware_hits = total = 0
        for x, y in Loader(split.test_set(task), EVAL_BATCH_SIZE, shuffle=False, device=device, prefetch=prefetch):
            x, y = x.to(device), y.to(device)
            with autocast(device, precision):
                logits = predict(x).float()
            if logits.shape[1] != method.n_seen_classes:
                raise RuntimeError(f"{method.name}.predict returned {logits.shape[1]} logits, "
                                   f"expected {method.n_seen_classes} (the classes seen so far)")
            hits += (logits.argmax(1) == y).sum().item()
            aware_hits += (logits[:, classes.start:classes.stop].argmax(1) + classes.start == y).sum().item()
            total += len(y)
        accs.append(100.0 * hits / total)
        aware.append(100.0 * aware_hits / total)
        counts.append(total)
    return accs, aware, counts


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
    }


def load_data(config: RunConfig) -> ClassIncrementalData:
    """The run's data set, with its validation images held out when ``data.val_fraction`` is set."""
    options = config.dataset_options()
    if getattr(options, "image_size", 0) is None:  # image data sets: the backbone's input size
        options = dataclasses.replace(options, image_size=backbone_input_size(config.backbone))
    data = DATASETS.get(config.dataset).load(options, config.data_root)
    return hold_out_validation(data, options.val_fraction) if options.val_fraction > 0 else data


def build_run(config: RunConfig, device: torch.device, caps: RunCaps | None = None) -> tuple[TaskSplit, Method]:
    """The task split (with ``caps``: cut to a few images per task) and the freshly built method of
    a run (seeded by ``config.seed``)."""
    data = load_data(config)
    method_cls = METHODS.get(config.method)
    n_tasks = 1 if method_cls.single_task else config.n_tasks
    if caps is None:
        split = TaskSplit(data, n_tasks, config.seed, config.shuffle_classes, config.dataset)
    else:
        split = CutSplit(data, n_tasks, config.seed, config.shuffle_classes, config.dataset,
                         train_images=caps.train_batches * config.method_config().batch_size,
                         test_images=caps.test_images)
    seed_everything(config.seed)
    backbone = build_backbone(config.backbone, config.backbone_weights, config.pretrained)
    method = method_cls(backbone, split.task_sizes, config.method_config()).to(device)
    return split, method


def run(config: RunConfig, progress: bool = True, checkpointer: Checkpointer | None = None,
        caps: RunCaps | None = None) -> dict[str, Any]:
    """Run one configuration end to end and return its result record (not yet stored).

    With a ``checkpointer``, a checkpoint is saved after every task and whenever it is due inside
    a task, and a run whose checkpoint exists resumes from it (see ``benchmark/checkpoint.py``).
    ``caps``: a preflight's cut run (``RunCaps``); its record also holds the uncut task sizes.
    """
    device = resolve_device(config.device)
    start = time.time()
    run_id = config.run_id()
    split, method = build_run(config, device, caps)
    record: dict[str, Any] = {"acc": [], "aware": [], "timings": [], "trainable": [], "counts": [], "elapsed": 0.0}
    saved = checkpointer.load(run_id) if checkpointer else None
    first_task, resume = 0, None
    if saved:
        record = saved["record"]
        method.load_checkpoint_state(saved["method"])
        restore_rng(saved["rng"])
        first_task = saved["task"] + 1 if saved["resume"] is None else saved["task"]
        resume = saved["resume"]
        where = f"task {first_task + 1}"
        if resume:
            where += f", epoch {resume['epoch'] + 1}, batch {resume['step'] + 1}"
        print(f"{run_id}: resuming from its checkpoint at {where}", file=sys.stderr)
    acc, aware, timings, trainable = record["acc"], record["aware"], record["timings"], record["trainable"]
    counts: list[int] = record["counts"]
    elapsed_before = record["elapsed"]  # seconds spent before the latest checkpoint

    def save(task: int, position: dict[str, Any] | None) -> None:
        record["elapsed"] = elapsed_before + time.time() - start
        checkpointer.save({"run_id": run_id, "task": task, "resume": position, "record": record,
                           "method": method.checkpoint_state(), "rng": rng_state()})

    tasks = tqdm(range(first_task, split.n_tasks), desc=f"{config.method} on {config.dataset}",
                 disable=not progress, initial=first_task, total=split.n_tasks)
    for task in tasks:
        task_start = time.time()
        loader = Loader(split.train_set(task), method.cfg.batch_size, shuffle=True,
                        seed=config.seed * 1000 + task, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda", drop_last=method.cfg.drop_last, device=device,
                        prefetch=config.prefetch, max_batches=caps.train_batches if caps else None)
        hook_loader = loader if method.hook_transform == "train" else Loader(
            split.train_set(task, plain=True), method.cfg.batch_size, shuffle=False, num_workers=config.num_workers,
            pin_memory=device.type == "cuda", device=device, prefetch=config.prefetch)
        method.enter_task(task)
        method.eval()
        hook_images = hook_loader.images_read
        if resume is None:  # a resumed task has begun already: its state is in the checkpoint
            run_hook(method.begin_task, task, hook_loader, device, config.precision)
        hook_images = hook_loader.images_read - hook_images

        def checkpoint_if_due(epoch: int, done: int, optimizer: torch.optim.Optimizer, task: int = task) -> None:
            if checkpointer and checkpointer.due():
                save(task, {"epoch": epoch, "step": done, "optimizer": optimizer.state_dict()})

        stamps = [time.time()]
        stats = train_task(method, loader, task, device, config.precision, progress, resume, checkpoint_if_due,
                           config.compile)
        resume = None
        stamps.append(time.time())
        read_before_end = hook_loader.images_read
        run_hook(method.end_task, task, hook_loader, device, config.precision)
        hook_images += hook_loader.images_read - read_before_end
        loader.close()
        hook_loader.close()
        stamps.append(time.time())
        row, aware_row, counts = evaluate(method, split, task, device, config.precision, config.compile,
                                          config.prefetch)
        stamps.append(time.time())
        acc.append(row)
        aware.append(aware_row)
        trainable.append(stats["trainable_params"])
        # begin/end: the hooks' own work (e.g. InfLoRA's statistics passes, design and memory update)
        timings.append({**{name: round(b - a, 3) for name, a, b in zip(
            ("begin_s", "train_s", "end_s", "eval_s"), [task_start] + stamps[:-1], stamps)},
            "hook_images": hook_images})
        record["counts"] = counts
        if checkpointer:
            save(task, None)
        tasks.set_postfix(acc=f"{row[-1]:.1f}")
    return {
        "run_id": config.run_id(),
        "method": config.method,
        "dataset": config.dataset,
        "n_tasks": config.n_tasks,
        "seed": config.seed,
        "upper_bound": METHODS.get(config.method).upper_bound,
        "class_order": split.order,
        "config": config.to_dict(),
        "acc_matrix": acc,
        "task_aware_matrix": aware,
        "test_counts": counts,
        **summarize(acc, counts, aware),
        "trainable_params": trainable,
        "timings": {"total_s": round(elapsed_before + time.time() - start, 3), "tasks": timings},
        "environment": {**environment(device), "backbone_digest": method.backbone_digest},
        "data_info": {**split.data.info, "task_images": split.task_image_counts(),
                      **({"uncut_task_images": split.task_image_counts(uncut=True)} if caps else {})},
    }
