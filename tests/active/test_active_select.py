"""The strategies on planted data: hybrid = uncertain AND spread out."""

from __future__ import annotations

import pytest
import torch

from clarivis.active.select import STRATEGIES, select


def planted(seed: int = 0):
    """120 pool rows in 6 embedding clusters of 20. Cluster 0 holds 10 uncertain rows (near
    ties between two classes), cluster 1 holds 10; everything else is confidently predicted."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1)
    emb = centers.repeat_interleave(20, 0) + 0.05 * torch.randn(120, 16, generator=g)
    probs = torch.tensor([0.9, 0.05, 0.05]).repeat(120, 1)
    uncertain = list(range(0, 10)) + list(range(20, 30))
    probs[uncertain] = torch.tensor([0.45, 0.44, 0.11]) + 0.002 * torch.rand(20, 1, generator=g)
    probs = probs / probs.sum(1, keepdim=True)
    return probs, emb, set(uncertain)


def test_margin_takes_the_most_uncertain_rows_all_from_one_spot():
    probs, emb, uncertain = planted()
    choice = select(10, strategy="margin", probs=probs)
    assert set(choice.indices) <= uncertain
    assert choice.scores == sorted(choice.scores, reverse=True)  # most uncertain first
    assert choice.reasons[0].startswith("margin 0.0")


def test_hybrid_picks_uncertain_rows_from_both_clusters_most_uncertain_first():
    probs, emb, uncertain = planted()
    choice = select(4, strategy="hybrid", probs=probs, embeddings=emb, pool_factor=5)
    assert set(choice.indices) <= uncertain
    clusters = {i // 20 for i in choice.indices}
    assert clusters == {0, 1}  # diversity: margin alone could take 4 from one cluster
    assert choice.scores == sorted(choice.scores, reverse=True)
    assert choice.candidates == 20


def test_hybrid_avoids_what_is_labeled():
    probs, emb, uncertain = planted()
    labeled = emb[:3] + 0.001  # cluster 0 is already labeled
    choice = select(1, strategy="hybrid", probs=probs, embeddings=emb, labeled=labeled, pool_factor=20)
    assert choice.indices[0] // 20 == 1
    assert "labeled or queued" in choice.reasons[0]


def test_kcenter_covers_the_clusters_and_random_is_seeded():
    probs, emb, _ = planted()
    choice = select(6, strategy="kcenter", embeddings=emb)
    assert sorted(i // 20 for i in choice.indices) == list(range(6))
    a = select(5, strategy="random", probs=probs, seed=3)
    assert a.indices == select(5, strategy="random", probs=probs, seed=3).indices
    assert a.indices != select(5, strategy="random", probs=probs, seed=4).indices
    assert a.scores == [None] * 5


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_caps_at_the_pool_without_repeats(strategy):
    probs, emb, _ = planted()
    choice = select(500, strategy=strategy, probs=probs, embeddings=emb)
    assert sorted(choice.indices) == list(range(120))
    assert len(choice.scores) == len(choice.reasons) == 120


def test_missing_inputs_and_unknown_strategy():
    probs, emb, _ = planted()
    with pytest.raises(ValueError, match="needs embeddings"):
        select(3, strategy="kcenter", probs=probs)
    with pytest.raises(ValueError, match="needs probabilities"):
        select(3, strategy="entropy", embeddings=emb)
    with pytest.raises(ValueError, match="hybrid, margin"):
        select(3, strategy="badge", probs=probs)
