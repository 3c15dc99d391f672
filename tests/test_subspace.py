"""DualGPM memory and the InfLoRA design step as pure tensor functions (reference/inflora.md §2, §8)."""

import math

import pytest
import torch
from torch import nn

from methods.lora import LoRAQKV
from methods.subspace import SubspaceMemory, design_down_projection, threshold_schedule

D = 32


def second_moment(x: torch.Tensor) -> torch.Tensor:
    return (x.T @ x / len(x)).double()


def low_rank_inputs(n: int, rank: int, seed: int, noise: float = 0.01) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, rank, generator=g))[0]
    return torch.randn(n, rank, generator=g) * 3 @ basis.T + noise * torch.randn(n, D, generator=g)


def assert_orthonormal(basis):
    torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1], dtype=basis.dtype), atol=1e-8, rtol=0)


def test_first_task_keeps_the_directions_below_the_energy_threshold():
    # singular values of C: 4, 2, 1, 1 -> energies 16, 4, 1, 1 (total 22); cumulative ratios .727, .909, .955, 1
    cov = torch.diag(torch.tensor([4.0, 2.0, 1.0, 1.0] + [0.0] * 4, dtype=torch.float64))
    memory = SubspaceMemory(8)
    assert memory.update(cov, 0.95) == 2
    assert memory.mode == "remove" and memory.old_dim == 2
    torch.testing.assert_close(memory.projector().diagonal()[:3], torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    assert SubspaceMemory(8).update(cov, 0.5) == 1  # at least one direction is always kept
    # as in the official code, the direction at which the cumulative energy crosses eps is not kept


def test_remove_mode_grows_an_orthonormal_basis_monotonically():
    memory = SubspaceMemory(D)
    dims = []
    for task in range(3):
        memory.update(second_moment(low_rank_inputs(400, 4, seed=task)), 0.97)
        assert_orthonormal(memory.basis)
        dims.append(memory.old_dim)
    assert dims == sorted(dims) and dims[-1] > dims[0]


def test_switch_to_retain_above_half_the_dimension_preserves_the_projector():
    memory = SubspaceMemory(D)
    memory.update(second_moment(low_rank_inputs(400, 12, seed=0)), 0.999)
    assert memory.mode == "remove" and memory.old_dim <= D / 2
    before = torch.eye(D, dtype=torch.float64) - memory.projector()
    old = memory.basis.clone()
    x_new = low_rank_inputs(400, 12, seed=1)
    # grow past d/2: the switch stores the complement instead
    memory.update(second_moment(x_new), 0.999)
    assert memory.mode == "retain"
    assert memory.basis.shape[1] < D / 2 and memory.old_dim > D / 2
    assert_orthonormal(memory.basis)
    # the retained complement is orthogonal to the old subspace it replaced
    assert (memory.basis.T @ old).abs().max() < 1e-8
    assert torch.linalg.matrix_norm(memory.projector() @ before - memory.projector()) < 1e-6


def test_switch_itself_is_exact():
    memory = SubspaceMemory(D)
    memory.basis = torch.linalg.qr(torch.randn(D, 20, dtype=torch.float64))[0]
    complement = torch.eye(D, dtype=torch.float64) - memory.projector()
    memory._switch_to_retain()
    assert memory.mode == "retain" and memory.basis.shape[1] == D - 20
    torch.testing.assert_close(memory.projector(), complement, atol=1e-10, rtol=0)


def test_retain_mode_never_shrinks_the_old_subspace():
    memory = SubspaceMemory(D)
    memory.update(second_moment(low_rank_inputs(400, 20, seed=0)), 0.999)
    assert memory.mode == "retain"
    sizes = [memory.basis.shape[1]]
    for task in range(1, 4):
        memory.update(second_moment(low_rank_inputs(400, 3, seed=task)), 0.999)
        assert_orthonormal(memory.basis)
        sizes.append(memory.basis.shape[1])
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]


def test_plain_gpm_never_switches():
    memory = SubspaceMemory(D, dual=False)
    memory.update(second_moment(low_rank_inputs(400, 24, seed=0)), 0.999)
    assert memory.mode == "remove" and memory.basis.shape[1] > D / 2
    assert_orthonormal(memory.basis)


@pytest.mark.parametrize("old_rank", [6, 20])  # remove mode, then retain mode
def test_designed_down_projection_is_orthogonal_to_the_old_subspace(old_rank):
    memory = SubspaceMemory(D)
    memory.update(second_moment(low_rank_inputs(500, old_rank, seed=0)), 0.999)
    design = design_down_projection(second_moment(torch.randn(500, D)), memory, rank=4)
    assert design.shape == (4, D)
    torch.testing.assert_close(design @ design.T, torch.eye(4, dtype=design.dtype) / 3, atol=1e-8, rtol=0)
    if memory.mode == "remove":
        assert (design @ memory.basis).norm() < 1e-8
    else:
        assert (design - design @ memory.projector()).norm() < 1e-8


def test_first_design_is_the_top_singular_subspace():
    cov = torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    design = design_down_projection(cov, SubspaceMemory(5), rank=2)
    torch.testing.assert_close(design.abs(), torch.eye(5, dtype=torch.float64)[:2] / math.sqrt(3))


def test_remove_mode_update_captures_the_threshold_energy():
    """After an update, at most 1 - eps of the new task's S^2 energy lies outside the memory."""
    memory = SubspaceMemory(D)
    memory.update(second_moment(low_rank_inputs(400, 4, seed=0)), 0.95)
    cov = second_moment(low_rank_inputs(400, 5, seed=1))
    eps = 0.97
    memory.update(cov, eps)
    total = torch.linalg.svdvals(cov).square().sum()
    outside = torch.linalg.svdvals(cov - memory.projector() @ cov).square().sum()
    assert outside / total <= 1 - eps + 1e-9


def test_new_branch_leaves_protected_inputs_unchanged_unlike_plain_lora():
    """Train an InfLoRA branch and a standard LoRA branch on new inputs; measure the drift of the
    layer's output on old inputs (their protected part, and as a whole)."""
    x_old, x_new = low_rank_inputs(400, 6, seed=0), low_rank_inputs(400, 6, seed=1)
    memory = SubspaceMemory(D)
    memory.update(second_moment(x_old), 0.99)
    # the official first-task rule keeps the directions *before* the cumulative energy reaches eps
    assert 0 < memory.old_dim <= 6
    x_protected = x_old @ memory.projector().float()

    drift = {}
    for name in ("inflora", "lora"):
        torch.manual_seed(1)
        layer = LoRAQKV(nn.Linear(D, 3 * D))
        layer.base.requires_grad_(False)
        branch = layer.add_branch(rank=4)
        if name == "inflora":
            with torch.no_grad():
                design = design_down_projection(second_moment(x_new), memory, 4).float()
                for down in branch.down.values():
                    down.copy_(design)
            branch.down.requires_grad_(False)
        target = torch.randn(400, 3 * D)
        before = {"protected": layer(x_protected).detach(), "old": layer(x_old).detach()}
        optimizer = torch.optim.Adam([p for p in branch.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(50):
            loss = (layer(x_new) - target).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        after = {"protected": layer(x_protected).detach(), "old": layer(x_old).detach()}
        drift[name] = {k: ((after[k] - before[k]).norm() / before[k].norm()).item() for k in before}
    assert drift["inflora"]["protected"] < 1e-5
    assert drift["lora"]["protected"] > 1e-2
    assert drift["lora"]["old"] > 2 * drift["inflora"]["old"]


def test_threshold_schedule():
    assert threshold_schedule(0, 10, 0.95) == pytest.approx(0.95)
    assert threshold_schedule(9, 10, 0.95) == pytest.approx(0.995)
    assert threshold_schedule(5, 10, 0.9, 0.95) == pytest.approx(0.925)


def test_memory_state_round_trips():
    memory = SubspaceMemory(D)
    memory.update(second_moment(low_rank_inputs(400, 20, seed=0)), 0.999)
    restored = SubspaceMemory(D)
    restored.load_state_dict(memory.state_dict())
    assert restored.mode == memory.mode and torch.equal(restored.basis, memory.basis)
    with pytest.raises(ValueError, match="dimension"):
        SubspaceMemory(D + 1).load_state_dict(memory.state_dict())
