"""``sweep``: grids from the methods' spaces or --grid, selection on validation data only, the
record, the final runs on test, reuse of stored points, ``report``'s marks and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from benchmark import search_space, store, sweep_record
from benchmark.cli import main
from benchmark.config import resolve
from benchmark.registry import DATASETS, METHODS
from benchmark.search_space import LR_LADDER, Around, Scaled
from benchmark.sweep import choose
from tests.conftest import assert_latex_compiles

TINY = ["--tasks", "5", "--epochs", "1", "--set", "data.train_per_class=5", "--set", "data.test_per_class=2",
        "--no-progress", "--device", "cpu"]


def table_rows(text: str) -> dict[str, list[str]]:
    """The rows of the markdown tables in ``text``: first cell -> the other cells, stripped."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells[1:]
    return rows


def test_around_takes_the_preset_and_its_neighbours_on_the_ladder():
    assert Around(LR_LADDER).values(3e-3) == [1e-3, 3e-3, 1e-2]
    assert Around(LR_LADDER).values(5e-4) == [3e-4, 5e-4, 1e-3]  # off the ladder: put on it
    assert Around(LR_LADDER, steps=2).values(1e-6) == [1e-6, 3e-6, 1e-5]  # the ladder's end
    assert Around((0.9, 0.95, 0.98, 0.99)).values(0.99) == [0.98, 0.99]


def test_scaled_multiplies_and_keeps_whole_numbers_whole():
    assert Scaled((0.5, 1, 2)).values(10) == [5, 10, 20]
    assert all(isinstance(v, int) for v in Scaled((0.5, 1, 2)).values(15))
    assert Scaled((0.5, 2)).values(0.1) == [0.05, 0.2]


def test_budget_draws_the_same_points_for_the_same_seed_and_in_grid_order():
    grid = search_space.points({"lr": [1, 2, 3], "rank": [4, 8, 16]})
    assert len(grid) == 9 and grid[0] == {"lr": 1, "rank": 4} and grid[1] == {"lr": 1, "rank": 8}
    drawn = search_space.sample(grid, 4, seed=0)
    assert drawn == search_space.sample(grid, 4, seed=0) and len(drawn) == 4
    assert [grid.index(p) for p in drawn] == sorted(grid.index(p) for p in drawn)
    assert any(search_space.sample(grid, 4, seed=s) != drawn for s in range(1, 5))
    assert search_space.sample(grid, None, seed=0) == grid


def test_ties_go_to_the_recipe_then_to_the_first_point():
    scored = [{"setting": {"lr": 1}, "val_final_acc": 50.0}, {"setting": {"lr": 2}, "val_final_acc": 60.0},
              {"setting": {"lr": 3}, "val_final_acc": 60.0}]
    assert choose(scored, {"lr": 3}) == {"lr": 3}
    assert choose(scored, {"lr": 1}) == {"lr": 2}
    assert choose(scored[:1], {"lr": 9}) == {"lr": 1}


def test_edges_name_a_choice_on_the_border_of_a_numeric_axis():
    grid = {"lr": [1e-3, 3e-3, 1e-2], "head_lr": [1e-2, 3e-2, 1e-1], "blocks": [[0], [1], [2]]}
    assert search_space.edges(grid, {"lr": 3e-3, "head_lr": 1e-1, "blocks": [0]}) == \
        ["head_lr=0.1 is the largest value tried"]


@pytest.mark.parametrize("dataset", DATASETS.names())
def test_every_methods_default_space_resolves_on_every_data_set(dataset):
    """Each axis names a setting of the method and every point of the grid is a valid run."""
    for method in METHODS.names():
        cls = METHODS.get(method)
        recipe = resolve(method, dataset, device="cpu")
        space = cls.search_space(dataset)
        assert set(space) <= {f.name for f in dataclasses.fields(cls.Config)}, method
        grid = {key: search_space.axis_values(axis, recipe.hparams[key]) for key, axis in space.items()}
        for key, values in grid.items():
            assert recipe.hparams[key] in values, f"{method} on {dataset}: the recipe's {key} is not in its grid"
        for point in search_space.points(grid):
            resolve(method, dataset, device="cpu", overrides=point)


def test_synth_spaces_are_the_grids_the_synth_recipes_were_chosen_from():
    """Each synth recipe is the point its synth space chose (results/measured/synth_sweep.json)."""
    record = json.loads((Path(__file__).resolve().parents[1] / "results/measured/synth_sweep.json").read_text())
    for method, entry in record["methods"].items():
        assert METHODS.get(method).search_space("synth") == {k: v for k, v in entry["grid"].items()}, method
        recipe = resolve(method, "synth", device="cpu").hparams
        assert {k: recipe[k] for k in entry["chosen"]} == entry["chosen"], method


@pytest.mark.parametrize("argv, message", [
    (["--methods", "frozen", "seq-lora", "--grid", "rnak=1,2"], "--grid key 'rnak': none of the selected methods"),
    (["--methods", "frozen", "--grid", "lr=0.1,0.2,0.3", "--budget", "4"], "--budget 4 is larger than frozen's grid (3"),
    (["--methods", "frozen", "--budget", "0"], "--budget must be at least 1"),
    (["--methods", "frozen", "--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    (["--methods", "frozen", "--val-fraction", "0.01"], "--val-fraction 0.01 holds out 0 of the 5 training images"),
    (["--methods", "frozen", "--grid", "lr=0.1,0.1"], "repeats a value"),
    (["--methods", "frozen", "--grid", "lr="], "has no values"),
    (["--methods", "frozen", "--grid", "lr=1,2", "--grid", "lr=3"], "--grid lr is given twice"),
    (["--methods", "frozen", "--grid", "lr=0.1,0.2", "--lr", "0.1"], "lr is both searched (--grid) and fixed"),
    (["--methods", "frozen", "--grid", "lr=0.1,abc"], "bad value 'abc' for lr"),
    (["--methods", "frozen", "--time", "auto", "--launcher", "slurm"], "sweep: --time auto (or time_min: auto in the profile)"),
    (["--methods", "frozen", "--grid", "lr=1e-3,0.001"], "gives one value twice (frozen reads them as 0.001, 0.001)"),
    (["--methods", "frozen", "--set", "data.val_fraction=0.3"], "give the validation fraction with --val-fraction"),
    (["--methods", "frozen", "--force", "--launcher", "slurm"], "sweep --force with --launcher slurm needs --wait"),
    (["--methods", "coda", "--grid", "length=4,5"], "coda at length=5: CODA-Prompt length must be even"),
])
def test_bad_sweep_input_is_one_line_and_runs_nothing(argv, message, capsys, results_dir):
    assert main(["sweep", *argv, *TINY, "--results-dir", str(results_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and message in err, err
    assert not store.runs_dir(results_dir).exists()


def test_time_auto_from_a_slurm_profile_is_refused_too(capsys, results_dir, tmp_path):
    (tmp_path / "profile.yaml").write_text("time_min: auto\n")
    argv = ["sweep", "--methods", "frozen", "--launcher", "slurm", "--slurm-profile", str(tmp_path / "profile.yaml")]
    assert main([*argv, *TINY, "--results-dir", str(results_dir)]) == 2
    assert "time_min: auto in the profile" in capsys.readouterr().err


def test_a_set_key_only_some_methods_have_applies_to_those_and_leaves_their_grids(capsys, results_dir):
    argv = ["sweep", "--methods", "seq-lora", "frozen", "--dataset", "cifar100", "--set", "rank=4", "--dry-run"]
    assert main([*argv, "--results-dir", str(results_dir)]) == 0
    plan = table_rows(capsys.readouterr().err)
    assert plan["seq-lora"][1] == "lr 0.0003/0.0005/0.001" and plan["frozen"][1] == "lr 0.0003/0.001/0.003"


def test_a_budget_of_one_point_still_runs_it_on_validation_and_marks_the_choice(capsys, results_dir):
    argv = ["sweep", "--methods", "frozen", "--grid", "lr=0.01,0.03", "--budget", "1", *TINY,
            "--results-dir", str(results_dir)]
    assert main(argv) == 0
    assert "validation runs: 0 of 1 already stored, 1 to run" in capsys.readouterr().err
    [path] = sweep_record.records_dir(results_dir).glob("*.json")
    entry = json.loads(path.read_text())["methods"]["frozen"]
    assert entry["n_grid_points"] == 2 and len(entry["points"]) == 1 and entry["points"][0]["val_final_acc"] >= 0
    assert main(["report", "--results-dir", str(results_dir)]) == 0
    assert "from a budget of 1 of 2 grid points" in capsys.readouterr().out


def test_a_grid_key_only_some_methods_have_applies_to_those(capsys, results_dir):
    argv = ["sweep", "--methods", "inflora", "frozen", "simplecil", "--grid", "eps_start=0.9,0.95", "--dry-run"]
    assert main([*argv, *TINY, "--results-dir", str(results_dir)]) == 0
    plan = table_rows(capsys.readouterr().err)
    assert plan["inflora"][:4] == ["--grid", "eps_start 0.9/0.95", "2 of 2", "2"]
    assert plan["frozen"][:4] == ["--grid", "the recipe only", "1 of 1", "0"]  # no eps_start: not searched
    assert plan["simplecil"][:4] == ["nothing to choose", "the recipe only", "1 of 1", "0"]
    assert not store.runs_dir(results_dir).exists()


@pytest.mark.slow
def test_a_sweep_selects_on_validation_runs_the_final_seeds_and_reuses_its_points(capsys, results_dir, tmp_path):
    argv = ["sweep", "--methods", "frozen", "seq-lora", "--grid", "lr=0.003,0.03", "--grid", "head_lr=0.01,0.1",
            "--budget", "3", "--seeds", "0", "1", *TINY, "--results-dir", str(results_dir)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "validation runs: 0 of 6 already stored, 6 to run" in err and "final runs: 0 of 4" in err
    [path] = sweep_record.records_dir(results_dir).glob("synth_T5_*.json")
    record = json.loads(path.read_text())
    results = {r["run_id"]: r for r in store.load_results(results_dir)}
    assert len(results) == 10
    for method in ("frozen", "seq-lora"):
        entry = record["methods"][method]
        assert entry["n_grid_points"] == 4 and len(entry["points"]) == 3 and entry["source"] == "--grid"
        for point in entry["points"]:
            [run] = [results[i] for i in point["run_ids"]]
            assert run["data_info"]["evaluated_on"] == "validation" and run["data_info"]["n_validation"] == 100
            assert {k: run["config"]["hparams"][k] for k in point["setting"]} == point["setting"]
            assert point["val_final_acc"] == run["final_acc"]
        best = max(p["val_final_acc"] for p in entry["points"])
        assert next(p for p in entry["points"] if p["setting"] == entry["chosen"])["val_final_acc"] == best
        assert sorted(entry["final_run_ids"]) == ["0", "1"]
        for seed, run_id in entry["final_run_ids"].items():
            final = results[run_id]
            assert final["seed"] == int(seed) and "evaluated_on" not in final["data_info"]
            assert {k: final["config"]["hparams"][k] for k in entry["chosen"]} == entry["chosen"]
        assert table_rows(out.split("the grids and")[0])[method][0].startswith(sweep_record.setting_text(entry["chosen"]))

    assert main(argv) == 0  # everything stored: nothing runs again
    err = capsys.readouterr().err
    assert "validation runs: 6 of 6 already stored, 0 to run" in err and "final runs: 4 of 4 already stored" in err
    assert len(list(store.runs_dir(results_dir).glob("*.json"))) == 10

    assert main(["report", "--results-dir", str(results_dir)]) == 0
    table = capsys.readouterr().out
    assert "| frozen ‡ " in table and "| seq-lora ‡ " in table
    assert f"from a budget of 3 of 4 grid points by sweep {record['sweep_id']}" in table
    assert all("‡" not in line for line in table.splitlines() if "(validation)" in line)
    for extra in ([], ["--sweep"]):  # the marked table and the grids compile
        assert main(["report", "--results-dir", str(results_dir), "--format", "latex", *extra]) == 0
        latex = capsys.readouterr().out
        assert ("$^\\ddagger$" in latex) == (not extra)
        if shutil.which("pdflatex"):
            folder = tmp_path / ("grids" if extra else "table")
            folder.mkdir()
            assert_latex_compiles(latex, folder)
    assert main(["report", "--results-dir", str(results_dir), "--sweep", "--format", "csv"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == "sweep,dataset,n_tasks,method,setting,val_final_acc,val_avg_acc,chosen,diverged,recipe"
    assert len(rows) == 1 + 6 and sum(row.split(",")[-3] == "True" for row in rows[1:]) == 2


def test_report_sweep_without_records_is_one_line(capsys, results_dir):
    assert main(["--methods", "frozen", *TINY, "--results-dir", str(results_dir)]) == 0
    capsys.readouterr()
    assert main(["report", "--sweep", "--results-dir", str(results_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no sweep records match") and "\n" not in err
    assert main(["report", "--sweep", "--format", "html", "--results-dir", str(results_dir)]) == 2
    assert "report --sweep prints markdown, latex, csv or json, not html" in capsys.readouterr().err
    assert main(["report", "--results-dir", str(results_dir)]) == 0
    assert "‡" not in capsys.readouterr().out  # a plain run is never marked


def test_the_default_spaces_table_in_the_docs_matches_the_method_files():
    text = (Path(__file__).resolve().parents[1] / "docs/tuning.md").read_text()
    rows = {}
    for line in text.split("## Default spaces")[1].split("\n\n")[1].splitlines()[2:]:
        names, real, _ = [c.strip() for c in line.strip("|").split("|")]
        for name in names.replace(" and its variants", "").split(", "):
            rows[name] = real
    for method in METHODS.names():
        cls = METHODS.get(method)
        real = rows.get(method) or rows[cls.variant_of]
        space = cls.search_space("cifar100")
        if not space:
            assert real == "nothing to choose", method
        else:
            assert [w.strip(",") for w in real.split() if w.strip(",") in {f.name for f in dataclasses.fields(
                cls.Config)}] == list(space), method


def test_a_diverged_point_is_never_chosen_and_not_run_again(capsys, results_dir):
    argv = ["sweep", "--methods", "seq-lora", "--grid", "lr=0.01,1e30", *TINY, "--results-dir", str(results_dir)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "loss is nan" in err
    [path] = sweep_record.records_dir(results_dir).glob("*.json")
    entry = json.loads(path.read_text())["methods"]["seq-lora"]
    diverged = next(p for p in entry["points"] if p["setting"] == {"lr": 1e30})
    assert diverged["val_final_acc"] is None and "loss is nan" in diverged["diverged"]
    assert entry["chosen"] == {"lr": 0.01}
    assert store.diverged(results_dir, diverged["run_ids"][0]) and not store.is_complete(results_dir,
                                                                                           diverged["run_ids"][0])
    assert main(argv) == 0
    assert "validation runs: 1 of 2 already stored, 1 diverged before, 0 to run" in capsys.readouterr().err
    assert main(["report", "--sweep", "--results-dir", str(results_dir)]) == 0
    assert table_rows(capsys.readouterr().out)["synth"][2:4] == ["lr=1e+30", "diverged (NaN loss)"]


def test_a_record_keeps_earlier_final_runs_only_while_the_choice_is_the_same(tmp_path):
    def record(chosen: dict, finals: dict) -> dict:
        return {"sweep_id": "abc", "dataset": "synth", "n_tasks": 10,
                "methods": {"frozen": {"chosen": chosen, "final_run_ids": finals}}}

    sweep_record.write(tmp_path, record({"lr": 0.1}, {"0": "run-a"}))
    path = sweep_record.write(tmp_path, record({"lr": 0.1}, {"1": "run-b"}))
    assert json.loads(path.read_text())["methods"]["frozen"]["final_run_ids"] == {"0": "run-a", "1": "run-b"}
    sweep_record.write(tmp_path, record({"lr": 0.3}, {"2": "run-c"}))
    assert json.loads(path.read_text())["methods"]["frozen"]["final_run_ids"] == {"2": "run-c"}
