"""``python run_benchmark.py sweep``: choose each method's settings on validation data, then run them on test.

1. Per method a grid: its default search space on the data set (``Method.search_space``, axes
   around the recipe's values; benchmark/search_space.py) or the ``--grid`` given; all of its
   points, or ``--budget`` of them drawn by ``--sweep-seed`` (the same number for every method).
2. Every point runs as a normal harness run with ``data.val_fraction`` set: it trains on the rest
   of the training images and is evaluated on the held-out ones, never on the test set. The runs
   go through the launcher like any others (a Slurm job array), are stored, and are reused by a
   later sweep that needs them; a sweep interrupted or submitted without waiting is resumed by
   running the same command again.
3. Per method the point with the highest mean validation A_T over ``--val-seeds`` is chosen (ties
   go to the recipe's own point, then to the first in grid order) and recorded with the whole
   grid in ``<results-dir>/sweeps/`` (benchmark/sweep_record.py).
4. The final runs: the chosen settings over ``--seeds`` on the test set.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from typing import Any

import numpy as np
from tabulate import tabulate

from benchmark import search_space, store, sweep_record
from benchmark.config import DATA_PREFIX, RunConfig, resolve, typed_setting
from benchmark.errors import ConfigError
from benchmark.registry import METHODS
from benchmark.runner import (check_launch_options, launch, print_results, run_fields, run_overrides,
                              selected_methods, settings_not_defined)

VAL_KEY = DATA_PREFIX + "val_fraction"


@dataclasses.dataclass
class MethodGrid:
    """One method's part of a sweep."""

    method: str
    grid: dict[str, list[Any]]  # setting -> values, typed
    points: list[dict[str, Any]]  # the points run: all of the grid's, or the budget's draw
    n_grid_points: int
    preset_point: dict[str, Any]  # the recipe's values of the grid's settings
    source: str  # "default space", "--grid" or "nothing to choose"

    @property
    def searched(self) -> bool:
        """Whether the grid offers a choice (then every point drawn runs on validation data)."""
        return self.n_grid_points > 1


def check_options(args: argparse.Namespace) -> None:
    """One-line errors for bad values of the sweep's own options."""
    check_launch_options(args)
    if args.budget is not None and args.budget < 1:
        raise ConfigError(f"--budget must be at least 1 point, got {args.budget}")
    if not 0 < args.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1 (the share of each class's training images "
                          f"held out), got {args.val_fraction}")
    from benchmark import slurm_profile
    from benchmark.runner import launch_flags

    if args.launcher != "inline" and slurm_profile.launch_options(
            slurm_profile.load_profile(args.slurm_profile), launch_flags(args))["time_min"] == "auto":
        raise ConfigError("sweep: --time auto (or time_min: auto in the profile) needs a preflight projection of "
                          "every run, and preflight does not run grid points; give --time-min MINUTES (e.g. 1.5 x "
                          "the longest run a preflight of the recipes projects)")
    if args.force and args.launcher == "slurm" and not args.wait:
        raise ConfigError("sweep --force with --launcher slurm needs --wait: without it, the rerun that continues "
                          "the sweep would force its validation runs again")
    if any(key == VAL_KEY for key, _ in args.set):
        raise ConfigError(f"sweep: give the validation fraction with --val-fraction, not --set {VAL_KEY} (the final "
                          "runs are evaluated on the test set)")
    if any(s < 0 for s in args.val_seeds or []):
        raise ConfigError(f"--val-seeds must be non-negative, got {args.val_seeds}")


def _fields_of(method: str) -> set[str]:
    return {f.name for f in dataclasses.fields(METHODS.get(method).Config)}


def _typed(method: str, dataset: str, key: str, values: list[str]) -> list[Any]:
    """``--grid`` values as the setting's type; a value given twice (``1e-3,0.001``) is an error."""
    typed = [typed_setting(method, dataset, key, v) for v in values]
    if len({json.dumps(v) for v in typed}) < len(typed):
        raise ConfigError(f"--grid {key}={','.join(values)} gives one value twice ({method} reads them as "
                          f"{', '.join(map(str, typed))}); give each value once")
    return typed


def method_overrides(methods: list[str], overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method the run options' overrides it takes: a ``--set`` setting only some methods have
    goes to those, as in ``run``."""
    skipped = settings_not_defined(methods, overrides)
    return {m: {k: v for k, v in overrides.items() if m not in skipped.get(k, ())} for m in methods}


def grids(args: argparse.Namespace, methods: list[str], overrides: dict[str, dict[str, Any]],
          fields: dict[str, Any]) -> list[MethodGrid]:
    """Each method's grid and the points to run (``--grid`` or the default space; ``--budget``);
    ``overrides``: per method, from ``method_overrides``."""
    given = search_space.parse_grid(args.grid)
    fixed = {key for settings in overrides.values() for key in settings}
    for key in given:
        if key in fixed or key == VAL_KEY:
            flag = "--val-fraction" if key == VAL_KEY else f"--set {key} (or its shortcut flag)"
            raise ConfigError(f"{key} is both searched (--grid) and fixed ({flag}); give one of them")
        if not key.startswith(DATA_PREFIX) and not any(key in _fields_of(m) for m in methods):
            raise ConfigError(f"--grid key {key!r}: none of the selected methods ({', '.join(methods)}) has that "
                              "setting; see `run_benchmark.py list --presets`")
    planned = []
    for method in methods:
        recipe = resolve(method, args.dataset, args.tasks, 0, args.preset, overrides[method], **fields)
        settings = {**recipe.hparams, **{DATA_PREFIX + k: v for k, v in recipe.data_options.items()}}
        space = METHODS.get(method).search_space(recipe.dataset)
        if not space:  # trains nothing (simplecil): no setting to choose, whatever --grid says
            grid, source = {}, "nothing to choose"
        elif given:
            grid = {key: _typed(method, args.dataset, key, values)
                    for key, values in given.items() if key.startswith(DATA_PREFIX) or key in _fields_of(method)}
            source = "--grid"
        else:
            grid = {key: search_space.axis_values(axis, settings[key]) for key, axis in space.items()
                    if key not in overrides[method]}  # a setting fixed on the command line is not searched
            source = "default space"
        every = search_space.points(grid)
        if len(every) == 1:  # nothing to choose (e.g. simplecil, or one value per --grid key): no budget
            planned.append(MethodGrid(method, grid, every, 1, {key: settings[key] for key in grid}, source))
            continue
        if args.budget is not None and args.budget > len(every):
            raise ConfigError(f"--budget {args.budget} is larger than {method}'s grid ({len(every)} points: "
                              f"{_axes_text(grid)}); give --budget {len(every)} or less, or a larger --grid")
        planned.append(MethodGrid(method, grid, search_space.sample(every, args.budget, args.sweep_seed), len(every),
                                  {key: settings[key] for key in grid}, source))
    return planned


def _axes_text(grid: dict[str, list[Any]]) -> str:
    return " x ".join(f"{k} {'/'.join(f'{v:g}' if isinstance(v, float) else str(v) for v in vs)}"
                      for k, vs in grid.items()) or "the recipe only"


def check_validation_split(configs: list[RunConfig]) -> None:
    """Fail before anything runs when the validation fraction leaves a class with no held-out or
    no training image: the data set is loaded once here per distinct data option of ``configs``
    (without the decoded-image cache and device decoding, which do not change the split)."""
    from benchmark.protocol import load_data

    plain = {"decoded_cache": False, "device_decode": False}
    distinct = {json.dumps({**c.data_options, **{k: v for k, v in plain.items() if k in c.data_options}},
                           sort_keys=True): c for c in configs}
    for text, config in distinct.items():
        try:
            load_data(dataclasses.replace(config, data_options=json.loads(text)))
        except ConfigError as err:
            raise ConfigError(str(err).replace("data.val_fraction", "--val-fraction")) from None


def sweep_id(dataset: str, n_tasks: int, planned: list[MethodGrid], val_runs: list[RunConfig],
             recipes: list[RunConfig]) -> str:
    """Hash of what the selection depends on: every validation run (its id hashes its whole
    configuration), the grids and the recipe runs of the methods with nothing to choose; not the
    final seeds, which can be extended."""
    key = {"dataset": dataset, "n_tasks": n_tasks, "validation": sorted(c.run_id() for c in val_runs),
           "recipes": sorted(c.run_id() for c in recipes),
           "grids": {g.method: [g.grid, g.points, g.n_grid_points] for g in planned}}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


def choose(scored: list[dict[str, Any]], preset_point: dict[str, Any]) -> dict[str, Any]:
    """The point of highest mean validation A_T (diverged points, scored None, never); ties go to
    the recipe's point, then to the first."""
    finite = [p for p in scored if p["val_final_acc"] is not None]
    best = max(round(p["val_final_acc"], 6) for p in finite)
    tied = [p for p in finite if round(p["val_final_acc"], 6) == best]
    return next((p for p in tied if p["setting"] == preset_point), tied[0])["setting"]


def score(g: MethodGrid, runs: dict[tuple, RunConfig], results_dir: str, val_seeds: list[int]
          ) -> list[dict[str, Any]]:
    """Each point of ``g`` with its run ids and mean validation A_T and A_bar over ``val_seeds``;
    a point with a diverged run (NaN loss) scores None and carries the error."""
    scored = []
    for i, point in enumerate(g.points):
        ids = [runs[g.method, i, s].run_id() for s in val_seeds]
        errors = [e for e in (store.diverged(results_dir, run_id) for run_id in ids) if e]
        results = [] if errors else [store.read_result(store.result_path(results_dir, run_id)) for run_id in ids]
        scored.append({"setting": point, "run_ids": ids,
                       "val_final_acc": float(np.mean([r["final_acc"] for r in results])) if results else None,
                       "val_avg_acc": float(np.mean([r["avg_acc"] for r in results])) if results else None,
                       **({"diverged": errors[0]} if errors else {})})
    return scored


def unfinished(configs: list[RunConfig], results_dir: str) -> list[RunConfig]:
    """The runs with neither a result nor a divergence note."""
    return [c for c in configs if not store.is_complete(results_dir, c.run_id())
            and store.diverged(results_dir, c.run_id()) is None]


def command_sweep(args: argparse.Namespace) -> int:
    check_options(args)
    args.val_seeds = args.val_seeds or args.seeds[:1]
    methods = selected_methods(args)
    fields = run_fields(args)
    overrides = run_overrides(args)
    per_method = method_overrides(methods, overrides)
    planned = grids(args, methods, per_method, fields)

    def config(method: str, seed: int, point: dict[str, Any], validation: bool) -> RunConfig:
        extra = {VAL_KEY: args.val_fraction} if validation else {}
        try:
            return resolve(method, args.dataset, args.tasks, seed, args.preset,
                           {**per_method[method], **point, **extra}, **fields)
        except ConfigError as err:
            raise ConfigError(f"{method} at {sweep_record.setting_text(point)}: {err}") from None

    val_runs = {(g.method, i, s): config(g.method, s, p, True)
                for g in planned if g.searched for i, p in enumerate(g.points) for s in args.val_seeds}
    recipes = [config(g.method, args.seeds[0], g.points[0], False) for g in planned if not g.searched]
    print(plan_table(planned, len(args.val_seeds), len(args.seeds)), file=sys.stderr)
    print(f"{len(val_runs)} validation runs, then {len(planned) * len(args.seeds)} final runs", file=sys.stderr)
    if args.dry_run:
        return 0
    check_validation_split(list(val_runs.values()))

    if launch(args, list(val_runs.values()), what="validation runs", skip_diverged=True) is None:
        print("validation runs submitted; when they are done, run the same command again to select the settings "
              f"and start the final runs (follow with: python run_benchmark.py status --results-dir "
              f"{args.results_dir})", file=sys.stderr)
        return 0
    missing = unfinished(list(val_runs.values()), args.results_dir)
    if missing:
        raise ConfigError(f"{len(missing)} of {len(val_runs)} validation runs have no result (first: "
                          f"{missing[0].run_id()}); nothing is selected on a partial grid. Fix the cause and run the "
                          "same command again: the stored points are reused")

    example = config(planned[0].method, args.seeds[0], planned[0].points[0], False)
    record = {"sweep_id": sweep_id(example.dataset, example.n_tasks, planned, list(val_runs.values()), recipes),
              "dataset": example.dataset, "n_tasks": example.n_tasks, "preset": args.preset,
              "val_fraction": args.val_fraction,
              "val_seeds": args.val_seeds, "budget": args.budget,
              "sweep_seed": args.sweep_seed if args.budget else None, "overrides": overrides,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "methods": {}}
    final_runs = []
    for g in planned:
        scored = score(g, val_runs, args.results_dir, args.val_seeds) if g.searched else \
            [{"setting": g.points[0], "run_ids": [], "val_final_acc": None, "val_avg_acc": None}]
        if g.searched and all(p["val_final_acc"] is None for p in scored):
            raise ConfigError(f"every point of {g.method}'s grid diverged (first: {scored[0]['diverged']}); "
                              "give it a grid of smaller learning rates with --grid")
        chosen = choose(scored, g.preset_point) if g.searched else g.points[0]
        runs = [config(g.method, s, chosen, False) for s in args.seeds]
        final_runs += runs
        record["methods"][g.method] = {
            "grid": g.grid, "source": g.source, "n_grid_points": g.n_grid_points, "preset_point": g.preset_point,
            "points": scored, "chosen": chosen, "edges": search_space.edges(g.grid, chosen) if g.searched else [],
            "final_run_ids": {str(s): c.run_id() for s, c in zip(args.seeds, runs)}}
    path = sweep_record.write(args.results_dir, record)
    print(selection_table(record))
    print(f"\nthe grids and every validation score: {path} (python run_benchmark.py report --sweep "
          f"--results-dir {args.results_dir})")
    for method, entry in record["methods"].items():
        for edge in entry["edges"]:
            print(f"note: {method}: {edge}; the best may lie beyond it: extend the grid with --grid", file=sys.stderr)

    failures = launch(args, final_runs, what="final runs")
    if failures is None:
        print("final runs submitted; run the same command again when they are done for the table, or "
              "`python run_benchmark.py report`", file=sys.stderr)
        return 0
    print_results(args, final_runs)
    return 1 if failures else 0


def plan_table(planned: list[MethodGrid], n_val_seeds: int, n_seeds: int) -> str:
    rows = [[g.method, g.source, _axes_text(g.grid), f"{len(g.points)} of {g.n_grid_points}",
             len(g.points) * n_val_seeds if g.searched else 0, n_seeds] for g in planned]
    return tabulate(rows, headers=["method", "space", "grid", "points", "validation runs", "final runs"],
                    tablefmt="github", disable_numparse=True)


def selection_table(record: dict[str, Any]) -> str:
    rows = []
    for method, entry in record["methods"].items():
        best = next(p for p in entry["points"] if p["setting"] == entry["chosen"])
        score = best["val_final_acc"]
        chosen = sweep_record.setting_text(entry["chosen"]) + (" (recipe)" if entry["chosen"] == entry["preset_point"]
                                                              and entry["chosen"] else "")
        rows.append([method, chosen,
                     "–" if score is None else f"{score:.2f}", f"{len(entry['points'])} of {entry['n_grid_points']}"])
    return (f"\n{record['dataset']}, {record['n_tasks']} tasks: chosen on validation A_T (mean over seed"
            f"{'s' if len(record['val_seeds']) > 1 else ''} {', '.join(map(str, record['val_seeds']))})\n\n"
            + tabulate(rows, headers=["method", "chosen", "validation A_T", "points"], tablefmt="github",
                       disable_numparse=True))
