"""Per-epoch learning-rate schedules, as the reference codes step them (once per epoch).

The protocol sets each parameter group's lr to its base lr times ``epoch_lr_factor`` at the start
of every epoch: a pure function of the epoch, so a run resumed inside any epoch trains at exactly
the rates of an uninterrupted one.
"""

from __future__ import annotations

import math

from benchmark.errors import ConfigError

SCHEDULES = ("coda-cosine", "cosine-annealing", "step", "constant")


def epoch_lr_factor(epoch: int, epochs: int, schedule: str, milestones: list[int] = (),
                    gamma: float = 0.1) -> float:
    """The lr multiplier of ``epoch`` (0-based) of ``epochs``, the schedule stepped once per epoch.

    ``coda-cosine``: the CODA-Prompt / InfLoRA codes' cosine as they run it (their scheduler's
    constructor takes one step and resets its counter, and the loop steps after each epoch), so
    epochs 0 and 1 both run at the full rate: cos(99 pi max(e - 1, 0) / (200 (K - 1))); with
    K = 1 the codes divide by zero, here the rate stays constant.
    ``cosine-annealing``: torch's ``CosineAnnealingLR(T_max=K, eta_min=0)`` stepped after each
    epoch, (1 + cos(pi e / K)) / 2 (InfLoRA's SGD path, RanPAC's and APER's first session).
    ``step``: ``gamma`` ** (number of ``milestones`` <= e), torch's ``MultiStepLR``.
    ``constant``: 1.
    """
    if schedule == "step":
        return gamma ** sum(epoch >= m for m in milestones)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine-annealing":
        return (1 + math.cos(math.pi * epoch / epochs)) / 2
    if schedule == "coda-cosine":
        if epochs == 1:
            return 1.0
        return math.cos(99 * math.pi * max(epoch - 1, 0) / (200 * (epochs - 1)))
    raise ConfigError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}"
                      + (" ('cosine', one epoch ahead of the reference codes, was replaced by coda-cosine)"
                         if schedule == "cosine" else ""))
