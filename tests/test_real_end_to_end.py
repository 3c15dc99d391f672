"""Each real benchmark end to end through the command line, on miniature copies of its on-disk
format (``tests/dataset_fixtures.py``) with the tiny backbone at 32 px and one epoch per task."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import cli, store
from datasets.base import class_order
from tests.dataset_fixtures import corrupt, write_cifar100, write_domainnet, write_imagenet_a, write_imagenet_r

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["--backbone", "tiny", "--image-size", "32", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
            "--no-progress"]


def task_counts(counts: list[int], n_tasks: int, seed: int) -> list[int]:
    """Images per task when classes (natural ids) are ordered by ``seed`` and cut into tasks."""
    order, per_task = class_order(len(counts), seed), len(counts) // n_tasks
    return [sum(counts[c] for c in order[t * per_task:(t + 1) * per_task]) for t in range(n_tasks)]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("dataset, method, writer, extra, tasks", [
    ("cifar100", "l2p", lambda root: write_cifar100(root), [], 10),
    ("imagenet-r", "inflora", lambda root: write_imagenet_r(root, with_split_yaml=True), ["--split-file", "SPLIT"],
     5),
    ("imagenet-a", "coda", lambda root: write_imagenet_a(root, presplit=True), [], 10),
    ("domainnet", "dualprompt", lambda root: write_domainnet(root, ("clipart", "sketch")),
     ["--domains", "clipart", "sketch"], 5),
])
def test_a_method_runs_on_each_real_format(tmp_path, capsys, dataset, method, writer, extra, tasks):
    data_root, results = tmp_path / "data", tmp_path / "results"
    written = writer(data_root)
    extra = [str(written.split_dir) if arg == "SPLIT" else arg for arg in extra]
    code, out, err = run_cli(["--methods", method, "--dataset", dataset, "--tasks", str(tasks), "--seeds", "1",
                              "--data-root", str(data_root), "--results-dir", str(results), *TINY_RUN, *extra],
                             capsys)
    assert code == 0, err
    assert f"| {method} " in out
    [result] = list(store.load_results(results))
    assert result["config"]["backbone"] == "vit_tiny_synth" and len(result["acc_matrix"]) == tasks
    assert result["class_order"] == class_order(len(written.classes), 1)
    info = result["data_info"]
    assert [t["train"] for t in info["task_images"]] == task_counts(written.train_counts, tasks, 1)
    assert [t["test"] for t in info["task_images"]] == task_counts(written.test_counts, tasks, 1)
    assert info["split_hash"] if dataset != "cifar100" else info["split"] == "official"
    assert "RandomResizedCrop" in str(info) and "[0,1]" in str(info)


def test_data_errors_are_one_line_with_exit_2(tmp_path, capsys):
    code, _, err = run_cli(["--dataset", "cifar100", "--data-root", str(tmp_path / "nowhere"), *TINY_RUN], capsys)
    assert code == 2 and "data root" in err and "--data-root" in err and len(err.strip().splitlines()) == 1
    write_cifar100(tmp_path)
    code, _, err = run_cli(["--dataset", "cifar100", "--tasks", "7", "--data-root", str(tmp_path), *TINY_RUN], capsys)
    assert code == 2 and "does not divide the 100 classes" in err
    code, _, err = run_cli(["--dataset", "cifar100", "--domains", "real", "--data-root", str(tmp_path), *TINY_RUN],
                           capsys)
    assert code == 2 and "unknown setting 'data.domains'" in err
    code, _, err = run_cli(["--dataset", "cifar100", "--data-root", str(tmp_path), *TINY_RUN, "--image-size", "224"],
                           capsys)
    assert code == 2 and "--image-size 224 does not match backbone vit_tiny_synth" in err


def test_a_corrupt_image_read_by_a_worker_stops_the_run_with_its_path(tmp_path, capsys):
    data_root, results = tmp_path / "data", tmp_path / "results"
    write_imagenet_a(data_root, presplit=True)
    bad = sorted((data_root / "imagenet-a" / "test").rglob("*.jpg"))[0]
    corrupt(bad)
    code, _, err = run_cli(["--methods", "frozen", "--dataset", "imagenet-a", "--data-root", str(data_root),
                            "--results-dir", str(results), "--num-workers", "1", *TINY_RUN], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: cannot read image") and str(bad) in lines[-1]
    assert "Traceback" not in err
    assert list(store.load_results(results)) == []  # no result for a failed run


def test_default_vit_b16_without_cached_weights_is_one_line(tmp_path):
    write_cifar100(tmp_path / "data")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "run_benchmark.py", "--methods", "inflora", "--dataset", "cifar100",
                           "--data-root", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"),
                           "--device", "cpu", "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: could not load pretrained weights for vit_base_patch16_224.augreg_in21k from the timm")
    assert "--pretrained-path" in proc.stderr and "Traceback" not in proc.stderr
