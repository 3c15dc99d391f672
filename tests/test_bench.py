"""The throughput benchmark (benchmark/bench.py): rows, ratios, JSON and target verdicts."""

from __future__ import annotations

import json

from benchmark import cli
from benchmark.bench import target_verdict


def test_bench_writes_one_row_per_method_with_ratios(tmp_path, capsys):
    code = cli.main(["bench", "--methods", "frozen", "inflora", "coda-prompt", "--batch-size", "8", "--warmup", "0",
                     "--steps", "1", "--device", "cpu", "--results-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "bounds: the frozen" in out
    [path] = (tmp_path / "bench").glob("bench_vit_tiny_synth_cpu_fp32_b8_*.json")
    record = json.loads(path.read_text())
    rows = {r["method"]: r for r in record["rows"]}
    assert list(rows) == ["frozen", "inflora", "coda"]
    for row in rows.values():
        assert row["backbone"] == "vit_tiny_synth" and row["device"] == "cpu" and row["batch_size"] == 8
        assert row["train_img_s"] > 0 and row["eval_img_s"] > 0 and row["peak_mem_mb"] is None
        for phase in ("train", "eval"):  # median of per-round ratios ~ ratio of median rates
            rate_ratio = row[f"bound_{phase}_img_s"] / row[f"{phase}_img_s"]
            assert 0.5 < row[f"{phase}_ratio"] / rate_ratio < 2
    assert 0 < rows["inflora"]["design_fraction"] and "design_fraction" not in rows["coda"]


def test_bad_bench_values_are_one_line(capsys):
    assert cli.main(["bench", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_target_verdicts():
    row = {"method": "inflora", "train_ratio": 1.2, "eval_ratio": 1.0, "design_fraction": 0.01}
    assert target_verdict(row) == "train > 1.15x"
    assert target_verdict({**row, "train_ratio": 1.1}) == "met"
    assert target_verdict({"method": "coda", "train_ratio": 1.4, "eval_ratio": 2.2}) == "eval > 2.10x"
    assert target_verdict({"method": "frozen", "train_ratio": 0.4, "eval_ratio": 1.06}) == "eval > 1.05x"
    assert target_verdict({**row, "design_fraction": 0.06}) == "train > 1.15x, design > 5%"
