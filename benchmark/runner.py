"""The runs of a command: resolved from its options, then executed with its launcher.

``resolve_runs`` turns the run options (``cli.add_run_options``) into validated configurations;
``launch`` skips the stored ones and runs the rest in this process or submits them (``launcher``);
``command_run`` is ``python run_benchmark.py [run]``. ``sweep`` launches its grid points and its
final runs through the same ``launch``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from tabulate import tabulate

from benchmark import store
from benchmark.config import DATA_PREFIX, RunConfig, resolve
from benchmark.errors import ConfigError, one_line
from benchmark.registry import DATASETS, METHODS
from benchmark.slurm_profile import PROFILE_KEYS


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the run options override: ``--set`` pairs, ``--epochs``/``--batch-size``/``--lr``
    and the data set shortcuts (``--split-file`` ...) as ``data.KEY``."""
    overrides: dict[str, Any] = dict(args.set)
    for key in ("epochs", "batch_size", "lr"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    for key in ("image_size", "split_file", "domains"):  # shortcuts for data set options
        value = getattr(args, key)
        if value is not None:
            overrides[DATA_PREFIX + key] = value
    if args.decoded_cache is not None:
        overrides[DATA_PREFIX + "decoded_cache"] = True
        if args.decoded_cache:
            overrides[DATA_PREFIX + "cache_dir"] = args.decoded_cache
    if args.device_decode:
        overrides[DATA_PREFIX + "device_decode"] = True
    return overrides


def settings_not_defined(methods: list[str], overrides: dict[str, Any]) -> dict[str, list[str]]:
    """Per method hyperparameter of ``overrides`` (``--set KEY=VALUE``), the selected methods whose
    Config lacks it: they run without it. A key that none of several methods defines is an error
    (with one method, ``resolve`` names the valid settings)."""
    fields = {m: {f.name for f in dataclasses.fields(METHODS.get(m).Config)} for m in methods}
    missing = {key: [m for m in methods if key not in fields[m]]
               for key in overrides if not key.startswith(DATA_PREFIX)}
    for key, lacking in missing.items():
        if len(methods) > 1 and len(lacking) == len(methods):
            raise ConfigError(f"unknown setting {key!r}: none of the selected methods ({', '.join(methods)}) "
                              "has it; see `run_benchmark.py list --presets`")
    return {key: lacking for key, lacking in missing.items() if lacking and len(methods) > 1}


def selected_methods(args: argparse.Namespace) -> list[str]:
    """The canonical names of ``--methods`` (``all``: every method; none: the default run's)."""
    selected = METHODS.names() if args.methods == ["all"] else args.methods or METHODS.default_names()
    return list(dict.fromkeys(METHODS.canonical(m) for m in selected))


def run_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The ``RunConfig`` fields the run options set besides method, data set, tasks, seed and preset."""
    from benchmark.protocol import auto_device, resolve_device

    submitted = getattr(args, "launcher", "inline") != "inline"
    device = args.device if submitted and args.device == "auto" else auto_device(args.device)  # jobs decide "auto"
    if device != "auto":
        resolve_device(device)  # fail before anything runs
    return dict(backbone=args.backbone, backbone_weights=args.backbone_weights, precision=args.precision,
                compile=args.compile, device=device, data_root=args.data_root, num_workers=args.num_workers,
                shuffle_classes=not args.natural_order, prefetch=args.prefetch)


def resolve_runs(args: argparse.Namespace, errors: list[tuple[str, str]] | None = None) -> list[RunConfig]:
    """All run configurations of a ``run`` command, validated before anything runs. A ``--set``
    hyperparameter applies to the selected methods that define it (``settings_not_defined``).
    With ``errors``, a run whose configuration is invalid is left out and its (label, one-line
    error) appended there instead of raising."""
    methods = selected_methods(args)
    fields = run_fields(args)
    overrides = run_overrides(args)
    skipped = settings_not_defined(methods, overrides)
    configs = []
    for method in methods:
        for seed in args.seeds:
            try:
                configs.append(resolve(method, args.dataset, args.tasks, seed, args.preset,
                                       {k: v for k, v in overrides.items() if method not in skipped.get(k, ())},
                                       **fields))
            except ConfigError as err:
                if errors is None:
                    raise
                errors.append((f"{method} {args.dataset} T{args.tasks or '?'} s{seed}", one_line(err)))
    return configs


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def results_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of runs: continual methods first, upper bounds last."""
    rows = []
    for r in sorted(results, key=lambda r: (r.get("upper_bound", False), )):
        name = r["method"] + (" (upper bound)" if r.get("upper_bound") else "")
        rows.append([name, r["seed"], _fmt(r["final_acc"]), _fmt(r.get("final_acc_task_mean")), _fmt(r["avg_acc"]),
                     _fmt(r.get("forgetting")), _fmt(r.get("task_aware_final_acc")),
                     f"{r['timings']['total_s']:.0f}"])
    headers = ["method", "seed", "A_T (%)", "A_T task-mean", "A_bar (%)", "forgetting", "task-aware A_T",
               "time (s)"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def launch_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in PROFILE_KEYS if key in vars(args)}


def _run_inline(specs: list[Any]) -> int:
    from benchmark import protocol
    from benchmark.job import execute

    failures = 0
    for spec in specs:
        try:
            execute(spec)
        except protocol.NonFiniteLossError as err:
            print(f"error: {err}", file=sys.stderr)
            failures += 1
    return failures


def _run_submitted(args: argparse.Namespace, specs: list[Any]) -> int | None:
    """Submit ``specs`` with ``args.launcher``; the number of failed runs, or None when the jobs
    were submitted without waiting."""
    from benchmark import job_status, launcher, slurm_profile

    options = slurm_profile.launch_options(slurm_profile.load_profile(args.slurm_profile), launch_flags(args))
    if options["time_min"] == "auto":
        from benchmark.preflight import auto_time_min

        options["time_min"], why = auto_time_min(args.results_dir, [s.run_id for s in specs])
        print(f"--time-min auto: {options['time_min']} min ({why})", file=sys.stderr)
    for dataset, data_root in {(s.config.dataset, s.config.data_root) for s in specs}:
        DATASETS.get(dataset).check_location(data_root)  # a wrong --data-root fails here, not in each job
    records = {r["run_id"]: r for r in job_status.read_records(args.results_dir)}
    known = [records[s.run_id] for s in specs if s.run_id in records]
    left = {state.run_id: state for state in job_status.states(args.results_dir, known)
            if state.state in job_status.NOT_RESUBMITTED}
    for run_id, state in left.items():
        what = f"state unknown ({state.detail})" if state.state == "unknown" else \
            f"already {state.state} as job {state.job_id}"
        print(f"{run_id}: {what}, not submitted again (see `run_benchmark.py status`)", file=sys.stderr)
    todo = [s for s in specs if s.run_id not in left]
    for spec in todo:  # --force: start afresh now; the job itself only ever resumes
        if spec.fresh:
            store.result_path(args.results_dir, spec.run_id).unlink(missing_ok=True)
            store.checkpoint_path(args.results_dir, spec.run_id).unlink(missing_ok=True)
    todo = [dataclasses.replace(s, fresh=False) for s in todo]
    if todo:
        launcher.submit(todo, args.launcher, options, args.max_parallel, args.results_dir)
    if args.launcher == "slurm" and not args.wait:
        print(f"follow with: python run_benchmark.py status --results-dir {args.results_dir}", file=sys.stderr)
        return None
    run_ids = {s.run_id for s in specs}
    final = launcher.wait(args.results_dir, run_ids)  # at once unless Slurm jobs or others' jobs are active
    for state in final:
        if state.state == "failed":
            print(f"error: {state.run_id} failed: {state.detail} (log: {state.log})", file=sys.stderr)
        elif state.state == "unknown":
            print(f"error: {state.run_id}: state unknown ({state.detail}); no result here", file=sys.stderr)
    return sum(state.state != "done" for state in final)


def check_launch_options(args: argparse.Namespace) -> None:
    """One-line errors for bad values of the store and launcher options (``run``, ``sweep``)."""
    if args.checkpoint_every <= 0:
        raise ConfigError(f"--checkpoint-every must be positive (minutes), got {args.checkpoint_every}")
    if args.max_parallel is not None and args.max_parallel < 1:
        raise ConfigError(f"--max-parallel must be at least 1, got {args.max_parallel}")


def launch(args: argparse.Namespace, configs: list[RunConfig], what: str = "run", skip_diverged: bool = False
           ) -> int | None:
    """Run ``configs`` that have no stored result (all of them with ``--force``) with
    ``args.launcher``; the number of failed runs, or None when Slurm jobs were submitted without
    waiting. Stored runs are skipped with one line each (for ``what`` other than "run": one line
    in all, e.g. "validation runs: 12 of 27 already stored, 15 to run"); with ``skip_diverged``
    also the runs whose loss became NaN before (``store.diverged``: a sweep's grid point that
    would diverge again)."""
    from benchmark.job import RunSpec, absolute

    store.check_results_dir(args.results_dir)
    submitted = args.launcher != "inline"
    if submitted:  # jobs may start in another folder
        args.results_dir = absolute(args.results_dir)
        configs = [dataclasses.replace(c, data_root=absolute(c.data_root)) for c in configs]
    specs, stored, diverged = [], 0, 0
    for config in configs:
        run_id = config.run_id()
        if skip_diverged and not args.force and store.diverged(args.results_dir, run_id) is not None:
            diverged += 1
            continue
        if store.is_complete(args.results_dir, run_id) and not args.force:
            try:
                store.read_result(store.result_path(args.results_dir, run_id))
                stored += 1
                if what == "run":
                    print(f"{run_id}: result exists, skipped (use --force to rerun)", file=sys.stderr)
                continue
            except ValueError as err:
                print(f"warning: {err}; running it again", file=sys.stderr)
        specs.append(RunSpec(config, args.results_dir, 60 * args.checkpoint_every, args.keep_checkpoints,
                             progress=not args.no_progress and not submitted, fresh=args.force))
    if what != "run" and configs:
        print(f"{what}: {stored} of {len(configs)} already stored, {f'{diverged} diverged before, ' if diverged else ''}"
              f"{len(specs)} to run", file=sys.stderr)
    return _run_submitted(args, specs) if submitted and specs else _run_inline(specs)


def stored_results(results_dir: str, configs: list[RunConfig]) -> list[dict[str, Any]]:
    """The stored results of those ``configs`` that completed."""
    return [store.read_result(store.result_path(results_dir, c.run_id())) for c in configs
            if store.is_complete(results_dir, c.run_id())]


def print_results(args: argparse.Namespace, configs: list[RunConfig]) -> None:
    """The table of the stored runs of ``configs``, with its legend and the ``--set`` notes."""
    dataset = configs[0].dataset if configs else args.dataset
    print(f"\n{dataset}, {configs[0].n_tasks if configs else '?'} tasks; results in "
          f"{store.runs_dir(args.results_dir)}/\n")
    print(results_table(stored_results(args.results_dir, configs)))
    print("\nA_T, A_bar: sample-weighted (accuracy over all seen test images); task-mean: mean over tasks; "
          "forgetting: max-based, in points")
    settings = dict(args.set)
    methods = list(dict.fromkeys(c.method for c in configs))
    for key, lacking in settings_not_defined(methods, settings).items():
        touched = [m for m in methods if m not in lacking]
        print(f"--set {key}={settings[key]} applied to {', '.join(touched)}; "
              f"{', '.join(lacking)} have no {key!r} and ran without it")


def command_run(args: argparse.Namespace) -> int:
    """``python run_benchmark.py [run]``: run, then print the table of the runs."""
    check_launch_options(args)
    configs = resolve_runs(args)
    failures = launch(args, configs)
    if failures is None:
        return 0
    print_results(args, configs)
    return 1 if failures else 0
