"""Data-loading throughput of the training loader on generated JPEGs: images/s to the device.

    python scripts/loader_figures.py --images 2000 --workers 8 16 --device cuda --out loader.json

Writes ``--images`` JPEGs of ImageNet-R-like sizes (about 400 x 300, smooth random content) in
the real ``imagenet-r/<wnid>/*.jpg`` layout under a temporary folder, loads them with the
``imagenet-r`` data set class (its seeded 80/20 split; the training side is timed) and times two
epochs of the training ``Loader`` (RandomResizedCrop + flip at 224 px) for each worker count,
each batch on the device and synchronised: the PIL path (decode every epoch, augment in the
workers, then copy) and the decoded-cache path (``data.decoded_cache``: crop boxes in the
workers, resize on the device), after timing the cache's build. Epoch 1 includes starting the
workers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.base import Loader  # noqa: E402
from datasets.imagenet_r import FOLDER, NUM_CLASSES, ImageNetR, ImageNetROptions  # noqa: E402


def write_images(root: Path, n: int, seed: int = 0, distinct: int | None = None) -> None:
    """``n`` JPEGs (quality 90) spread over the 200 class folders of ``root/imagenet-r``; each is
    a random 8 x 6 colour grid upsampled to about 400 x 300 plus noise (decodes like a photo).
    ``distinct``: encode only that many and hard-link the others to them (fast for tens of thousands)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / FOLDER / f"n{i % NUM_CLASSES:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        if distinct is not None and i >= distinct:
            os.link(root / FOLDER / f"n{i % distinct % NUM_CLASSES:08d}" / f"{i % distinct:06d}.jpg",
                    folder / f"{i:06d}.jpg")
            continue
        width, height = int(rng.integers(340, 460)), int(rng.integers(260, 340))
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                           Image.BILINEAR)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


def time_epochs(loader: Loader, device: torch.device, epochs: int = 2) -> list[float]:
    """Images/s of each epoch, every batch moved to ``device`` (synchronised at the end)."""
    rates = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        start, seen = time.perf_counter(), 0
        for x, _ in loader:
            x = x.to(device, non_blocking=True)
            seen += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(round(seen / (time.perf_counter() - start), 1))
    return rates


def measure(root: Path, workers: list[int], batch_size: int, device: torch.device) -> list[dict[str, Any]]:
    """One row per path and worker count: images/s in epochs 1 and 2 (and the cache's build time)."""
    rows = []
    for path in ("pil", "cache"):
        start = time.perf_counter()
        data = ImageNetR.load(ImageNetROptions(image_size=224, decoded_cache=path == "cache",
                                               cache_dir=str(root / "decoded-cache")), str(root))
        extra = {"build_s": round(time.perf_counter() - start, 2)} if path == "cache" else {}
        for count in workers:
            loader = Loader(data.train, batch_size, shuffle=True, seed=0, num_workers=count,
                            pin_memory=device.type == "cuda", device=device)
            rates = time_epochs(loader, device)
            rows.append({"path": path, "workers": count, "images": len(data.train), "epoch1_img_s": rates[0],
                         "epoch2_img_s": rates[1], **extra})
            print(json.dumps(rows[-1]), flush=True)
            loader.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs to generate (default: 2000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 16], help="worker counts (default: 8 16)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", metavar="FILE", help="also write the rows as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_images(Path(tmp), args.images)
        print(f"wrote {args.images} JPEGs in {time.perf_counter() - start:.1f} s", flush=True)
        rows = measure(Path(tmp), args.workers, args.batch_size, device)
    if args.out:
        Path(args.out).write_text(json.dumps({"device": str(device), "batch_size": args.batch_size,
                                              "torch_threads": torch.get_num_threads(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
