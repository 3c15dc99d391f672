"""Typed run configuration, its resolution from defaults, and the run id (hash of what matters).

Precedence of a method hyperparameter, lowest first (fixed here and nowhere else):

    method Config dataclass  <  method DATASET_DEFAULTS[dataset]  <  PRESETS[preset]  <  CLI

Dataset options (``data.KEY``) follow dataset Options dataclass < preset < CLI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from benchmark.errors import ConfigError
from benchmark.registry import DATASETS, METHODS
from benchmark.schedules import SCHEDULES

# Named presets: overrides applied on top of the per-dataset defaults. "paper" keeps them.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": {"epochs": 1},  # smoke runs: one epoch per task
    # the regression check's small synth split (`run_benchmark.py check`)
    "ci": {"epochs": 2, "data.train_per_class": 40, "data.test_per_class": 20},
}
DATA_PREFIX = "data."
# Fields that do not change what a run computes (beyond float rounding); left out of the run id.
_NOT_HASHED = ("device", "data_root", "num_workers", "compile", "prefetch")
_NOT_HASHED_DATA = ("cache_dir",)  # data options likewise
# Data options that enter the run id only when set otherwise (earlier run ids stay as they were)
_HASHED_UNLESS = {"decoded_cache": False, "device_decode": False, "val_fraction": 0.0}


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run configuration (``RunConfig.to_dict()``, or a stored result's ``config``)
    that identifies what the run computes: used by the run id and by the report's grouping."""
    kept = {k: v for k, v in config.items() if k not in _NOT_HASHED}
    kept["data_options"] = {k: v for k, v in config.get("data_options", {}).items() if k not in _NOT_HASHED_DATA
                            and not (k in _HASHED_UNLESS and v == _HASHED_UNLESS[k])}
    return kept


@dataclass
class RunConfig:
    """Everything that defines one run (method x dataset x task count x seed)."""

    method: str
    dataset: str
    n_tasks: int
    seed: int
    preset: str
    backbone: str
    hparams: dict[str, Any]
    data_options: dict[str, Any]
    shuffle_classes: bool = True
    pretrained: bool = True
    backbone_weights: str | None = None
    precision: str = "fp32"
    device: str = "cpu"
    data_root: str | None = None
    num_workers: int = 0
    compile: bool = False  # torch.compile the training step and prediction (--compile)
    prefetch: bool = False  # CUDA: prepare batches ahead on a side stream (--prefetch; opt-in until checked on a GPU)
    # digest of a generated data set's generator settings (synth), so that results of other images
    # never share a run id or a table cell with these; None for data read from disk
    data_identity: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_id(self) -> str:
        """Readable, unique id: ``<method>_<dataset>_T<n>_s<seed>_<hash of the resolved config>``."""
        hashed = identity(self.to_dict())
        from benchmark import backbones

        if self.backbone == backbones.SYNTH_VIT and self.pretrained and not self.backbone_weights:
            # the shipped weights can be rebuilt: results of older weights must not be reused
            hashed["shipped_weights"] = backbones.synth_backbone_metadata().get("weights_digest")
        digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.method}_{self.dataset}_T{self.n_tasks}_s{self.seed}_{digest}"

    def method_config(self):
        """The method's Config dataclass instance."""
        return METHODS.get(self.method).Config(**self.hparams)

    def dataset_options(self):
        return DATASETS.get(self.dataset).Options(**self.data_options)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert a CLI string to the type of a dataclass field (int, float, bool, str, lists, Optional)."""
    if not isinstance(value, str):
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null", ""):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    try:
        if hint is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if hint in (int, float, str):
            return hint(value)
        if origin is list:
            items = [v for v in value.strip("[]").replace(",", " ").split() if v]
            return [_coerce(key, v, args[0]) for v in items]
    except ValueError:
        raise ConfigError(f"bad value {value!r} for {key}: expected {getattr(hint, '__name__', hint)}") from None
    return value


def typed_setting(method: str, dataset: str, key: str, value: Any) -> Any:
    """``value`` (e.g. a command-line string) as the type of ``method``'s setting ``key``, or of the
    data set option ``data.KEY``; a ``ConfigError`` for an unknown key or a value of the wrong type."""
    owner = DATASETS.get(dataset).Options if key.startswith(DATA_PREFIX) else METHODS.get(method).Config
    hints = typing.get_type_hints(owner)
    name = key[len(DATA_PREFIX):] if key.startswith(DATA_PREFIX) else key
    if name not in hints:
        raise ConfigError(f"unknown setting {key!r} of {dataset if key.startswith(DATA_PREFIX) else method}; "
                          f"valid: {', '.join(hints)}")
    return _coerce(key, value, hints[name])


def _apply(target: dict[str, Any], overrides: dict[str, Any], hints: dict[str, Any], where: str,
           prefix: str = "") -> None:
    for key, value in overrides.items():
        if key not in hints:
            valid = ", ".join(prefix + k for k in hints)
            raise ConfigError(f"unknown setting {prefix + key!r} ({where}); valid: {valid}")
        target[key] = _coerce(prefix + key, value, hints[key])


def resolve(method: str, dataset: str = "synth", n_tasks: int | None = None, seed: int = 0,
            preset: str = "paper", overrides: dict[str, Any] | None = None, **run_fields: Any) -> RunConfig:
    """Resolve a complete ``RunConfig`` from names, defaults, preset and explicit overrides.

    ``overrides`` maps method hyperparameter names (``epochs``, ``lr``, ``rank`` ...) and
    ``data.<option>`` names to values (CLI strings are converted to the field's type).
    ``run_fields`` sets the remaining ``RunConfig`` fields (device, backbone, ...).
    """
    method_cls = METHODS.get(method)
    dataset_cls = DATASETS.get(dataset)
    method, dataset = method_cls.name, dataset_cls.name
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    n_tasks = dataset_cls.default_n_tasks if n_tasks is None else n_tasks

    method_hints = typing.get_type_hints(method_cls.Config)
    data_hints = typing.get_type_hints(dataset_cls.Options)
    hparams = dataclasses.asdict(method_cls.Config())
    data_options = dataclasses.asdict(dataset_cls.Options())
    layers = [(method_cls.DATASET_DEFAULTS.get(dataset, {}), f"{method} defaults for {dataset}"),
              (PRESETS[preset], f"preset {preset}"), (overrides or {}, "command line")]
    for layer, where in layers:
        data_layer = {k[len(DATA_PREFIX):]: v for k, v in layer.items() if k.startswith(DATA_PREFIX)}
        method_layer = {k: v for k, v in layer.items() if not k.startswith(DATA_PREFIX)}
        _apply(hparams, method_layer, method_hints, where)
        _apply(data_options, data_layer, data_hints, where, DATA_PREFIX)

    from benchmark.backbones import resolve_backbone_name  # torch/timm: imported only when resolving

    # the reference weights of the method, per data set where its configs differ (RanPAC)
    tag = method_cls.DATASET_PRETRAINED_TAGS.get(dataset, method_cls.pretrained_tag)
    run_fields["backbone"] = resolve_backbone_name(run_fields.get("backbone") or dataset_cls.default_backbone, tag)
    run_fields["data_identity"] = dataset_cls.identity()
    config = RunConfig(method=method, dataset=dataset, n_tasks=n_tasks, seed=seed, preset=preset,
                       hparams=hparams, data_options=data_options, **run_fields)
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Check values the CLI cannot type-check; raise ``ConfigError`` naming the setting."""
    hp = config.hparams
    checks = [
        (hp["epochs"] >= 1, f"epochs must be at least 1, got {hp['epochs']}"),
        (hp["batch_size"] >= 1, f"batch size must be at least 1, got {hp['batch_size']}"),
        (hp["lr"] > 0, f"learning rate must be positive, got {hp['lr']}"),
        (hp["optimizer"] in ("adam", "adamw", "sgd"), f"optimizer must be adam, adamw or sgd, got {hp['optimizer']!r}"),
        (hp["schedule"] in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {hp['schedule']!r}"),
        (hp["head_lr"] >= 0, f"head_lr must be non-negative (0 = same as lr), got {hp['head_lr']}"),
        (hp["weight_decay"] >= 0, f"weight_decay must be non-negative, got {hp['weight_decay']}"),
        (config.num_workers >= 0, f"num_workers must be non-negative, got {config.num_workers}"),
        (hp.get("rank", 1) >= 1, f"rank must be at least 1, got {hp.get('rank')}"),
        (config.seed >= 0, f"seed must be non-negative, got {config.seed}"),
        (0 <= config.data_options.get("val_fraction", 0) < 1,
         f"data.val_fraction must be in [0, 1), got {config.data_options.get('val_fraction')}"),
        (config.precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, got {config.precision!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    from datasets.base import check_n_tasks  # local: datasets import the registry, not the config

    from benchmark.backbones import backbone_input_size

    dataset_cls = DATASETS.get(config.dataset)
    check_n_tasks(dataset_cls.num_classes, config.n_tasks, config.dataset)
    size = backbone_input_size(config.backbone)
    if dataset_cls.fixed_image_size not in (None, size):
        raise ConfigError(f"{config.dataset} images are {dataset_cls.fixed_image_size} px but backbone "
                          f"{config.backbone} takes {size} px; use --backbone tiny")
    image_size = config.data_options.get("image_size")
    if image_size is not None and image_size != size:
        raise ConfigError(f"--image-size {image_size} does not match backbone {config.backbone}, which takes "
                          f"{size} px; leave --image-size out, or use --backbone tiny for 32 px")
    config.method_config()  # method-specific checks (Config.__post_init__)
    config.dataset_options()

