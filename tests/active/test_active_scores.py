"""Uncertainty scores on hand-made probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from clarivis.active.scores import entropy, least_confidence, margin, uncertainty

PROBS = torch.tensor([
    [1.0, 0.0, 0.0, 0.0],  # certain
    [0.5, 0.5, 0.0, 0.0],  # a tie between two classes
    [0.25, 0.25, 0.25, 0.25],  # uniform
    [0.6, 0.3, 0.1, 0.0],
])


def test_margin_is_the_gap_between_the_top_two():
    assert margin(PROBS).tolist() == pytest.approx([1.0, 0.0, 0.0, 0.3])


def test_entropy_in_nats_and_normalized_by_log_c():
    raw = entropy(PROBS, normalized=False)
    expected = [0.0, math.log(2), math.log(4), -(0.6 * math.log(0.6) + 0.3 * math.log(0.3)
                                                 + 0.1 * math.log(0.1))]
    assert raw.tolist() == pytest.approx(expected, abs=1e-6)  # 0 log 0 counts as 0, not nan
    assert entropy(PROBS).tolist() == pytest.approx([e / math.log(4) for e in expected], abs=1e-6)


def test_least_confidence():
    assert least_confidence(PROBS).tolist() == pytest.approx([0.0, 0.5, 0.75, 0.4])


def test_uncertainty_is_larger_for_less_certain_rows():
    for measure in ("margin", "entropy", "least_confidence"):
        u = uncertainty(PROBS, measure)
        assert u[0] == pytest.approx(0.0, abs=1e-6), measure  # the certain row is last
        assert u[2] >= u[3], measure
    # They disagree on purpose: a two-way tie is the most uncertain row for margin; entropy
    # ranks it below a 0.6/0.3/0.1 row, whose tail it counts although no labeler hesitates there.
    assert uncertainty(PROBS, "margin")[1] == pytest.approx(1.0)
    assert uncertainty(PROBS, "margin")[1] > uncertainty(PROBS, "margin")[3]
    assert uncertainty(PROBS, "entropy")[1] < uncertainty(PROBS, "entropy")[3]


def test_one_class_and_unknown_measure():
    one = torch.ones(3, 1)
    assert margin(one).tolist() == [1.0, 1.0, 1.0] and entropy(one).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="margin, entropy, least_confidence"):
        uncertainty(PROBS, "bald")
