"""The file a ``sweep`` leaves, ``<results-dir>/sweeps/<dataset>_T<n>_<id>.json``, and how ``report``
shows it.

One record per sweep definition (data set, tasks, validation fraction and seeds, budget, grids,
the other settings): per method its grid, every point tried with its validation scores and run
ids, the chosen point and the ids of the final runs on the test set. ``report`` marks the table
rows whose runs are a sweep's final runs (``mark_tuned``); ``report --sweep`` prints the grids
(``grid_table``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from tabulate import tabulate

from benchmark import store
from benchmark.errors import ConfigError

RECORDS = "sweeps"
MARK = "‡"  # beside a method tuned on validation by a sweep


def records_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / RECORDS


def record_path(results_dir: str | Path, record: dict[str, Any]) -> Path:
    return records_dir(results_dir) / f"{record['dataset']}_T{record['n_tasks']}_{record['sweep_id']}.json"


def write(results_dir: str | Path, record: dict[str, Any]) -> Path:
    """Store ``record`` atomically; final runs of an earlier write of the same sweep (other seeds) are kept."""
    path = record_path(results_dir, record)
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
            for method, entry in record["methods"].items():
                before = earlier.get("methods", {}).get(method, {})
                if before.get("chosen") == entry["chosen"]:  # else the earlier final runs are not this choice's
                    entry["final_run_ids"] = {**before.get("final_run_ids", {}), **entry["final_run_ids"]}
        except (OSError, ValueError, AttributeError):
            pass  # an unreadable earlier record is replaced by this one
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_json_atomic(path, record)
    return path


def load(results_dir: str | Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every readable sweep record under ``results_dir``, oldest first; unreadable ones are named
    through ``warn`` and skipped."""
    records = []
    for path in sorted(records_dir(results_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record.get("methods"), dict):
                raise ValueError("no methods")
            records.append(record)
        except (OSError, ValueError) as err:
            if warn:
                warn(f"skipped unreadable sweep record {path} ({err}); rerun its sweep to rewrite it")
    return sorted(records, key=lambda r: r.get("created", ""))


def describe(record: dict[str, Any], method: str) -> str:
    """How ``method``'s settings were chosen, in one line."""
    entry = record["methods"][method]
    tried, total = len(entry["points"]), entry["n_grid_points"]
    budget = f"a budget of {tried} of {total} grid points" if record.get("budget") else f"the full grid of {total}"
    seeds = ", ".join(str(s) for s in record["val_seeds"])
    return (f"selected on validation A_T (data.val_fraction {record['val_fraction']:g}, seed{'s' if len(record['val_seeds']) > 1 else ''} "
            f"{seeds}) from {budget} by sweep {record['sweep_id']}")


def tuned_runs(records: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], str]]:
    """Final run id -> (its sweep record, method), the newest record winning."""
    runs = {}
    for record in records:
        for method, entry in record["methods"].items():
            for run_id in entry.get("final_run_ids", {}).values():
                runs[run_id] = (record, method)
    return runs


def mark_tuned(table: pd.DataFrame, runs: pd.DataFrame, records: list[dict[str, Any]]) -> pd.DataFrame:
    """``table`` with the rows whose runs all come from a sweep's final runs marked: ``MARK`` on
    the label and the columns ``sweep`` (its id), ``sweep_grid_points``, ``sweep_points_tried`` and
    ``sweep_note`` (``describe``); other rows get empty values."""
    tuned = tuned_runs(records)
    out = table.copy()
    columns: dict[str, list[Any]] = {"sweep": [], "sweep_grid_points": [], "sweep_points_tried": [], "sweep_note": []}
    for row in out.itertuples():
        ids = runs[(runs["dataset"] == row.dataset) & (runs["n_tasks"] == row.n_tasks) & (runs["method"] == row.method)
                   & (runs["group"] == row.group)]["run_id"]
        sources = {tuned[i][0]["sweep_id"] for i in ids if i in tuned}
        record, method = tuned.get(ids.iloc[0], (None, None)) if len(ids) else (None, None)
        searched = record is not None and record["methods"][method]["n_grid_points"] > 1  # else nothing was chosen
        if searched and all(i in tuned for i in ids) and len(sources) == 1:
            entry = record["methods"][method]
            values = [record["sweep_id"], entry["n_grid_points"], len(entry["points"]), describe(record, method)]
        else:
            values = [None, None, None, None]
        for column, value in zip(columns, values):
            columns[column].append(value)
    for column, values in columns.items():
        out[column] = pd.array(values, dtype="Int64" if column.endswith(("points", "tried")) else object)
    out["label"] = out["label"].where(out["sweep"].isna(), out["label"] + " " + MARK)
    return out


def unmarked(label: str) -> str:
    """A row label without the sweep's mark."""
    return label.removesuffix(" " + MARK)


def notes(table: pd.DataFrame) -> list[str]:
    """The footnotes of the marked rows, once per distinct note."""
    if "sweep_note" not in table:
        return []
    return [f"{MARK} {unmarked(label)}: {note}"
            for label, note in dict.fromkeys(zip(table["label"], table["sweep_note"])) if isinstance(note, str)]


def setting_text(point: dict[str, Any]) -> str:
    """A point as ``lr=0.003, head_lr=0.03``."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()) or \
        "the recipe (nothing to choose)"


def grid_rows(records: list[dict[str, Any]], datasets: list[str] | None = None,
              methods: list[str] | None = None) -> pd.DataFrame:
    """One row per point tried: sweep, data set, tasks, method, setting, validation A_T and A_bar
    (means over the validation seeds; empty where nothing was chosen or the point diverged),
    whether it was chosen, whether it diverged, and whether it is the recipe's point."""
    rows = []
    for record in records:
        if datasets and record["dataset"] not in datasets:
            continue
        for method, entry in record["methods"].items():
            if methods and method not in methods:
                continue
            for point in entry["points"]:
                rows.append({"sweep": record["sweep_id"], "dataset": record["dataset"], "n_tasks": record["n_tasks"],
                             "method": method, "setting": setting_text(point["setting"]),
                             "val_final_acc": point["val_final_acc"], "val_avg_acc": point["val_avg_acc"],
                             "chosen": point["setting"] == entry["chosen"], "diverged": "diverged" in point,
                             "recipe": bool(point["setting"]) and point["setting"] == entry["preset_point"]})
    if not rows:
        raise ConfigError("no sweep records match; run `python run_benchmark.py sweep ...` first (records are "
                          "written to <results-dir>/sweeps/)")
    return pd.DataFrame(rows)


def _score(value: float | None, diverged: bool) -> str:
    if diverged:
        return "diverged (NaN loss)"
    return "– (nothing to choose)" if value is None or pd.isna(value) else f"{value:.2f}"


def grid_table(records: list[dict[str, Any]], fmt: str, datasets: list[str] | None = None,
               methods: list[str] | None = None) -> str:
    """``report --sweep``: every sweep's grids with their validation scores and the chosen points."""
    if fmt not in ("markdown", "latex", "csv", "json"):
        raise ConfigError(f"report --sweep prints markdown, latex, csv or json, not {fmt}")
    rows = grid_rows(records, datasets, methods)
    if fmt == "csv":
        return rows.to_csv(index=False, float_format="%.2f")
    if fmt == "json":
        return rows.to_json(orient="records", indent=1) + "\n"
    cells = [[r.dataset, r.n_tasks, r.method, r.setting + (" (recipe)" if r.recipe else ""),
              _score(r.val_final_acc, r.diverged), _score(r.val_avg_acc, r.diverged), "chosen" if r.chosen else ""]
             for r in rows.itertuples()]
    headers = ["dataset", "tasks", "method", "setting", "validation A_T", "validation A_bar", ""]
    text = tabulate(cells, headers=headers, tablefmt="github" if fmt == "markdown" else "latex_booktabs",
                    disable_numparse=True)
    chosen = [f"{r.method} ({r.dataset}, {r.n_tasks} tasks): {describe(rec, r.method)}"
              for rec in records for r in rows[rows.chosen & (rows.sweep == rec["sweep_id"])].itertuples()]
    if fmt == "latex":
        return text + "\n"
    return text + "\n\n" + "\n".join(chosen) + "\n"
