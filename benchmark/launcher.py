"""Launchers: where the runs of one ``run`` command execute.

* ``inline`` (default): one after another in this process.
* ``local``: submitit's local executor, one subprocess per run on this machine, at most
  ``--max-parallel`` at once (default 1).
* ``slurm``: one Slurm job array (one array task per run; ``--max-parallel`` is the array's
  concurrency), with options from ``--slurm-profile`` (YAML) and the command line.
* ``debug``: submitit's debug executor: the job machinery, in this process (for debugging a job).

Jobs log to ``<results-dir>/logs/`` and leave a record under ``<results-dir>/jobs/`` (see
``job_status``). A job is a ``job.RunJob``: it checkpoints and is requeued on SIGUSR2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit
from tqdm import tqdm

from benchmark import job_status
from benchmark.errors import ConfigError
from benchmark.job import RunJob, RunSpec
from benchmark.slurm_profile import PROFILE_KEYS

CONSTRUCTOR_KEYS = ("slurm_max_num_timeout", "slurm_python")  # AutoExecutor(...) arguments, not update_parameters
POLL_S = float(os.environ.get("CL_POLL_S", "5"))  # seconds between job-state polls (tests set 1)


def build_executor(launcher: str, folder: Path, options: dict[str, Any], max_parallel: int | None
                   ) -> submitit.Executor:
    """submitit's executor for ``launcher`` with ``options`` (``launch_options``' keys)."""
    params = {PROFILE_KEYS[k]: v for k, v in options.items() if v is not None}
    if launcher == "slurm":
        if max_parallel:
            params["slurm_array_parallelism"] = max_parallel
        params.setdefault("slurm_job_name", "clpeft")
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm",
                                         **{k: params.pop(k) for k in CONSTRUCTOR_KEYS if k in params})
        executor.update_parameters(**params)
        return executor
    executor = submitit.AutoExecutor(folder=folder, cluster=launcher)
    if launcher == "local":  # the Slurm-only options do not apply on this machine
        executor.update_parameters(timeout_min=params["timeout_min"])
    return executor


def _submit(executor: submitit.Executor, specs: list[RunSpec]) -> list[submitit.Job]:
    """All ``specs`` as one submission (one job array on Slurm)."""
    with executor.batch():
        jobs = [executor.submit(RunJob(), spec) for spec in specs]
    return jobs


def _record(results_dir: str, launcher: str, options: dict[str, Any], spec: RunSpec, job: submitit.Job) -> None:
    files = {"stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
             "result_pickle": str(job.paths.result_pickle)}
    job_status.write_record(results_dir, spec.run_id, spec.to_dict(), launcher, options, str(job.job_id), files)


def submit(specs: list[RunSpec], launcher: str, options: dict[str, Any], max_parallel: int | None,
           results_dir: str) -> list[submitit.Job]:
    """Submit ``specs`` (slurm: at once, as an array; local: at most ``max_parallel`` at a time,
    the rest as earlier ones finish, so this call waits for local jobs); records each job."""
    if launcher == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise ConfigError("Slurm submission failed: sbatch/srun not found on PATH; submit from a login node of "
                          "the cluster, or use --launcher local")
    folder = Path(results_dir) / "logs"
    executor = build_executor(launcher, folder, options, max_parallel)
    if launcher == "slurm":
        try:
            jobs = _submit(executor, specs)
        except (OSError, subprocess.SubprocessError) as err:
            raise ConfigError(f"Slurm submission failed ({job_status.last_line(str(err)) or type(err).__name__}); check the profile's partition/account "
                              "or try --launcher local") from None
        for spec, job in zip(specs, jobs):
            _record(results_dir, launcher, options, spec, job)
        print(f"submitted {len(jobs)} run(s) as Slurm job array {jobs[0].job_id.split('_')[0]}; "
              f"logs in {folder}/", file=sys.stderr)
        return jobs
    if launcher == "debug":  # runs in this process, when its result is asked for
        jobs = []
        for spec in specs:
            job = executor.submit(RunJob(), spec)
            _record(results_dir, launcher, options, spec, job)
            try:
                job.result()
            except Exception as err:
                print(f"error: {spec.run_id}: {job_status.last_line(str(err)) or type(err).__name__}", file=sys.stderr)
            jobs.append(job)
        return jobs
    return _run_local(executor, specs, options, max_parallel or 1, results_dir)


def _run_local(executor: submitit.Executor, specs: list[RunSpec], options: dict[str, Any], max_parallel: int,
               results_dir: str) -> list[submitit.Job]:
    queue, running, finished = list(specs), [], []
    with tqdm(total=len(specs), desc="local jobs", unit="run") as bar:
        while queue or running:
            while queue and len(running) < max_parallel:
                spec = queue.pop(0)
                job = executor.submit(RunJob(), spec)
                _record(results_dir, "local", options, spec, job)
                running.append(job)
            time.sleep(min(POLL_S, 1.0))
            done = [job for job in running if job.done()]
            for job in done:
                running.remove(job)
                finished.append(job)
                bar.update()
    return finished


def wait(results_dir: str, run_ids: list[str]) -> list[job_status.JobState]:
    """Poll the jobs of ``run_ids`` until none is pending or running; their final states."""
    records = [r for r in job_status.read_records(results_dir) if r["run_id"] in set(run_ids)]
    with tqdm(total=len(records), desc="jobs done", unit="run") as bar:
        while True:
            states = job_status.states(results_dir, records)
            ended = sum(s.state not in job_status.ACTIVE for s in states)
            bar.update(ended - bar.n)
            if ended == len(states):
                return states
            time.sleep(POLL_S)
