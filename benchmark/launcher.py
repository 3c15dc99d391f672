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
import uuid
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
    if launcher == "local":  # the Slurm-only options do not apply on this machine
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=params["slurm_max_num_timeout"])
        executor.update_parameters(timeout_min=params["timeout_min"], signal_delay_s=params["slurm_signal_delay_s"])
        return executor
    return submitit.AutoExecutor(folder=folder, cluster=launcher)


def _job(options: dict[str, Any]) -> RunJob:
    """The submitted callable; after SIGUSR2 it waits half the signal delay for a safe point."""
    return RunJob(grace_s=options["signal_delay_s"] / 2)


def _record(results_dir: str, launcher: str, options: dict[str, Any], max_parallel: int | None, spec: RunSpec,
            job: submitit.Job) -> None:
    files = {"stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
             "result_pickle": str(job.paths.result_pickle)}
    if launcher == "local":
        files["process_start"] = job_status.process_start(str(job.job_id))
    job_status.write_record(results_dir, spec.run_id, spec.to_dict(), launcher,
                            {**options, "max_parallel": max_parallel}, str(job.job_id), files)


def submit(specs: list[RunSpec], launcher: str, options: dict[str, Any], max_parallel: int | None,
           results_dir: str) -> list[submitit.Job]:
    """Submit ``specs`` (slurm: at once, as an array; local: at most ``max_parallel`` at a time,
    the rest as earlier ones finish, so this call waits for local jobs); records each job."""
    if launcher == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise ConfigError("Slurm submission failed: sbatch/srun not found on PATH; submit from a login node of "
                          "the cluster, or use --launcher local")
    folder = Path(results_dir) / "logs"
    if launcher == "local":  # local job ids are process ids, which repeat: one folder per command
        folder = folder / f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    executor = build_executor(launcher, folder, options, max_parallel)
    if launcher == "slurm":
        try:
            with executor.batch():  # one job array
                jobs = [executor.submit(_job(options), spec) for spec in specs]
        except (OSError, subprocess.SubprocessError, submitit.core.utils.FailedJobError) as err:
            reason = job_status.last_line(str(err)) or type(err).__name__
            raise ConfigError(f"Slurm submission failed ({reason}); check the partition/account/qos "
                              "or try --launcher local") from None
        for spec, job in zip(specs, jobs):
            _record(results_dir, launcher, options, max_parallel, spec, job)
        print(f"submitted {len(jobs)} run(s) as Slurm job array {jobs[0].job_id.split('_')[0]}; "
              f"logs in {folder}/", file=sys.stderr)
        return jobs
    if launcher == "debug":  # runs in this process, when its result is asked for
        jobs = []
        for spec in specs:
            job = executor.submit(_job(options), spec)
            _record(results_dir, launcher, options, max_parallel, spec, job)
            try:
                job.result()
            except Exception as err:
                print(f"error: {spec.run_id}: {job_status.last_line(str(err)) or type(err).__name__}", file=sys.stderr)
            jobs.append(job)
        return jobs
    return _run_local(executor, specs, options, max_parallel or 1, results_dir)


def _gpu_groups(options: dict[str, Any]) -> list[list[int]] | None:
    """Disjoint GPU lists for concurrent local jobs (``gpus_per_job`` each, default 1 when this
    machine has GPUs); None on a machine without GPUs or with ``gpus_per_job: 0``."""
    import torch

    count, per_job = torch.cuda.device_count(), options.get("gpus_per_job")
    per_job = (1 if count else 0) if per_job is None else int(per_job)
    if per_job == 0:
        return None
    if per_job > count:
        raise ConfigError(f"--gpus-per-job {per_job} but this machine has {count} GPU(s)")
    return [list(range(k * per_job, (k + 1) * per_job)) for k in range(count // per_job)]


def _run_local(executor: submitit.Executor, specs: list[RunSpec], options: dict[str, Any], max_parallel: int,
               results_dir: str) -> list[submitit.Job]:
    groups = _gpu_groups(options)
    if groups is not None:
        max_parallel = min(max_parallel, len(groups))
    queue, running, finished = list(specs), [], []  # running: (job, its GPUs)
    with tqdm(total=len(specs), desc="local jobs", unit="run") as bar:
        while queue or running:
            while queue and len(running) < max_parallel:
                spec, gpus = queue.pop(0), groups.pop(0) if groups is not None else []
                executor.update_parameters(gpus_per_node=len(gpus), visible_gpus=gpus)  # CUDA_VISIBLE_DEVICES
                job = executor.submit(_job(options), spec)
                _record(results_dir, "local", options, max_parallel, spec, job)
                running.append((job, gpus))
            time.sleep(min(POLL_S, 1.0))
            for job, gpus in [entry for entry in running if entry[0].done()]:
                running.remove((job, gpus))
                if groups is not None:
                    groups.append(gpus)
                finished.append(job)
                bar.update()
    return finished


def wait(results_dir: str, run_ids: set[str]) -> list[job_status.JobState]:
    """Poll the jobs of ``run_ids`` until none is pending or running; their final states."""
    records = [r for r in job_status.read_records(results_dir) if r["run_id"] in run_ids]
    with tqdm(total=len(records), desc="jobs done", unit="run") as bar:
        while True:
            states = job_status.states(results_dir, records)
            ended = sum(s.state not in job_status.ACTIVE for s in states)
            bar.update(ended - bar.n)
            if ended == len(states):
                return states
            time.sleep(POLL_S)
