"""Aggregate stored runs over seeds into tables: markdown, booktabs LaTeX, CSV and JSON.

One group per (dataset, n_tasks, method, configuration except the seed): runs whose resolved
configurations differ in anything but the seed (and device/paths) never share a cell. Each group
reports mean and sample standard deviation (ddof = 1; empty for a single seed) of the final
accuracy A_T, the average incremental accuracy A_bar (both sample-weighted) and the forgetting.
With ``paired.with_paired`` the tables add paired comparisons over seeds (markdown, CSV, JSON: the
difference to a reference with its interval; LaTeX: a dagger on cells not significantly different
from the column's best); ``benchmark.reproduction`` builds the reproduction table.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from benchmark import paired, store, sweep_record
from benchmark.config import identity
from benchmark.errors import ConfigError

METRICS = ("final_acc", "avg_acc", "forgetting")
TASK_MEAN_METRICS = ("final_acc_task_mean", "avg_acc_task_mean")  # per run only: the reproduction table's
VALIDATION_SUFFIX = " (validation)"
COLUMNS = ["dataset", "n_tasks", "method", "n_seeds", "final_acc_mean", "final_acc_std", "avg_acc_mean",
           "avg_acc_std", "forgetting_mean", "forgetting_std"]
FORMATS = ("markdown", "latex", "csv", "json")  # and html, which needs the runs: html_report.to_html()
PUBLISHED_FILE = Path(__file__).resolve().parents[1] / "results" / "reference" / "published.csv"
SWEEP_COLUMNS = ["sweep", "sweep_grid_points", "sweep_points_tried", "sweep_note"]  # sweep_record.mark_tuned
PUBLISHED_COLUMNS = ["published_final_acc", "published_final_acc_std", "published_avg_acc", "published_source",
                     "final_acc_diff"]


def config_group(config: dict) -> str:
    """Hash of what a run computes (``config.identity``) without the seed: its table cell."""
    kept = {k: v for k, v in identity(config).items() if k != "seed"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:8]


def collect(results_dir: str | Path, datasets: list[str] | None = None,
            methods: list[str] | None = None, warn=None) -> pd.DataFrame:
    """One row per stored run (corrupt files are reported through ``warn`` and skipped): its
    benchmark, method, seed, config group, ``METRICS`` and ``TASK_MEAN_METRICS`` (missing where a
    run file lacks them), and ``result``, the whole stored result (the HTML run sections read it)."""
    rows = []
    for result in store.load_results(results_dir, warn=warn):
        if datasets and result["dataset"] not in datasets or methods and result["method"] not in methods:
            continue
        # a run evaluated on held-out training images (data.val_fraction) is never shown as a test result
        validation = result.get("data_info", {}).get("evaluated_on") == "validation"
        rows.append({"dataset": result["dataset"] + (VALIDATION_SUFFIX if validation else ""),
                     "n_tasks": result["n_tasks"], "method": result["method"],
                     "seed": result["seed"], "group": config_group(result.get("config", {})),
                     "upper_bound": bool(result.get("upper_bound", False)), "run_id": result["run_id"],
                     "step_acc": result.get("step_acc") or [result["final_acc"]],
                     "hparams": json.dumps(result.get("config", {}).get("hparams", {}), sort_keys=True),
                     **{m: result.get(m) for m in METRICS + TASK_MEAN_METRICS}, "result": result})
    if not rows:
        scope = f" matching datasets={datasets} methods={methods}" if datasets or methods else ""
        raise ConfigError(f"no results in {store.runs_dir(results_dir)}{scope}; run "
                          "`python run_benchmark.py` first")
    return pd.DataFrame(rows)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample sd over seeds per group, in run order of datasets and methods."""
    keys = ["dataset", "n_tasks", "method", "group"]
    grouped = runs.groupby(keys, sort=False)
    table = grouped.agg(n_seeds=("seed", "nunique"), upper_bound=("upper_bound", "first"),
                        **{f"{m}_{s}": (m, s) for m in METRICS for s in ("mean", "std")}).reset_index()
    # a method with several configurations in one benchmark gets its config hash in the label
    clashes = table.duplicated(["dataset", "n_tasks", "method"], keep=False)
    table["label"] = table["method"].where(~clashes, table["method"] + " [" + table["group"] + "]")
    table["label"] = table["label"].where(~table["upper_bound"], table["label"] + " (upper bound)")
    return table.sort_values(["dataset", "n_tasks", "upper_bound"], kind="stable").reset_index(drop=True)


def load_published(path: str | Path = PUBLISHED_FILE) -> pd.DataFrame:
    """Published numbers: method, dataset, n_tasks, metric, value, std, variant, source, verified."""
    try:
        published = pd.read_csv(path)
    except (OSError, pd.errors.ParserError) as err:
        raise ConfigError(f"cannot read published numbers {path}: {err}") from None
    missing = {"method", "dataset", "n_tasks", "metric", "value", "std", "variant", "source"} - set(published.columns)
    if missing:
        raise ConfigError(f"published numbers {path} lack columns {sorted(missing)}")
    return published


def with_published(table: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Add the first published A_T / A_bar of each group (sample-weighted sources first, then
    task-mean ones, in file order) and our A_T minus the published one."""
    ranked = published.assign(rank=(published["variant"] != "sample-weighted").astype(int)).sort_values(
        "rank", kind="stable")
    first = ranked.drop_duplicates(["method", "dataset", "n_tasks", "metric"]).set_index(
        ["method", "dataset", "n_tasks", "metric"])
    out = table.copy()

    def lookup(row, metric, field):
        key = (row["method"], row["dataset"], row["n_tasks"], metric)
        return first.loc[key, field] if key in first.index else None

    out["published_final_acc"] = out.apply(lambda r: lookup(r, "final_acc", "value"), axis=1)
    out["published_final_acc_std"] = out.apply(lambda r: lookup(r, "final_acc", "std"), axis=1)
    out["published_avg_acc"] = out.apply(lambda r: lookup(r, "avg_acc", "value"), axis=1)
    out["published_source"] = out.apply(
        lambda r: None if lookup(r, "final_acc", "source") is None
        else f"{lookup(r, 'final_acc', 'source')} [{lookup(r, 'final_acc', 'variant')}]", axis=1)
    out["final_acc_diff"] = pd.to_numeric(out["final_acc_mean"] - pd.to_numeric(out["published_final_acc"]))
    return out


def benchmarks_of(table: pd.DataFrame) -> list[tuple[str, int]]:
    """The (dataset, n_tasks) pairs of a table, in table order."""
    return list(dict.fromkeys(zip(table["dataset"], table["n_tasks"])))


def in_benchmark(frame: pd.DataFrame, dataset: str, n_tasks: int) -> pd.DataFrame:
    """The rows of ``frame`` on one benchmark (data set, task count)."""
    return frame[(frame["dataset"] == dataset) & (frame["n_tasks"] == n_tasks)]


def runs_of(runs: pd.DataFrame, row) -> pd.DataFrame:
    """The runs behind one aggregated row."""
    return in_benchmark(runs, row.dataset, row.n_tasks).query("method == @row.method and group == @row.group")


def mean_sd(mean: float, sd: float, pm: str = " ± ") -> str:
    """``mean ± sd`` to two decimals; the mean alone without an sd; a dash without a mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.2f}" if sd is None or math.isnan(sd) else f"{mean:.2f}{pm}{sd:.2f}"


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub markdown, one row per group; with published numbers, their columns and sources; with
    paired comparisons (``paired.with_paired``), the difference to the reference and its p-value."""
    published = "published_final_acc" in table
    compared = "vs_reference" in table
    paired_headers, paired_cells = paired.markdown_columns(table) if compared else ([], [[]] * len(table))
    rows, sources = [], []
    for r, paired_row in zip(table.itertuples(), paired_cells):
        row = [r.dataset, r.n_tasks, r.label, mean_sd(r.final_acc_mean, r.final_acc_std),
               mean_sd(r.avg_acc_mean, r.avg_acc_std), mean_sd(r.forgetting_mean, r.forgetting_std), r.n_seeds]
        if published:
            has = r.published_source is not None
            if has and r.published_source not in sources:
                sources.append(r.published_source)
            row += [mean_sd(r.published_final_acc, r.published_final_acc_std) if has else "–",
                    f"{r.final_acc_diff:+.2f}" if has else "–",
                    f"[{sources.index(r.published_source) + 1}]" if has else ""]
        rows.append(row + paired_row)
    headers = ["dataset", "tasks", "method", "A_T (%)", "A_bar (%)", "forgetting", "seeds"]
    if published:
        headers += ["published A_T", "Δ A_T", "source"]
    text = tabulate(rows, headers=headers + paired_headers, tablefmt="github", disable_numparse=True)
    text += "".join(f"\n{note}" for note in sweep_record.notes(table))
    return (text + "".join(f"\n[{i + 1}] {s}" for i, s in enumerate(sources))
            + (f"\n\n{paired.MARKDOWN_NOTE}" if compared else ""))


def _latex_sweep_mark(text: str) -> str:
    return text.replace(sweep_record.MARK, r"$^\ddagger$")


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join("\\" + c if c in "&%$#_{}" else c for c in str(text))


def to_latex(table: pd.DataFrame) -> str:
    """Booktabs table: methods as rows, (dataset, tasks) column groups with A_T and A_bar; the best
    continual method per column in bold (upper bounds are not ranked); mean $\\pm$ sd. With paired
    comparisons (``paired.with_paired``), a dagger on the cells not significantly different from
    their column's best and a note under the rule."""
    benchmarks = benchmarks_of(table)
    # one row per method even when a sweep tuned it on some benchmarks only: the mark then goes on
    # the tuned cells, and on the label only when every cell of the row is tuned
    table = table.assign(row=table["label"].map(sweep_record.unmarked))
    table["tuned"] = table["label"] != table["row"]
    labels = list(dict.fromkeys(table.sort_values("upper_bound", kind="stable")["row"]))
    all_tuned = table.groupby("row", sort=False)["tuned"].all()
    cells = {(r.row, r.dataset, r.n_tasks): r for r in table.itertuples()}
    best = {}
    for bench in benchmarks:
        ranked = in_benchmark(table, *bench).query("not upper_bound")
        for metric in ("final_acc", "avg_acc"):
            values = ranked[f"{metric}_mean"].dropna()
            best[bench, metric] = values.max() if len(values) else None
    lines = [r"\begin{tabular}{l" + "cc" * len(benchmarks) + "}", r"\toprule"]
    lines.append("Method & " + " & ".join(
        rf"\multicolumn{{2}}{{c}}{{{latex_escape(d)} ({t} tasks)}}" for d, t in benchmarks) + r" \\")
    lines.append("".join(rf"\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(len(benchmarks))))
    lines.append(" & " + " & ".join(r"$A_T$ & $\bar{A}$" for _ in benchmarks) + r" \\")
    lines.append(r"\midrule")
    for label in labels:
        row = [_latex_sweep_mark(latex_escape(label + (f" {sweep_record.MARK}" if all_tuned[label] else "")))]
        for bench in benchmarks:
            cell = cells.get((label, *bench))
            for metric in ("final_acc", "avg_acc"):
                if cell is None:
                    row.append("--")
                    continue
                mean, sd = getattr(cell, f"{metric}_mean"), getattr(cell, f"{metric}_std")
                text = mean_sd(mean, sd, r" $\pm$ ")
                is_best = not cell.upper_bound and best[bench, metric] is not None and mean == best[bench, metric]
                if not is_best and "final_acc_best_p" in table and paired.not_different_from_best(cell, metric):
                    text += r"$^\dagger$"
                row.append((rf"\textbf{{{text}}}" if is_best else text)
                           + (r"$^\ddagger$" if cell.tuned and not all_tuned[label] else ""))
        lines.append(" & ".join(row) + r" \\")
    if "published_final_acc" in table:
        lines += _latex_published_rows(table, benchmarks)
    lines.append(r"\bottomrule")
    if "final_acc_best_p" in table:
        lines += _latex_paired_note(table, 1 + 2 * len(benchmarks))
    width = 1 + 2 * len(benchmarks)
    lines += [rf"\multicolumn{{{width}}}{{l}}{{\footnotesize {_latex_sweep_mark(latex_escape(note))}}} \\"
              for note in sweep_record.notes(table)]
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


def _latex_paired_note(table: pd.DataFrame, n_columns: int) -> list[str]:
    """Note rows under the bottom rule explaining the daggers, or why there are none (n/a)."""
    counts = pd.concat([table[f"{m}_best_n"] for m in paired.METRICS]).dropna()
    tested, untested = (counts >= paired.MIN_PAIRS_TEST).any(), (counts < paired.MIN_PAIRS_TEST).any()
    if tested:
        notes = [r"$^\dagger$ not significantly different from the best (bold) in its column:",
                 rf"two-sided paired $t$-test over the seeds both ran, $\alpha = {paired.ALPHA}$."]
        if untested:
            notes.append(rf"No test (n/a) where fewer than {paired.MIN_PAIRS_TEST} seeds are shared.")
    else:
        notes = [rf"$^\dagger$ n/a: no cell shares {paired.MIN_PAIRS_TEST} or more seeds with its column's best, "
                 "so no paired test."]
    return [rf"\multicolumn{{{n_columns}}}{{l}}{{\footnotesize {note}}} \\" for note in notes]


PM = r" $\pm$ "


def _latex_published_rows(table: pd.DataFrame, benchmarks: list) -> list[str]:
    """Rows "method (published)" in italics under a rule, one per method with a published value."""
    known = table[table["published_source"].notna()]
    lines = []
    for method in dict.fromkeys(known["method"]):
        row = [rf"\textit{{{latex_escape(method)} (published)}}"]
        for bench in benchmarks:
            match = in_benchmark(known, *bench).query("method == @method")
            if match.empty:
                row += ["--", "--"]
                continue
            r = match.iloc[0]
            final = mean_sd(r.published_final_acc, r.published_final_acc_std, PM)
            row += [rf"\textit{{{final}}}",
                    rf"\textit{{{r.published_avg_acc:.2f}}}" if pd.notna(r.published_avg_acc) else "--"]
        lines.append(" & ".join(row) + r" \\")
    return [r"\midrule"] + lines if lines else []


def to_records(table: pd.DataFrame) -> pd.DataFrame:
    """The CSV/JSON layout: one row per group, the documented columns."""
    extra = [c for c in PUBLISHED_COLUMNS + paired.PAIRED_COLUMNS + SWEEP_COLUMNS if c in table]
    return table.assign(method=table["label"].map(sweep_record.unmarked))[COLUMNS + extra]


def render(table: pd.DataFrame, fmt: str) -> str:
    """The aggregated table in one of ``FORMATS``."""
    if fmt == "markdown":
        return to_markdown(table) + "\n"
    if fmt == "latex":
        return to_latex(table)
    if fmt == "csv":
        return to_records(table).to_csv(index=False, float_format="%.4f")
    if fmt == "json":
        return to_records(table).to_json(orient="records", indent=1) + "\n"
    raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def plot(runs: pd.DataFrame, table: pd.DataFrame, path: str | Path) -> Path:
    """Accuracy on all seen classes after each task (A_i, sample-weighted): per benchmark one
    panel, per method the mean over seeds with a +-1 sd band; upper bounds as dashed lines.
    The format follows the file name (.png, .pdf, .svg)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(runs, table, benchmarks_of(table), path)
    return path


def save_figure(runs: pd.DataFrame, table: pd.DataFrame, benchmarks: list, target, fmt: str | None = None) -> None:
    """Accuracy on all seen classes after each task, one panel per benchmark, mean over seeds per
    row (upper bounds as a dashed line), saved to ``target`` (a path or a file object) as ``fmt``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(benchmarks), figsize=(5.5 * len(benchmarks), 4.2), squeeze=False)
    for ax, (dataset, n_tasks) in zip(axes[0], benchmarks):
        for row in in_benchmark(table, dataset, n_tasks).itertuples():
            group = runs_of(runs, row)
            curves = np.array([c for c in group["step_acc"] if len(c) == len(group["step_acc"].iloc[0])], dtype=float)
            mean = curves.mean(0)
            if row.upper_bound:
                ax.axhline(mean[-1], linestyle="--", color="0.4", label=row.label)
                continue
            steps = np.arange(1, len(mean) + 1)
            (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=f"{row.label} (n={len(curves)})")
            if len(curves) > 1:
                sd = curves.std(0, ddof=1)
                ax.fill_between(steps, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(f"{dataset}, {n_tasks} tasks")
        ax.set_xlabel("tasks learned")
        ax.set_ylabel("accuracy on all seen classes (%)")
        ax.set_xticks(range(1, n_tasks + 1, max(1, n_tasks // 10)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(target, dpi=110, format=fmt)
    plt.close(fig)

