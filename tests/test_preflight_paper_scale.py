"""The paper configurations end to end at ViT-B/16, 224 px, on this CPU (docs/preflight.md "Preflight at paper
scale"): every registered method on the ImageNet-R stand-in at its default 10 tasks, and every other
real data set with a LoRA and a prompt method, cut to one batch of 2 per task and one test image
per task, bf16, projected for the H200 of the stored bench result. Random-init weights (none are
cached here); every hook, checkpoint, reload and evaluation runs at the real shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark import cli, store
from benchmark.registry import METHODS

pytestmark = pytest.mark.slow
CUT = ["--precision", "bf16", "--train-batches", "1", "--max-epochs", "1", "--test-images", "1",
       "--project-for", "h200", "--device", "cpu", "--no-progress"]
WIDTH, BLOCKS = 768, 12


def preflight(tmp_path: Path, dataset: str, methods: list[str], capsys) -> tuple[dict[str, dict], dict[str, dict]]:
    results = tmp_path / "results"
    code = cli.main(["preflight", "--dataset", dataset, "--methods", *methods, "--results-dir", str(results), *CUT])
    out = capsys.readouterr().out
    report = json.loads(sorted((results / "preflight").glob("preflight_*.json"))[-1].read_text())
    rows = {r["label"].split()[0]: r for r in report["runs"]}
    assert code == 0, out
    assert [name for name, row in rows.items() if row["error"]] == []
    cut = {r["method"]: r for r in store.load_results(results / "preflight" / "scratch")}
    return rows, cut


def test_every_method_on_the_imagenet_r_standin_at_vit_b16(tmp_path, capsys):
    rows, cut = preflight(tmp_path, "imagenet-r", ["all"], capsys)  # the README's and docs/preflight.md's command
    assert set(rows) == set(METHODS.names()) == set(cut)
    for name, result in cut.items():
        tasks = 1 if METHODS.get(name).single_task else 10
        assert len(result["acc_matrix"]) == tasks and len(result["class_order"]) == 200
        assert result["config"]["backbone"].startswith("vit_base_patch16_224.")
        assert rows[name]["projection"]["total_s"] > 0 and rows[name]["estimate"]["host_mb"] > 0
    head = WIDTH * 20 + 20  # one task's linear head, 20 classes
    # the paper shapes: InfLoRA's up-projections of k and v in all 12 blocks, rank 10; L2P++'s pool
    assert rows["inflora"]["trainable_params"] == BLOCKS * 2 * 10 * WIDTH + head
    assert rows["l2p"]["trainable_params"] == 483_840 + head
    # InfLoRA's DualGPM memory in the checkpoint: 12 layers of 768-d bases; RanPAC's 10,000 x 10,000 float64 Gram
    assert rows["inflora"]["checkpoint_mb"] > 1
    for name in ("ranpac", "ranpac-no-phase1"):
        assert rows[name]["checkpoint_mb"] > 10_000 ** 2 * 8 / 2 ** 20
        assert min(rows[name]["hook_fixed_s"]) > 0  # the ridge solve at M = 10,000 every task


@pytest.mark.parametrize("dataset, tasks", [("cifar100", 10), ("imagenet-a", 10), ("domainnet", 5)])
def test_each_real_data_set_with_a_lora_and_a_prompt_method(tmp_path, capsys, dataset, tasks):
    rows, cut = preflight(tmp_path, dataset, ["inflora", "coda"], capsys)
    for result in cut.values():
        assert len(result["acc_matrix"]) == tasks
        images = result["data_info"]["task_images"]
        assert all(t["test"] == 1 for t in images) and len(result["acc_matrix"][-1]) == tasks
    assert rows["coda"]["trainable_params"] > 3_000_000  # CODA-P's component pool at width 768
