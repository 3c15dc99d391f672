"""Slurm options of the launchers: the ``--slurm-profile`` YAML and the flags of the same names.

A profile is a mapping of the keys below (any subset), e.g.::

    partition: gpu
    account: my-project
    gpus_per_job: 1
    cpus_per_task: 8
    mem_gb: 48
    time_min: 720
    setup: ["module load cuda/12.4", "source ~/venvs/clpeft/bin/activate"]
    additional: {exclude: "node17"}

Command-line flags override the profile, which overrides ``DEFAULTS``. No submitit import here
(``run --help`` and ``bench`` do not need it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from benchmark.errors import ConfigError

# --slurm-profile keys (and the command-line flags of the same names) -> submitit AutoExecutor parameters
PROFILE_KEYS = {
    "partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos",
    "gpus_per_job": "gpus_per_node", "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb",
    "time_min": "timeout_min", "constraint": "slurm_constraint",
    "additional": "slurm_additional_parameters", "setup": "slurm_setup",
    "signal_delay_s": "slurm_signal_delay_s", "max_requeues": "slurm_max_num_timeout",
    "python": "slurm_python",
}
DEFAULTS = {"time_min": 24 * 60, "signal_delay_s": 120, "max_requeues": 20}


def load_profile(path: str | None) -> dict[str, Any]:
    """The ``--slurm-profile`` YAML as a dict of known keys; one-line errors for anything else."""
    if path is None:
        return {}
    try:
        profile = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise ConfigError(f"cannot read --slurm-profile {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--slurm-profile {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(profile, dict):
        raise ConfigError(f"--slurm-profile {path} must be a mapping of KEY: value")
    unknown = sorted(set(profile) - set(PROFILE_KEYS))
    if unknown:
        raise ConfigError(f"--slurm-profile {path}: unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(PROFILE_KEYS)}")
    if "additional" in profile and not isinstance(profile["additional"], dict):
        raise ConfigError(f"--slurm-profile {path}: additional must be a mapping of sbatch option: value")
    if "setup" in profile and not (isinstance(profile["setup"], list)
                                   and all(isinstance(line, str) for line in profile["setup"])):
        raise ConfigError(f"--slurm-profile {path}: setup must be a list of shell lines")
    return profile


def launch_options(profile: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Defaults < profile < command-line flags (those not None); positive numbers checked."""
    options = {**DEFAULTS, **profile, **{k: v for k, v in flags.items() if v is not None}}
    for key in ("gpus_per_job", "cpus_per_task", "mem_gb", "time_min", "signal_delay_s", "max_requeues"):
        value = options.get(key)
        if key == "time_min" and value == "auto":  # from a preflight report (benchmark.preflight.auto_time_min)
            continue
        if value is not None and (not isinstance(value, (int, float)) or value < 0 or
                                  (value == 0 and key not in ("gpus_per_job", "max_requeues"))):
            raise ConfigError(f"{key.replace('_', '-')} must be a positive number, got {value!r}")
    return options
