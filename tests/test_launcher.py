"""Launchers without Slurm: the preemption hand-over of a job, the debug and local launchers,
job records and ``status``, Slurm options (the sbatch file they produce)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
import torch

from benchmark import cli, job_status, launcher, protocol, slurm_profile, store
from benchmark.checkpoint import Checkpointer
from benchmark.job import RunJob, RunSpec
from methods.seq_lora import SeqLoRA
from tests.dataset_fixtures import write_cifar100
from tests.test_resume import config_of, steps_per_task

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--tasks", "5", "--epochs", "1", "--set", "data.train_per_class=3", "--set", "data.test_per_class=2",
        "--no-progress", "--device", "cpu"]


class Requeued(Exception):
    """Stands for submitit's requeue-and-exit after a checkpoint."""


def test_a_requested_save_happens_at_the_next_due_check_and_then_hands_over_once(tmp_path):
    checkpointer, handed_over = Checkpointer(tmp_path / "c.pt", every_s=1e9), []
    checkpointer.after_requested_save = lambda: handed_over.append(True)
    assert not checkpointer.due()
    checkpointer.request()
    assert checkpointer.due()
    checkpointer.save({"run_id": "x"})
    checkpointer.save({"run_id": "x"})
    assert handed_over == [True] and not checkpointer.due()


def test_sigusr2_checkpoints_at_the_next_step_then_requeues_and_the_requeued_job_resumes_exactly(
        tmp_path, monkeypatch):
    config = config_of("seq-lora")
    reference = protocol.run(config, progress=False)["acc_matrix"]
    spec = RunSpec(config, str(tmp_path / "results"), checkpoint_every_s=1e9, progress=False)
    signal_at = steps_per_task(config) + 2  # during the second task's second step
    loss, calls = SeqLoRA.training_loss, {"n": 0}

    def training_loss(self, x, y, task):  # the signal lands in the middle of a step
        calls["n"] += 1
        if calls["n"] == signal_at:
            os.kill(os.getpid(), signal.SIGUSR2)
        return loss(self, x, y, task)
    monkeypatch.setattr(SeqLoRA, "training_loss", training_loss)

    def submitit_handler(signum, frame):
        raise Requeued
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(Requeued):
            RunJob()(spec)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    saved = torch.load(store.checkpoint_path(spec.results_dir, spec.run_id), weights_only=True)
    assert (saved["task"], saved["resume"]["epoch"], saved["resume"]["step"]) == (1, 0, 2)  # after that step
    assert not store.is_complete(spec.results_dir, spec.run_id)
    monkeypatch.undo()
    requeued = RunJob().checkpoint(spec)  # what submitit pickles and runs again
    assert requeued.args[0].fresh is False
    result_path = requeued.result()
    assert store.read_result(Path(result_path))["acc_matrix"] == reference
    assert not store.checkpoint_path(spec.results_dir, spec.run_id).exists()


def test_without_a_safe_point_in_time_the_job_requeues_from_its_latest_checkpoint(tmp_path, monkeypatch):
    """SIGUSR2 during a long evaluation (no optimiser step comes): after ``grace_s`` the job hands
    over anyway, from the checkpoint of the previous task's end."""
    spec = RunSpec(config_of("seq-lora"), str(tmp_path / "results"), checkpoint_every_s=1e9, progress=False)
    evaluate, calls = protocol.evaluate, {"n": 0}

    def slow_second_evaluation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(5)  # interrupted by the grace timer
        return evaluate(*args, **kwargs)
    monkeypatch.setattr(protocol, "evaluate", slow_second_evaluation)

    def submitit_handler(signum, frame):
        raise Requeued
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    start = time.monotonic()
    try:
        with pytest.raises(Requeued):
            RunJob(grace_s=0.2)(spec)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert time.monotonic() - start < 4
    saved = torch.load(store.checkpoint_path(spec.results_dir, spec.run_id), weights_only=True)
    assert (saved["task"], saved["resume"]) == (0, None)  # the first task's end


def test_a_forced_run_is_fresh_only_on_its_first_attempt():
    spec = RunSpec(config_of("frozen"), "results", fresh=True)
    assert RunJob().checkpoint(spec).args[0].fresh is False


def test_the_debug_launcher_gives_the_inline_result_and_records_the_job(tmp_path, capsys):
    inline, debug = tmp_path / "inline", tmp_path / "debug"
    argv = ["--methods", "seq-lora", *TINY]
    assert cli.main([*argv, "--results-dir", str(inline)]) == 0
    assert cli.main([*argv, "--results-dir", str(debug), "--launcher", "debug"]) == 0
    [a], [b] = list(store.load_results(inline)), list(store.load_results(debug))
    assert a["run_id"] == b["run_id"] and a["acc_matrix"] == b["acc_matrix"]
    capsys.readouterr()
    assert cli.main(["status", "--results-dir", str(debug)]) == 0
    out = capsys.readouterr().out
    assert f"| {a['run_id']} | done " in out and "1 done, 0 running, 0 pending, 0 failed" in out


@pytest.mark.parametrize("launcher", ["local", "slurm"])
def test_a_missing_data_folder_fails_before_any_job_is_submitted(tmp_path, capsys, launcher):
    code = cli.main(["--methods", "frozen", "--dataset", "imagenet-r", "--backbone", "tiny", "--image-size", "32",
                     "--data-root", str(tmp_path), "--results-dir", str(tmp_path / "r"), "--launcher", launcher])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: data set folder {tmp_path / 'imagenet-r'} does not exist")
    assert not job_status.read_records(tmp_path / "r")


def test_status_without_submitted_runs_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["status", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no submitted runs under") and "\n" not in err


@pytest.mark.parametrize("profile, message", [
    ("partition: [unclosed", "is not valid YAML"),
    ("- a list", "must be a mapping"),
    ("partiton: gpu", "unknown key(s) partiton; known: partition"),
    ("time_min: -5", "time-min must be a positive number, got -5"),
    ("setup: module load x", "setup must be a list of shell lines"),
    ("additional: exclusive", "additional must be a mapping"),
    (None, "cannot read --slurm-profile"),
])
def test_bad_slurm_profiles_are_one_line_errors(tmp_path, capsys, profile, message):
    path = tmp_path / "profile.yaml"
    if profile is not None:
        path.write_text(profile)
    code = cli.main(["--methods", "frozen", *TINY, "--results-dir", str(tmp_path / "r"), "--launcher", "slurm",
                     "--slurm-profile", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "r" / "jobs").exists()


def test_flags_override_the_profile_and_reach_the_sbatch_file(tmp_path, monkeypatch):
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # no srun needed
    path = tmp_path / "profile.yaml"
    path.write_text("partition: gpu\naccount: proj\ngpus_per_job: 1\ncpus_per_task: 8\nmem_gb: 48\ntime_min: 60\n"
                    "setup: ['module load cuda/12.4']\nadditional: {exclude: node17}\n")
    options = slurm_profile.launch_options(slurm_profile.load_profile(str(path)),
                                           {"time_min": 720, "qos": "high", "partition": None})
    executor = launcher.build_executor("slurm", tmp_path / "logs", options, max_parallel=3)
    text = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=48GB",
                 "#SBATCH --time=720", "#SBATCH --signal=USR2@120", "#SBATCH --exclude=node17",
                 "module load cuda/12.4"):
        assert line in text, line
    assert executor._executor.parameters["array_parallelism"] == 3
    assert executor._executor.max_num_timeout == slurm_profile.DEFAULTS["max_requeues"]


@pytest.mark.slow
def test_a_local_job_that_fails_is_reported_and_retried_by_status(tmp_path, capsys):
    data_root, results = tmp_path / "data", tmp_path / "results"
    argv = ["--methods", "frozen", "--dataset", "cifar100", "--tasks", "10", "--backbone", "tiny", "--image-size",
            "32", "--epochs", "1", "--device", "cpu", "--data-root", str(data_root), "--results-dir", str(results),
            "--launcher", "local"]
    write_cifar100(data_root)
    (data_root / "cifar-100-python" / "train").unlink()  # found by the job, not at submission
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "failed: DataError: missing CIFAR-100 file" in err and "(log: " in err
    assert cli.main(["status", "--results-dir", str(results)]) == 1
    out = capsys.readouterr().out
    assert "| failed " in out and "missing CIFAR-100 file" in out and "0 done, 0 running, 0 pending, 1 failed" in out
    [record] = job_status.read_records(results)
    write_cifar100(data_root)
    assert cli.main(["status", "--results-dir", str(results), "--retry-failed"]) == 0
    [retried] = job_status.read_records(results)
    assert retried["job_id"] != record["job_id"]
    assert cli.main(["status", "--results-dir", str(results)]) == 0
    assert "1 done, 0 running, 0 pending, 0 failed" in capsys.readouterr().out


def _checkpoint_position(path: Path) -> tuple[int, dict | None] | None:
    try:
        saved = torch.load(path, weights_only=True)
    except Exception:  # not there yet
        return None
    return saved["task"], saved["resume"]


@pytest.mark.slow
def test_a_local_run_killed_mid_task_resumes_to_the_identical_result(tmp_path):
    results, inline = tmp_path / "results", tmp_path / "inline"
    argv = [sys.executable, "run_benchmark.py", "run", "--methods", "seq-lora", *TINY, "--epochs", "3",
            "--set", "data.train_per_class=20", "--checkpoint-every", "0.001"]  # 5-10 s of training
    subprocess.run([*argv, "--results-dir", str(inline)], cwd=ROOT, check=True, capture_output=True)
    [reference] = list(store.load_results(inline))
    crashed = subprocess.Popen([*argv, "--results-dir", str(results), "--launcher", "local"], cwd=ROOT,
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = store.checkpoint_path(results, reference["run_id"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until it is inside the second task
        position = _checkpoint_position(checkpoint)
        if position and position[0] >= 1 and position[1] is not None:
            break
        if crashed.poll() is not None:
            pytest.fail("the local run ended before it could be killed inside its second task")
        time.sleep(0.05)
    else:
        pytest.fail("the local job never reached the second task")
    os.killpg(crashed.pid, signal.SIGKILL)  # the submitting process and its job: a machine crash
    crashed.wait()
    assert not store.is_complete(results, reference["run_id"])
    rerun = subprocess.run([*argv, "--results-dir", str(results), "--launcher", "local"], cwd=ROOT,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    [record] = job_status.read_records(results)
    log = Path(record["stderr"]).read_text()
    assert "resuming from its checkpoint at task 2" in log or "resuming from its checkpoint at task 3" in log
    [resumed] = list(store.load_results(results))
    assert resumed["acc_matrix"] == reference["acc_matrix"]


def test_the_example_profile_is_valid():
    profile = slurm_profile.load_profile(str(ROOT / "scripts" / "slurm-profile.example.yaml"))
    assert set(profile) == set(slurm_profile.PROFILE_KEYS) - {"python"}


def test_a_rejected_slurm_submission_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in (("sbatch", "echo 'sbatch: error: invalid partition specified: gpu' >&2; exit 1"),
                       ("srun", "exit 0")):
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    code = cli.main(["--methods", "frozen", *TINY, "--results-dir", str(tmp_path / "r"), "--launcher", "slurm",
                     "--partition", "gpu"])
    err = capsys.readouterr().err.strip()  # sbatch's own message, passed through, then ours
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == ("error: Slurm submission failed (sbatch: error: invalid partition specified: "
                                    "gpu); check the partition/account/qos or try --launcher local")
    assert not job_status.read_records(tmp_path / "r")


def test_a_failed_slurm_submission_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    code = cli.main(["--methods", "frozen", *TINY, "--results-dir", str(tmp_path / "r"), "--launcher", "slurm"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: Slurm submission failed") and "\n" not in err
    assert not job_status.read_records(tmp_path / "r")


def test_a_run_of_unknown_state_is_neither_resubmitted_nor_waited_for(tmp_path):
    """A local job recorded on another host: its state cannot be known here, so a rerun leaves it
    alone, says so and exits 1 instead of waiting for it forever."""
    results = tmp_path / "results"
    argv = [sys.executable, "run_benchmark.py", "run", "--methods", "frozen", *TINY, "--results-dir", str(results)]
    assert subprocess.run([*argv, "--launcher", "debug"], cwd=ROOT, capture_output=True).returncode == 0
    [record] = job_status.read_records(results)
    store.result_path(results, record["run_id"]).unlink()
    path = job_status.record_path(results, record["run_id"])
    path.write_text(path.read_text().replace('"launcher": "debug"', '"launcher": "local"')
                    .replace(f'"host": "{record["host"]}"', '"host": "elsewhere"'))
    rerun = subprocess.run([*argv, "--launcher", "local"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "CL_POLL_S": "0.2"})
    assert rerun.returncode == 1
    assert f"{record['run_id']}: state unknown (local job of host elsewhere), not submitted again" in rerun.stderr
    assert job_status.read_records(results)[0]["job_id"] == record["job_id"]
