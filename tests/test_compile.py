"""``--compile``: torch.compile of the training step and prediction gives the eager results (within
float tolerance), with InfLoRA's statistics hooks, LoRA merging and prompt prefixes in play."""

from __future__ import annotations

import pytest
import torch

from benchmark import protocol
from tests.conftest import task_loader, tiny_config

CPU = torch.device("cpu")


def two_tasks(name: str, compile: bool) -> tuple[list[float], torch.Tensor, list[torch.Tensor]]:
    """Accuracies after two tasks, logits of a probe batch and the trainable tensors."""
    config = tiny_config(name, n_tasks=5)
    split, method = protocol.build_run(config, CPU)
    for task in range(2):
        loader = task_loader(split, method, task)
        method.enter_task(task)
        method.eval()
        protocol.run_hook(method.begin_task, task, loader, CPU, "fp32")
        protocol.train_task(method, loader, task, CPU, compile=compile)
        protocol.run_hook(method.end_task, task, loader, CPU, "fp32")
    accuracies, _, _ = protocol.evaluate(method, split, 1, CPU, compile=compile)
    probe = torch.stack([split.test_set(1)[i][0] for i in range(8)])
    with torch.no_grad():
        logits = protocol.compiled(method.predict, compile)(probe)
    return accuracies, logits, [p.detach().clone() for p in method.parameters() if p.requires_grad]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inflora", "coda"])
def test_compiled_training_and_prediction_match_eager(name):
    eager, compiled = two_tasks(name, compile=False), two_tasks(name, compile=True)
    assert compiled[0] == eager[0]
    torch.testing.assert_close(compiled[1], eager[1], atol=1e-4, rtol=1e-4)
    for a, b in zip(compiled[2], eager[2]):
        # as a whole: Adam turns a near-zero gradient's rounding into a step of up to lr in one entry
        assert (a - b).norm() <= 1e-3 * b.norm() + 1e-6


def test_compile_is_off_by_default_and_not_part_of_the_run_id():
    config = tiny_config("seq-lora")
    assert config.compile is False
    assert tiny_config("seq-lora", ).run_id() == type(config)(**{**config.to_dict(), "compile": True}).run_id()
