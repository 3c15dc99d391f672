"""Registry look-ups: unknown names list the valid ones, duplicates are rejected."""

import pytest

from benchmark.errors import ConfigError
from benchmark.registry import DATASETS, METHODS, Registry


def test_unknown_method_lists_valid_names_and_closest_match():
    with pytest.raises(ConfigError) as info:
        METHODS.get("seq-lor")
    message = str(info.value)
    assert "did you mean 'seq-lora'" in message
    for name in METHODS.names():
        assert name in message
    assert "\n" not in message


def test_unknown_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="valid datasets: .*synth"):
        DATASETS.get("cifar1000")


def test_duplicate_names_and_aliases_are_rejected():
    registry = Registry("thing", ())
    registry.register("a", "alias")(type("A", (), {}))
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(type("B", (), {}))
    with pytest.raises(ValueError, match="already registered"):
        registry.register("c", "alias")(type("C", (), {}))
    assert registry.get("alias").__name__ == "A"
    assert registry.canonical("alias") == "a"


def test_import_errors_are_reported_for_the_requested_name():
    registry = Registry("thing", ("no_such_module_for_test",))
    with pytest.raises(ConfigError, match="no_such_module_for_test failed to import"):
        registry.get("x")


def test_reference_methods_are_registered():
    assert {"frozen", "seq-lora", "joint"} <= set(METHODS.names())
    assert METHODS.get("joint").single_task and METHODS.get("joint").upper_bound


def test_the_default_run_has_every_method_but_variants():
    from benchmark.cli import build_parser, resolve_runs

    defaults = METHODS.default_names()
    assert "inflora-b5" in METHODS.names() and "inflora-b5" not in defaults
    assert {"frozen", "seq-lora", "inflora", "l2p", "dualprompt", "coda", "simplecil", "ranpac", "sd-lora",
            "joint"} == set(defaults)
    assert METHODS.canonical("coda-prompt") == "coda"
    configs = resolve_runs(build_parser().parse_args(["run", "--device", "cpu"]))
    assert [c.method for c in configs] == defaults
