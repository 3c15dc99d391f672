"""Results store: atomic writes, run ids, corrupt files reported and skipped."""

import json
import os

import pytest

from benchmark import store
from tests.conftest import tiny_config

RESULT = {"run_id": "m_synth_T5_s0_abc", "method": "m", "dataset": "synth", "n_tasks": 5, "seed": 0,
          "acc_matrix": [[50.0]], "final_acc": 50.0, "avg_acc": 50.0, "timings": {"total_s": 1.0}}


def test_write_is_atomic_and_leaves_no_temp_files(results_dir):
    path = store.write_result(results_dir, RESULT)
    assert path == store.result_path(results_dir, RESULT["run_id"])
    assert store.read_result(path) == RESULT
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert store.is_complete(results_dir, RESULT["run_id"])
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_failed_write_keeps_the_previous_file(results_dir):
    path = store.write_result(results_dir, RESULT)
    with pytest.raises(TypeError):
        store.write_result(results_dir, {**RESULT, "bad": object()})
    assert store.read_result(path) == RESULT
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_non_finite_values_are_stored_as_null(results_dir):
    path = store.write_result(results_dir, {**RESULT, "forgetting": float("nan")})
    assert json.loads(path.read_text())["forgetting"] is None


def test_corrupt_files_are_reported_by_name_and_skipped(results_dir):
    store.write_result(results_dir, RESULT)
    runs = store.runs_dir(results_dir)
    (runs / "truncated.json").write_text('{"run_id": "x", "acc')
    (runs / "incomplete.json").write_text('{"run_id": "y"}')
    warnings = []
    loaded = list(store.load_results(results_dir, warn=warnings.append))
    assert loaded == [RESULT]
    assert len(warnings) == 2
    assert any("truncated.json" in w for w in warnings) and any("incomplete.json" in w for w in warnings)
    assert all("\n" not in w for w in warnings)


def test_run_id_hashes_what_changes_results_only():
    base = tiny_config("seq-lora")
    assert base.run_id() == tiny_config("seq-lora").run_id()
    assert base.run_id().startswith("seq-lora_synth_T5_s0_")
    assert tiny_config("seq-lora", rank=4).run_id() != base.run_id()
    assert tiny_config("seq-lora", seed=1).run_id() != base.run_id()
    moved = tiny_config("seq-lora")
    moved.device, moved.data_root, moved.num_workers = "cuda", "/elsewhere", 8
    assert moved.run_id() == base.run_id()


def test_run_id_changes_with_the_shipped_synth_weights(monkeypatch):
    from benchmark import backbones

    config = tiny_config("frozen", pretrained=True)
    random_init = tiny_config("frozen").run_id()
    before = config.run_id()
    monkeypatch.setattr(backbones, "synth_backbone_metadata", lambda: {"weights_digest": "rebuilt"})
    assert config.run_id() != before
    assert tiny_config("frozen").run_id() == random_init  # random init: no weights involved


def _write_many(results_dir, writer: int) -> None:
    for repeat in range(5):  # each process rewrites its own result while the others write theirs
        store.write_result(results_dir, {**RESULT, "run_id": f"m_synth_T5_s{writer}_abc",
                                         "acc_matrix": [[float(writer + repeat)]]})


def test_twenty_concurrent_writers_lose_and_corrupt_nothing(results_dir):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_write_many, args=(results_dir, w)) for w in range(20)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    results = {r["run_id"]: r for r in store.load_results(results_dir)}
    assert len(results) == 20
    assert all(results[f"m_synth_T5_s{w}_abc"]["acc_matrix"] == [[float(w + 4)]] for w in range(20))
    assert sorted(p.suffix for p in store.runs_dir(results_dir).iterdir()) == [".json"] * 20  # no temp files
