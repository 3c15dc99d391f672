"""Regression check: every registered method on a small synth split, against stored baselines.

``python run_benchmark.py check`` runs the ``ci`` preset (few epochs, fewer images per class,
seed 0) for every registered method afresh (nothing is read from or written to the results store),
then compares A_T and A_bar with ``results/baselines/ci.json``. A drop beyond the tolerance, or
a method without a baseline, fails. ``--update`` rewrites the baseline file.
"""

from __future__ import annotations

import json
from pathlib import Path

from tabulate import tabulate

from benchmark import protocol
from benchmark.config import resolve
from benchmark.errors import ConfigError
from benchmark.registry import METHODS
from benchmark.store import write_json_atomic

BASELINE_FILE = Path(__file__).resolve().parents[1] / "results" / "baselines" / "ci.json"
CHECK_PRESET = "ci"
CHECK_SEED = 0
CHECKED = ("final_acc", "avg_acc")


def measure(methods: list[str], progress: bool = False) -> dict[str, dict[str, float]]:
    """A_T and A_bar of each method under the ci preset, computed now (CPU, seed 0)."""
    measured = {}
    for method in methods:  # runs are not stored: the check always computes afresh
        config = resolve(method, "synth", seed=CHECK_SEED, preset=CHECK_PRESET, device="cpu")
        result = protocol.run(config, progress=progress)
        measured[method] = {key: round(result[key], 2) for key in CHECKED}
    return measured


def load_baseline(path: Path = BASELINE_FILE) -> dict[str, dict[str, float]]:
    try:
        return json.loads(path.read_text())["methods"]
    except FileNotFoundError:
        raise ConfigError(f"no baseline at {path}; create it with `python run_benchmark.py check --update`") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"corrupt baseline {path} ({err}); rewrite it with "
                          "`python run_benchmark.py check --update`") from None


def compare(baseline: dict, measured: dict, tolerance: float) -> tuple[list[list[str]], bool]:
    """Table rows (method, metric, baseline, now, difference, verdict) and whether all passed."""
    rows, ok = [], True
    for method, values in measured.items():
        for key in CHECKED:
            base = baseline.get(method, {}).get(key)
            if base is None:
                rows.append([method, key, "missing", f"{values[key]:.2f}", "", "FAIL"])
                ok = False
                continue
            diff = values[key] - base
            passed = diff >= -tolerance
            ok &= passed
            rows.append([method, key, f"{base:.2f}", f"{values[key]:.2f}", f"{diff:+.2f}", "PASS" if passed else "FAIL"])
    return rows, ok


def check(update: bool = False, tolerance: float = 2.0, path: Path = BASELINE_FILE,
          methods: list[str] | None = None, progress: bool = False) -> int:
    """Run the check and print its table; exit status 0 (pass) or 1 (a drop or a missing method).
    ``update`` with ``methods`` rewrites those methods' baselines and keeps the others'."""
    kept = load_baseline(path) if update and methods and path.exists() else {}
    methods = methods or METHODS.names()
    measured = measure(methods, progress)
    if update:
        write_json_atomic(path, {"preset": CHECK_PRESET, "seed": CHECK_SEED, "methods": {**kept, **measured}})
        print(f"baseline updated: {path}")
        print(tabulate([[m, v["final_acc"], v["avg_acc"]] for m, v in measured.items()],
                       headers=["method", "A_T", "A_bar"], tablefmt="github"))
        return 0
    rows, ok = compare(load_baseline(path), measured, tolerance)
    print(tabulate(rows, headers=["method", "metric", "baseline", "now", "difference", f"tolerance {tolerance}"],
                   tablefmt="github", disable_numparse=True))
    print("check passed" if ok else "check FAILED: a drop beyond the tolerance or a method without a baseline")
    return 0 if ok else 1
