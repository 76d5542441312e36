"""Per-group metrics, gaps and flags (fairlearn MetricFrame with bootstrap intervals)."""

from __future__ import annotations

import numpy as np
import pytest

from clarivis.evaluate.subgroups import subgroup_report


def predictions_with_a_weak_group(seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 400)
    pred = y.copy()
    dark = np.arange(400) >= 300  # the last 100 images are "dark"
    wrong = dark & (rng.random(400) < 0.4)
    pred[wrong] = (pred[wrong] + 1) % 3
    return y, pred, {"lighting": ["dark" if d else "bright" for d in dark]}


def test_weak_group_is_flagged_with_its_numbers():
    y, pred, attrs = predictions_with_a_weak_group()
    report = subgroup_report(y, pred, attrs, num_classes=3, n_boot=200)
    dark, bright = report["lighting"]["dark"], report["lighting"]["bright"]
    assert bright["accuracy"] == 1.0 and bright["count"] == 300 and dark["count"] == 100
    assert dark["accuracy"] == pytest.approx(np.mean(y[300:] == pred[300:]))
    low, high = dark["accuracy_ci"]
    assert low < dark["accuracy"] < high and high < 1.0
    assert [f["group"] for f in report["flagged"]] == ["dark"]
    assert report["flagged"][0]["significant"]
    summary = report["summary"]["lighting"]
    assert summary["largest_gap"] == pytest.approx(1.0 - dark["accuracy"])
    assert summary["smallest_ratio"] == pytest.approx(dark["accuracy"])
    assert summary["worst_group"] == "dark"


def test_equal_groups_are_not_flagged():
    y = np.tile([0, 1, 2], 100)
    report = subgroup_report(y, y, {"site": ["a", "b"] * 150}, num_classes=3, n_boot=50)
    assert report["flagged"] == [] and report["summary"]["site"]["largest_gap"] == 0.0


def test_tiny_groups_are_reported_but_not_flagged():
    y = np.zeros(105, dtype=int)
    pred = y.copy()
    pred[100:] = 1  # the 5 "rare" images are all wrong
    report = subgroup_report(y, pred, {"site": ["common"] * 100 + ["rare"] * 5}, num_classes=2,
                             n_boot=50)
    assert report["site"]["rare"]["accuracy"] == 0.0 and report["flagged"] == []


def test_recall_and_f1_match_scikit_learn():
    from sklearn.metrics import f1_score, recall_score

    y, pred, attrs = predictions_with_a_weak_group(seed=3)
    report = subgroup_report(y, pred, attrs, num_classes=3, n_boot=20)
    dark = np.asarray(attrs["lighting"]) == "dark"
    expected_recall = recall_score(y[dark], pred[dark], average="macro", zero_division=0)
    expected_f1 = f1_score(y[dark], pred[dark], average="macro", zero_division=0)
    assert report["lighting"]["dark"]["recall"] == pytest.approx(expected_recall)
    assert report["lighting"]["dark"]["f1"] == pytest.approx(expected_f1)
