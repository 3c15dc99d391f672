"""Continual-learning metrics from the accuracy matrix, as defined in ``reference/protocol.md`` section 6.

``acc[i][j]`` (percent, j <= i) is the accuracy on task j's test samples after training task i,
argmax over all classes seen up to task i; ``counts[j]`` is task j's number of test samples. The
matrix is lower-triangular, stored as a list of rows of growing length. Every metric the harness
reports is computed here and nowhere else.
"""

from __future__ import annotations

import numpy as np


def step_accuracies(acc: list[list[float]], counts: list[int], weighted: bool = True) -> list[float]:
    """A_i for every step i: sample-weighted (accuracy on the union of seen test samples) or task-mean."""
    steps = []
    for row in acc:
        values = np.asarray(row, dtype=float)
        if weighted:
            n = np.asarray(counts[:len(row)], dtype=float)
            steps.append(float((values * n).sum() / n.sum()))
        else:
            steps.append(float(values.mean()))
    return steps


def final_accuracy(acc: list[list[float]], counts: list[int], weighted: bool = True) -> float:
    """A_T: the accuracy after the last task."""
    return step_accuracies(acc, counts, weighted)[-1]


def average_incremental_accuracy(acc: list[list[float]], counts: list[int], weighted: bool = True) -> float:
    """A_bar = (1/T) sum_i A_i."""
    return float(np.mean(step_accuracies(acc, counts, weighted)))


def forgetting(acc: list[list[float]]) -> float | None:
    """Max-based forgetting (L2P, DualPrompt): mean over j < T of max_{l in [j, T-1]} a[l][j] - a[T][j].

    None for a single task.
    """
    n_tasks = len(acc)
    if n_tasks < 2:
        return None
    drops = [max(acc[l][j] for l in range(j, n_tasks - 1)) - acc[-1][j] for j in range(n_tasks - 1)]
    return float(np.mean(drops))


def forgetting_coda(acc: list[list[float]]) -> float | None:
    """CODA-Prompt's forgetting: the average step-to-step drop,
    (1/(T-1)) sum_{i=2..T} (1/(i-1)) sum_{j<i} (a[i-1][j] - a[i][j]). None for a single task."""
    n_tasks = len(acc)
    if n_tasks < 2:
        return None
    per_step = [np.mean([acc[i - 1][j] - acc[i][j] for j in range(i)]) for i in range(1, n_tasks)]
    return float(np.mean(per_step))


def backward_transfer(acc: list[list[float]]) -> float | None:
    """BWT (GEM): (1/(T-1)) sum_{j<T} (a[T][j] - a[j][j]). None for a single task."""
    n_tasks = len(acc)
    if n_tasks < 2:
        return None
    return float(np.mean([acc[-1][j] - acc[j][j] for j in range(n_tasks - 1)]))


def summarize(acc: list[list[float]], counts: list[int], task_aware: list[list[float]] | None = None) -> dict:
    """All reported metrics of one run, in percent (None where undefined)."""
    summary = {
        "final_acc": final_accuracy(acc, counts, weighted=True),
        "avg_acc": average_incremental_accuracy(acc, counts, weighted=True),
        "final_acc_task_mean": final_accuracy(acc, counts, weighted=False),
        "avg_acc_task_mean": average_incremental_accuracy(acc, counts, weighted=False),
        "forgetting": forgetting(acc),
        "forgetting_coda": forgetting_coda(acc),
        "bwt": backward_transfer(acc),
        "step_acc": step_accuracies(acc, counts, weighted=True),
    }
    if task_aware is not None:
        summary["task_aware_final_acc"] = final_accuracy(task_aware, counts, weighted=True)
    return summary
