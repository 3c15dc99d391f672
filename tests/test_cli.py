"""The command line: one-line errors with exit 2, runs stored once, skipped unless --force."""

import pytest
import torch

from benchmark import store
from benchmark.cli import main
from methods.frozen import FrozenBackbone

TINY = ["--tasks", "5", "--epochs", "1", "--set", "data.train_per_class=3", "--set", "data.test_per_class=2",
        "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--dataset", "cifar1000"], "unknown dataset 'cifar1000'"),
    (["--epochs", "-3"], "epochs must be at least 1"),
    (["--lr", "0"], "learning rate must be positive"),
    (["--tasks", "7"], "does not divide the 100 classes"),
    (["--tasks", "0"], "--tasks 0 does not divide the 100 classes"),
    (["--num-workers", "-1"], "num_workers must be non-negative"),
    (["--set", "weight_decay=-1"], "weight_decay must be non-negative"),
    (["--methods", "seq-lora", "--set", "blocks=9"], "LoRA blocks [9] do not exist in a ViT with blocks 0-3"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
    (["--set", "rnak=3"], "unknown setting 'rnak'"),
    (["--methods", "seq-lora", "--set", "rank=abc"], "bad value 'abc' for rank"),
    (["--set", "data.train_per_class=0"], "data.train_per_class must be at least 1"),
    (["--methods", "inflora", "--set", "eps_start=1.5"], "InfLoRA thresholds need 0 < eps_start"),
    (["--methods", "l2p", "--set", "length=7"], "L2P length must be even and >= 2"),
    (["--methods", "dualprompt", "--set", "g_length=0"], "DualPrompt g_length must be even and >= 2"),
    (["--methods", "coda", "--set", "length=3"], "CODA-Prompt length must be even and >= 2"),
    (["--methods", "l2p", "--set", "top_k=31"], "L2P needs 1 <= top_k <= pool_size"),
    (["--methods", "coda", "--set", "ortho_weight=-1"], "CODA-Prompt ortho_weight must be >= 0"),
    (["--methods", "dualprompt", "--set", "e_blocks=[]"], "DualPrompt needs at least one e-prompt block"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, results_dir):
    assert main(argv + ["--results-dir", str(results_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not store.runs_dir(results_dir).exists()


def test_argparse_type_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--epochs", "many"])
    assert info.value.code == 2


def test_list_prints_methods_and_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "seq-lora" in out and "synth" in out


def test_run_stores_results_and_skips_them_next_time(capsys, results_dir):
    argv = ["--methods", "frozen", "seq-lora", "--results-dir", str(results_dir)] + TINY
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| frozen" in out and "| seq-lora" in out and "A_T (%)" in out
    files = sorted(store.runs_dir(results_dir).glob("*.json"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    assert main(argv) == 0
    assert capsys.readouterr().err.count("result exists, skipped") == 2
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert main(argv + ["--force"]) == 0
    assert [f.stat().st_mtime_ns for f in files] != stamps


def test_corrupt_result_is_rerun_with_a_warning(capsys, results_dir):
    argv = ["--methods", "frozen", "--results-dir", str(results_dir)] + TINY
    assert main(argv) == 0
    (path,) = store.runs_dir(results_dir).glob("*.json")
    path.write_text("{not json")
    assert main(argv) == 0
    assert "corrupt result file" in capsys.readouterr().err
    assert store.read_result(path)["method"] == "frozen"


def test_nan_loss_fails_the_run_without_writing_a_result(monkeypatch, capsys, results_dir):
    monkeypatch.setattr(FrozenBackbone, "training_loss",
                        lambda self, x, y, task: torch.tensor(float("inf"), requires_grad=True))
    assert main(["--methods", "frozen", "--results-dir", str(results_dir)] + TINY) == 1
    assert "error: frozen: loss is inf at task 1" in capsys.readouterr().err
    assert not list(store.runs_dir(results_dir).glob("*.json"))


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp16"], "argument --precision: invalid choice: 'fp16'"),
    (["--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
    (["run", "--launcher", "k8s"], "argument --launcher: invalid choice: 'k8s'"),
    (["report", "--format", "docx"], "argument --format: invalid choice: 'docx'"),
    (["bench", "--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
])
def test_argparse_errors_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err and "usage:" not in err


@pytest.mark.parametrize("command", [["--methods", "frozen", *TINY], ["report"], ["status"],
                                     ["bench", "--methods", "frozen", "--steps", "1", "--device", "cpu"]])
def test_results_dir_naming_a_file_is_one_line_and_exit_2(command, tmp_path, capsys):
    not_a_folder = tmp_path / "results.txt"
    not_a_folder.write_text("mine")
    assert main(command + ["--results-dir", str(not_a_folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --results-dir {not_a_folder} is a file, not a folder; name a folder (it is created if missing)"
    assert not_a_folder.read_text() == "mine"


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_unwritable_results_dir_is_one_line_and_exit_2(where, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    folder = tmp_path / "file" / "results" if where == "under a file" else "/proc/clpeft-results"
    assert main(["--methods", "frozen", *TINY, "--results-dir", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --results-dir {folder} cannot be written (") and "\n" not in err


def test_a_set_applies_to_the_methods_that_define_it_and_the_table_says_so(capsys, results_dir):
    from benchmark.cli import build_parser, resolve_runs

    args = ["--methods", "frozen", "seq-lora", "--set", "rank=3", "--results-dir", str(results_dir), *TINY]
    plain = {c.method: c for c in resolve_runs(build_parser().parse_args(["run", *args[:3], *args[5:]]))}
    configs = {c.method: c for c in resolve_runs(build_parser().parse_args(["run", *args]))}
    assert configs["seq-lora"].hparams["rank"] == 3 and "rank" not in configs["frozen"].hparams
    assert configs["frozen"].hparams == plain["frozen"].hparams
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "--set rank=3 applied to seq-lora; frozen have no 'rank' and ran without it" in out


def test_a_set_that_no_selected_method_defines_names_them(capsys, results_dir):
    assert main(["--methods", "frozen", "simplecil", "--set", "rank=3", "--results-dir", str(results_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: unknown setting 'rank': none of the selected methods (frozen, simplecil) has it; "
                   "see `run_benchmark.py list --presets`")
