"""Open-set scores, the stored threshold and the AUROC report."""

from __future__ import annotations

import pytest
import torch

from clarivis.evaluate.ood import OOD_SCORES, fit_rejection, ood_score, rejection_report


def known_and_unknown(n=500, classes=4, seed=0):
    """Known images have one dominant logit; unknown ones are flat."""
    g = torch.Generator().manual_seed(seed)
    known = torch.randn(n, classes, generator=g)
    known[torch.arange(n), torch.randint(classes, (n,), generator=g)] += 6
    unknown = torch.randn(n, classes, generator=g)
    return torch.cat([known, unknown]), torch.cat([torch.ones(n), torch.zeros(n)]).bool()


@pytest.mark.parametrize("score", OOD_SCORES)
def test_scores_are_higher_for_confident_logits(score):
    logits = torch.tensor([[8.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    s = ood_score(logits, 1.0, score)
    assert s.shape == (2,) and s[0] > s[1]


def test_unknown_score_name_is_refused():
    with pytest.raises(ValueError, match="energy"):
        ood_score(torch.zeros(1, 2), 1.0, "entropyy")


def test_threshold_accepts_the_requested_share_of_known_images():
    logits, known = known_and_unknown()
    ood = fit_rejection(logits[known], 1.0, accept_rate=0.9)
    accepted = ood_score(logits[known], 1.0, ood["score"]) >= ood["threshold"]
    assert accepted.float().mean() == pytest.approx(0.9, abs=0.01)


def test_report_separates_flat_from_peaked_logits():
    logits, known = known_and_unknown()
    ood = fit_rejection(logits[known], 1.0)
    report = rejection_report(logits, known, 1.0, ood)
    assert report["num_known"] == report["num_unknown"] == 500
    assert all(auc > 0.95 for auc in report["auroc"].values())
    assert report["false_rejection_rate"] == pytest.approx(0.05, abs=0.01)
    assert report["rejection_rate_unknown"] > 0.9


def test_report_without_unknown_images_has_no_auroc():
    logits, known = known_and_unknown()
    report = rejection_report(logits[known], known[known], 1.0, fit_rejection(logits[known], 1.0))
    assert report["auroc"] == {} and report["rejection_rate_unknown"] is None
