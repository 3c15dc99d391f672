"""Run checkpoints: everything needed to resume a run exactly, written atomically.

The protocol saves one after every task and, inside a task, whenever ``every_s`` seconds have
passed since the last one (checked after each optimiser step). A checkpoint holds the method's
state (``Method.checkpoint_state``: trainable tensors, memories, generators; never the frozen
backbone), the optimiser's state, the position in the task (epoch and batch), the RNG states of
Python, NumPy and torch, and the rows of both accuracy matrices so far. Resuming from it gives
the same accuracy matrix as an uninterrupted run (bit for bit on CPU; tested).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmark.store import write_atomic


def rng_state() -> dict[str, Any]:
    """The RNG states of Python, NumPy and torch (CPU and, if present, CUDA), as plain data."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, keys.tolist(), position, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class Checkpointer:
    """Saves and loads the checkpoint of one run at ``path``."""

    def __init__(self, path: str | Path, every_s: float = 600.0):
        self.path = Path(path)
        self.every_s = every_s
        self.last_save = time.monotonic()
        self.requested = False
        # called after a requested save (a preempted job hands over to submitit's requeue here)
        self.after_requested_save: Callable[[], None] | None = None

    def request(self) -> None:
        """Ask for a save at the next safe point: the next optimiser step or task end (safe to
        call from a signal handler)."""
        self.requested = True

    def due(self) -> bool:
        """Whether a save was requested or ``every_s`` seconds have passed since the last one."""
        return self.requested or time.monotonic() - self.last_save >= self.every_s

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically (never half-written), like the results store; then, if the
        save had been requested, call ``after_requested_save``."""
        write_atomic(self.path, lambda handle: torch.save(state, handle), binary=True)
        self.last_save = time.monotonic()
        if self.requested:
            self.requested = False
            if self.after_requested_save is not None:
                self.after_requested_save()

    def load(self, run_id: str) -> dict[str, Any] | None:
        """The saved state of ``run_id``, or None when there is none; an unreadable file or one of
        another run is reported on stderr and ignored (the run starts afresh)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # a torn or foreign file: any unpickling error
            print(f"warning: checkpoint {self.path} is unreadable ({type(err).__name__}); starting the run afresh",
                  file=sys.stderr)
            return None
        if not isinstance(state, dict) or state.get("run_id") != run_id:
            print(f"warning: checkpoint {self.path} belongs to another run; starting afresh", file=sys.stderr)
            return None
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
