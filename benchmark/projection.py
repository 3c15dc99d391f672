"""Projected cost of a full run from a preflight's measurements (``benchmark/preflight.py``).

A full run's wall time is modelled as the sum of

* training: every epoch of every task that trains, batch by batch (the last batch of an epoch may be
  smaller, or dropped with ``drop_last``), at the measured time of a training step of that size;
* hooks: the passes the method's hooks make over each task's training images (counted in the
  preflight) at the measured forward time per image, plus each task's fixed hook cost (what the
  hooks took beyond their data passes: InfLoRA's design and memory update, RanPAC's ridge solve,
  CODA-Prompt's re-initialisation);
* evaluation: after every task, every seen task's test images, in batches of 256, at the measured
  forward time;
* a checkpoint per task, and the run's set-up (data loading, backbone), as measured.

Step and forward times are linear in the batch size, ``fixed + per_image * b``, fitted through
two measured batch sizes (or one), or taken from a stored ``bench`` throughput for another device.
Memory is extrapolated the same way (``LinearCost`` in MiB).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVAL_BATCH = 256  # benchmark.protocol.EVAL_BATCH_SIZE (not imported: no torch needed here)
MEASURED_DIR = Path(__file__).resolve().parents[1] / "results" / "measured"


@dataclass(frozen=True)
class LinearCost:
    """A cost of one call at batch size b: ``fixed + per_image * b`` (seconds, or MiB)."""

    fixed: float
    per_image: float

    def at(self, batch: int) -> float:
        return self.fixed + self.per_image * batch

    @classmethod
    def fit(cls, points: list[tuple[int, float]]) -> LinearCost:
        """The line through the measured (batch, cost) points of the two largest batches, never
        falling (a lower cost at the larger batch is noise: the larger of the two, flat) and never
        below zero at batch 0 (then proportional through the larger batch's point); one point:
        proportional to the batch."""
        points = sorted(points)
        if len(points) == 1 or points[-1][0] == points[-2][0]:
            batch, cost = points[-1]
            return cls(0.0, cost / batch)
        (b1, c1), (b2, c2) = points[-2:]
        slope = (c2 - c1) / (b2 - b1)
        if slope <= 0:
            return cls(max(c1, c2), 0.0)
        if c2 - slope * b2 < 0:
            return cls(0.0, c2 / b2)
        return cls(c2 - slope * b2, slope)

    @classmethod
    def throughput(cls, images_per_s: float) -> LinearCost:
        """Seconds at a measured throughput (no fixed part)."""
        return cls(0.0, 1.0 / images_per_s)


def pass_batches(images: int, batch: int, drop_last: bool = False) -> list[int]:
    """The batch sizes of one pass over ``images`` (``drop_last`` as ``datasets.base.Loader``)."""
    full, rest = divmod(images, batch)
    if drop_last and images >= batch:
        return [batch] * full
    return [batch] * full + ([rest] if rest else [])


@dataclass(frozen=True)
class RunShape:
    """What a full run does, per task: images, whether it trains, its hooks' passes and fixed cost."""

    task_images: list[dict[str, int]]  # uncut {"train": n, "test": n} per task
    epochs: int
    batch_size: int
    drop_last: bool
    trains: list[bool]
    hook_passes: list[float]  # passes of the hooks over the task's training images
    hook_fixed_s: list[float]
    checkpoint_s: float
    setup_s: float


def project(shape: RunShape, train_step: LinearCost | None, forward: LinearCost) -> dict[str, float]:
    """Seconds of the full run by part (``train_s``, ``hooks_s``, ``eval_s``, ``checkpoint_s``,
    ``setup_s``) and in all (``total_s``). ``train_step`` None: the method never trains."""
    train = hooks = evaluation = 0.0
    for task, images in enumerate(shape.task_images):
        if shape.trains[task] and train_step is not None:
            epoch = sum(train_step.at(b) for b in pass_batches(images["train"], shape.batch_size, shape.drop_last))
            train += shape.epochs * epoch
        hook_pass = sum(forward.at(b) for b in pass_batches(images["train"], shape.batch_size))
        hooks += shape.hook_fixed_s[task] + shape.hook_passes[task] * hook_pass
        evaluation += sum(forward.at(b) for seen in shape.task_images[:task + 1]
                          for b in pass_batches(seen["test"], EVAL_BATCH))
    parts = {"train_s": train, "hooks_s": hooks, "eval_s": evaluation,
             "checkpoint_s": shape.checkpoint_s * len(shape.task_images), "setup_s": shape.setup_s}
    return {**{k: round(v, 1) for k, v in parts.items()}, "total_s": round(sum(parts.values()), 1)}


def published_task_images(n_tasks: int, sizes: tuple[int, int]) -> list[dict[str, int]]:
    """Per-task images of a real data set of ``sizes`` (train, test) split into equal tasks (the
    stand-in's own sizes say nothing about the real run)."""
    return [{"train": round(sizes[0] / n_tasks), "test": round(sizes[1] / n_tasks)} for _ in range(n_tasks)]


STAMP = re.compile(r"_(\d{8}T\d{6}Z)\.json$")


def bench_files(folders: list[Path]) -> list[Path]:
    """Stored ``bench`` results under ``folders``, newest first (by the time stamp in the name)."""
    files = [p for folder in folders if folder.is_dir() for p in folder.glob("bench_*.json") if STAMP.search(p.name)]
    return sorted(files, key=lambda p: STAMP.search(p.name).group(1), reverse=True)


def architecture(backbone: str) -> str:
    """A timm name without its pretrained tag (the weights do not change the cost)."""
    return backbone.split(".")[0]


def find_bench(device: str, backbone: str, folders: list[Path]) -> Path | None:
    """The newest stored bench result for a device whose name contains ``device`` (case-insensitive;
    e.g. ``h200``) and whose backbone has the architecture of ``backbone``; None if there is none."""
    for path in bench_files(folders):
        try:
            data = read_bench(path)
        except ValueError as err:
            print(f"warning: {err} (skipped)", file=sys.stderr)
            continue
        name = f"{data['environment'].get('device_name', '')} {data['environment'].get('device', '')}"
        if device.lower() in name.lower() and any(architecture(r.get("backbone", "")) == architecture(backbone)
                                                  for r in data["rows"]):
            return path
    return None


def read_bench(path: Path) -> dict[str, Any]:
    """A stored bench result (``benchmark/bench.py``); ``ValueError`` naming the file if it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read bench result {path} ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not data["rows"]:
        raise ValueError(f"{path} is not a bench result (no rows); write one with `run_benchmark.py bench`")
    data.setdefault("environment", {})
    return data


@dataclass(frozen=True)
class DeviceSpeed:
    """Training-step and forward costs of one method on a bench's device, and where they came from."""

    train_step: LinearCost | None
    forward: LinearCost
    source: str


def bench_speed(bench: dict[str, Any], path: Path, method: str, train_ratio: float | None,
                eval_ratio: float) -> DeviceSpeed:
    """The method's speed on the bench's device: its own row when the bench has one, else the bench's
    frozen bound divided by the method's ratio to the bound as the preflight measured it here
    (``train_ratio`` None: the method never trains)."""
    rows = {r["method"]: r for r in bench["rows"]}
    first = bench["rows"][0]
    own = rows.get(method)
    if own is not None and (own.get("train_img_s") or train_ratio is None):
        train = None if train_ratio is None else LinearCost.throughput(own["train_img_s"])
        return DeviceSpeed(train, LinearCost.throughput(own["eval_img_s"]), f"{path.name}: its own row")
    train = None if train_ratio is None else LinearCost.throughput(first["bound_train_img_s"] / train_ratio)
    return DeviceSpeed(train, LinearCost.throughput(first["bound_eval_img_s"] / eval_ratio),
                       f"{path.name}: bound / ratio here")
