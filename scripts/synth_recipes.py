"""Choose each method's ``synth`` recipe on validation data, never on test data.

    python scripts/synth_recipes.py                        # every grid below, seed 0
    python scripts/synth_recipes.py --methods inflora l2p --seeds 0 1

Every grid point is a normal harness run with ``data.val_fraction`` = 0.2: 20 % of each class's
training images are held out (10 of 50; the same images for every seed), the method trains on the
rest, and its accuracy matrix is measured on the held-out images instead of the test set. The point
with the highest mean validation A_T over the seeds wins; a winner on an edge of its grid means
the grid is extended past that edge and searched again. Runs are stored in ``--results-dir``
like any other (a rerun computes only what is missing); the table and the choices are written to
``--out`` (default ``results/measured/synth_recipes.json``), which the methods' ``synth`` presets
cite. The data size (50 training, 20 test images per class) and the epochs are fixed by the demo's
time budget (3 per task; 2 for the prompt methods, which run two forward passes per step; 3 for
SD-LoRA; RanPAC's phase 1: 5 on the first task only), so only learning rates are searched.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark import store  # noqa: E402
from datasets.synthetic import SynthOptions  # noqa: E402
from synth_figures import method_result  # noqa: E402  (scripts/ is on the path when run as a script)

VAL_FRACTION = 0.2  # of 50 training images per class: 10 held out, 1,000 validation images in all
LORA_GRID = {"lr": [1e-3, 3e-3, 1e-2], "head_lr": [1e-2, 3e-2, 1e-1]}
PROMPT_GRID = {"lr": [1e-2, 3e-2, 1e-1], "head_lr": [1e-2, 3e-2, 1e-1, 3e-1]}
# the searched settings per method; a best point on an edge of its grid was extended past it
# (heads 1e-2 for the prompt methods, 3e-3 for joint, L2P's lr 0.3)
GRIDS: dict[str, dict[str, list]] = {
    "frozen": {"lr": [1e-2, 3e-2, 1e-1]},
    "seq-lora": LORA_GRID,
    "inflora": LORA_GRID,
    "joint": {"lr": [3e-3, 1e-2, 3e-2], "head_lr": [3e-3, 1e-2, 3e-2]},
    "l2p": {"lr": [1e-2, 3e-2, 1e-1, 3e-1], "head_lr": PROMPT_GRID["head_lr"]},
    "dualprompt": PROMPT_GRID,
    "coda": PROMPT_GRID,
    # SGD with momentum 0.9 (the official recipe's optimiser), one lr for LoRA, magnitudes and heads
    "sd-lora": {"lr": [1e-1, 2e-1, 3e-1, 5e-1]},
    # phase 1 only (task 0, 5 epochs); tasks after it are training-free
    "ranpac": {"lr": [1.0, 2.0, 5.0]},
}


def points(grid: dict[str, list]) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def validation_result(method: str, seed: int, point: dict, results_dir: str) -> dict:
    return method_result(method, seed, results_dir, {**point, "data.val_fraction": VAL_FRACTION})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--out", type=Path, default=Path("results/measured/synth_recipes.json"))
    args = parser.parse_args()

    train_per_class = SynthOptions().train_per_class
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    same_data = previous.get("train_per_class") == train_per_class  # else its choices are stale
    report = previous.get("methods", {}) if same_data else {}
    rows = []
    for method in args.methods:
        tried = []
        for point in points(GRIDS[method]):
            results = [validation_result(method, seed, point, args.results_dir) for seed in args.seeds]
            score = float(np.mean([r["final_acc"] for r in results]))
            tried.append({"setting": point, "val_final_acc": round(score, 2),
                          "val_avg_acc": round(float(np.mean([r["avg_acc"] for r in results])), 2)})
            rows.append([method, json.dumps(point), f"{score:.1f}", tried[-1]["val_avg_acc"]])
            print(f"{method} {point}: validation A_T {score:.1f}", file=sys.stderr)
        best = max(tried, key=lambda t: t["val_final_acc"])
        report[method] = {"grid": GRIDS[method], "tried": tried, "chosen": best["setting"],
                          "epochs": results[0]["config"]["hparams"]["epochs"]}
    print(tabulate(rows, headers=["method", "setting", "validation A_T", "validation A_bar"], tablefmt="github",
                   disable_numparse=True))
    print()
    print(tabulate([[m, json.dumps(r["chosen"]), r["epochs"]] for m, r in report.items()],
                   headers=["method", "chosen", "epochs"], tablefmt="github", disable_numparse=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    store.write_json_atomic(args.out, {"train_per_class": train_per_class, "val_fraction": VAL_FRACTION,
                                       "seeds": args.seeds, "methods": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
