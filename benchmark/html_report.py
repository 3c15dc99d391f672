"""The HTML leaderboard: one self-contained page (inline CSS and plots, no scripts, no network).

Per benchmark: the methods ranked by A_T (mean +- sd over seeds, published numbers beside ours
when the table has them), the accuracy-after-each-task plot, and one collapsed section per run.
A run link ``s0 s1 ...`` in the leaderboard targets ``#run-<run_id>`` inside that run's
``<details>``; browsers that reveal fragment targets (Chromium does) open the section on the
click. The section holds the run's headline numbers, its accuracy and task-aware matrices as
heatmaps, per-task timings, its resolved configuration, environment and data info, and a link to
its JSON file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from benchmark import paired, store, sweep_record
from benchmark.report import benchmarks_of, in_benchmark, mean_sd, runs_of, save_figure

# Heatmap colours: matplotlib's viridis on a fixed 0-100 % scale (the same for both matrices and
# every run), in 2.5-point bins, each a CSS class; dark cells get white text.
_BIN = 2.5
_N_BINS = round(100 / _BIN) + 1

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1180px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f3f3f3}td.m,th.m{text-align:left}tr.ub td{color:#666;font-style:italic}
td.m span{border-bottom:1px dotted #888;cursor:help}.neg{color:#b00}.pos{color:#070}
img{max-width:100%}.note{color:#555;font-size:0.9em}
details.run{border:1px solid #ddd;border-radius:4px;margin:4px 0}
details.run>summary{cursor:pointer;padding:5px 10px;background:#fafafa}
details.run:has(:target)>summary{background:#fff3c4}
.runbody{padding:0 1em 1em;scroll-margin-top:3em}
.row{display:flex;flex-wrap:wrap;gap:0 2.5em;align-items:flex-start}
table.hm{font-size:0.78em;font-variant-numeric:tabular-nums}
table.hm td,table.hm th{padding:3px 4px;min-width:2.4em;border:1px solid #fff;text-align:center}
table.hm th{background:none;color:#555;font-weight:normal}
table.hm caption,table.kv caption,table.num caption{text-align:left;font-weight:600;padding-bottom:4px}
table.kv{font-size:0.85em}table.kv td,table.kv th{padding:2px 8px;text-align:left;vertical-align:top}
table.kv td{max-width:26em;overflow-wrap:anywhere;font-family:ui-monospace,monospace}
table.num{font-size:0.85em;font-variant-numeric:tabular-nums}table.num td,table.num th{padding:2px 7px}
table.tm tr>th:first-child{text-align:left}
.legend{font-size:0.78em;color:#555}.legend span{display:inline-block;width:1.6em;height:0.9em;vertical-align:middle}
"""


def page_head(title: str) -> str:
    """The page's opening up to ``<body>``: its title and the inline CSS (also the reproduction page's)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_STYLE}{_colour_css()}</style></head><body>")


def to_html(runs: pd.DataFrame, table: pd.DataFrame, results_dir: str | Path) -> str:
    """The page for ``report.aggregate`` rows ``table`` (optionally ``report.with_published``
    and ``paired.with_paired``) and the ``report.collect`` rows ``runs`` behind them (their
    ``result`` column)."""
    runs_folder = store.runs_dir(results_dir).resolve()
    parts = [page_head("Leaderboard"), "<h1>Continual-learning leaderboard</h1>"
             "<p class='note'>A_T: final accuracy, A_bar: average incremental accuracy (both sample-weighted, %), "
             "mean ± sample sd over seeds; forgetting: max-based. Hover a method for its configuration; "
             "s0, s1, … open each run's section (matrices, timings, configuration, run file).</p>"]
    if "vs_reference" in table:
        parts.append(f"<p class='note'>{html.escape(paired.MARKDOWN_NOTE)}</p>")
    for dataset, n_tasks in benchmarks_of(table):
        rows = in_benchmark(table, dataset, n_tasks).sort_values(
            ["upper_bound", "final_acc_mean"], ascending=[True, False], kind="stable")
        plot = _plot_png(runs, table, dataset, n_tasks)
        parts += [f"<h2>{html.escape(str(dataset))}, {n_tasks} tasks</h2>", _leaderboard(runs, rows),
                  *(f"<p class='note'>{html.escape(note)}</p>" for note in sweep_record.notes(rows)),
                  f"<img alt='accuracy after each task' src='data:image/png;base64,{plot}'>", "<h3>Runs</h3>"]
        parts += [_run_section(result, r.label, runs_folder) for r in rows.itertuples() for result in _results(runs, r)]
    return "".join(parts) + "</body></html>\n"


def _results(runs: pd.DataFrame, row) -> list[dict[str, Any]]:
    """The stored results behind an aggregated row, by seed."""
    return list(runs_of(runs, row).sort_values("seed", kind="stable")["result"])


def _anchor(run_id: str) -> str:
    return html.escape(f"run-{run_id}", quote=True)


def _leaderboard(runs: pd.DataFrame, rows: pd.DataFrame) -> str:
    """The ranked table of one benchmark (upper bounds last, unranked)."""
    published = "published_final_acc" in rows
    compared_headers, compared = paired.markdown_columns(rows) if "vs_reference" in rows else ([], [[]] * len(rows))
    headers = (["#", "method", "A_T", "A_bar", "forgetting", "seeds"]
               + (["published A_T", "Δ A_T", "source"] if published else []) + compared_headers + ["runs"])
    head = "".join(f"<th class='{'m' if h == 'method' else ''}'>{html.escape(h)}</th>" for h in headers)
    body = [_leaderboard_row(runs, r, rank, published, extra)
            for rank, (r, extra) in enumerate(zip(rows.itertuples(), compared), 1)]
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _leaderboard_row(runs: pd.DataFrame, r, rank: int, published: bool, compared: list[str]) -> str:
    group = runs_of(runs, r).sort_values("seed", kind="stable")
    tooltip = html.escape(f"config {r.group}: {group['hparams'].iloc[0]}", quote=True)
    links = " ".join(f"<a href='#{_anchor(run_id)}'>s{seed}</a>"
                     for run_id, seed in zip(group["run_id"], group["seed"]))
    cells = ["" if r.upper_bound else str(rank), f"<span title='{tooltip}'>{html.escape(r.label)}</span>",
             mean_sd(r.final_acc_mean, r.final_acc_std), mean_sd(r.avg_acc_mean, r.avg_acc_std),
             mean_sd(r.forgetting_mean, r.forgetting_std), str(r.n_seeds)]
    if published:
        known = r.published_source is not None
        diff = f"<span class='{'neg' if known and r.final_acc_diff < 0 else 'pos'}'>{r.final_acc_diff:+.2f}</span>"
        cells += [mean_sd(r.published_final_acc, r.published_final_acc_std) if known else "–",
                  diff if known else "–", html.escape(r.published_source) if known else ""]
    cells += [html.escape(str(cell)) for cell in compared] + [links]
    classes = ["", "m"] + [""] * (len(cells) - 2)
    return (f"<tr class='{'ub' if r.upper_bound else ''}'>"
            + "".join(f"<td class='{c}'>{v}</td>" for c, v in zip(classes, cells)) + "</tr>")


def _plot_png(runs: pd.DataFrame, table: pd.DataFrame, dataset: str, n_tasks: int) -> str:
    """The benchmark's accuracy-after-each-task plot as base64 PNG."""
    buffer = io.BytesIO()
    save_figure(runs, table, [(dataset, n_tasks)], buffer, fmt="png")
    return base64.b64encode(buffer.getvalue()).decode()


def _run_section(result: dict[str, Any], label: str, runs_folder: Path) -> str:
    """One collapsed run: its headline numbers in the summary, everything else inside."""
    link = (runs_folder / f"{result['run_id']}.json").as_uri()
    matrices = "".join(_heatmap(result[key], caption) for key, caption in (
        ("acc_matrix", "accuracy (%)"), ("task_aware_matrix", "task-aware accuracy (%)")) if result.get(key))
    config, environment, data = (_key_values(result.get(key) or {}, caption) for key, caption in (
        ("config", "configuration"), ("environment", "environment"), ("data_info", "data")))
    return (f"<details class='run'><summary>{_summary(result, label)}</summary>"
            f"<div class='runbody' id='{_anchor(result['run_id'])}'>"
            f"<p class='note'>run {html.escape(result['run_id'])}: <a href='{html.escape(link, quote=True)}'>"
            f"{html.escape(link.rsplit('/', 1)[-1])}</a></p>{_headline(result)}{_legend()}"
            f"<div class='row'>{matrices}{_timings(result.get('timings', {}))}</div>"
            f"<div class='row'>{config}<div>{environment}{data}</div></div></div></details>")


def _summary(result: dict[str, Any], label: str) -> str:
    return (f"<b>{html.escape(label)}</b> · seed {result['seed']} · A_T {_number(result.get('final_acc'))} · "
            f"A_bar {_number(result.get('avg_acc'))} · forgetting {_number(result.get('forgetting'))} · "
            f"{_number(result.get('timings', {}).get('total_s'), 0)} s")


def _number(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _headline(result: dict[str, Any]) -> str:
    """A_T, A_bar, forgetting, task-aware A_T and the trainable parameters (first -> last task)."""
    params = [f"{p:,}" for p in result.get("trainable_params") or []]
    cells = {"A_T": _number(result.get("final_acc")), "A_bar": _number(result.get("avg_acc")),
             "forgetting": _number(result.get("forgetting")),
             "task-aware A_T": _number(result.get("task_aware_final_acc")),
             "trainable params": " → ".join(dict.fromkeys([params[0], params[-1]])) if params else "–"}
    return ("<table class='num'><tr>" + "".join(f"<th>{k}</th>" for k in cells) + "</tr><tr>"
            + "".join(f"<td>{v}</td>" for v in cells.values()) + "</tr></table>")


def _heatmap(matrix: list[list[float | None]], caption: str) -> str:
    """An accuracy matrix as an HTML table with coloured cells, upper triangle (tasks not yet
    learned) blank.

    A table rather than an imshow PNG: the numbers stay crisp at any zoom and for 20 tasks
    (annotations in a PNG would need a large figure, and its base64 weighs more than the ~7 kB
    of a 20-task table), they can be selected and searched, and the table wraps with the page.
    Colours come from one fixed 0-100 % scale, so both matrices of a run and all runs on the page
    compare directly; the legend above the matrices shows it.
    """
    n = len(matrix)
    head = "<tr><th></th>" + "".join(f"<th>t{j + 1}</th>" for j in range(n)) + "</tr>"
    rows = []
    for i, row in enumerate(matrix):
        cells = "".join(_heat_cell(row[j] if j < len(row) else None) if j <= i else "<td></td>" for j in range(n))
        rows.append(f"<tr><th>t{i + 1}</th>{cells}</tr>")
    return f"<table class='hm'><caption>{caption}</caption>{head}{''.join(rows)}</table>"


def _heat_cell(value: float | None) -> str:
    if value is None:
        return "<td>–</td>"
    return f"<td class='h{_colour_bin(value)}'>{'100' if value >= 99.95 else f'{value:.1f}'}</td>"


def _colour_bin(value: float) -> int:
    return min(_N_BINS - 1, max(0, round(value / _BIN)))


def _colour_css() -> str:
    """One class per bin, ``.h0`` .. ``.h40``, with white text on dark backgrounds."""
    from matplotlib import colormaps

    rules = []
    for b in range(_N_BINS):
        r, g, bl = (round(255 * c) for c in colormaps["viridis"](b / (_N_BINS - 1))[:3])
        text = "#fff" if 0.299 * r + 0.587 * g + 0.114 * bl < 150 else "#222"
        rules.append(f".h{b}{{background:#{r:02x}{g:02x}{bl:02x};color:{text}}}")
    return "".join(rules)


def _legend() -> str:
    swatches = "".join(f"<span class='h{b}'></span>" for b in range(0, _N_BINS, 4))
    return (f"<p class='legend'>Row i: after learning task i; column j: accuracy on task j's test classes; "
            f"blank: not learned yet. Colour: 0 {swatches} 100 %</p>")


def _timings(timings: dict[str, Any]) -> str:
    """Seconds per phase (rows) and task (columns), with each phase's sum and the run's total."""
    tasks = timings.get("tasks") or []
    phases = [p for p in ("begin_s", "train_s", "end_s", "eval_s") if any(p in t for t in tasks)]
    head = "<tr><th>seconds</th>" + "".join(f"<th>t{j + 1}</th>" for j in range(len(tasks))) + "<th>sum</th></tr>"
    rows = ["<tr><th>" + p.removesuffix("_s") + "</th>" + "".join(f"<td>{t.get(p, 0):.2f}</td>" for t in tasks)
            + f"<td>{sum(t.get(p, 0) for t in tasks):.2f}</td></tr>" for p in phases]
    total = f"<caption>timings (total {_number(timings.get('total_s'), 1)} s)</caption>"
    return f"<table class='num tm'>{total}{head}{''.join(rows)}</table>" if phases else ""


def _flatten(values: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """Nested dicts as dotted keys (``hparams.lr``)."""
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _key_values(values: dict[str, Any], caption: str) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v if isinstance(v, str) else json.dumps(v))}</td>"
                   "</tr>" for k, v in _flatten(values))
    return f"<table class='kv'><caption>{caption}</caption>{rows}</table>" if rows else ""
