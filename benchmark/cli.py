"""Command line: ``python run_benchmark.py [run] [options]`` and ``python run_benchmark.py list``.

With no arguments, every registered method runs on the built-in ``synth`` benchmark with seed 0
and a markdown table of the results is printed. Bad input exits with status 2 and one line
naming the problem and the fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from tabulate import tabulate

from benchmark import store
from benchmark.config import PRESETS
from benchmark.errors import ConfigError, one_line
from benchmark.registry import DATASETS, METHODS
from benchmark.runner import command_run, resolve_runs
from benchmark.slurm_profile import PROFILE_KEYS

COMMANDS = ("run", "status", "list", "report", "check", "bench", "preflight", "prepare", "sweep")


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _minutes_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole minutes or auto, got {text!r}") from None


class OneLineParser(argparse.ArgumentParser):
    """argparse without the usage block on errors: one line naming the problem, exit 2 (its
    subcommand parsers are of the same class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options that select and configure runs, shared by ``run`` and ``preflight``."""
    parser.add_argument("--methods", nargs="+", metavar="NAME",
                        help="methods to run, or all (variants included; default: every registered method except "
                           "variants such as inflora-b5; see `list`)")
    parser.add_argument("--dataset", default="synth", help="benchmark name (default: synth)")
    parser.add_argument("--tasks", type=int, metavar="T", help="number of tasks (default: the dataset's standard)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="S",
                        help="seeds: 0 = natural class order, s > 0 = seeded shuffle (default: 0)")
    parser.add_argument("--natural-order", action="store_true", help="keep the natural class order for every seed")
    parser.add_argument("--epochs", type=int, help="epochs per task (default: the method's preset)")
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--set", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="override a method hyperparameter (e.g. rank=8) or dataset option (data.KEY=VALUE)")
    parser.add_argument("--preset", default="paper", choices=list(PRESETS),
                        help="hyperparameter preset on top of the per-dataset defaults (default: paper)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if available, decided by "
                                                      "the machine that runs the job)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="training precision")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each task's training step and prediction (off by default; see docs/speed.md)")
    parser.add_argument("--backbone", help="tiny (the 32 px synth ViT), vit-b16 (ViT-B/16 with the method's reference "
                                        "weights tag) or a timm name with tag (default: the dataset's: synth "
                                        "tiny, real data sets vit-b16)")
    parser.add_argument("--pretrained-path", "--backbone-weights", dest="backbone_weights", metavar="FILE",
                        help="backbone weights file (.safetensors, .pth or Google .npz) instead of the timm cache")
    parser.add_argument("--image-size", type=int, metavar="PX",
                        help="input size of image data sets (default and only valid value: the backbone's)")
    parser.add_argument("--split-file", metavar="PATH", help="ImageNet-R: the CODA-Prompt split (data.split_file)")
    parser.add_argument("--domains", nargs="+", metavar="NAME", help="DomainNet: domains to use (default: all six)")
    parser.add_argument("--data-root", default=os.environ.get("CL_DATA_ROOT", "./data"),
                        help="folder holding the datasets (default: $CL_DATA_ROOT or ./data)")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    parser.add_argument("--decoded-cache", nargs="?", const="", metavar="DIR",
                        help="image-file data sets: decode the images once into a cache in DIR (default: "
                          "<data-root>/decoded-cache) and finish their transforms on the device (data.decoded_cache)")
    parser.add_argument("--device-decode", action="store_true",
                        help="image data sets: workers send the files' bytes; decode JPEGs and run the crop, resize and "
                          "flip on the device (data.device_decode; CIFAR-100: the resize)")
    parser.add_argument("--prefetch", action="store_true",
                        help="CUDA: prepare each batch ahead on a side stream (off by default until a GPU run has "
                             "checked it; `preflight` on a GPU compares it with the synchronous path)")


def add_launch_options(parser: argparse.ArgumentParser) -> None:
    """Where results go and how runs execute, shared by ``run`` and ``sweep``."""
    parser.add_argument("--results-dir", default="results", help="where run JSONs are stored (default: results)")
    parser.add_argument("--force", action="store_true", help="rerun even if a result exists")
    parser.add_argument("--checkpoint-every", type=float, default=10.0, metavar="MIN",
                        help="minutes between checkpoints inside a task (default: 10; one is also saved after "
                             "every task); a rerun of an interrupted run resumes from its checkpoint")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep <results-dir>/checkpoints/<run id>.pt after the result is written")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    launch = parser.add_argument_group("launcher (see docs/cluster.md)")
    launch.add_argument("--launcher", default="inline", choices=["inline", "local", "slurm", "debug"],
                        help="inline: in this process (default); local: submitit subprocesses on this machine; "
                             "slurm: one Slurm job array; debug: submitit's debug executor, in this process")
    launch.add_argument("--max-parallel", type=int, metavar="N",
                        help="runs at once (slurm: the array's concurrency, default submitit's 256; local: "
                             "default 1, at most one run per GPU group)")
    launch.add_argument("--slurm-profile", metavar="YAML",
                        help="Slurm options file (keys: " + ", ".join(PROFILE_KEYS) + "); flags override it")
    launch.add_argument("--partition", help="Slurm partition")
    launch.add_argument("--account", help="Slurm account")
    launch.add_argument("--qos", help="Slurm quality of service")
    launch.add_argument("--gpus-per-job", type=int, metavar="N", help="GPUs per run")
    launch.add_argument("--cpus-per-task", type=int, metavar="N", help="CPUs per run")
    launch.add_argument("--mem-gb", type=float, metavar="GB", help="memory per run")
    launch.add_argument("--time-min", "--time", type=_minutes_or_auto, metavar="MIN|auto",
                        help="time limit per job in minutes (default 1440), or auto: from the newest `preflight` "
                             "report of these runs under <results-dir>/preflight/ (1.5 x the longest projected run + "
                             "10 min); a run that needs longer is checkpointed and requeued before the limit")
    launch.add_argument("--constraint", help="Slurm node constraint")
    launch.add_argument("--signal-delay-s", type=int, metavar="S",
                        help="Slurm sends SIGUSR2 this long before the time limit (default 120)")
    launch.add_argument("--max-requeues", type=int, metavar="N",
                        help="time-limit requeues allowed per job (default 20; preemptions are not counted)")
    wait = launch.add_mutually_exclusive_group()
    wait.add_argument("--wait", dest="wait", action="store_true", default=None,
                      help="slurm: wait for the jobs and print the table (default: submit and return)")
    wait.add_argument("--no-wait", dest="wait", action="store_false", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="run_benchmark.py",
        description="Continual-learning benchmark harness for PEFT methods on frozen ViTs. "
                    "With no arguments: every method (variants aside) on the synthetic benchmark, seed 0.",
        epilog="The run options (`run` may be omitted): python run_benchmark.py run --help")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run methods on a benchmark (the default command)")
    add_run_options(run)
    add_launch_options(run)
    sweep = sub.add_parser(
        "sweep", help="choose each method's settings on held-out training images (validation), then run them on "
                      "the test set over --seeds (docs/tuning.md)")
    add_run_options(sweep)
    search = sweep.add_argument_group("search (each grid point runs on validation data, never on the test set)")
    search.add_argument("--grid", type=_key_value, action="append", default=[], metavar="KEY=V1,V2,...",
                        help="search KEY over these values; repeat for more settings (their grid is every "
                             "combination). Replaces the methods' default spaces; a key only some methods have "
                             "applies to those (default: each method's space, `sweep --dry-run` lists it)")
    search.add_argument("--budget", type=int, metavar="N",
                        help="run N points of each method's grid, drawn at random by --sweep-seed (default: all)")
    search.add_argument("--sweep-seed", type=int, default=0, metavar="S", help="seed of the --budget draw (default: 0)")
    search.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                        help="share of each class's training images held out for validation (data.val_fraction; "
                             "the same images for every seed; default: 0.2)")
    search.add_argument("--val-seeds", type=int, nargs="+", metavar="S",
                        help="seeds of the validation runs; a point's score is its mean A_T over them (default: "
                             "the first of --seeds)")
    search.add_argument("--dry-run", action="store_true",
                        help="print each method's grid and the number of runs, run nothing")
    add_launch_options(sweep)
    preflight = sub.add_parser(
        "preflight", help="run every selected run end to end at its real configuration, cut short; print each one's "
                          "peak memory and the projected time of the full runs (docs/preflight.md)")
    add_run_options(preflight)
    cut = preflight.add_argument_group("preflight (each run cut short; everything else at the real configuration)")
    cut.add_argument("--train-batches", type=int, default=2, metavar="N",
                     help="training batches per epoch, and per task's training images (default: 2)")
    cut.add_argument("--max-epochs", type=int, default=2, metavar="N",
                     help="epochs per task at most (default: 2; the projection uses the real count)")
    cut.add_argument("--test-images", type=int, default=2, metavar="N", help="test images per task (default: 2)")
    cut.add_argument("--probe-batch", type=int, metavar="B",
                     help="batch size of the cut run; memory and time are also probed at twice it (default: 2 on "
                          "CPU, 32 for the tiny synth ViT; on CUDA the preset's batch, probed with half of it)")
    cut.add_argument("--fake-data", action="store_true",
                     help="a generated stand-in of each data set even where --data-root holds the real one")
    cut.add_argument("--project-for", metavar="DEVICE",
                     help="project the full runs' time on DEVICE (e.g. h200) from the newest stored bench result "
                          "of it (results/measured/, <results-dir>/bench/) instead of on this device")
    cut.add_argument("--bench", metavar="FILE", help="project from this stored bench result (JSON) instead")
    cut.add_argument("--scratch", metavar="DIR",
                     help="where the cut runs' results, checkpoints and stand-in data go (default: "
                          "<results-dir>/preflight/scratch; never the results store)")
    preflight.add_argument("--results-dir", default="results",
                           help="the report goes to <results-dir>/preflight/ (default: results)")
    preflight.add_argument("--no-progress", action="store_true", help="hide progress bars")
    prepare = sub.add_parser(
        "prepare", help="download, verify and unpack data sets (and split files) into the layout the loaders "
                        "read; cache the methods' pretrained weights (docs/datasets.md)")
    prepare.add_argument("datasets", nargs="*", metavar="DATASET",
                         help="cifar100, imagenet-r, imagenet-a, domainnet, or all")
    prepare.add_argument("--data-root", default=os.environ.get("CL_DATA_ROOT", "./data"), metavar="DIR",
                         help="where the data sets go, the --data-root of later runs (default: $CL_DATA_ROOT or "
                              "./data)")
    prepare.add_argument("--check", action="store_true",
                         help="only verify what is in the data root (no network) and list what is missing or wrong")
    prepare.add_argument("--from", dest="source_dir", metavar="DIR",
                         help="take the archives from DIR (downloaded by hand, under their official names) "
                              "instead of downloading them")
    prepare.add_argument("--mirror", metavar="URL",
                         help="download every file from URL/<official file name> instead of its official URL")
    prepare.add_argument("--keep-archives", action="store_true",
                         help="keep the downloaded archives in <data-root>/.prepare/downloads/ after unpacking")
    prepare.add_argument("--weights", action="store_true",
                         help="also cache the pinned ViT-B/16 weights of --methods in the Hugging Face cache "
                              "($HF_HOME), for compute nodes without internet")
    prepare.add_argument("--methods", nargs="+", metavar="NAME",
                         help="whose weights --weights caches (default: every method)")
    prepare.add_argument("--no-progress", action="store_true", help="hide progress bars")
    status = sub.add_parser("status", help="state of submitted runs: done, running, pending or failed")
    status.add_argument("--results-dir", default="results", help="where run JSONs are stored (default: results)")
    status.add_argument("--retry-failed", action="store_true",
                        help="resubmit the failed runs with the launcher and options they were submitted with")
    listing = sub.add_parser("list", help="list registered methods and datasets")
    listing.add_argument("--presets", action="store_true",
                         help="print each method's per-dataset recipe and the named presets instead")
    report = sub.add_parser("report", help="aggregate stored runs over seeds into a table")
    report.add_argument("--dataset", nargs="+", metavar="NAME", help="only these datasets")
    report.add_argument("--methods", nargs="+", metavar="NAME", help="only these methods")
    report.add_argument("--format", default="markdown", choices=["markdown", "latex", "csv", "json", "html"],
                        help="output format (default: markdown)")
    report.add_argument("--out", metavar="FILE", help="write the table here instead of printing it")
    report.add_argument("--plot", metavar="FILE", help="also plot accuracy after each task (.png, .pdf or .svg)")
    report.add_argument("--with-published", action="store_true",
                        help="add the published A_T/A_bar (results/reference/published.csv) and our difference")
    report.add_argument("--versus", nargs="?", const="", metavar="METHOD",
                        help="paired comparison over the seeds two groups share (off unless given): markdown, CSV "
                             "and JSON add each group's mean difference to METHOD in A_T and A_bar with a 95%% CI "
                             "(paired t; CSV/JSON also a seed bootstrap from 5 pairs) and the paired t-test's p; "
                             "LaTeX marks with a dagger the cells not significantly different from their column's "
                             "best (alpha 0.05). METHOD defaults to inflora; a benchmark without it is compared "
                             "to its best continual method. Fewer than 2 shared seeds: n/a")
    report.add_argument("--reproduction", action="store_true",
                        help="print the reproduction table instead: per method, dataset and task count with a "
                             "published value (results/reference/published.csv), ours (mean ± sd over seeds, in "
                             "the published metric variant), the published value, the difference and a verdict "
                             "(within the published sd, within 1 point, or off), in any format; not with --versus")
    report.add_argument("--sweep", action="store_true",
                        help="print the sweeps' grids instead: every point tried with its validation A_T and A_bar, "
                             "and the chosen one (markdown, latex, csv or json)")
    report.add_argument("--results-dir", default="results", help="where run JSONs are stored (default: results)")
    check = sub.add_parser("check", help="regression check of every method on a small synth split")
    check.add_argument("--update", action="store_true", help="rewrite results/baselines/ci.json with today's values")
    check.add_argument("--tolerance", type=float, default=2.0, help="allowed drop in points (default: 2)")
    check.add_argument("--methods", nargs="+", metavar="NAME", help="only these methods (default: all)")
    bench = sub.add_parser("bench", help="training/evaluation throughput of each method against the frozen backbone")
    bench.add_argument("--methods", nargs="+", metavar="NAME",
                       help="methods to time (default: every method of the default run but the upper bound)")
    bench.add_argument("--backbone", default="tiny", help="tiny (default) or vit-b16 / a timm ViT name (random init)")
    bench.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    bench.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="autocast precision")
    bench.add_argument("--compile", action="store_true", help="torch.compile the training step and prediction")
    bench.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if available)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    bench.add_argument("--steps", type=int, default=10, help="timed steps (default: 10)")
    bench.add_argument("--results-dir", default="results", help="JSON goes to <results-dir>/bench/ (default: results)")
    return parser


def command_status(args: argparse.Namespace) -> int:
    from benchmark import job_status, launcher
    from benchmark.job import RunSpec

    store.check_results_dir(args.results_dir, writable=False)
    records = job_status.read_records(args.results_dir)
    if not records:
        raise ConfigError(f"no submitted runs under {job_status.jobs_dir(args.results_dir)}; "
                          "submit with `run --launcher local|slurm`")
    states = job_status.states(args.results_dir, records)
    rows = [[s.run_id, s.state, s.job_id or "", s.detail, s.log or ""] for s in states]
    print(tabulate(rows, headers=["run", "state", "job", "detail", "log"], tablefmt="github", disable_numparse=True))
    counts = {name: sum(s.state == name for s in states) for name in ("done", "running", "pending", "failed")}
    print("\n" + ", ".join(f"{n} {name}" for name, n in counts.items()))
    failed = {s.run_id for s in states if s.state == "failed"}
    if not args.retry_failed or not failed:
        return 1 if failed else 0
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        if record["run_id"] in failed:
            groups.setdefault((record["launcher"], repr(sorted(record["options"].items()))), []).append(record)
    for (name, _), group in groups.items():
        try:
            specs = [dataclasses.replace(RunSpec.from_dict(r["spec"]), fresh=False) for r in group]
        except TypeError as err:
            raise ConfigError(f"job record of {group[0]['run_id']} is from another version ({err}); rerun the "
                              "`run` command instead") from None
        options = dict(group[0]["options"])
        max_parallel = options.pop("max_parallel", None)
        print(f"resubmitting {len(specs)} failed run(s) with the {name} launcher", file=sys.stderr)
        launcher.submit(specs, name, options, max_parallel, args.results_dir)
    retried = [r for r in job_status.read_records(args.results_dir) if r["run_id"] in failed]
    return 1 if any(s.state == "failed" for s in job_status.states(args.results_dir, retried)) else 0


def command_report(args: argparse.Namespace) -> int:
    from benchmark import paired, report, reproduction, sweep_record

    if args.reproduction and args.versus is not None:
        raise ConfigError("--reproduction and --versus are separate tables: give one of them")

    store.check_results_dir(args.results_dir, writable=False)
    warn = lambda message: print(f"warning: {message}", file=sys.stderr)  # noqa: E731
    records = sweep_record.load(args.results_dir, warn=warn)
    if args.sweep:
        if args.reproduction or args.versus is not None or args.with_published or args.plot:
            raise ConfigError("report --sweep prints the sweeps' grids only: leave out --reproduction, --versus, "
                              "--with-published and --plot")
        return _emit(args, sweep_record.grid_table(records, args.format, args.dataset, args.methods), "sweep grids")
    runs = report.collect(args.results_dir, args.dataset, args.methods)
    table = sweep_record.mark_tuned(report.aggregate(runs), runs, records)
    if args.with_published:
        table = report.with_published(table, report.load_published())
    if args.versus is not None:
        table = paired.with_paired(runs, table, args.versus or None)
    if args.reproduction:
        text = reproduction.render(reproduction.build(runs, report.load_published()), args.format)
    elif args.format == "html":
        from benchmark import html_report

        text = html_report.to_html(runs, table, args.results_dir)
    else:
        text = report.render(table, args.format)
    if args.plot:
        print(f"wrote {report.plot(runs, table, args.plot)}", file=sys.stderr)
    return _emit(args, text, f"{len(table)} rows")


def _emit(args: argparse.Namespace, text: str, what: str) -> int:
    """Print ``text``, or write it to ``--out``."""
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out} ({what})", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def command_sweep(args: argparse.Namespace) -> int:
    from benchmark.sweep import command_sweep as sweep

    return sweep(args)


def command_check(args: argparse.Namespace) -> int:
    from benchmark import regression

    if args.tolerance < 0:
        raise ConfigError(f"--tolerance must be non-negative, got {args.tolerance}")
    return regression.check(update=args.update, tolerance=args.tolerance, methods=args.methods)


RECIPE_KEYS = ("epochs", "batch_size", "lr", "optimizer", "schedule", "drop_last")


def command_bench(args: argparse.Namespace) -> int:
    from benchmark.bench import run_bench
    from benchmark.protocol import auto_device, resolve_device

    for key in ("batch_size", "steps"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be non-negative, got {args.warmup}")
    store.check_results_dir(args.results_dir)
    methods = [METHODS.canonical(m) for m in args.methods] if args.methods else \
        [m for m in METHODS.default_names() if not METHODS.get(m).upper_bound]
    run_bench(methods, args.backbone, args.batch_size, args.precision, resolve_device(auto_device(args.device)),
              args.warmup, args.steps, args.results_dir, compile=args.compile)
    return 0


def command_preflight(args: argparse.Namespace) -> int:
    from benchmark import preflight
    from benchmark.protocol import auto_device, resolve_device

    for key in ("train_batches", "max_epochs", "test_images", "probe_batch"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
    if args.project_for and args.bench:
        raise ConfigError("--project-for and --bench both name the device to project for: give one of them")
    store.check_results_dir(args.results_dir)
    device = resolve_device(auto_device(args.device))
    args.device = str(device)
    errors: list[tuple[str, str]] = []
    configs = resolve_runs(args, errors)
    runs = [(preflight.label(c), c, None) for c in configs] + [(name, None, error) for name, error in errors]
    scratch = Path(args.scratch) if args.scratch else Path(args.results_dir) / preflight.REPORTS / "scratch"
    store.check_results_dir(scratch)
    settings = preflight.Settings(scratch=scratch, train_batches=args.train_batches, max_epochs=args.max_epochs,
                                  test_images=args.test_images, batch=args.probe_batch, fake_data=args.fake_data,
                                  project_for=args.project_for, bench=args.bench,
                                  bench_dirs=(preflight.projection.MEASURED_DIR, Path(args.results_dir) / "bench"))
    return preflight.run_preflight(runs, settings, device, args.results_dir, progress=not args.no_progress)


def command_prepare(args: argparse.Namespace) -> int:
    from benchmark.prepare import prepare

    return prepare(args.datasets, Path(args.data_root).expanduser(), check=args.check,
                   source_dir=Path(args.source_dir).expanduser() if args.source_dir else None, mirror=args.mirror,
                   weights=args.weights, methods=args.methods, progress=not args.no_progress,
                   keep_archives=args.keep_archives)


def command_list_presets() -> int:
    """Each method's recipe per dataset (Config < DATASET_DEFAULTS) and the named presets on top."""
    import dataclasses

    rows = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        base = dataclasses.asdict(cls.Config())
        for dataset in DATASETS.names():
            recipe = {**base, **cls.DATASET_DEFAULTS.get(dataset, {})}
            other = {k: v for k, v in cls.DATASET_DEFAULTS.get(dataset, {}).items() if k not in RECIPE_KEYS}
            rows.append([name, dataset, *(recipe[k] for k in RECIPE_KEYS), f"vit-b16: {cls.pretrained_tag}",
                         ", ".join(f"{k}={v}" for k, v in other.items())])
    print(tabulate(rows, headers=["method", "dataset", *RECIPE_KEYS, "weights tag", "other settings"],
                   tablefmt="github"))
    print("\nPresets (--preset) applied on top: " + "; ".join(
        f"{name}: {', '.join(f'{k}={v}' for k, v in values.items()) or 'the recipe as is'}"
        for name, values in PRESETS.items()))
    return 0


def command_list() -> int:
    rows = [[name, ", ".join(a for a, c in METHODS.aliases().items() if c == name),
             METHODS.get(name).variant_of or "", (METHODS.get(name).__doc__ or "").strip().splitlines()[0]]
            for name in METHODS.names()]
    print(tabulate(rows, headers=["method", "aliases", "variant of", "description"], tablefmt="github"))
    print()
    rows = [[name, DATASETS.get(name).num_classes, DATASETS.get(name).default_n_tasks,
             DATASETS.get(name).default_backbone] for name in DATASETS.names()]
    print(tabulate(rows, headers=["dataset", "classes", "default tasks", "backbone"], tablefmt="github"))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        argv.insert(0, "run")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        commands = {"list": lambda: command_list_presets() if args.presets else command_list(),
                    "status": lambda: command_status(args),
                    "report": lambda: command_report(args),
                    "check": lambda: command_check(args), "bench": lambda: command_bench(args),
                    "preflight": lambda: command_preflight(args), "prepare": lambda: command_prepare(args),
                    "sweep": lambda: command_sweep(args)}
        return commands.get(args.command, lambda: command_run(args))()
    except ConfigError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
