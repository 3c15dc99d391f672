"""The reproduction table (``report --reproduction``): our runs against published numbers.

One line per group of our runs (method configuration on a dataset and task count) and published
value of the same method, dataset and task count (``results/reference/published.csv``): several
published values of one cell (the paper, official logs, other re-runs) each get their line, in file
order. Benchmarks without a published value, and validation runs, do not appear.

Ours is the mean and sample sd (ddof = 1) over seeds of the metric in the published value's
variant (``VARIANT_COLUMNS``): A_T and A_bar sample-weighted or task-mean, forgetting max-based.
Variants are never mixed: a published variant the runs lack (older run files have no task-mean
values; no run has CODA's forgetting) is listed as "not compared", never set against another
variant.

Verdict on Δ = ours - published, the first that holds: "within published spread" (|Δ| at most the
published sd, only where one is given), "within 1 point" (|Δ| <= 1), else "off". Our own sd is
shown beside it but does not enter the verdict.
"""

from __future__ import annotations

import html
import math

import pandas as pd
from tabulate import tabulate

from benchmark import report
from benchmark.errors import ConfigError
from benchmark.html_report import page_head

VARIANT_COLUMNS = {("final_acc", "sample-weighted"): "final_acc", ("final_acc", "task-mean"): "final_acc_task_mean",
                   ("avg_acc", "sample-weighted"): "avg_acc", ("avg_acc", "task-mean"): "avg_acc_task_mean",
                   ("forgetting", "max-based"): "forgetting"}
METRIC_NAMES = {"final_acc": "A_T", "avg_acc": "A_bar", "forgetting": "F"}
LATEX_METRICS = {"final_acc": "$A_T$", "avg_acc": r"$\bar{A}$", "forgetting": "$F$"}
WITHIN_SPREAD, WITHIN_POINT, OFF = "within published spread", "within 1 point", "off"
POINT = 1.0
TOLERANCE = 1e-9  # float rounding: 86.51 + 0.73 - 86.51 must count as within 0.73
COLUMNS = ["method", "config", "dataset", "n_tasks", "metric", "variant", "ours_mean", "ours_std", "n_seeds",
           "published", "published_std", "delta", "verdict", "source", "verified"]
VERDICT_RULE = ("Verdict on Δ = ours − published, the first that holds: |Δ| ≤ published sd: within published "
                "spread; |Δ| ≤ 1: within 1 point; else off. Ours: mean ± sample sd over seeds, in the published "
                "value's variant; * published value not verified against its source.")


def verdict(delta: float, published_std: float) -> str:
    """The verdict on ``delta`` (ours - published); ``published_std`` NaN where none is given."""
    if not math.isnan(published_std) and abs(delta) <= published_std + TOLERANCE:
        return WITHIN_SPREAD
    return WITHIN_POINT if abs(delta) <= POINT + TOLERANCE else OFF


def _line(group, runs: pd.DataFrame, published) -> dict:
    """One table line: ``group`` (a row of ``report.aggregate``) against one published row."""
    column = VARIANT_COLUMNS.get((published.metric, published.variant))
    values = pd.to_numeric(runs[column]).dropna() if column else pd.Series(dtype=float)
    line = {"method": group.label, "config": group.group, "dataset": group.dataset, "n_tasks": group.n_tasks,
            "metric": published.metric, "variant": published.variant, "ours_mean": math.nan,
            "ours_std": math.nan, "n_seeds": len(values), "published": float(published.value),
            "published_std": float(published.std), "delta": math.nan, "source": published.source,
            "verified": getattr(published, "verified", "no")}
    if column is None:
        name = METRIC_NAMES.get(published.metric, published.metric)
        return {**line, "verdict": f"not compared: no {published.variant} {name} in this harness"}
    if values.empty:
        return {**line, "verdict": f"not compared: the runs lack the {published.variant} value"}
    mean = float(values.mean())
    return {**line, "ours_mean": mean, "ours_std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            "delta": mean - line["published"], "verdict": verdict(mean - line["published"], line["published_std"])}


def build(runs: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """``COLUMNS``, one line per group of ``runs`` (``report.collect``) and matching published row
    of ``published`` (``report.load_published``), ordered by method, dataset, task count, metric
    (A_T, A_bar, F) and file order. ``ConfigError`` when nothing matches."""
    runs = runs[~runs["dataset"].str.endswith(report.VALIDATION_SUFFIX)]
    lines = []
    if not runs.empty:
        for group in report.aggregate(runs).itertuples():
            matches = published[(published["method"] == group.method) & (published["dataset"] == group.dataset)
                                & (published["n_tasks"] == group.n_tasks)]
            lines += [_line(group, report.runs_of(runs, group), row) for row in matches.itertuples()]
    if not lines:
        cells = sorted({f"{m} on {d} ({t} tasks)" for m, d, t in zip(runs["method"], runs["dataset"], runs["n_tasks"])})
        raise ConfigError(f"no published value for the runs ({', '.join(cells) or 'only validation runs'}); "
                          f"published numbers: {report.PUBLISHED_FILE}")
    order = {metric: i for i, metric in enumerate(METRIC_NAMES)}
    table = pd.DataFrame(lines, columns=COLUMNS)
    table = table.sort_values(["method", "dataset", "n_tasks", "metric"], kind="stable",
                              key=lambda column: column.map(order) if column.name == "metric" else column)
    return table.reset_index(drop=True)


def _sources(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["source"]))


def _delta(delta: float, latex: bool = False) -> str:
    if math.isnan(delta):
        return "–" if not latex else "--"
    return f"${delta:+.2f}$" if latex else f"{delta:+.2f}"


def _published(row, pm: str = " ± ", star: str = "*") -> str:
    return report.mean_sd(row.published, row.published_std, pm) + ("" if row.verified == "yes" else star)


HEADERS = ["method", "dataset", "tasks", "metric", "variant", "ours", "seeds", "published", "Δ", "verdict", "source"]


def text_cells(table: pd.DataFrame) -> tuple[list[list], list[str]]:
    """The plain-text cells of each line (``HEADERS``; the source as ``[i]``) and the sources."""
    sources = _sources(table)
    rows = [[r.method, r.dataset, r.n_tasks, METRIC_NAMES.get(r.metric, r.metric), r.variant,
             report.mean_sd(r.ours_mean, r.ours_std), r.n_seeds, _published(r), _delta(r.delta), r.verdict,
             f"[{sources.index(r.source) + 1}]"] for r in table.itertuples()]
    return rows, sources


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub markdown with numbered sources and the verdict rule under the table."""
    rows, sources = text_cells(table)
    text = tabulate(rows, headers=HEADERS, tablefmt="github", disable_numparse=True)
    return text + "".join(f"\n[{i + 1}] {s}" for i, s in enumerate(sources)) + f"\n\n{VERDICT_RULE}\n"


def to_latex(table: pd.DataFrame) -> str:
    """Booktabs table; sources and the verdict rule as note rows under the bottom rule."""
    esc = report.latex_escape
    sources = _sources(table)
    headers = ["Method", "Benchmark", "$T$", "Metric", "Variant", "Ours", "Seeds", "Published", r"$\Delta$",
               "Verdict", "Source"]
    lines = [r"\begin{tabular}{lllllrrrrll}", r"\toprule", " & ".join(headers) + r" \\", r"\midrule"]
    for r in table.itertuples():
        cells = [esc(r.method), esc(r.dataset), str(r.n_tasks), LATEX_METRICS.get(r.metric, esc(r.metric)),
                 esc(r.variant), report.mean_sd(r.ours_mean, r.ours_std, report.PM).replace("–", "--"),
                 str(r.n_seeds), _published(r, report.PM, "$^*$"), _delta(r.delta, latex=True), esc(r.verdict),
                 f"[{sources.index(r.source) + 1}]"]
        lines.append(" & ".join(cells) + r" \\")
    lines.append(r"\bottomrule")
    notes = [f"[{i + 1}] {esc(s)}" for i, s in enumerate(sources)]
    notes += [r"Verdict on $\Delta$ = ours $-$ published, the first that holds: $|\Delta| \le$ published sd: "
              r"within published spread;",
              r"$|\Delta| \le 1$: within 1 point; else off. Ours: mean $\pm$ sample sd over seeds, in the published "
              "value's variant.",
              r"$^*$ published value not verified against its source."]
    lines += [rf"\multicolumn{{{len(headers)}}}{{l}}{{\footnotesize {note}}} \\" for note in notes]
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


def to_html(table: pd.DataFrame) -> str:
    """``report --reproduction --format html``: a self-contained page in the leaderboard's style
    (``html_report.page_head``), verdicts coloured, numbered sources and the verdict rule below."""
    rows, sources = text_cells(table)
    verdicts = {WITHIN_SPREAD: "pos", WITHIN_POINT: "pos", OFF: "neg"}
    head = "".join(f"<th class='{'m' if h == 'method' else ''}'>{html.escape(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(
        f"<td class='{'m' if i == 0 else verdicts.get(cell, '') if i == 9 else ''}'>{html.escape(str(cell))}</td>"
        for i, cell in enumerate(row)) + "</tr>" for row in rows)
    notes = "".join(f"<li>{html.escape(source)}</li>" for source in sources)
    return (page_head("Reproduction") + "<h1>Reproduction of published numbers</h1>"
            f"<table><tr>{head}</tr>{body}</table><ol class='note'>{notes}</ol>"
            f"<p class='note'>{html.escape(VERDICT_RULE)}</p></body></html>\n")


def render(table: pd.DataFrame, fmt: str) -> str:
    """The reproduction table (``build``) in one of ``report.FORMATS`` or html."""
    if fmt == "markdown":
        return to_markdown(table)
    if fmt == "latex":
        return to_latex(table)
    if fmt == "csv":
        return table.to_csv(index=False, float_format="%.4f")
    if fmt == "json":
        return table.to_json(orient="records", indent=1) + "\n"
    if fmt == "html":
        return to_html(table)
    raise ConfigError(f"--reproduction has no {fmt!r} format; choose one of {', '.join(report.FORMATS)}, html")
