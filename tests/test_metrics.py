"""Metric functions against hand-computed values (reference/protocol.md section 6)."""

import pytest

from benchmark import metrics

# a[i][j]: accuracy on task j after training task i (3 tasks)
ACC = [[90.0], [70.0, 80.0], [50.0, 60.0, 85.0]]
COUNTS = [100, 300, 100]


def test_step_accuracies_both_variants():
    assert metrics.step_accuracies(ACC, COUNTS, weighted=False) == pytest.approx([90.0, 75.0, 65.0])
    # weighted: (70*100 + 80*300) / 400 = 77.5; (50*100 + 60*300 + 85*100) / 500 = 63.0
    assert metrics.step_accuracies(ACC, COUNTS, weighted=True) == pytest.approx([90.0, 77.5, 63.0])


def test_final_and_average_incremental_accuracy():
    assert metrics.final_accuracy(ACC, COUNTS, weighted=True) == pytest.approx(63.0)
    assert metrics.final_accuracy(ACC, COUNTS, weighted=False) == pytest.approx(65.0)
    assert metrics.average_incremental_accuracy(ACC, COUNTS, weighted=True) == pytest.approx((90 + 77.5 + 63) / 3)
    assert metrics.average_incremental_accuracy(ACC, COUNTS, weighted=False) == pytest.approx((90 + 75 + 65) / 3)


def test_forgetting_is_max_based():
    # task 0: max(90, 70) - 50 = 40; task 1: max(80) - 60 = 20 -> mean 30
    assert metrics.forgetting(ACC) == pytest.approx(30.0)
    # a later rise is not forgetting: the max over l in [j, T-1] is taken
    assert metrics.forgetting([[50.0], [60.0, 80.0], [55.0, 80.0, 70.0]]) == pytest.approx((5 + 0) / 2)


def test_coda_forgetting_is_mean_step_drop():
    # step 2: (90-70)/1 = 20; step 3: ((70-50) + (80-60))/2 = 20 -> 20
    assert metrics.forgetting_coda(ACC) == pytest.approx(20.0)
    assert metrics.forgetting_coda([[90.0], [60.0, 80.0], [60.0, 70.0, 85.0]]) == pytest.approx((30 + 5) / 2)


def test_backward_transfer():
    # ((50-90) + (60-80)) / 2 = -30
    assert metrics.backward_transfer(ACC) == pytest.approx(-30.0)


def test_single_task_has_no_forgetting():
    assert metrics.forgetting([[80.0]]) is None
    assert metrics.forgetting_coda([[80.0]]) is None
    assert metrics.backward_transfer([[80.0]]) is None
    summary = metrics.summarize([[80.0]], [10])
    assert summary["final_acc"] == summary["avg_acc"] == 80.0


def test_summarize_reports_task_aware_final():
    aware = [[95.0], [90.0, 92.0], [88.0, 90.0, 93.0]]
    summary = metrics.summarize(ACC, COUNTS, aware)
    assert summary["task_aware_final_acc"] == pytest.approx((88 * 100 + 90 * 300 + 93 * 100) / 500)
    assert summary["final_acc_task_mean"] == pytest.approx(65.0)
