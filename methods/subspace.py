"""InfLoRA's subspace machinery as pure tensor functions: the DualGPM memory and the design step.

Everything here works on one adapted layer's uncentred input second-moment matrix
C = mean over tokens of x x^T (d x d) and is independent of any model, so it can be tested alone.
Specification: ``shared/reference/inflora.md`` section 2 (steps 2, 3 and 6), following the
official code (liangyanshuo/InfLoRA) where it and the paper differ:

* the design takes the left singular vectors of the one-sided product (I - M M^T) C (remove
  mode) or Q Q^T C (retain mode), not the eigenvectors of the two-sided projected covariance;
* "energy" is the squared singular values of the second-moment matrix itself (S(C)^2), not of
  the activations (which would be S(C));
* the down-projection is scaled by 1/sqrt(3);
* at the first task the memory keeps k = #{j : cumulative energy_j < eps} directions (at least
  one), i.e. the direction at which the cumulative energy crosses eps is *not* kept (the code's
  count; later updates do include the crossing direction). So after the first task up to a bit
  more than 1 - eps of the energy can lie outside the memory, unlike the reference's section 8.4.

A memory in *remove* mode stores an orthonormal basis M of the old tasks' input subspace; once M
has more than d/2 columns, DualGPM switches to *retain* mode and stores the orthonormal
complement Q instead (same projector: I - M M^T = Q Q^T), so the stored basis never exceeds d/2
columns. Plain GPM (``dual=False``) stays in remove mode, as the reference's InfLoRA-b5 and
DomainNet code does.
"""

from __future__ import annotations

import math
import warnings

import torch

DESIGN_SCALE = 1 / math.sqrt(3)


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and singular values, computed in float64."""
    u, s, _ = torch.linalg.svd(matrix.double(), full_matrices=False)
    return u, s


class SubspaceMemory:
    """The old-task input subspace of one adapted layer (DualGPM, or plain GPM with ``dual=False``).

    Attributes:
        basis: (d, k) orthonormal columns, float64. In ``"remove"`` mode they span the old-task
            subspace M; in ``"retain"`` mode they span its complement Q. Empty before task 0.
        mode: ``"remove"`` or ``"retain"``.
    """

    def __init__(self, dim: int, dual: bool = True):
        self.dim, self.dual = dim, dual
        self.mode = "remove"
        self.basis = torch.zeros(dim, 0, dtype=torch.float64)

    @property
    def is_empty(self) -> bool:
        return self.mode == "remove" and self.basis.shape[1] == 0

    @property
    def old_dim(self) -> int:
        """Dimension of the protected old-task subspace."""
        return self.basis.shape[1] if self.mode == "remove" else self.dim - self.basis.shape[1]

    def projector(self) -> torch.Tensor:
        """basis @ basis^T (d x d): onto M in remove mode, onto its complement in retain mode."""
        return self.basis @ self.basis.T

    def project_new(self, cov: torch.Tensor) -> torch.Tensor:
        """The second-moment matrix with the old subspace projected out (one-sided, as the code does)."""
        cov = cov.double()
        if self.is_empty:
            return cov
        if self.mode == "remove":
            return cov - self.projector() @ cov
        return self.projector() @ cov

    def update(self, cov: torch.Tensor, threshold: float) -> int:
        """Grow the old-task subspace with the new task's inputs (energy criterion ``threshold``).

        Returns the number of directions added to the protected subspace (0 if none).
        """
        cov = cov.double()
        u_full, s_full = _svd(cov)
        total = s_full.square().sum()
        if self.is_empty:
            ratio = torch.cumsum(s_full.square() / total, 0)
            k = max(int((ratio < threshold).sum()), 1)
            self.basis = u_full[:, :k].clone()
            added = k
        elif self.mode == "remove":
            u_hat, s_hat = _svd(cov - self.projector() @ cov)
            energy = s_hat.square() / total
            accumulated = float((total - s_hat.square().sum()) / total)
            k = 0
            while k < len(energy) and accumulated < threshold:
                accumulated += float(energy[k])
                k += 1
            if k:
                self.basis = torch.cat([self.basis, u_hat[:, :k]], 1)[:, :self.dim]
            added = k
        else:
            u_hat, s_hat = _svd(self.projector() @ cov)
            energy = s_hat.square() / total
            accumulated = float(s_hat.square().sum() / total)
            k = 0
            while k < len(energy) and accumulated >= 1 - threshold:
                accumulated -= float(energy[k])
                k += 1
            k = min(k, self.basis.shape[1])  # cannot protect more than the whole space
            if k:
                shrunk = self.basis - u_hat[:, :k] @ (u_hat[:, :k].T @ self.basis)
                u_q, _ = _svd(shrunk)
                self.basis = u_q[:, :self.basis.shape[1] - k].clone()
            added = k
        if self.dual and self.mode == "remove" and self.basis.shape[1] > self.dim / 2:
            self._switch_to_retain()
        return added

    def _switch_to_retain(self) -> None:
        """Replace M by its orthonormal complement Q (I - M M^T = Q Q^T)."""
        k = self.basis.shape[1]
        u, _, _ = torch.linalg.svd(self.basis, full_matrices=True)
        self.basis = u[:, k:].clone()
        self.mode = "retain"

    def state_dict(self) -> dict:
        return {"dim": self.dim, "dual": self.dual, "mode": self.mode, "basis": self.basis.clone()}

    def load_state_dict(self, state: dict) -> None:
        if state["dim"] != self.dim:
            raise ValueError(f"subspace memory of dimension {state['dim']} loaded into one of {self.dim}")
        self.dual, self.mode = bool(state["dual"]), str(state["mode"])
        self.basis = state["basis"].to(torch.float64).clone()


def design_down_projection(cov: torch.Tensor, memory: SubspaceMemory, rank: int) -> torch.Tensor:
    """The new task's frozen down-projection (rank x d): top-``rank`` left singular vectors of the
    second-moment matrix with the old subspace projected out, transposed, times 1/sqrt(3)."""
    free = memory.dim - memory.old_dim
    if free < rank:
        warnings.warn(f"only {free} input directions are free of the old-task subspace but rank is {rank}: "
                      "the extra rows of the designed down-projection are not orthogonal to old tasks "
                      "(the official code has the same limit)", RuntimeWarning, stacklevel=2)
    u, _ = _svd(memory.project_new(cov))
    return (u[:, :rank].T * DESIGN_SCALE).to(cov.dtype)


def threshold_schedule(task: int, n_tasks: int, start: float, end: float = 1.0) -> float:
    """epsilon_t = start + (end - start) * t / T."""
    return start + (end - start) * task / n_tasks
