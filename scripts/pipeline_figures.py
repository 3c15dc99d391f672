"""One real training epoch through each image pipeline against the same step on in-memory batches.

    python scripts/pipeline_figures.py --images 30000 --workers 16 --out pipeline.json   # ViT-B/16, bf16, CUDA
    python scripts/pipeline_figures.py --images 400 --backbone tiny --precision fp32 --device cpu --workers 2 \\
        --steps 3                                                                        # CPU smoke test

Writes ``--images`` JPEGs of about 400 x 300 in ImageNet-R's layout under a temporary folder:
``--distinct`` of them are encoded, the others are hard links to those under their own names
(the files are read and decoded one by one as usual; the page cache holds each distinct file
once). The ``imagenet-r`` data set's seeded 80/20 split of 30,000 files gives the real 24,000
training images, loaded as one task of all 200 classes. The method (default seq-lora, its paper
settings for imagenet-r, random-init backbone) then trains with the protocol's ``train_task``:

* on in-memory batches: ``--steps`` steps on one batch already on the device (after 2 warm-up
  steps), the throughput the pipeline should keep up with;
* for each path and worker count, ``--epochs`` whole epochs through the training ``Loader``:
  ``pil`` (decode and augment in the workers), ``cache`` (``data.decoded_cache``; its build is
  timed), ``device`` (``data.device_decode``). Epoch 1 includes starting the workers. The ratio
  is an epoch's images/s over the in-memory images/s (the goal: 0.9 or more).

It also measures device decoding's pixel difference to the PIL path on the first 256 training
images, in 8-bit levels. With ``--bench FILE`` (a ``bench`` JSON of the same device and
precision) it estimates the GPU-hours of the whole leaderboard: each benched method on the four
data sets at their paper settings, 3 seeds, training at the bench's train images/s times the best
measured ratio (at most 1), plus per task a forward pass over the training images for methods
that do not train every task (their statistics), InfLoRA's design fraction, and evaluation after
every task, at the bench's eval images/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.backbones import backbone_input_size, build_backbone  # noqa: E402
from benchmark.config import resolve  # noqa: E402
from benchmark.protocol import train_task  # noqa: E402
from benchmark.registry import DATASETS, METHODS  # noqa: E402
from datasets.base import Loader, TaskSplit, take  # noqa: E402
from datasets.imagenet_r import NUM_CLASSES, ImageNetR  # noqa: E402
from datasets.images import ImageOptions  # noqa: E402
from datasets.pixels import NORMALIZATIONS  # noqa: E402
from loader_figures import write_images  # noqa: E402

PATHS: dict[str, dict[str, bool]] = {"pil": {}, "cache": {"decoded_cache": True}, "device": {"device_decode": True}}
# (training, test) images at the protocol's splits: official CIFAR-100, CODA's ImageNet-R split,
# 80/20 of ImageNet-A's 7,500 (the pre-split copy's counts are unverified), and DomainNet's
# official lists of all six domains (the loader's default), about 409,800 / 176,700
LEADERBOARD_IMAGES = {"cifar100": (50_000, 10_000), "imagenet-r": (24_000, 6_000), "imagenet-a": (6_000, 1_500),
                      "domainnet": (409_832, 176_743)}
SEEDS = 3


class DeviceBatches:
    """``steps`` times one batch already on the device, with the ``Loader`` interface ``train_task`` uses."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int):
        self.x, self.y, self.steps, self.epoch = x, y, steps, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter([(self.x, self.y)] * self.steps)


def seconds(work: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of ``work``, the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def in_memory_img_s(method, size: int, batch_size: int, steps: int, device: torch.device, precision: str) -> float:
    """Training images/s of ``train_task`` on one batch already on the device."""
    x = torch.rand(batch_size, 3, size, size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)
    train_task(method, DeviceBatches(x, y, 2), 0, device, precision)  # warm-up
    return batch_size * steps / seconds(lambda: train_task(method, DeviceBatches(x, y, steps), 0, device, precision),
                                        device)


def epoch_rows(method, options: ImageOptions, root: Path, workers: list[int], epochs: int, device: torch.device,
               precision: str, reference: float) -> list[dict[str, Any]]:
    """One row per path and worker count: images/s of each epoch and its ratio to ``reference``."""
    rows = []
    for path, switches in PATHS.items():
        start = time.perf_counter()
        data = ImageNetR.load(dataclasses.replace(options, **switches), str(root))
        load_s = round(time.perf_counter() - start, 2)
        train = TaskSplit(data, 1, seed=0, dataset_name="imagenet-r").train_set(0)
        for count in workers:
            loader = Loader(train, method.cfg.batch_size, shuffle=True, seed=0, num_workers=count,
                            pin_memory=device.type == "cuda", drop_last=method.cfg.drop_last, device=device)
            images = len(loader) * loader.batch_size if loader.drop_last else len(train)
            rates = [images / seconds(lambda: train_task(method, loader, 0, device, precision), device)
                     for _ in range(epochs)]
            loader.close()
            rows.append({"path": path, "workers": count, "images": images, "load_s": load_s,
                         "epoch_img_s": [round(rate, 1) for rate in rates],
                         "ratio": [round(rate / reference, 3) for rate in rates]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def pixel_levels(options: ImageOptions, root: Path, device: torch.device, count: int = 256) -> dict[str, float]:
    """Mean and max difference, in 8-bit levels, of device decoding's training batches to the PIL
    path's on the first ``count`` training images (same seed: same boxes and flips)."""
    pil, on_device = (ImageNetR.load(dataclasses.replace(options, **PATHS[path]), str(root)).train
                      for path in ("pil", "device"))
    first = np.arange(min(count, len(pil)))
    stats = NORMALIZATIONS[options.normalize]
    std = torch.tensor(stats[1] if stats else (1.0, 1.0, 1.0)).view(1, 3, 1, 1)
    diffs = [((x.cpu() - x_pil) * std * 255).abs() for (x_pil, _), (x, _) in
             zip(Loader(take(pil, first), 64, shuffle=True, seed=1),
                 Loader(take(on_device, first), 64, shuffle=True, seed=1, device=device))]
    levels = torch.cat(diffs)
    return {"images": len(first), "mean": round(levels.mean().item(), 4), "max": round(levels.max().item(), 3)}


def leaderboard_hours(bench_rows: list[dict[str, Any]], ratio: float) -> list[dict[str, Any]]:
    """Estimated GPU-hours per benched method and data set at the paper settings (module docstring)."""
    rows = []
    for bench in bench_rows:
        name = bench["method"]
        for dataset, (n_train, n_test) in LEADERBOARD_IMAGES.items():
            hp = resolve(name, dataset).hparams
            n_tasks = 1 if METHODS.get(name).single_task else DATASETS.get(dataset).default_n_tasks
            trains_every_task = bench["train_task"] not in (None, 0)
            trained = n_train if trains_every_task else (n_train / n_tasks if bench["train_task"] == 0 else 0)
            train_s = 0.0
            if trained:
                train_s = hp["epochs"] * trained / (bench["train_img_s"] * min(ratio, 1.0))
                train_s *= 1 + bench.get("design_fraction", 0.0)
            passes_s = 0.0 if trains_every_task else n_train / bench["eval_img_s"]
            eval_s = n_test * (n_tasks + 1) / 2 / bench["eval_img_s"]
            rows.append({"method": name, "dataset": dataset, "epochs": hp["epochs"],
                         "gpu_hours": round(SEEDS * (train_s + passes_s + eval_s) / 3600, 2)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30_000, help="JPEGs to write (default 30000: 24,000 train)")
    parser.add_argument("--distinct", type=int, default=400, help="of them encoded; the rest hard links (default 400)")
    parser.add_argument("--method", default="seq-lora")
    parser.add_argument("--backbone", default="vit-b16", help="tiny, vit-b16 or a timm name (random init)")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, nargs="+", default=[16], help="worker counts (default: 16)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed per path and worker count (default 2)")
    parser.add_argument("--steps", type=int, default=30, help="in-memory steps timed (default 30)")
    parser.add_argument("--bench", metavar="FILE", help="a bench JSON: also estimate the leaderboard's GPU-hours")
    parser.add_argument("--out", metavar="FILE", help="also write the results as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    config = resolve(args.method, "imagenet-r", n_tasks=1, overrides={"epochs": 1}, backbone=args.backbone,
                     pretrained=False, device=str(device), precision=args.precision)
    size = backbone_input_size(config.backbone)
    torch.manual_seed(0)
    method = METHODS.get(args.method)(build_backbone(config.backbone, pretrained=False), [NUM_CLASSES],
                                      config.method_config()).to(device)
    method.enter_task(0)
    reference = in_memory_img_s(method, size, method.cfg.batch_size, args.steps, device, args.precision)
    print(f"{args.method}, {config.backbone}, {args.precision}, {device}, batch {method.cfg.batch_size}: "
          f"{reference:.1f} img/s on in-memory batches", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_images(root, args.images, distinct=args.distinct)
        print(f"wrote {args.images} JPEGs ({args.distinct} distinct) in {time.perf_counter() - start:.1f} s",
              flush=True)
        options = dataclasses.replace(config.dataset_options(), image_size=size, cache_dir=str(root / "decoded-cache"))
        rows = epoch_rows(method, options, root, args.workers, args.epochs, device, args.precision, reference)
        levels = pixel_levels(options, root, device)
    print(f"device decode against PIL: mean {levels['mean']} levels, max {levels['max']} ({levels['images']} images)")
    print(tabulate([[r["path"], r["workers"], r["load_s"], *r["epoch_img_s"], *r["ratio"]] for r in rows],
                   headers=["path", "workers", "load s", *(f"epoch {e + 1} img/s" for e in range(args.epochs)),
                            *(f"ratio {e + 1}" for e in range(args.epochs))], tablefmt="github"))
    result = {"method": args.method, "backbone": config.backbone, "precision": args.precision, "device": str(device),
              "batch_size": method.cfg.batch_size, "images_written": args.images, "distinct": args.distinct,
              "in_memory_img_s": round(reference, 1), "rows": rows, "pixel_levels": levels}
    if args.bench:
        best = max(r["ratio"][-1] for r in rows)
        hours = leaderboard_hours(json.loads(Path(args.bench).read_text())["rows"], best)
        print(f"\nleaderboard estimate (ratio {best}, {SEEDS} seeds): "
              f"{sum(r['gpu_hours'] for r in hours):.1f} GPU-hours")
        print(tabulate([[r["method"], r["dataset"], r["epochs"], r["gpu_hours"]] for r in hours],
                       headers=["method", "dataset", "epochs", "GPU-hours"], tablefmt="github"))
        result["leaderboard"] = {"ratio": best, "seeds": SEEDS, "rows": hours}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
