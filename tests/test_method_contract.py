"""The method contract, run against every registered method (no per-method code here).

Every method added to the registry is checked automatically: it predicts only over the classes
seen so far, trains exactly the parameters it declares (the frozen backbone stays bit-identical),
gives every declared parameter a gradient, round-trips its state, and is deterministic under a
seed.
"""

from __future__ import annotations

import io

import pytest
import torch

from benchmark import protocol
from benchmark.registry import METHODS
from tests.conftest import probe_images, run_task, task_loader, tiny_config

DEVICE = torch.device("cpu")


@pytest.fixture(params=METHODS.names())
def method_name(request):
    return request.param


def test_predicts_only_over_seen_classes(method_name):
    split, method = protocol.build_run(tiny_config(method_name), DEVICE)
    x = probe_images(split, 8)
    for task in range(split.n_tasks):
        run_task(method, split, task)
        logits = method.predict(x)
        assert logits.shape == (len(x), sum(split.task_sizes[:task + 1]))
        assert torch.isfinite(logits).all()


def test_trains_exactly_what_it_declares(method_name):
    split, method = protocol.build_run(tiny_config(method_name, epochs=2), DEVICE)
    names = {id(p): n for n, p in method.named_parameters()}
    frozen_before = {k: v.clone() for k, v in method.state_dict(keep_vars=True).items()
                     if id(v) in method._frozen_ids}
    assert frozen_before, "the backbone's weights must be tracked as frozen"
    for task in range(min(split.n_tasks, 2)):
        loader = task_loader(split, method, task)
        method.enter_task(task)
        with torch.no_grad():
            method.begin_task(task, loader)
        declared = {names[id(p)] for g in method.trainable_parameters(task) for p in g["params"]}
        before = {k: v.detach().clone() for k, v in method.state_dict().items()}
        steps = protocol.train_task(method, loader, task, DEVICE)["steps"]
        requires_grad = {n for n, p in method.named_parameters() if p.requires_grad}
        assert requires_grad == declared
        after = method.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed <= declared, f"undeclared state changed in training: {sorted(changed - declared)}"
        # a task may be training-free (SimpleCIL; RanPAC after task 0): then no step is taken at all
        assert bool(changed) == bool(declared) == (steps > 0), f"declared {sorted(declared)}, {steps} steps"
        with torch.no_grad():
            method.end_task(task, loader)
    after = method.state_dict(keep_vars=True)
    for key, value in frozen_before.items():
        assert torch.equal(after[key], value), f"frozen backbone tensor {key} changed"


def test_every_declared_parameter_gets_a_gradient(method_name):
    split, method = protocol.build_run(tiny_config(method_name), DEVICE)
    loader = task_loader(split, method, 0)
    method.enter_task(0)
    with torch.no_grad():
        method.begin_task(0, loader)
    groups = protocol.declare_trainable(method, 0)
    if not groups:  # training-free on task 0 (SimpleCIL): the protocol never asks it for a loss
        assert protocol.train_task(method, loader, 0, DEVICE)["steps"] == 0
        return
    method.train()
    x, y = next(iter(loader))
    loss = method.training_loss(x, y, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for group in groups:
        for param in group["params"]:
            assert param.grad is not None, "a declared parameter is not connected to the loss"
    for name, param in method.backbone.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, f"frozen parameter {name} received a gradient"


def test_state_round_trips(method_name):
    config = tiny_config(method_name)
    split, method = protocol.build_run(config, DEVICE)
    tasks = min(split.n_tasks, 2)
    for task in range(tasks):
        run_task(method, split, task)
    buffer = io.BytesIO()
    torch.save(method.checkpoint_state(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert not any(id(v) in method._frozen_ids for v in state["module"].values())
    _, restored = protocol.build_run(config, DEVICE)
    restored.load_checkpoint_state(state)
    assert restored.current_task == tasks - 1
    x = probe_images(split, 8)
    assert torch.equal(method.predict(x), restored.predict(x))


def test_deterministic_under_a_seed(method_name):
    config = tiny_config(method_name, n_tasks=5, seed=3)
    first = protocol.run(config, progress=False)
    second = protocol.run(config, progress=False)
    assert first["acc_matrix"] == second["acc_matrix"]
    assert first["class_order"] == second["class_order"] != list(range(100))
    split_a, a = protocol.build_run(config, DEVICE)
    split_b, b = protocol.build_run(config, DEVICE)
    run_task(a, split_a, 0)
    run_task(b, split_b, 0)
    for (key, va), vb in zip(a.checkpoint_state()["module"].items(), b.checkpoint_state()["module"].values()):
        assert torch.equal(va, vb), f"{key} differs between two runs with the same seed"
