"""Closed-form ridge regression for RanPAC's head: the grid search for lambda and the solve.

All arithmetic is float64 (the reference code runs float32): the Gram matrices of 10,000
random features reach entries of ~1e7 while the grid goes down to lambda = 1e-8, and float64
keeps the incremental solve equal to the batch one (``tests/test_ranpac.py``). Feature rows may
come in float32; they are converted a chunk of rows at a time, so no float64 copy of a whole
task's features is made.

The grid search scores every lambda of the grid from ONE symmetric eigendecomposition instead of
one linear solve per lambda. With the fit split's features H (n x M) and targets Y:

* n >= M: H^T H = V diag(s) V^T, and W(lambda) = V diag(1 / (s + lambda)) V^T H^T Y;
* n <  M: H H^T = U diag(s) U^T, and W(lambda) = H^T U diag(1 / (s + lambda)) U^T Y (the
  push-through identity (H^T H + lambda I)^-1 H^T = H^T (H H^T + lambda I)^-1),

so the validation predictions of every lambda are one (n_val x k) matrix scaled per column and
multiplied by one (k x C) matrix, k = min(n, M). Mathematically identical to solving each grid
point separately; eigenvalues below zero (rounding of a PSD matrix) are clamped to 0.
"""

from __future__ import annotations

import torch

RIDGE_GRID = tuple(10.0 ** k for k in range(-8, 9))  # the official grid, 1e-8 .. 1e8
FIT_FRACTION = 0.8  # the first 80 % of a task's (shuffled) samples fit, the last 20 % validate
CHUNK_ROWS = 4096  # rows converted to float64 at a time


def gram(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """a^T b (a^T a if b is None) in float64, accumulated over chunks of rows."""
    b = a if b is None else b
    out = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64, device=a.device)
    for start in range(0, a.shape[0], CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        out += a[rows].double().T @ b[rows].double()
    return out


def times(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in float64 (b already float64), a converted a chunk of rows at a time."""
    return torch.cat([a[start:start + CHUNK_ROWS].double() @ b for start in range(0, a.shape[0], CHUNK_ROWS)])


def ridge_solve(gram_matrix: torch.Tensor, targets: torch.Tensor, ridge: float) -> torch.Tensor:
    """W = (G + ridge I)^-1 Q, shape (M, C): the minimiser of ||H W - Y||^2 + ridge ||W||^2 for
    G = H^T H, Q = H^T Y (an LU solve, as the reference's ``torch.linalg.solve``)."""
    eye = torch.eye(gram_matrix.shape[0], dtype=gram_matrix.dtype, device=gram_matrix.device)
    return torch.linalg.solve(gram_matrix + ridge * eye, targets)


def validation_errors(h_fit: torch.Tensor, y_fit: torch.Tensor, h_val: torch.Tensor, y_val: torch.Tensor,
                      ridges: tuple[float, ...] = RIDGE_GRID) -> torch.Tensor:
    """Mean squared error over all (n_val x C) entries of the ridge fit of (h_fit, y_fit) for each
    value of ``ridges``, from one eigendecomposition (see the module docstring); float64."""
    n, m = h_fit.shape
    if n >= m:
        evals, vecs = torch.linalg.eigh(gram(h_fit))
        left = times(h_val, vecs)  # (n_val, M)
        right = vecs.T @ gram(h_fit, y_fit)  # (M, C)
    else:
        fit_t = h_fit.double().T  # (M, n): at most the size of an M x M Gram matrix
        evals, vecs = torch.linalg.eigh(fit_t.T @ fit_t)
        left = times(h_val, fit_t) @ vecs  # (n_val, n)
        right = vecs.T @ y_fit.double()  # (n, C)
    evals = evals.clamp_min(0)
    y_val = y_val.double()
    return torch.stack([((left / (evals + ridge)) @ right - y_val).square().mean() for ridge in ridges])


def fit_validation_split(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the fit (first 80 %) and validation (last 20 %) samples of a random order of n."""
    order = torch.randperm(n, generator=generator)
    n_fit = int(n * FIT_FRACTION)
    if not 0 < n_fit < n:
        raise ValueError(f"choosing the ridge needs at least 2 samples in a task (80 % fit, 20 % validate), got {n}")
    return order[:n_fit], order[n_fit:]


def select_ridge(h: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                 ridges: tuple[float, ...] = RIDGE_GRID) -> tuple[float, torch.Tensor]:
    """The reference's lambda: the grid value of least validation MSE (the first on ties) when
    fitting 80 % of this task's samples (a random order from ``generator``) and validating on the
    rest. Returns (lambda, the errors of the whole grid)."""
    fit, val = fit_validation_split(h.shape[0], generator)
    fit, val = fit.to(h.device), val.to(h.device)
    errors = validation_errors(h[fit], y[fit], h[val], y[val], ridges)
    return ridges[int(torch.argmin(errors))], errors
