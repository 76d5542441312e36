"""Metrics numbers on hand-checked inputs."""

from __future__ import annotations

import pytest
import torch

from clarivis.metrics import compute_metrics


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


def _cases():
    """(probs, targets, classes): random, confident, absent classes, ties at confidence 1."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(300, 7, generator=g), dim=1)
    yield probs, torch.randint(0, 7, (300,), generator=g), 7
    yield torch.softmax(torch.randn(50, 10, generator=g), dim=1), torch.randint(0, 4, (50,), generator=g), 10
    yield one_hot([0, 1, 1, 2, 0], 3), torch.tensor([0, 1, 0, 2, 2]), 3  # confidence exactly 1
    yield torch.softmax(torch.randn(40, 5, generator=g), dim=1), torch.zeros(40, dtype=torch.long), 5


@pytest.mark.parametrize("case", range(4))
def test_numbers_match_sklearn_and_torchmetrics(case):
    """The metrics are computed without the two libraries (their imports cost the training path
    2.4 s); every number must still be theirs."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    tm = pytest.importorskip("torchmetrics.functional.classification")
    probs, targets, n = list(_cases())[case]
    m = compute_metrics(probs, targets, [str(i) for i in range(n)])
    y_true, y_pred = targets.numpy(), probs.argmax(1).numpy()
    present = sorted(set(y_true.tolist()))
    for average in ("macro", "weighted"):
        p, r, f, _ = sklearn_metrics.precision_recall_fscore_support(
            y_true, y_pred, labels=present, average=average, zero_division=0)
        assert (getattr(m, f"precision_{average}"), getattr(m, f"recall_{average}"),
                getattr(m, f"f1_{average}")) == pytest.approx((p, r, f), abs=1e-12)
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(n)), average=None, zero_division=0)
    assert [row["precision"] for row in m.per_class] == pytest.approx(p.tolist(), abs=1e-12)
    assert [row["recall"] for row in m.per_class] == pytest.approx(r.tolist(), abs=1e-12)
    assert [row["f1"] for row in m.per_class] == pytest.approx(f.tolist(), abs=1e-12)
    assert [row["support"] for row in m.per_class] == s.tolist()
    assert m.confusion_matrix == sklearn_metrics.confusion_matrix(
        y_true, y_pred, labels=list(range(n))).tolist()
    assert m.balanced_accuracy == pytest.approx(float(r[present].mean()), abs=1e-12)
    assert m.ece == pytest.approx(float(tm.multiclass_calibration_error(probs, targets, n, n_bins=15)),
                                  abs=1e-6)
    if n >= 5:
        assert m.top5_accuracy == pytest.approx(float(tm.multiclass_accuracy(
            probs, targets, n, average="micro", top_k=5)), abs=1e-6)
