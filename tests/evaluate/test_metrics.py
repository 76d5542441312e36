"""Metrics numbers on hand-checked inputs."""

from __future__ import annotations

import pytest
import torch

from clarivis.evaluate.metrics import compute_metrics


def one_hot(indices, n, confidence=1.0):
    probs = torch.full((len(indices), n), (1 - confidence) / (n - 1))
    probs[torch.arange(len(indices)), torch.tensor(indices)] = confidence
    return probs


def test_perfect_predictions():
    targets = torch.tensor([0, 1, 2, 2])
    m = compute_metrics(one_hot([0, 1, 2, 2], 3), targets, ["a", "b", "c"])
    assert m.accuracy == 1.0 and m.balanced_accuracy == 1.0 and m.f1_macro == 1.0
    assert m.ece == pytest.approx(0.0, abs=1e-6) and m.top5_accuracy is None
    assert m.confusion_matrix == [[1, 0, 0], [0, 1, 0], [0, 0, 2]]


def test_known_confusion_and_balanced_accuracy():
    # true: a a a b ; predicted: a a b b -> recall a 2/3, b 1 ; accuracy 3/4
    m = compute_metrics(one_hot([0, 0, 1, 1], 2, 0.9), torch.tensor([0, 0, 0, 1]), ["a", "b"])
    assert m.accuracy == pytest.approx(0.75)
    assert m.balanced_accuracy == pytest.approx((2 / 3 + 1) / 2)
    assert m.per_class[0] == {"class": "a", "precision": 1.0, "recall": pytest.approx(2 / 3),
                              "f1": pytest.approx(0.8), "support": 3}
    # Every prediction at 0.9 confidence, 75% right: ECE = |0.9 - 0.75| = 0.15.
    assert m.ece == pytest.approx(0.15, abs=1e-5)


def test_top5_and_absent_classes():
    probs = torch.softmax(torch.randn(20, 8), dim=1)
    targets = torch.randint(0, 3, (20,))  # classes 3..7 never occur in this data
    m = compute_metrics(probs, targets, [str(i) for i in range(8)])
    assert m.top5_accuracy is not None and m.top5_accuracy >= m.accuracy
    assert [row["support"] for row in m.per_class][3:] == [0] * 5
    recalls = [m.per_class[i]["recall"] for i in range(3)]
    assert m.balanced_accuracy == pytest.approx(sum(recalls) / 3)  # absent classes don't count
