"""Aggregation over seeds and the table formats, on hand-made result files with known statistics."""

import csv
import io
import json

import pytest

from benchmark import report, store, sweep_record
from benchmark.cli import main
from tests.conftest import assert_latex_compiles, needs_pdflatex


def _result(method, seed, final, avg, forgetting=10.0, dataset="synth", n_tasks=10, rank=10, upper=False):
    config = {"method": method, "dataset": dataset, "n_tasks": n_tasks, "seed": seed, "device": f"cuda:{seed}",
              "hparams": {"rank": rank}}
    return {"run_id": f"{method}_{dataset}_T{n_tasks}_s{seed}_r{rank}", "method": method, "dataset": dataset,
            "n_tasks": n_tasks, "seed": seed, "config": config, "upper_bound": upper,
            "acc_matrix": [[final]], "final_acc": final, "avg_acc": avg, "forgetting": forgetting,
            "timings": {"total_s": 1.0}}


@pytest.fixture
def filled(results_dir):
    for r in [_result("inflora", 0, 50.0, 60.0, 8.0), _result("inflora", 1, 60.0, 70.0, 12.0),
              _result("seq-lora", 0, 40.0, 55.0, 30.0), _result("seq-lora", 1, 44.0, 57.0, 20.0),
              _result("seq-lora", 0, 45.0, 50.0, rank=4),  # another configuration: its own row
              _result("joint", 0, 80.0, 80.0, None, upper=True),
              _result("inflora", 0, 70.0, 75.0, dataset="cifar100")]:
        store.write_result(results_dir, r)
    return results_dir


def test_groups_average_over_seeds_with_sample_sd(filled):
    table = report.aggregate(report.collect(filled, datasets=["synth"]))
    rows = {r.label: r for r in table.itertuples()}
    assert rows["inflora"].n_seeds == 2
    assert rows["inflora"].final_acc_mean == pytest.approx(55.0)
    assert rows["inflora"].final_acc_std == pytest.approx(7.0710678)  # ddof = 1
    assert rows["inflora"].forgetting_mean == pytest.approx(10.0)
    seq = [label for label in rows if label.startswith("seq-lora")]
    assert len(seq) == 2 and all("[" in label for label in seq)  # configs never mix
    assert list(table["label"])[-1] == "joint (upper bound)"
    assert "cifar100" not in set(table["dataset"])


def test_markdown_shows_mean_sd_and_single_seeds_without_sd(filled):
    text = report.render(report.aggregate(report.collect(filled)), "markdown")
    assert "55.00 ± 7.07" in text
    assert "| 70.00 " in text  # cifar100: one seed, no sd
    assert "joint (upper bound)" in text and "–" in text  # no forgetting for the bound


def test_latex_is_a_balanced_booktabs_table_with_the_best_in_bold(filled):
    text = report.render(report.aggregate(report.collect(filled, methods=["inflora", "seq-lora", "joint"])), "latex")
    assert text.count("{") == text.count("}")
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\end{tabular}"):
        assert text.count(rule) == 1
    body = text.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    header_columns = 1 + 2 * 2  # method + (A_T, A_bar) for synth and cifar100
    assert all(line.count("&") == header_columns - 1 for line in body)
    assert r"\textbf{55.00 $\pm$ 7.07}" in text  # best continual A_T on synth
    assert r"\textbf{80.00" not in text  # the upper bound is not ranked
    assert r"seq-lora [" in text and "--" in text  # missing cells are marked


def test_csv_and_json_have_one_row_per_group_and_the_documented_columns(filled):
    table = report.aggregate(report.collect(filled))
    rows = list(csv.DictReader(io.StringIO(report.render(table, "csv"))))
    assert list(rows[0]) == report.COLUMNS and len(rows) == len(table) == 5
    records = json.loads(report.render(table, "json"))
    single = next(r for r in records if r["dataset"] == "cifar100")
    assert single["n_seeds"] == 1 and single["final_acc_std"] is None


def test_cli_report_writes_a_file_and_reports_corrupt_files(filled, tmp_path, capsys):
    (store.runs_dir(filled) / "broken.json").write_text("{")
    out = tmp_path / "table.tex"
    assert main(["report", "--results-dir", str(filled), "--format", "latex", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "broken.json" in err and "skipped" in err
    assert out.read_text().startswith(r"\begin{tabular}")


def test_cli_report_on_an_empty_results_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["report", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no results in") and "\n" not in err


def test_plot_writes_a_readable_figure(filled, tmp_path):
    runs = report.collect(filled)
    path = report.plot(runs, report.aggregate(runs), tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    pdf = report.plot(runs, report.aggregate(runs), tmp_path / "curves.pdf")
    assert pdf.read_bytes()[:4] == b"%PDF"


@needs_pdflatex
def test_latex_table_compiles(filled, tmp_path):
    table = report.render(report.aggregate(report.collect(filled)), "latex")
    assert_latex_compiles(table, tmp_path)


def test_published_numbers_stand_beside_ours_with_the_difference(filled, tmp_path):
    published = tmp_path / "published.csv"
    published.write_text(
        "method,dataset,n_tasks,metric,value,std,variant,source,verified\n"
        "inflora,synth,10,final_acc,60.0,1.0,task-mean,other paper,no\n"
        "inflora,synth,10,final_acc,58.0,0.5,sample-weighted,the paper,yes\n"
        "inflora,synth,10,avg_acc,65.0,,sample-weighted,the paper,yes\n")
    table = report.with_published(report.aggregate(report.collect(filled, datasets=["synth"])),
                                  report.load_published(published))
    row = table[table["label"] == "inflora"].iloc[0]
    assert row["published_final_acc"] == 58.0  # sample-weighted sources first
    assert row["final_acc_diff"] == pytest.approx(55.0 - 58.0)
    assert row["published_source"] == "the paper [sample-weighted]"
    text = report.render(table, "markdown")
    assert "58.00 ± 0.50" in text and "-3.00" in text and "[1] the paper [sample-weighted]" in text
    records = json.loads(report.render(table, "json"))
    assert [r["published_avg_acc"] for r in records if r["method"] == "inflora"] == [65.0]


def test_shipped_published_numbers_load_and_cover_the_paper_tables():
    published = report.load_published()
    inflora = published[(published["method"] == "inflora") & (published["dataset"] == "cifar100")]
    assert 86.51 in set(inflora["value"]) and set(published["verified"]) <= {"yes", "no"}


def test_latex_with_published_adds_marked_rows(filled, tmp_path):
    published = tmp_path / "published.csv"
    published.write_text("method,dataset,n_tasks,metric,value,std,variant,source,verified\n"
                         "inflora,synth,10,final_acc,58.0,0.5,sample-weighted,the paper,yes\n")
    table = report.with_published(report.aggregate(report.collect(filled)), report.load_published(published))
    text = report.render(table, "latex")
    # benchmarks in order: cifar100 (no published value), then synth
    assert r"\textit{inflora (published)} & -- & -- & \textit{58.00 $\pm$ 0.50} & --" in text
    assert text.count(r"\midrule") == 2 and text.count("{") == text.count("}")


def test_options_that_do_not_change_the_computation_do_not_split_a_cell():
    """Runs stored before a default-off option existed, and runs that differ only in where the
    decoded cache lies, whether they were compiled or how many workers they had, share a cell;
    turning the decoded cache on (other pixels) gives a cell of its own."""
    old = {"method": "inflora", "seed": 0, "data_options": {"split_seed": 0}, "num_workers": 0}
    new = {**old, "seed": 1, "compile": True, "num_workers": 8,
           "data_options": {"split_seed": 0, "decoded_cache": False, "cache_dir": "/scratch/c"}}
    cached = {**new, "data_options": {"split_seed": 0, "decoded_cache": True}}
    assert report.config_group(old) == report.config_group(new) != report.config_group(cached)


def test_validation_runs_are_reported_apart_from_test_results(results_dir):
    store.write_result(results_dir, _result("inflora", 0, 50.0, 60.0))
    validation = {**_result("inflora", 1, 90.0, 95.0), "run_id": "inflora_val", "data_info": {"evaluated_on": "validation"}}
    validation["config"]["data_options"] = {"val_fraction": 0.1}
    store.write_result(results_dir, validation)
    table = report.aggregate(report.collect(results_dir))
    assert sorted(table["dataset"]) == ["synth", "synth (validation)"]
    assert table.set_index("dataset").loc["synth", "final_acc_mean"] == 50.0


def _sweep_record(run_ids: dict[str, str]) -> dict:
    """A sweep record that chose inflora's lr and ran ``run_ids`` (seed -> run id) as its final runs."""
    points = [{"setting": {"lr": lr}, "run_ids": [], "val_final_acc": acc, "val_avg_acc": acc} for lr, acc in
              ((0.001, 50.0), (0.003, 55.0))]
    return {"sweep_id": "synth_T10_abc", "val_fraction": 0.1, "val_seeds": [0], "budget": None,
            "methods": {"inflora": {"n_grid_points": 2, "points": points, "chosen": {"lr": 0.003},
                                    "final_run_ids": run_ids}}}


def test_latex_keeps_one_row_for_a_method_tuned_on_some_benchmarks_only(filled):
    runs = report.collect(filled, methods=["inflora"])
    synth_ids = {"0": "inflora_synth_T10_s0_r10", "1": "inflora_synth_T10_s1_r10"}
    lines = report.to_latex(sweep_record.mark_tuned(report.aggregate(runs), runs, [_sweep_record(synth_ids)]))
    [row] = [line for line in lines.splitlines() if line.startswith("inflora")]
    cells = row.removesuffix(r" \\").split(" & ")
    assert cells[0] == "inflora"  # the label unmarked: the cifar100 result was not tuned
    assert [c.endswith(r"$^\ddagger$") for c in cells[1:]] == [False, False, True, True]  # cifar100, then synth
    assert r"$^\ddagger$ inflora: selected on validation" in lines

    every_id = {**synth_ids, "2": "inflora_cifar100_T10_s0_r10"}
    lines = report.to_latex(sweep_record.mark_tuned(report.aggregate(runs), runs, [_sweep_record(every_id)]))
    [row] = [line for line in lines.splitlines() if line.startswith("inflora")]
    assert row.startswith(r"inflora $^\ddagger$ &") and row.count("ddagger") == 1  # tuned everywhere: the label
