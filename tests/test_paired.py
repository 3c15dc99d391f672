"""Paired comparisons over seeds on hand-made result files whose statistics are computed by hand.

For n pairs with differences d, the paired t statistic is mean(d) / (sd(d) / sqrt(n)) with n - 1
degrees of freedom. The closed forms used below: with 2 degrees of freedom the two-sided p-value is
1 - |t| / sqrt(t^2 + 2) and the 97.5 % quantile is 0.95 / sqrt(2 * 0.975 * 0.025) = 4.302653; with 1
degree of freedom the quantile is tan(0.475 pi) = 12.706205.
"""

import csv
import io
import json
import math

import numpy as np
import pytest

from benchmark import paired, report, store
from benchmark.cli import main
from tests.conftest import assert_latex_compiles, needs_pdflatex

T2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t quantile, 2 df
T1 = math.tan(0.475 * math.pi)  # t quantile, 1 df


def _result(method, seed, final, avg, dataset="synth", n_tasks=10, upper=False, rank=10):
    config = {"method": method, "dataset": dataset, "n_tasks": n_tasks, "seed": seed, "hparams": {"rank": rank}}
    return {"run_id": f"{method}_{dataset}_T{n_tasks}_s{seed}_r{rank}", "method": method, "dataset": dataset,
            "n_tasks": n_tasks, "seed": seed, "config": config, "upper_bound": upper, "acc_matrix": [[final]],
            "final_acc": final, "avg_acc": avg, "forgetting": None if upper else 5.0, "timings": {"total_s": 1.0}}


def _write(results_dir, method, values, **kwargs):
    """Runs of one group: ``values`` maps seed -> (A_T, A_bar)."""
    for seed, (final, avg) in values.items():
        store.write_result(results_dir, _result(method, seed, final, avg, **kwargs))


@pytest.fixture
def runs_dir(results_dir):
    # synth, 10 tasks, seeds 0-2; differences to inflora (A_T; A_bar):
    #   seq-lora   (-10, -9, -9; -5, -5, -5): significant
    #   dualprompt (-1, -2, +1;  -1,  0, -2): not significant
    _write(results_dir, "inflora", {0: (60, 70), 1: (62, 71), 2: (64, 72)})
    _write(results_dir, "seq-lora", {0: (50, 65), 1: (53, 66), 2: (55, 67)})
    _write(results_dir, "dualprompt", {0: (59, 69), 1: (60, 71), 2: (65, 70)})
    _write(results_dir, "joint", {0: (80, 85), 1: (81, 85), 2: (82, 85)}, upper=True)  # highest, never the best
    # cifar100, 10 tasks: one seed each
    _write(results_dir, "inflora", {0: (70, 75)}, dataset="cifar100")
    _write(results_dir, "l2p", {0: (65, 72)}, dataset="cifar100")
    return results_dir


def _with_paired(results_dir, versus=None):
    runs = report.collect(results_dir)
    return paired.with_paired(runs, report.aggregate(runs), versus)


def _row(table, dataset, label):
    return table[(table["dataset"] == dataset) & (table["label"] == label)].iloc[0]


def test_significant_difference_matches_the_hand_computed_t_test(runs_dir):
    row = _row(_with_paired(runs_dir), "synth", "seq-lora")
    # d = (-10, -9, -9): mean -28/3, sd = sqrt(1/3), se = 1/3, t = -28
    se = math.sqrt(1 / 3) / math.sqrt(3)
    assert row["vs_reference"] == "inflora" and row["vs_n_pairs"] == 3
    assert row["vs_final_acc_diff"] == pytest.approx(-28 / 3)
    assert row["vs_final_acc_ci_low"] == pytest.approx(-28 / 3 - T2 * se)  # -10.7676
    assert row["vs_final_acc_ci_high"] == pytest.approx(-28 / 3 + T2 * se)  # -7.8991
    assert row["vs_final_acc_p"] == pytest.approx(1 - 28 / math.sqrt(28 ** 2 + 2))  # 0.00127
    assert row["vs_final_acc_p"] < paired.ALPHA
    # A_bar: -5 on every seed, the t-test's limit: a zero-width interval and p = 0
    assert (row["vs_avg_acc_diff"], row["vs_avg_acc_ci_low"], row["vs_avg_acc_ci_high"], row["vs_avg_acc_p"]) == \
           (-5.0, -5.0, -5.0, 0.0)


def test_non_significant_difference_matches_the_hand_computed_t_test(runs_dir):
    row = _row(_with_paired(runs_dir), "synth", "dualprompt")
    # d = (-1, -2, +1): mean -2/3, sd = sqrt(7/3), t = -0.7559
    se = math.sqrt(7 / 3) / math.sqrt(3)
    t = (-2 / 3) / se
    assert row["vs_final_acc_diff"] == pytest.approx(-2 / 3)
    assert (row["vs_final_acc_ci_low"], row["vs_final_acc_ci_high"]) == \
           pytest.approx((-2 / 3 - T2 * se, -2 / 3 + T2 * se))  # (-4.4614, 3.1280)
    assert row["vs_final_acc_p"] == pytest.approx(1 - abs(t) / math.sqrt(t ** 2 + 2))  # 0.5286
    # A_bar: d = (-1, 0, -2): mean -1, sd 1, t = -sqrt(3)
    assert row["vs_avg_acc_p"] == pytest.approx(1 - math.sqrt(3) / math.sqrt(5))  # 0.2254
    assert row["vs_avg_acc_ci_low"] == pytest.approx(-1 - T2 / math.sqrt(3))


def test_one_seed_gives_the_difference_but_no_interval_or_p(runs_dir):
    table = _with_paired(runs_dir)
    row = _row(table, "cifar100", "l2p")
    assert row["vs_n_pairs"] == 1 and row["vs_final_acc_diff"] == -5.0
    assert all(math.isnan(row[f"vs_final_acc_{s}"]) for s in ("ci_low", "ci_high", "p", "boot_low", "boot_high"))
    text = report.render(table, "markdown")
    line = next(line for line in text.splitlines() if "| l2p" in line)
    assert "-5.00 [n/a]" in line and "| n/a " in line


def test_the_reference_is_not_compared_with_itself_and_upper_bounds_are_compared_but_not_the_best(runs_dir):
    table = _with_paired(runs_dir)
    reference = _row(table, "synth", "inflora")
    assert reference["vs_reference"] == "inflora" and math.isnan(reference["vs_final_acc_diff"])
    assert _row(table, "synth", "joint (upper bound)")["vs_final_acc_diff"] == pytest.approx(19.0)
    # without inflora the best continual method is the reference, not the higher upper bound
    runs = report.collect(runs_dir, methods=["seq-lora", "dualprompt", "joint"])
    compared = paired.compare(runs, report.aggregate(runs))
    assert set(compared["reference"]) == {"dualprompt"}
    versus = paired.compare(runs, report.aggregate(runs), "seq-lora")
    assert _row(versus, "synth", "dualprompt")["final_acc_diff"] == pytest.approx(26 / 3)


def test_only_shared_seeds_are_paired_and_each_configuration_is_its_own_group(results_dir):
    _write(results_dir, "inflora", {0: (50, 60), 1: (52, 61), 2: (54, 62)}, n_tasks=5)
    _write(results_dir, "coda", {1: (51, 60), 2: (55, 62), 3: (99, 99)}, n_tasks=5)
    _write(results_dir, "coda", {0: (40, 50)}, n_tasks=5, rank=4)
    table = _with_paired(results_dir)
    coda = table[table["method"] == "coda"]
    assert len(coda) == 2 and all(label.startswith("coda [") for label in coda["label"])
    shared = coda[coda["n_seeds"] == 3].iloc[0]
    # seeds 1 and 2 only: d = (-1, +1), mean 0, sd sqrt(2), se 1, t = 0 with 1 df
    assert shared["vs_n_pairs"] == 2
    assert (shared["vs_final_acc_ci_low"], shared["vs_final_acc_ci_high"]) == pytest.approx((-T1, T1))
    assert shared["vs_final_acc_p"] == pytest.approx(1.0)
    assert shared["vs_avg_acc_diff"] == pytest.approx(-0.5)  # d = (-1, 0)
    assert coda[coda["n_seeds"] == 1].iloc[0]["vs_n_pairs"] == 1


def test_bootstrap_interval_from_five_pairs_and_reproducible(results_dir):
    _write(results_dir, "inflora", {s: (60 + s, 70) for s in range(5)}, n_tasks=20)
    _write(results_dir, "l2p", {s: (v, 70) for s, v in enumerate([55, 57, 56, 60, 58])}, n_tasks=20)
    row = _row(_with_paired(results_dir), "synth", "l2p")
    # d = (-5, -4, -6, -3, -6): mean -4.8; a percentile bootstrap of the mean stays within [min, max]
    assert row["vs_n_pairs"] == 5 and row["vs_final_acc_diff"] == pytest.approx(-4.8)
    assert -6 <= row["vs_final_acc_boot_low"] < -4.8 < row["vs_final_acc_boot_high"] <= -3
    assert row["vs_final_acc_boot_low"] == _row(_with_paired(results_dir), "synth", "l2p")["vs_final_acc_boot_low"]
    assert (row["vs_avg_acc_boot_low"], row["vs_avg_acc_boot_high"]) == (0.0, 0.0)  # equal A_bar on every seed
    assert row["vs_avg_acc_p"] == 1.0
    four = paired.paired_difference(np.array([1.0, 2.0, 4.0, 3.0]), np.zeros(4))
    assert math.isnan(four["boot_low"]) and not math.isnan(four["ci_low"])


def test_markdown_shows_the_interval_p_and_pairs(runs_dir):
    text = report.render(_with_paired(runs_dir), "markdown")
    header = text.splitlines()[0]
    assert "Δ A_T vs inflora [95 % CI]" in header and "p (A_T)" in header and "pairs" in header
    seq = next(line for line in text.splitlines() if "| seq-lora" in line)
    assert "-9.33 [-10.77, -7.90]" in seq and "| 0.001 " in seq and "<0.001" in seq
    dual = next(line for line in text.splitlines() if "| dualprompt" in line)
    assert "-0.67 [-4.46, +3.13]" in dual and "| 0.529 " in dual
    assert "(reference)" in next(line for line in text.splitlines() if "| inflora" in line)
    assert "paired t" in text


def test_several_references_get_a_vs_column(runs_dir):
    runs = report.collect(runs_dir, methods=["l2p", "seq-lora", "dualprompt"])  # no inflora: per-benchmark best
    text = report.render(paired.with_paired(runs, report.aggregate(runs)), "markdown")
    assert "| vs " in text.splitlines()[0] and "Δ A_T [95 % CI]" in text


def test_csv_and_json_carry_the_numbers(runs_dir):
    table = _with_paired(runs_dir)
    header = report.render(table, "csv").splitlines()[0].split(",")
    assert header[:len(report.COLUMNS)] == report.COLUMNS and header[len(report.COLUMNS):] == paired.PAIRED_COLUMNS
    records = json.loads(report.render(table, "json"))
    seq = next(r for r in records if r["method"] == "seq-lora")
    assert seq["vs_final_acc_p"] == pytest.approx(1 - 28 / math.sqrt(28 ** 2 + 2)) and seq["vs_n_pairs"] == 3
    assert next(r for r in records if r["method"] == "l2p")["vs_final_acc_ci_low"] is None


def test_latex_daggers_mark_cells_not_different_from_the_best(runs_dir):
    text = report.render(_with_paired(runs_dir), "latex")
    line = {row.split(" & ")[0]: row for row in text.splitlines() if " & " in row}
    assert r"\textbf{62.00 $\pm$ 2.00}" in line["inflora"] and r"\dagger" not in line["inflora"]
    assert line["dualprompt"].count(r"$^\dagger$") == 2  # p = 0.53 (A_T) and 0.23 (A_bar)
    assert r"\dagger" not in line["seq-lora"] and r"\dagger" not in line["joint (upper bound)"]
    assert r"\dagger" not in line["l2p"]  # one seed: untested
    assert "paired $t$-test" in text and r"$\alpha = 0.05$" in text and "No test (n/a)" in text
    assert text.index(r"\bottomrule") < text.index(r"$^\dagger$ not significantly") < text.index(r"\end{tabular}")


def test_latex_with_one_seed_has_no_dagger_and_says_n_a(runs_dir):
    runs = report.collect(runs_dir, datasets=["cifar100"])
    text = report.render(paired.with_paired(runs, report.aggregate(runs)), "latex")
    assert text.count(r"\dagger") == 1 and r"$^\dagger$ n/a" in text


def test_cli_versus_and_an_unknown_method(runs_dir, capsys):
    assert main(["report", "--results-dir", str(runs_dir), "--versus"]) == 0
    assert "Δ A_T vs inflora" in capsys.readouterr().out
    assert main(["report", "--results-dir", str(runs_dir), "--versus", "seq-lora", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {(r["dataset"], r["vs_reference"]) for r in rows} == {("synth", "seq-lora"), ("cifar100", "inflora")}
    assert main(["report", "--results-dir", str(runs_dir), "--methods", "l2p", "seq-lora", "--versus"]) == 0
    assert "| vs " in capsys.readouterr().out  # no inflora anywhere: each benchmark's best, no error
    assert main(["report", "--results-dir", str(runs_dir), "--versus", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown --versus method 'nope'; methods present: dualprompt, inflora, joint, l2p, seq-lora"


@needs_pdflatex
def test_versus_latex_compiles(runs_dir, tmp_path, capsys):
    assert main(["report", "--results-dir", str(runs_dir), "--versus", "inflora", "--format", "latex"]) == 0
    table = capsys.readouterr().out
    assert r"$^\dagger$" in table
    assert_latex_compiles(table, tmp_path)


def test_html_leaderboard_shows_the_interval_beside_each_method(runs_dir):
    from benchmark import html_report

    runs = report.collect(runs_dir)
    page = html_report.to_html(runs, paired.with_paired(runs, report.aggregate(runs), "inflora"), runs_dir)
    assert "Δ A_T vs inflora [95 % CI]" in page and "mean paired difference" in page
    # seq-lora - inflora, A_T: d = (-10, -9, -9), mean -28/3, sd 1/sqrt(3), half-width T2 * sd / sqrt(3)
    half = T2 / 3
    assert f"<td class=''>{-28 / 3:+.2f} [{-28 / 3 - half:+.2f}, {-28 / 3 + half:+.2f}]</td>" in page
    assert "<td class=''>-5.00 [n/a]</td>" in page  # cifar100 l2p: one seed, no interval
