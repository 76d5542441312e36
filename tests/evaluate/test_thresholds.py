"""Multi-label calibration: a temperature and a decision threshold per class, fitted on val."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_score

from clarivis.evaluate.thresholds import DEFAULT_THRESHOLD, fit_label_calibration, fit_thresholds


def test_temperatures_and_biases_undo_miscalibration_per_class():
    torch.manual_seed(0)
    true_logits = torch.randn(4000, 4) * 2
    targets = torch.bernoulli(torch.sigmoid(true_logits))  # calibrated at T = 1, b = 0
    # class 1 over-, class 2 under-confident; class 3 shifted up by 2, as ASL leaves its logits
    raw = true_logits * torch.tensor([1.0, 3.0, 0.5, 1.0]) + torch.tensor([0.0, 0.0, 0.0, 2.0])
    temps, biases = fit_label_calibration(raw, targets)
    assert temps == pytest.approx([1.0, 3.0, 0.5, 1.0], rel=0.15)
    assert biases == pytest.approx([0.0, 0.0, 0.0, -2.0], abs=0.2)


def test_class_without_both_outcomes_keeps_t_one():
    logits = torch.randn(50, 2)
    targets = torch.zeros(50, 2)
    targets[:25, 1] = 1
    assert fit_label_calibration(logits, targets)[0][0] == 1.0


def best_f1_by_brute_force(y, p):
    return max(f1_score(y, p >= t, zero_division=0) for t in np.unique(p))


def test_f1_thresholds_reach_the_best_f1_on_val():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (300, 3))
    p = np.clip(y * 0.3 + rng.random((300, 3)) * 0.7, 0, 1)
    thresholds, notes = fit_thresholds(torch.tensor(p), torch.tensor(y))
    for c in range(3):
        best = best_f1_by_brute_force(y[:, c], p[:, c])
        assert f1_score(y[:, c], p[:, c] >= thresholds[c]) == pytest.approx(best)
        assert notes[c]["rule"] == "f1"


def test_precision_thresholds_reach_the_target_with_most_recall():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (400, 2))
    p = np.clip(y * 0.4 + rng.random((400, 2)) * 0.6, 0, 1)
    thresholds, notes = fit_thresholds(torch.tensor(p), torch.tensor(y), precision_target=0.9)
    for c in range(2):
        assert precision_score(y[:, c], p[:, c] >= thresholds[c]) >= 0.9 and notes[c]["reached"]
        # a lower threshold (the next lower score) would fall below the target or recall nothing more
        lower = p[:, c][p[:, c] < thresholds[c]].max()
        assert precision_score(y[:, c], p[:, c] >= lower) < 0.9


def test_class_without_positives_keeps_the_default():
    y = np.zeros((20, 1), dtype=int)
    thresholds, notes = fit_thresholds(torch.rand(20, 1), torch.tensor(y))
    assert thresholds == [DEFAULT_THRESHOLD] and notes[0]["rule"] == "default"


def test_perfectly_separated_class_keeps_t_one():
    # Class 0 is separated by its logits (the BCE optimum is T -> 0); class 1 overlaps.
    logits = torch.tensor([[3.0, 1.0], [2.0, -1.0], [-2.0, 0.5], [-1.0, -0.5]] * 10)
    targets = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]] * 10)
    temps, biases = fit_label_calibration(logits, targets)
    assert (temps[0], biases[0]) == (1.0, 0.0) and temps[1] != 1.0


def test_a_threshold_that_says_yes_to_everything_is_named():
    from clarivis.evaluate.thresholds import always_yes_labels

    rng = np.random.default_rng(2)
    y = (rng.random((200, 2)) < 0.4).astype(int)
    p = np.stack([rng.random(200), np.clip(y[:, 1] * 0.6 + rng.random(200) * 0.4, 0, 1)], axis=1)
    # class 0's scores are noise: its best F1 says yes to (nearly) all; class 1 is learnt
    _, notes = fit_thresholds(torch.tensor(p), torch.tensor(y))
    assert notes[0]["val_predicted_share"] >= 0.9 > notes[1]["val_predicted_share"]
    assert always_yes_labels({"per_class": notes}, ["noise", "learnt"]) == ["noise"]
