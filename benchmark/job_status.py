"""Job records and states: what ``run_benchmark.py status`` shows.

Every submitted run leaves ``<results-dir>/jobs/<run id>.json``: its spec (to resubmit it), the
launcher and its options, the job id and log paths. A run's state comes from, in order: its
result file (done), the scheduler (``squeue`` for Slurm, the process for ``local``: pending or
running), and submitit's result pickle (failed, with the last line of the error). A job that left
the queue without either is failed too ("ended without a result"; its log says why).
"""

from __future__ import annotations

import dataclasses
import getpass
import re
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from benchmark import store

ACTIVE = ("pending", "running")  # waited for
NOT_RESUBMITTED = (*ACTIVE, "unknown")  # a rerun leaves these alone
# squeue's states of a job that has ended (anything else is still queued, running or requeued)
SLURM_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
               "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}
SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"}


@dataclasses.dataclass
class JobState:
    run_id: str
    state: str  # done, pending, running, failed or unknown
    job_id: str | None = None
    detail: str = ""  # error line of a failed run, progress of an unfinished one
    log: str | None = None


def jobs_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "jobs"


def record_path(results_dir: str | Path, run_id: str) -> Path:
    return jobs_dir(results_dir) / f"{run_id}.json"


def write_record(results_dir: str | Path, run_id: str, spec: dict[str, Any], launcher: str,
                 options: dict[str, Any], job_id: str, files: dict[str, str | None]) -> None:
    """Record a submission (atomically, replacing an earlier one of the same run); ``files``:
    the job's ``stdout``, ``stderr`` and ``result_pickle`` paths (and a local job's
    ``process_start``, see ``process_start``)."""
    record = {"run_id": run_id, "launcher": launcher, "options": options, "job_id": job_id,
              "host": socket.gethostname(), "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              **files, "spec": spec}
    store.write_json_atomic(record_path(results_dir, run_id), record)


def read_records(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every readable job record; unreadable ones are named on stderr and skipped."""
    import json

    records = []
    for path in sorted(jobs_dir(results_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or not {"run_id", "job_id", "launcher", "spec"} <= record.keys():
                raise ValueError("missing keys")
            records.append(record)
        except (OSError, ValueError) as err:
            print(f"warning: unreadable job record {path} ({err}); skipped", file=sys.stderr)
    return records


def slurm_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """squeue's state of each listed job still known to Slurm (one line per array task);
    None when squeue cannot be run."""
    wanted = set(job_ids)
    if not wanted:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    states = dict(line.split("|", 1) for line in out.split() if "|" in line)
    return {job: state for job, state in states.items() if job in wanted}


def process_start(pid: str) -> str | None:
    """The start time of process ``pid`` (field 22 of /proc/<pid>/stat), None if there is none:
    with the pid, it names one process (pids are reused)."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (the message of a traceback), stripped."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _ended_detail(record: dict[str, Any]) -> str:
    """Why a job that left the queue has no result: its error, or the last line of its log."""
    from submitit.core.utils import pickle_load

    pickle = Path(record.get("result_pickle", ""))
    if pickle.is_file():
        try:
            outcome, value = pickle_load(pickle)
        except Exception as err:  # a torn pickle: say so
            return f"unreadable job result {pickle} ({type(err).__name__})"
        if outcome == "error":  # a traceback: its last line, without the exception's module path
            return re.sub(r"^(?:\w+\.)+(?=\w+: )", "", last_line(str(value)))
        return "job finished but wrote no result"
    stderr = Path(record.get("stderr", ""))
    tail = last_line(stderr.read_text(errors="replace")[-4000:]) if stderr.is_file() else ""
    return "ended without a result" + (f": {tail}" if tail else " (no log)")


def _progress(results_dir: str | Path, run_id: str, n_tasks: int) -> str:
    checkpoint = store.checkpoint_path(results_dir, run_id)
    return f"checkpoint in task {_checkpoint_task(checkpoint) + 1}/{n_tasks}" if checkpoint.is_file() else ""


def _checkpoint_task(path: Path) -> int:
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["task"])
    except Exception:
        return -1


def states(results_dir: str | Path, records: list[dict[str, Any]]) -> list[JobState]:
    """The state of each recorded run (one ``squeue`` call for all Slurm jobs)."""
    slurm = slurm_states(r["job_id"] for r in records if r["launcher"] == "slurm"
                         and not store.is_complete(results_dir, r["run_id"]))
    out = []
    for record in records:
        run_id, job_id, log = record["run_id"], record["job_id"], record.get("stdout")
        n_tasks = record["spec"]["config"]["n_tasks"]
        if store.is_complete(results_dir, run_id):
            out.append(JobState(run_id, "done", job_id, log=log))
            continue
        if record["launcher"] == "slurm":
            if slurm is None:
                out.append(JobState(run_id, "unknown", job_id, "squeue could not be run", log))
                continue
            queued = slurm.get(job_id)  # None: no longer listed (ended)
            state = None if queued is None or queued in SLURM_ENDED else \
                "running" if queued in SLURM_RUNNING else "pending"
        elif record["launcher"] == "local":
            if record.get("host") != socket.gethostname():
                out.append(JobState(run_id, "unknown", job_id, f"local job of host {record.get('host')}", log))
                continue
            started = process_start(job_id)
            alive = started is not None and started == record.get("process_start")
            state = "running" if alive and not Path(record.get("result_pickle", "")).is_file() else None
        else:  # debug jobs run inside the submitting process
            state = None
        if state:
            out.append(JobState(run_id, state, job_id, _progress(results_dir, run_id, n_tasks), log))
        elif store.is_complete(results_dir, run_id):  # it finished while we looked
            out.append(JobState(run_id, "done", job_id, log=log))
        else:
            out.append(JobState(run_id, "failed", job_id, _ended_detail(record), record.get("stderr") or log))
    return out
