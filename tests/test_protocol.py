"""The protocol: schedule, fresh optimiser per task, NaN abort, the result record."""

import pytest
import torch

from benchmark import protocol
from tests.conftest import tiny_config


def test_a_fresh_optimiser_is_built_for_every_task(monkeypatch):
    built = []
    original = protocol.build_optimizer

    def spy(groups, hp):
        optimizer = original(groups, hp)
        built.append(optimizer)
        return optimizer

    monkeypatch.setattr(protocol, "build_optimizer", spy)
    protocol.run(tiny_config("seq-lora"), progress=False)
    assert len(built) == 5 and len({id(o) for o in built}) == 5


def test_non_finite_loss_aborts_naming_method_task_and_step():
    split, method = protocol.build_run(tiny_config("frozen"), torch.device("cpu"))
    method.enter_task(0)
    method.training_loss = lambda x, y, task: torch.tensor(float("nan"), requires_grad=True)
    loader = protocol.Loader(split.train_set(0), 32, shuffle=True)
    with pytest.raises(protocol.NonFiniteLossError, match=r"frozen: loss is nan at task 1, epoch 1, step 1"):
        protocol.train_task(method, loader, 0, torch.device("cpu"))


def test_result_record_holds_the_matrices_and_metrics():
    result = protocol.run(tiny_config("frozen"), progress=False)
    acc, aware = result["acc_matrix"], result["task_aware_matrix"]
    assert [len(row) for row in acc] == [1, 2, 3, 4, 5] == [len(row) for row in aware]
    assert result["test_counts"] == [40] * 5  # 20 classes x 2 test images
    for row, aware_row in zip(acc, aware):
        assert all(a <= b for a, b in zip(row, aware_row))  # restricting the argmax can only help
    expected_final = sum(acc[-1]) / 5
    assert result["final_acc"] == pytest.approx(expected_final)
    assert result["trainable_params"] == [20 * 129] * 5  # one 20-way head per task
    assert result["config"]["hparams"]["epochs"] == 1
    assert len(result["class_order"]) == 100 and result["environment"]["backbone_digest"]
    assert set(result["timings"]["tasks"][0]) == {"begin_s", "train_s", "end_s", "eval_s", "hook_images"}
    assert result["timings"]["tasks"][0]["hook_images"] == 0  # frozen has no hooks
    for key in ("final_acc", "avg_acc", "final_acc_task_mean", "avg_acc_task_mean", "forgetting", "bwt"):
        assert key in result


def test_joint_is_one_task_over_all_classes():
    result = protocol.run(tiny_config("joint"), progress=False)
    assert result["upper_bound"] and result["n_tasks"] == 5
    assert len(result["acc_matrix"]) == 1 and result["test_counts"] == [200]
    assert result["forgetting"] is None


def test_step_schedule_and_head_learning_rate():
    config = tiny_config("inflora", optimizer="sgd", lr="5e-3", head_lr="1e-2", schedule="step", milestones="4")
    split, method = protocol.build_run(config, torch.device("cpu"))
    groups = method.trainable_parameters(0)
    optimizer = protocol.build_optimizer(groups, method.cfg)
    assert isinstance(optimizer, torch.optim.SGD)
    assert [g["lr"] for g in optimizer.param_groups] == [5e-3, 1e-2]
    assert optimizer.param_groups[1]["params"] == list(method.heads.heads[0].parameters())
