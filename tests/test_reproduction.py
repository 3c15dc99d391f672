"""The reproduction table on hand-made result files and a hand-made published.csv."""

import csv
import io
import json
import math

import pytest

from benchmark import report, reproduction, store
from benchmark.errors import ConfigError
from benchmark.cli import main
from tests.conftest import assert_latex_compiles, needs_pdflatex

PUBLISHED = """method,dataset,n_tasks,metric,value,std,variant,source,verified
inflora,cifar100,10,final_acc,86.51,0.73,sample-weighted,the paper,yes
inflora,cifar100,10,final_acc,87.09,,sample-weighted,a re-run,yes
inflora,cifar100,10,avg_acc,91.70,0.32,sample-weighted,the paper,yes
inflora,imagenet-r,10,final_acc,78.20,0.50,task-mean,a task-mean paper,no
l2p,imagenet-r,10,final_acc,69.29,,task-mean,CODA paper,no
l2p,imagenet-r,10,forgetting,5.00,,coda,CODA paper,no
seq-lora,domainnet,5,final_acc,70.00,,sample-weighted,nobody ran it,yes
"""


def _result(method, seed, final, avg, dataset="cifar100", n_tasks=10, **extra):
    config = {"method": method, "dataset": dataset, "n_tasks": n_tasks, "seed": seed, "hparams": {}}
    return {"run_id": f"{method}_{dataset}_T{n_tasks}_s{seed}_{len(extra)}", "method": method, "dataset": dataset,
            "n_tasks": n_tasks, "seed": seed, "config": config, "acc_matrix": [[final]], "final_acc": final,
            "avg_acc": avg, "forgetting": 4.0, "timings": {"total_s": 1.0}, **extra}


@pytest.fixture
def runs_dir(results_dir):
    for result in [
            _result("inflora", 0, 86.0, 89.0), _result("inflora", 1, 86.4, 89.5),  # A_T 86.2, A_bar 89.25
            # IN-R: sample-weighted 75, task-mean 78.0; only the task-mean one may meet the task-mean paper
            _result("inflora", 0, 75.0, 80.0, "imagenet-r", final_acc_task_mean=78.0, avg_acc_task_mean=82.0),
            # an older run file without task-mean values, sample-weighted 69.3 (close to the task-mean 69.29)
            _result("l2p", 0, 69.3, 75.0, "imagenet-r"),
            _result("seq-lora", 0, 50.0, 60.0, "synth"),  # no published value: absent
            {**_result("inflora", 2, 10.0, 10.0), "data_info": {"evaluated_on": "validation"}}]:
        store.write_result(results_dir, result)
    return results_dir


@pytest.fixture
def published(tmp_path):
    path = tmp_path / "published.csv"
    path.write_text(PUBLISHED)
    return report.load_published(path)


def _build(runs_dir, published):
    return reproduction.build(report.collect(runs_dir), published)


def _line(table, method, dataset, metric, source):
    match = table.query("method == @method and dataset == @dataset and metric == @metric and source == @source")
    assert len(match) == 1
    return match.iloc[0]


@pytest.mark.parametrize("delta, sd, expected", [
    (-0.31, 0.73, "within published spread"), (86.51 + 0.73 - 86.51, 0.73, "within published spread"),
    (0.9, 0.3, "within 1 point"), (-0.89, math.nan, "within 1 point"), (1.0, math.nan, "within 1 point"),
    (-1.2, 0.5, "off"), (2.45, math.nan, "off")])
def test_verdict_rule(delta, sd, expected):
    assert reproduction.verdict(delta, sd) == expected


def test_each_published_value_gets_a_line_with_the_three_verdicts(runs_dir, published):
    table = _build(runs_dir, published)
    paper = _line(table, "inflora", "cifar100", "final_acc", "the paper")
    assert (paper["ours_mean"], paper["n_seeds"]) == (pytest.approx(86.2), 2)
    assert paper["ours_std"] == pytest.approx(math.sqrt(0.08))  # (86.0, 86.4): sd = 0.2828
    assert paper["delta"] == pytest.approx(-0.31) and paper["verdict"] == "within published spread"
    rerun = _line(table, "inflora", "cifar100", "final_acc", "a re-run")
    assert rerun["delta"] == pytest.approx(-0.89) and rerun["verdict"] == "within 1 point"  # no sd given
    avg = _line(table, "inflora", "cifar100", "avg_acc", "the paper")
    assert avg["delta"] == pytest.approx(89.25 - 91.70) and avg["verdict"] == "off"
    assert list(table["metric"][table["dataset"] == "cifar100"]) == ["final_acc", "final_acc", "avg_acc"]


def test_variants_are_matched_and_never_mixed(runs_dir, published):
    table = _build(runs_dir, published)
    task_mean = _line(table, "inflora", "imagenet-r", "final_acc", "a task-mean paper")
    assert task_mean["ours_mean"] == 78.0 and task_mean["verdict"] == "within published spread"  # not 75 (off)
    # the run lacks task-mean values: its sample-weighted 69.3 is not set against the task-mean 69.29
    missing = _line(table, "l2p", "imagenet-r", "final_acc", "CODA paper")
    assert math.isnan(missing["ours_mean"]) and math.isnan(missing["delta"]) and missing["n_seeds"] == 0
    assert missing["verdict"] == "not compared: the runs lack the task-mean value"
    coda = _line(table, "l2p", "imagenet-r", "forgetting", "CODA paper")
    assert coda["verdict"] == "not compared: no coda F in this harness"


def test_validation_runs_and_benchmarks_without_published_values_do_not_appear(runs_dir, published):
    table = _build(runs_dir, published)
    assert set(table["dataset"]) == {"cifar100", "imagenet-r"} and "seq-lora" not in set(table["method"])
    assert set(table["n_seeds"][table["dataset"] == "cifar100"]) == {2}  # the validation seed 2 is not counted


def test_nothing_to_compare_is_a_clear_error(results_dir, published):
    store.write_result(results_dir, _result("seq-lora", 0, 50.0, 60.0, "synth"))
    with pytest.raises(ConfigError, match=r"no published value for the runs \(seq-lora on synth \(10 tasks\)\)"):
        _build(results_dir, published)


def test_markdown_table(runs_dir, published):
    text = reproduction.render(_build(runs_dir, published), "markdown")
    paper = next(line for line in text.splitlines() if "86.51 ± 0.73" in line)
    assert "| inflora" in paper and "86.20 ± 0.28" in paper and "-0.31" in paper and "within published spread" in paper
    assert "| 78.20 ± 0.50*" in text  # unverified
    assert "\n[1] the paper" in text and "Verdict on Δ" in text


def test_csv_and_json_have_the_documented_columns(runs_dir, published):
    table = _build(runs_dir, published)
    rows = list(csv.DictReader(io.StringIO(reproduction.render(table, "csv"))))
    assert list(rows[0]) == reproduction.COLUMNS and len(rows) == len(table) == 6
    records = json.loads(reproduction.render(table, "json"))
    assert next(r for r in records if r["method"] == "l2p")["ours_mean"] is None


@needs_pdflatex
def test_latex_table_compiles(runs_dir, published, tmp_path):
    table = reproduction.render(_build(runs_dir, published), "latex")
    assert table.count("{") == table.count("}") and r"\bottomrule" in table
    assert_latex_compiles(table, tmp_path)


def test_cli_reproduction_against_the_shipped_published_numbers(runs_dir, capsys):
    assert main(["report", "--results-dir", str(runs_dir), "--reproduction"]) == 0
    out = capsys.readouterr().out
    assert "86.51 ± 0.73" in out and "within published spread" in out and "(validation)" not in out
    assert main(["report", "--results-dir", str(runs_dir), "--reproduction", "--versus"]) == 2
    assert capsys.readouterr().err.startswith("error: --reproduction and --versus are separate tables")


def test_reproduction_page_is_self_contained_with_every_line(runs_dir, published):
    table = _build(runs_dir, published)
    page = reproduction.render(table, "html")
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in page
    assert page.count("<tr>") == len(table) + 1  # the header and one row per line
    assert page.count("<td class='neg'>off</td>") == (table["verdict"] == reproduction.OFF).sum() > 0
    assert page.count("<td class='pos'>within") == table["verdict"].str.startswith("within").sum() > 0
    assert all(f"<li>{source}</li>" in page for source in set(table["source"]))
