"""The regression check passes at its baseline and fails on a drop or a missing method."""

import json

import pytest

from benchmark import regression
from benchmark.errors import ConfigError


def test_compare_flags_drops_beyond_the_tolerance_and_missing_methods():
    baseline = {"a": {"final_acc": 50.0, "avg_acc": 60.0}}
    measured = {"a": {"final_acc": 48.5, "avg_acc": 57.0}, "b": {"final_acc": 10.0, "avg_acc": 20.0}}
    rows, ok = regression.compare(baseline, measured, tolerance=2.0)
    verdicts = {(r[0], r[1]): r[-1] for r in rows}
    assert verdicts == {("a", "final_acc"): "PASS", ("a", "avg_acc"): "FAIL",
                        ("b", "final_acc"): "FAIL", ("b", "avg_acc"): "FAIL"}
    assert not ok
    assert regression.compare(baseline, {"a": {"final_acc": 70.0, "avg_acc": 58.0}}, 2.0)[1]


@pytest.mark.slow
def test_check_passes_at_its_baseline_and_fails_when_the_baseline_is_raised(tmp_path, capsys, monkeypatch):
    path = tmp_path / "ci.json"
    assert regression.check(update=True, path=path, methods=["frozen"]) == 0  # a real run
    assert regression.check(path=path, methods=["frozen"]) == 0  # a second real run reproduces it
    assert "check passed" in capsys.readouterr().out
    measured = json.loads(path.read_text())["methods"]
    doctored = {"methods": {"frozen": {**measured["frozen"], "final_acc": measured["frozen"]["final_acc"] + 5}}}
    path.write_text(json.dumps(doctored))
    monkeypatch.setattr(regression, "measure", lambda methods, progress=False: measured)  # same values again
    assert regression.check(path=path, methods=["frozen"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_the_shipped_baseline_covers_every_registered_method():
    from benchmark.registry import METHODS

    assert set(regression.load_baseline()) == set(METHODS.names())


def test_missing_or_corrupt_baseline_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="check --update"):
        regression.load_baseline(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="corrupt baseline"):
        regression.load_baseline(tmp_path / "bad.json")


def test_updating_some_methods_keeps_the_other_baselines(tmp_path, monkeypatch):
    path = tmp_path / "ci.json"
    path.write_text(json.dumps({"methods": {"a": {"final_acc": 1.0, "avg_acc": 2.0},
                                            "b": {"final_acc": 3.0, "avg_acc": 4.0}}}))
    monkeypatch.setattr(regression, "measure", lambda methods, progress=False:
                        {m: {"final_acc": 9.0, "avg_acc": 9.0} for m in methods})
    assert regression.check(update=True, path=path, methods=["b"]) == 0
    assert regression.load_baseline(path) == {"a": {"final_acc": 1.0, "avg_acc": 2.0},
                                              "b": {"final_acc": 9.0, "avg_acc": 9.0}}
