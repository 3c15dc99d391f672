"""Pretrain the tiny ViT backbone of the ``synth`` benchmark on its disjoint pretext classes.

Run once; the result is shipped in ``benchmark/weights/`` so every run and CI use identical
weights:

    python scripts/pretrain_synth_backbone.py            # ~20 min on 2 CPU cores

Supervised classification of ``--classes`` pretext classes (a seed namespace disjoint from the
100 benchmark classes). Every epoch draws a fresh sample pool from the generator (no image is
seen twice), AdamW with warm-up and cosine decay, fixed seed. The pretext test accuracy and the
exact command are written next to the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.backbones import (SYNTH_VIT_FILE, SYNTH_VIT_KWARGS, SYNTH_VIT_META, build_tiny_vit,  # noqa: E402
                                 weights_digest)
from datasets.synthetic import PRETEXT, TEST, TRAIN, generate  # noqa: E402


def to_float(images) -> torch.Tensor:
    return torch.from_numpy(images).float().div_(255)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    hits = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
               for i in range(0, len(x), batch))
    return 100.0 * hits / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=200, help="number of pretext classes")
    parser.add_argument("--per-class", type=int, default=200, help="fresh training images per class per epoch")
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=SYNTH_VIT_FILE)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = build_tiny_vit(num_classes=args.classes)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    x_test, y_test = generate(args.classes, args.test_per_class, TEST, PRETEXT)
    x_test, y_test = to_float(x_test), torch.from_numpy(y_test)
    steps_per_epoch = math.ceil(args.classes * args.per_class / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    start = time.time()
    for epoch in range(args.epochs):
        x, y = generate(args.classes, args.per_class, TRAIN, PRETEXT, stream=epoch)
        x, y = to_float(x), torch.from_numpy(y)
        model.train()
        for i in range(0, len(x), args.batch_size):
            loss = F.cross_entropy(model(x[i:i + args.batch_size]), y[i:i + args.batch_size], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, x_test, y_test)
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} pretext test acc {acc:.1f}% "
              f"({time.time() - start:.0f} s)", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, args.out)
    backbone = build_tiny_vit()
    backbone.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.")})
    meta = {
        "architecture": SYNTH_VIT_KWARGS,
        "weights_digest": weights_digest(backbone),
        "pretext_classes": args.classes,
        "pretext_test_accuracy": round(acc, 2),
        "pretext_test_images": len(y_test),
        "train_images_seen": args.epochs * args.classes * args.per_class,
        "epochs": args.epochs,
        "seed": args.seed,
        "seconds": round(time.time() - start),
        "torch": torch.__version__,
        "command": "python scripts/pretrain_synth_backbone.py " + " ".join(sys.argv[1:]),
    }
    (SYNTH_VIT_META if args.out == SYNTH_VIT_FILE else args.out.with_suffix(".json")).write_text(
        json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
