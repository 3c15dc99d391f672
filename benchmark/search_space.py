"""Search spaces of ``sweep``: the values each hyperparameter takes, and the grid of their points.

A method declares its default space in its file (``Method.SEARCH_SPACE``, and per data set where
it differs, ``Method.DATASET_SEARCH_SPACES``): setting name -> axis. An axis is a list of values,
or a rule that derives the values from the setting's value in the run's recipe (the preset), so
that one space serves every data set:

* ``Around(ladder)``: the preset's value and its neighbours on ``ladder`` (the preset is put on
  the ladder when it is not on it): lr 5e-4 on the 1-3 ladder gives 3e-4, 5e-4, 1e-3.
* ``Scaled(factors)``: the preset's value times each factor (rounded for whole-number settings):
  rank 10 with (0.5, 1, 2) gives 5, 10, 20.

``--grid KEY=V1,V2,...`` on the command line replaces the default space.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from benchmark.errors import ConfigError

# 1e-6, 3e-6, 1e-5, ..., 3, 10: learning rates a half decade apart (decimal literals, no float noise)
LR_LADDER = tuple(float(f"{m}e{e}") for e in range(-6, 1) for m in (1, 3)) + (10.0,)


@dataclass(frozen=True)
class Around:
    """The preset's value and ``steps`` neighbours on each side of it on ``ladder``."""

    ladder: tuple[float, ...]
    steps: int = 1

    def values(self, preset: Any) -> list[Any]:
        ladder = sorted(set(self.ladder) | {preset})
        at = ladder.index(preset)
        return ladder[max(0, at - self.steps):at + self.steps + 1]


@dataclass(frozen=True)
class Scaled:
    """The preset's value times each of ``factors``."""

    factors: tuple[float, ...]

    def values(self, preset: Any) -> list[Any]:
        scaled = [preset * f for f in self.factors]
        return [int(round(v)) for v in scaled] if isinstance(preset, int) else scaled


Axis = Union[list, tuple, Around, Scaled]
Space = dict[str, Axis]


def axis_values(axis: Axis, preset: Any) -> list[Any]:
    """The values of one axis for a run whose recipe sets the axis's setting to ``preset``."""
    values = list(axis.values(preset)) if isinstance(axis, (Around, Scaled)) else list(axis)
    return list(dict.fromkeys(values))  # in order, once each


def points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first axis slowest (an empty grid: one point, {})."""
    return [dict(zip(grid, combination)) for combination in itertools.product(*grid.values())]


def sample(points_: list[dict[str, Any]], budget: int | None, seed: int) -> list[dict[str, Any]]:
    """``budget`` of the points drawn without replacement by ``seed`` (in grid order), or all of them."""
    if budget is None:
        return list(points_)
    chosen = np.random.default_rng(seed).choice(len(points_), size=budget, replace=False)
    return [points_[i] for i in sorted(chosen)]


_TOP_LEVEL_COMMAS = re.compile(r",(?![^\[]*\])")  # commas outside [...]: blocks=[0,1],[0,1,2]


def parse_grid(items: list[tuple[str, str]]) -> dict[str, list[str]]:
    """``--grid KEY=V1,V2,...`` options (already split at the first '=') as KEY -> the values as
    text, typed later per method like ``--set``; one-line errors for empty or repeated ones."""
    grid: dict[str, list[str]] = {}
    for key, text in items:
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; give all its values in one --grid {key}=V1,V2,...")
        values = [v.strip() for v in _TOP_LEVEL_COMMAS.split(text) if v.strip()]
        if not key or not values:
            raise ConfigError(f"--grid {key}={text} has no values; write --grid KEY=V1,V2,... (e.g. lr=1e-4,3e-4)")
        if len(set(values)) < len(values):
            raise ConfigError(f"--grid {key}={text} repeats a value; give each value once")
        grid[key] = values
    return grid


def edges(grid: dict[str, list[Any]], chosen: dict[str, Any]) -> list[str]:
    """The numeric axes (3 values or more) whose chosen value is the smallest or largest tried: the
    best value may lie beyond the grid."""
    notes = []
    for key, values in grid.items():
        numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numeric) < 3 or len(numeric) < len(values):
            continue
        if chosen[key] == min(numeric):
            notes.append(f"{key}={chosen[key]:g} is the smallest value tried")
        elif chosen[key] == max(numeric):
            notes.append(f"{key}={chosen[key]:g} is the largest value tried")
    return notes
