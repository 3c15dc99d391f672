"""Paired comparisons over seeds: each method configuration against a reference, per benchmark.

Runs of different methods with the same seed on one benchmark (dataset, task count) share the class
order and the data, so two groups (method configurations, ``report.config_group``) are compared seed
by seed. Only the seeds both groups ran count; their number is ``n_pairs``. Per metric (A_T and
A_bar, both sample-weighted, in points):

- ``diff``: the mean of the per-seed differences, group minus reference;
- ``ci_low``, ``ci_high``: its 95 % confidence interval from the paired t distribution
  (``scipy.stats.ttest_rel``), from 2 pairs on;
- ``p``: the two-sided p-value of that paired t-test, from 2 pairs on;
- ``boot_low``, ``boot_high``: a percentile bootstrap interval of the mean difference that resamples
  seeds (``scipy.stats.bootstrap``, 9,999 resamples, generator seed 0, so reruns agree), from 5
  pairs on.

What the pair count does not support is NaN, printed "n/a": no interval is made up. Differences
equal on every seed leave the t-test undefined; they get a zero-width interval and p = 0 (p = 1 when
they are all 0), the test's limits.

References: ``compare`` uses per benchmark the ``versus`` method (its configuration with the best
mean A_T if it has several), or the best continual group by mean A_T where the benchmark lacks that
method; ``versus=None`` means inflora. ``versus_best`` tests each group against the best continual
group of each metric (the LaTeX daggers). Upper bounds (joint training) are compared like any group
but are never ranked, so never "the best". No correction for multiple comparisons is applied.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.errors import ConfigError

METRICS = ("final_acc", "avg_acc")
METRIC_NAMES = {"final_acc": "A_T", "avg_acc": "A_bar"}
STATS = ("diff", "ci_low", "ci_high", "p", "boot_low", "boot_high")
DEFAULT_VERSUS = "inflora"
CONFIDENCE = 0.95
ALPHA = 0.05
MIN_PAIRS_TEST = 2
MIN_PAIRS_BOOTSTRAP = 5
BOOTSTRAP_SEED = 0
KEYS = ["dataset", "n_tasks", "method", "group"]
COLUMNS = ["reference", "n_pairs"] + [f"{m}_{s}" for m in METRICS for s in STATS]
PAIRED_COLUMNS = [f"vs_{c}" for c in COLUMNS]  # as ``with_paired`` adds them to the report table


def paired_difference(values: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """``STATS`` of ``values - reference``, two arrays aligned by seed."""
    diffs = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    out = dict.fromkeys(STATS, math.nan)
    if len(diffs) == 0:
        return out
    out["diff"] = float(diffs.mean())
    if len(diffs) < MIN_PAIRS_TEST:
        return out
    if np.ptp(diffs) == 0:  # t undefined: its limits
        constant = float(diffs[0])
        out.update(ci_low=constant, ci_high=constant, p=1.0 if constant == 0 else 0.0)
        if len(diffs) >= MIN_PAIRS_BOOTSTRAP:
            out.update(boot_low=constant, boot_high=constant)
        return out
    test = stats.ttest_rel(values, reference)
    interval = test.confidence_interval(CONFIDENCE)
    out.update(ci_low=float(interval.low), ci_high=float(interval.high), p=float(test.pvalue))
    if len(diffs) >= MIN_PAIRS_BOOTSTRAP:
        boot = stats.bootstrap((diffs,), np.mean, confidence_level=CONFIDENCE, method="percentile",
                               rng=np.random.default_rng(BOOTSTRAP_SEED)).confidence_interval
        out.update(boot_low=float(boot.low), boot_high=float(boot.high))
    return out


def _by_seed(runs: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    """The metrics of one group's runs, indexed by seed."""
    mask = np.logical_and.reduce([runs[k] == row[k] for k in KEYS])
    return runs[mask].set_index("seed")[list(METRICS)]


def _pair(runs: pd.DataFrame, row: pd.Series, reference: pd.Series,
          metrics: tuple[str, ...] = METRICS) -> dict[str, Any]:
    """``n_pairs`` and the ``STATS`` per metric of ``row``'s group against ``reference``'s."""
    ours, theirs = _by_seed(runs, row), _by_seed(runs, reference)
    seeds = ours.index.intersection(theirs.index).sort_values()
    out: dict[str, Any] = {"n_pairs": len(seeds)}
    for metric in metrics:
        result = paired_difference(ours.loc[seeds, metric].to_numpy(float), theirs.loc[seeds, metric].to_numpy(float))
        out.update({f"{metric}_{name}": value for name, value in result.items()})
    return out


def _top(groups: pd.DataFrame, metric: str) -> pd.Series | None:
    """The group with the highest mean ``metric`` (the first on ties), or None."""
    means = groups[f"{metric}_mean"].dropna()
    return None if means.empty else groups.loc[means.idxmax()]


def _reference(bench: pd.DataFrame, versus: str) -> pd.Series | None:
    named = bench[bench["method"] == versus]
    return _top(named if not named.empty else bench[~bench["upper_bound"]], "final_acc")


def compare(runs: pd.DataFrame, table: pd.DataFrame, versus: str | None = None) -> pd.DataFrame:
    """One row per group of ``table`` (``report.aggregate``): ``KEYS``, its label, the reference
    label of its benchmark and, except for the reference itself, ``n_pairs`` and per metric the
    ``STATS`` of the group minus the reference. ``ConfigError`` if ``versus`` names no method of
    ``runs``."""
    if versus is not None and versus not in set(runs["method"]):
        raise ConfigError(f"unknown --versus method {versus!r}; methods present: "
                          f"{', '.join(sorted(set(runs['method'])))}")
    rows = []
    for _, bench in table.groupby(["dataset", "n_tasks"], sort=False):
        reference = _reference(bench, versus or DEFAULT_VERSUS)
        for index, row in bench.iterrows():
            out = {**{k: row[k] for k in KEYS}, "label": row["label"],
                   "reference": None if reference is None else reference["label"]}
            if reference is not None and index != reference.name:
                out.update(_pair(runs, row, reference))
            rows.append(out)
    frame = pd.DataFrame(rows).reindex(columns=KEYS + ["label"] + COLUMNS)
    return frame.astype({"n_pairs": "Int64"})


def versus_best(runs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Per group of ``table`` and metric, the pair count (``<metric>_best_n``) and the p-value
    (``<metric>_best_p``) of the paired t-test against the best continual group of its benchmark
    in that metric; NA for the best itself and for upper bounds."""
    rows = []
    for _, bench in table.groupby(["dataset", "n_tasks"], sort=False):
        best = {metric: _top(bench[~bench["upper_bound"]], metric) for metric in METRICS}
        for index, row in bench.iterrows():
            out = {k: row[k] for k in KEYS}
            for metric, top in best.items():
                if top is not None and not row["upper_bound"] and index != top.name:
                    pair = _pair(runs, row, top, (metric,))
                    out.update({f"{metric}_best_n": pair["n_pairs"], f"{metric}_best_p": pair[f"{metric}_p"]})
            rows.append(out)
    columns = [f"{m}_best_{s}" for m in METRICS for s in ("n", "p")]
    frame = pd.DataFrame(rows).reindex(columns=KEYS + columns)
    return frame.astype({f"{m}_best_n": "Int64" for m in METRICS})


def with_paired(runs: pd.DataFrame, table: pd.DataFrame, versus: str | None = None) -> pd.DataFrame:
    """``table`` plus ``compare``'s columns prefixed ``vs_`` (``PAIRED_COLUMNS``) and
    ``versus_best``'s columns."""
    against = compare(runs, table, versus).drop(columns="label").rename(columns=lambda c: c if c in KEYS else f"vs_{c}")
    return table.merge(against, on=KEYS, how="left").merge(versus_best(runs, table), on=KEYS, how="left")


def not_different_from_best(row: Any, metric: str) -> bool:
    """Whether a ``with_paired`` row was tested against its column's best and not found different."""
    n, p = getattr(row, f"{metric}_best_n"), getattr(row, f"{metric}_best_p")
    return not pd.isna(n) and n >= MIN_PAIRS_TEST and p >= ALPHA


def interval_text(diff: float, low: float, high: float) -> str:
    """``+1.23 [+0.10, +2.36]``; ``[n/a]`` without an interval, ``n/a`` without a difference."""
    if pd.isna(diff):
        return "n/a"
    return f"{diff:+.2f} [n/a]" if pd.isna(low) else f"{diff:+.2f} [{low:+.2f}, {high:+.2f}]"


def p_text(p: float) -> str:
    """``0.012``, ``<0.001``, or ``n/a``."""
    return "n/a" if pd.isna(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown_columns(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Headers and per-row cells of the comparison columns of a ``with_paired`` table: the
    reference in the header when all benchmarks share one, else a "vs" column."""
    references = list(table["vs_reference"].dropna().unique())
    shared = len(references) == 1
    headers = [] if shared else ["vs"]
    for metric in METRICS:
        headers += [f"Δ {METRIC_NAMES[metric]}" + (f" vs {references[0]}" if shared else "") + " [95 % CI]",
                    f"p ({METRIC_NAMES[metric]})"]
    headers.append("pairs")
    cells = []
    for r in table.itertuples():
        row = [] if shared else [r.vs_reference if isinstance(r.vs_reference, str) else "n/a"]
        if r.vs_reference == r.label:
            row += ["(reference)", ""] * len(METRICS) + [""]
        else:
            for metric in METRICS:
                value = {s: getattr(r, f"vs_{metric}_{s}") for s in STATS}
                row += [interval_text(value["diff"], value["ci_low"], value["ci_high"]), p_text(value["p"])]
            row.append("n/a" if pd.isna(r.vs_n_pairs) else str(r.vs_n_pairs))
        cells.append(row)
    return headers, cells


MARKDOWN_NOTE = ("Δ: mean paired difference to the reference over the seeds both ran (pairs), with its 95 % CI "
                 "from the paired t distribution; p: two-sided paired t-test; n/a below 2 pairs. CSV/JSON add a "
                 "seed bootstrap interval from 5 pairs on.")
