"""The Slurm launcher on a real Slurm cluster (``scripts/slurm-local.sh up``; found through
``SLURM_CONF``, default ``/tmp/slurm-local/slurm.conf``): a sweep as one job array equals the
inline runs; a job preempted with SIGUSR2 and one that outlives its time limit are requeued and
finish with the uninterrupted accuracy matrix.

Without a cluster these tests are skipped with the reason, unless ``CL_REQUIRE_SLURM=1`` (as in
``.ci/run``), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmark import job_status, store

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
TINY = ["--tasks", "5", "--set", "data.test_per_class=2", "--device", "cpu", "--no-progress"]
SHORT = [*TINY, "--epochs", "1", "--set", "data.train_per_class=3"]
LONG = [*TINY, "--epochs", "4", "--set", "data.train_per_class=10"]  # 8-25 s on 2 cores
# longer than the 45 s after which a 1-minute job has surely had its time-limit warning (80-120 s; at
# 8 epochs, 55-80 s, a CI run once finished inside its first allocation)
TIMED = [*TINY, "--epochs", "12", "--set", "data.train_per_class=60"]
SLURM = ["--launcher", "slurm", "--cpus-per-task", "1", "--mem-gb", "1"]


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    """The environment for Slurm commands, or skip (fail under CL_REQUIRE_SLURM=1) with the reason."""
    env = {**os.environ, "SLURM_CONF": os.environ.get("SLURM_CONF", "/tmp/slurm-local/slurm.conf"),
           "CL_POLL_S": "1"}
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30)
        reason = None if state.returncode == 0 and state.stdout.strip() else \
            f"no Slurm cluster answers at SLURM_CONF={env['SLURM_CONF']} ({state.stderr.strip()[:200]})"
    except (OSError, subprocess.SubprocessError) as err:
        reason = f"Slurm client not usable: {err}; start one with `scripts/slurm-local.sh up`"
    if reason:
        if os.environ.get("CL_REQUIRE_SLURM") == "1":
            pytest.fail(f"CL_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    return env


def cli(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_benchmark.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def matrices(results_dir: Path) -> dict[str, list]:
    return {r["run_id"]: r["acc_matrix"] for r in store.load_results(results_dir)}


def wait_for_checkpoint_in_task(path: Path, task: int, timeout: float = 300) -> None:
    """Until the checkpoint at ``path`` is inside ``task`` (0-based), mid-training."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            saved = torch.load(path, weights_only=True)
            if saved["task"] >= task and saved["resume"] is not None:
                return
        except Exception:  # not written yet
            pass
        time.sleep(0.2)
    pytest.fail(f"no checkpoint inside task {task + 1} at {path} after {timeout:.0f} s")


def test_a_sweep_as_one_job_array_equals_the_inline_runs(tmp_path, slurm_env):
    sweep = ["--methods", "frozen", "seq-lora", "--seeds", "0", "1", *SHORT]
    inline = cli([*sweep, "--results-dir", str(tmp_path / "inline")], slurm_env)
    assert inline.returncode == 0, inline.stderr
    slurm = cli([*sweep, "--results-dir", str(tmp_path / "slurm"), *SLURM, "--max-parallel", "2", "--wait"],
                slurm_env)
    assert slurm.returncode == 0, slurm.stderr
    assert "as Slurm job array" in slurm.stderr and "| seq-lora | 1 " in slurm.stdout
    expected = matrices(tmp_path / "inline")
    assert len(expected) == 4 and matrices(tmp_path / "slurm") == expected
    records = job_status.read_records(tmp_path / "slurm")
    assert len({r["job_id"].split("_")[0] for r in records}) == 1  # one array
    assert sorted(r["job_id"].split("_")[1] for r in records) == ["0", "1", "2", "3"]
    rerun = cli([*sweep, "--results-dir", str(tmp_path / "slurm"), *SLURM, "--wait"], slurm_env)
    assert rerun.returncode == 0 and rerun.stderr.count("result exists, skipped") == 4
    assert "submitted" not in rerun.stderr


def test_a_sweep_through_slurm_selects_what_the_inline_sweep_selects(tmp_path, slurm_env):
    sweep = ["sweep", "--methods", "frozen", "seq-lora", "--grid", "lr=0.003,0.03", "--seeds", "0", "1", *SHORT]
    inline = cli([*sweep, "--results-dir", str(tmp_path / "inline")], slurm_env)
    assert inline.returncode == 0, inline.stderr
    submitted = cli([*sweep, "--results-dir", str(tmp_path / "slurm"), *SLURM, "--max-parallel", "2"], slurm_env)
    assert submitted.returncode == 0, submitted.stderr
    assert "validation runs submitted" in submitted.stderr and "as Slurm job array" in submitted.stderr
    resumed = cli([*sweep, "--results-dir", str(tmp_path / "slurm"), *SLURM, "--wait"], slurm_env)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("as Slurm job array") == 1  # the final runs only: no validation run twice

    def record(folder: Path) -> dict:
        [path] = (folder / "sweeps").glob("*.json")
        return json.loads(path.read_text())

    inline_record, slurm_record = record(tmp_path / "inline"), record(tmp_path / "slurm")
    assert slurm_record["sweep_id"] == inline_record["sweep_id"]
    for method, entry in inline_record["methods"].items():
        assert slurm_record["methods"][method]["chosen"] == entry["chosen"]
        assert slurm_record["methods"][method]["points"] == entry["points"]
    assert matrices(tmp_path / "slurm") == matrices(tmp_path / "inline")  # 4 validation and 4 final runs
    assert len(matrices(tmp_path / "slurm")) == 8


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory, slurm_env) -> tuple[Path, dict[str, list]]:
    """The uninterrupted result of the LONG run (inline)."""
    results = tmp_path_factory.mktemp("reference")
    done = cli(["--methods", "seq-lora", *LONG, "--results-dir", str(results)], slurm_env)
    assert done.returncode == 0, done.stderr
    return results, matrices(results)


def _log_of(results: Path) -> str:
    [record] = job_status.read_records(results)
    return Path(record["stdout"]).read_text() + Path(record["stderr"]).read_text()


def test_a_preempted_job_checkpoints_requeues_and_resumes_exactly(tmp_path, slurm_env, long_reference):
    _, expected = long_reference
    [run_id] = expected
    results = tmp_path / "results"
    submitted = cli(["--methods", "seq-lora", *LONG, "--results-dir", str(results), *SLURM,
                     "--checkpoint-every", "0.001"], slurm_env)  # a checkpoint after (nearly) every step
    assert submitted.returncode == 0, submitted.stderr
    [record] = job_status.read_records(results)
    wait_for_checkpoint_in_task(store.checkpoint_path(results, run_id), 1)  # training in the second task
    subprocess.run(["scancel", "--signal=USR2", record["job_id"]], env=slurm_env, check=True)
    waited = cli(["--methods", "seq-lora", *LONG, "--results-dir", str(results), *SLURM, "--wait"], slurm_env)
    assert waited.returncode == 0, waited.stderr
    assert "already " in waited.stderr  # the rerun found the job queued or running and did not resubmit
    log = _log_of(results)
    assert "Caught signal SIGUSR2" in log and "resuming from its checkpoint at task" in log
    assert matrices(results) == expected


def test_a_job_longer_than_its_time_limit_finishes_through_requeues(tmp_path, slurm_env):
    reference = cli(["--methods", "seq-lora", *TIMED, "--results-dir", str(tmp_path / "inline")], slurm_env)
    assert reference.returncode == 0, reference.stderr
    expected, results = matrices(tmp_path / "inline"), tmp_path / "results"
    # Slurm checks time limits every 30 s and sends the warning up to that much early: 15 s before a
    # 1-minute limit arrives 15-45 s into each allocation, after the job's handlers are installed
    done = cli(["--methods", "seq-lora", *TIMED, "--results-dir", str(results), *SLURM, "--time-min", "1",
                "--signal-delay-s", "15", "--wait"], slurm_env, timeout=900)
    assert done.returncode == 0, done.stderr
    log = _log_of(results)
    assert "this job is timed-out" in log and "resuming from its checkpoint at task" in log
    assert matrices(results) == expected


def test_time_auto_sets_the_arrays_limit_from_the_preflight_projection(tmp_path, slurm_env):
    sweep = ["--methods", "frozen", "simplecil", *SHORT, "--results-dir", str(tmp_path / "results")]
    checked = cli(["preflight", *sweep], slurm_env)
    assert checked.returncode == 0, checked.stderr
    [report] = (tmp_path / "results" / "preflight").glob("preflight_*.json")
    longest = max(r["projection"]["total_s"] for r in json.loads(report.read_text())["runs"])
    expected = math.ceil(1.5 * longest / 60 + 10)
    done = cli([*sweep, *SLURM, "--time", "auto", "--wait"], slurm_env)
    assert done.returncode == 0, done.stderr
    assert f"--time-min auto: {expected} min" in done.stderr
    records = job_status.read_records(tmp_path / "results")
    assert len(records) == 2 and {r["options"]["time_min"] for r in records} == {expected}
    shown = subprocess.run(["scontrol", "show", "job", records[0]["job_id"]], env=slurm_env, capture_output=True,
                           text=True)
    if shown.returncode == 0:  # still known to the controller: its limit is the one asked for
        assert f"TimeLimit={expected // 60:02d}:{expected % 60:02d}:00" in shown.stdout
