"""One run as a unit of work: executed in this process, or as a submitit job that checkpoints and
requeues itself when preempted.

``execute`` runs a ``RunSpec`` (a resolved configuration plus where and how to store it) with
checkpoints, writes its result and removes the checkpoint. ``RunJob`` is the callable submitted
by the ``local``, ``slurm`` and ``debug`` launchers: a ``submitit.helpers.Checkpointable`` whose
SIGUSR2 (Slurm's preemption notice, or its warning ``signal_delay_s`` before the time limit)
asks for a checkpoint at the next safe point (the next optimiser step or task end); once it is
written, submitit requeues the job, and the requeued job resumes from it.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from pathlib import Path
from typing import Any

import submitit

from benchmark import store
from benchmark.checkpoint import Checkpointer
from benchmark.config import RunConfig


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything one run needs, picklable and JSON-able (job records keep it for retries)."""

    config: RunConfig
    results_dir: str
    checkpoint_every_s: float = 600.0
    keep_checkpoints: bool = False
    progress: bool = True
    fresh: bool = False  # --force: ignore an existing result and checkpoint (first attempt only)

    @property
    def run_id(self) -> str:
        return self.config.run_id()

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls(**{**data, "config": RunConfig(**data["config"])})


def execute(spec: RunSpec, checkpointer: Checkpointer | None = None) -> dict[str, Any]:
    """Run ``spec`` in this process and store its result; a stored result is returned as it is
    (unless ``spec.fresh``) and a checkpoint is resumed from."""
    from benchmark import protocol  # heavy imports only when running

    run_id = spec.run_id
    if not spec.fresh and store.is_complete(spec.results_dir, run_id):
        try:
            return store.read_result(store.result_path(spec.results_dir, run_id))
        except ValueError as err:
            print(f"warning: {err}; running it again", file=sys.stderr)
    checkpointer = checkpointer or Checkpointer(store.checkpoint_path(spec.results_dir, run_id),
                                                spec.checkpoint_every_s)
    if spec.fresh:
        checkpointer.remove()
    config = dataclasses.replace(spec.config, device=protocol.auto_device(spec.config.device))  # the job's machine
    try:
        result = protocol.run(config, progress=spec.progress, checkpointer=checkpointer)
    except protocol.NonFiniteLossError as err:  # noted, so that a sweep scores the point as diverged
        store.write_diverged(spec.results_dir, run_id, str(err))
        raise
    store.write_result(spec.results_dir, result)
    store.diverged_path(spec.results_dir, run_id).unlink(missing_ok=True)
    if not spec.keep_checkpoints:
        checkpointer.remove()
    return result


class RunJob(submitit.helpers.Checkpointable):
    """The callable the launchers submit: ``RunJob(grace_s)(spec)`` runs one spec and returns the
    path of its result file. ``grace_s``: how long after SIGUSR2 the job waits for a safe point
    before it requeues from its latest checkpoint anyway (a long evaluation or statistics pass
    must not run into the time limit)."""

    def __init__(self, grace_s: float = 60.0):
        self.grace_s = grace_s

    def __call__(self, spec: RunSpec) -> str:
        checkpointer = Checkpointer(store.checkpoint_path(spec.results_dir, spec.run_id), spec.checkpoint_every_s)
        requeue = signal.getsignal(signal.SIGUSR2)
        if not callable(requeue):  # no submitit handler (the debug executor): run as inline
            execute(spec, checkpointer)
            return str(store.result_path(spec.results_dir, spec.run_id))

        def hand_over(*_) -> None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            requeue(signal.SIGUSR2, None)  # submitit: checkpoint() below, requeue, exit

        def on_usr2(signum, frame) -> None:
            checkpointer.request()  # saved at the next optimiser step or task end, then hand_over
            signal.signal(signal.SIGALRM, hand_over)
            signal.setitimer(signal.ITIMER_REAL, self.grace_s)

        checkpointer.after_requested_save = hand_over
        signal.signal(signal.SIGUSR2, on_usr2)
        try:
            execute(spec, checkpointer)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGUSR2, requeue)
        return str(store.result_path(spec.results_dir, spec.run_id))

    def checkpoint(self, spec: RunSpec) -> submitit.helpers.DelayedSubmission:
        """What submitit requeues: the same run, resuming (never ``fresh`` again)."""
        return submitit.helpers.DelayedSubmission(self, dataclasses.replace(spec, fresh=False))


def absolute(path: str | None) -> str | None:
    """Jobs may start elsewhere: paths are made absolute at submission."""
    return None if path is None else str(Path(path).expanduser().resolve())
