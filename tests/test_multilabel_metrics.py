"""Multi-label metrics (torchmetrics) against scikit-learn, and the one prediction rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss

from clarivis.multilabel_metrics import compute_multilabel_metrics
from clarivis.prediction import multilabel_prediction


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (200, 4))
    y[:, 3] = 0  # a class with no positive: no AP, out of the macro means
    p = np.clip(y * 0.35 + rng.random((200, 4)) * 0.65, 0, 1).astype(np.float32)
    thresholds = [0.5, 0.6, 0.4, 0.5]
    result = compute_multilabel_metrics(torch.tensor(p), torch.tensor(y), list("abcd"), thresholds)
    pred = p >= np.array(thresholds)
    aps = [average_precision_score(y[:, c], p[:, c]) for c in range(3)]
    assert [row["ap"] for row in result.per_class[:3]] == pytest.approx(aps, abs=1e-5)
    assert result.per_class[3]["ap"] is None
    assert result.map_macro == pytest.approx(np.mean(aps), abs=1e-5)
    assert result.map_micro == pytest.approx(average_precision_score(y.ravel(), p.ravel()), abs=1e-5)
    assert result.f1_micro == pytest.approx(f1_score(y, pred, average="micro"), abs=1e-6)
    assert result.f1_macro == pytest.approx(np.mean(f1_score(y, pred, average=None, zero_division=0)[:3]))
    assert result.subset_accuracy == pytest.approx(accuracy_score(y, pred))
    assert result.hamming_loss == pytest.approx(hamming_loss(y, pred))
    assert [row["predicted"] for row in result.per_class] == pred.sum(0).tolist()


def test_prediction_rule():
    p = multilabel_prediction("x.png", [0.9, 0.2, 0.7], ["a", "b", "c"], [0.5, 0.1, 0.8], top_k=2)
    assert p.labels == [("a", 0.9), ("b", 0.2)]  # b passes its own low threshold, c misses its high one
    assert p.label == "a;b" and p.confidence == 0.9 and p.top_k == [("a", 0.9), ("c", 0.7)]
    none = multilabel_prediction("y.png", [0.1, 0.1], ["a", "b"], [0.5, 0.5], top_k=5)
    assert none.labels == [] and none.label == "" and none.to_dict()["labels"] == []
