"""The complete preflight matrix (docs/preflight.md): every registered method at
ViT-B/16, 224 px, bf16, on each data set's stand-in at its standard task count (and 5 / 20 tasks
on ImageNet-R), projected for the H200 of the stored bench result; prints one markdown table.

    python scripts/preflight_matrix.py --results-dir /tmp/matrix          # runs the six preflights (those not done yet)
    python scripts/preflight_matrix.py --results-dir /tmp/matrix --render  # the table from their reports

Each preflight's report is <results-dir>/<dataset>_T<tasks>/preflight/preflight_*.json and its wall
time <results-dir>/walls.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [("imagenet-r", 10), ("imagenet-r", 5), ("cifar100", 10), ("imagenet-a", 10), ("domainnet", 5),
           ("imagenet-r", 20)]
CUT = ["--methods", "all", "--precision", "bf16", "--train-batches", "1", "--max-epochs", "1", "--test-images", "1",
       "--project-for", "h200", "--device", "cpu", "--no-progress"]


def run(results: Path) -> None:
    walls_path = results / "walls.json"
    walls = json.loads(walls_path.read_text()) if walls_path.is_file() else {}
    for dataset, tasks in CONFIGS:
        name = f"{dataset}_T{tasks}"
        if walls.get(name, {}).get("exit") == 0:  # done already: kept
            continue
        start = time.time()
        done = subprocess.run([sys.executable, "run_benchmark.py", "preflight", "--dataset", dataset, "--tasks",
                               str(tasks), *CUT, "--results-dir", str(results / name),
                               "--scratch", str(results / "scratch")], cwd=ROOT)
        walls[name] = {"wall_s": round(time.time() - start), "exit": done.returncode}
        walls_path.write_text(json.dumps(walls, indent=1))


def host_estimate(row: dict) -> tuple[float, bool]:
    """The row's host estimate at the preset's batch from its probes, and whether it includes the
    forward pass at the evaluation batch: reports written before the forward probe had its wider
    batch (2026-12-04) probed it at batches 2 and 4 only, too close for a 64-fold extrapolation, so
    for them only the cut run and the training probes count."""
    from benchmark.preflight import estimate_peaks

    if len(row["probe"]) > 2:
        return estimate_peaks(row["probe"], row["run_peak"], row["batch_size"], row["eval_batch"])["host_mb"], True
    training = {b: {k: v for k, v in f.items() if k.startswith("train")} for b, f in row["probe"].items()}
    return estimate_peaks(training, row["run_peak"], row["batch_size"], 1)["host_mb"], False


def render(results: Path) -> str:
    walls = json.loads((results / "walls.json").read_text())
    reports = {}
    for dataset, tasks in CONFIGS:
        name = f"{dataset}_T{tasks}"
        found = sorted((results / name / "preflight").glob("preflight_*.json"))
        if found:
            reports[name] = {r["label"].split()[0]: r for r in json.loads(found[-1].read_text())["runs"]}
    names = list(reports)
    methods = list(dict.fromkeys(m for rows in reports.values() for m in rows))
    table = []
    for method in methods:
        cells = []
        for name in names:
            row = reports[name].get(method)
            if row is None:
                cells.append("")
            elif row["error"]:
                cells.append(f"error: {row['error'][:60]}")
            else:
                host, with_forward = host_estimate(row)
                cells.append(f"{row['projection']['total_s'] / 60:.1f} min, {host / 1024:.1f} GiB"
                             + ("" if with_forward else " †"))
        table.append([method, *cells])
    ok = {name: [r for r in reports[name].values() if not r["error"]] for name in names}
    table.append(["**all runs: H200 GPU-hours**",
                  *(f"**{sum(r['projection']['total_s'] for r in ok[name]) / 3600:.2f} h** "
                    f"({len(ok[name])}/{len(reports[name])} ok)" for name in names)])
    table.append(["preflight wall time here", *(f"{walls[name]['wall_s'] / 60:.0f} min" for name in names)])
    headers = ["method", *(name.replace("_T", " T") for name in names)]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, required=True)
    parser.add_argument("--render", action="store_true", help="only print the table of the stored reports")
    args = parser.parse_args()
    if not args.render:
        run(args.results_dir)
    print(render(args.results_dir))


if __name__ == "__main__":
    main()
