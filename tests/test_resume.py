"""Checkpoints and exact resume (benchmark/checkpoint.py, protocol.run with a Checkpointer)."""

from __future__ import annotations

import os

import pytest

from benchmark import protocol
from benchmark.checkpoint import Checkpointer
from methods.base import Method
from tests.conftest import task_loader, tiny_config

RESUMED = ("seq-lora", "inflora", "l2p", "dualprompt", "coda")


class Interrupted(Exception):
    """Stands for a crash or a preemption in the middle of training."""


def interrupt_at(monkeypatch, cls: type[Method], call: int) -> None:
    """Make the ``call``-th training step of ``cls`` raise ``Interrupted``."""
    loss, counter = cls.training_loss, {"n": 0}

    def training_loss(self, x, y, task):
        counter["n"] += 1
        if counter["n"] == call:
            raise Interrupted(f"interrupted at step {call}")
        return loss(self, x, y, task)
    monkeypatch.setattr(cls, "training_loss", training_loss)


def config_of(method: str, epochs: int = 2):
    """4 tasks of 25 classes x 1 image, 2 epochs, batches of 8: 4 steps per epoch (3 with drop_last)."""
    return tiny_config(method, n_tasks=4, seed=2, epochs=epochs, batch_size=8, **{"data.train_per_class": 1})


def steps_per_task(config) -> int:
    split, method = protocol.build_run(config, protocol.resolve_device("cpu"))
    return config.hparams["epochs"] * len(task_loader(split, method, 0))


def crash_and_resume(config, tmp_path, monkeypatch, crash_step: int, every_s: float) -> dict:
    """Run until the ``crash_step``-th training step raises, then rerun: the resumed result."""
    checkpointer = Checkpointer(tmp_path / "run.pt", every_s=every_s)
    interrupt_at(monkeypatch, type(protocol.build_run(config, protocol.resolve_device("cpu"))[1]), crash_step)
    with pytest.raises(Interrupted):
        protocol.run(config, progress=False, checkpointer=checkpointer)
    assert checkpointer.path.is_file()
    monkeypatch.undo()
    return protocol.run(config, progress=False, checkpointer=Checkpointer(checkpointer.path, every_s=every_s))


# the schedule is a function of the epoch: epochs 1 and 2 are where coda-cosine differs from a plain
# cosine most (factors 1 and 0.71 at K = 3 against 0.016), so a resumed epoch's lr is checked there
@pytest.mark.parametrize("method, where", [(m, "second task, second epoch") for m in RESUMED]
                         + [("inflora", "first task, first epoch"), ("coda", "second task, third epoch")])
def test_a_run_resumed_inside_a_task_equals_an_uninterrupted_one(method, where, tmp_path, monkeypatch, capsys):
    config = config_of(method, epochs=3 if "third epoch" in where else 2)
    per_task = steps_per_task(config)
    per_epoch = per_task // config.hparams["epochs"]
    crash_step = {"first task, first epoch": 3, "second task, second epoch": per_task + per_epoch + per_epoch // 2 + 1,
                  "second task, third epoch": per_task + 2 * per_epoch + 2}[where]
    reference = protocol.run(config, progress=False)
    resumed = crash_and_resume(config, tmp_path, monkeypatch, crash_step, every_s=0)  # saves every step
    assert "resuming from its checkpoint at task" in capsys.readouterr().err
    assert resumed["acc_matrix"] == reference["acc_matrix"]
    assert resumed["task_aware_matrix"] == reference["task_aware_matrix"]
    assert resumed["trainable_params"] == reference["trainable_params"]
    assert len(resumed["timings"]["tasks"]) == 4


@pytest.mark.parametrize("method", ["inflora", "coda"])
def test_a_run_resumed_from_a_task_end_equals_an_uninterrupted_one(method, tmp_path, monkeypatch, capsys):
    config = config_of(method)
    reference = protocol.run(config, progress=False)
    crash_step = 2 * steps_per_task(config) + 1  # the first step of task 3
    resumed = crash_and_resume(config, tmp_path, monkeypatch, crash_step, every_s=1e9)
    assert "resuming from its checkpoint at task 3" in capsys.readouterr().err
    assert resumed["acc_matrix"] == reference["acc_matrix"]


def test_the_last_checkpoint_holds_the_whole_record(tmp_path):
    config = config_of("dualprompt")
    checkpointer = Checkpointer(tmp_path / "run.pt", every_s=1e9)
    result = protocol.run(config, progress=False, checkpointer=checkpointer)
    state = checkpointer.load(config.run_id())
    assert state["task"] == 3 and state["resume"] is None
    assert state["record"]["acc"] == result["acc_matrix"]


def test_a_foreign_or_corrupt_checkpoint_is_ignored_with_a_warning(tmp_path, capsys):
    checkpointer = Checkpointer(tmp_path / "run.pt")
    checkpointer.path.write_bytes(b"not a checkpoint")
    assert checkpointer.load("x") is None
    assert "unreadable" in capsys.readouterr().err
    checkpointer.save({"run_id": "other"})
    umask = os.umask(0)
    os.umask(umask)
    assert checkpointer.path.stat().st_mode & 0o777 == 0o666 & ~umask  # as result files, not mkstemp's 0600
    assert [p.name for p in checkpointer.path.parent.iterdir()] == ["run.pt"]  # no temp file left
    assert checkpointer.load("x") is None
    assert "another run" in capsys.readouterr().err
    checkpointer.remove()
    assert checkpointer.load("x") is None and not checkpointer.path.exists()


def test_the_command_line_resumes_an_interrupted_run_and_then_removes_its_checkpoint(tmp_path, monkeypatch,
                                                                                      capsys):
    from benchmark import cli, store
    from methods.seq_lora import SeqLoRA

    args = ["--methods", "seq-lora", "--tasks", "4", "--epochs", "2", "--batch-size", "8", "--seeds", "2",
            "--set", "data.train_per_class=1", "--set", "data.test_per_class=2", "--device", "cpu", "--no-progress",
            "--checkpoint-every", "1e-9"]
    assert cli.main(args + ["--results-dir", str(tmp_path / "reference")]) == 0
    [reference] = store.load_results(tmp_path / "reference")
    interrupt_at(monkeypatch, SeqLoRA, 11)
    with pytest.raises(Interrupted):
        cli.main(args + ["--results-dir", str(tmp_path / "crashed")])
    [checkpoint] = (tmp_path / "crashed" / "checkpoints").glob("*.pt")
    monkeypatch.undo()
    capsys.readouterr()
    assert cli.main(args + ["--results-dir", str(tmp_path / "crashed")]) == 0
    assert "resuming from its checkpoint" in capsys.readouterr().err
    [resumed] = store.load_results(tmp_path / "crashed")
    assert resumed["acc_matrix"] == reference["acc_matrix"] and not checkpoint.exists()
    assert cli.main(args + ["--results-dir", str(tmp_path / "x"), "--checkpoint-every", "0"]) == 2
