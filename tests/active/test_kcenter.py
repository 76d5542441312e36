"""Greedy k-center: spread over planted clusters, seeded by labeled points, chunked."""

from __future__ import annotations

import pytest
import torch

from clarivis.active.kcenter import k_center_greedy, nearest_seed_sq_distance, unit_rows


def clusters(k: int = 6, per: int = 30, dim: int = 32, spread: float = 0.05, seed: int = 0):
    """(k * per, dim) points in k tight clusters around random directions, and each row's cluster."""
    g = torch.Generator().manual_seed(seed)
    centers = unit_rows(torch.randn(k, dim, generator=g))
    x = centers.repeat_interleave(per, 0) + spread * torch.randn(k * per, dim, generator=g)
    return x, torch.arange(k).repeat_interleave(per)


def test_one_pick_per_cluster_before_a_second_in_any():
    x, cluster = clusters()
    picks = k_center_greedy(x, 9)
    first = cluster[picks.indices[:6]].tolist()
    assert sorted(first) == list(range(6))  # every cluster once ...
    assert len(picks.indices) == 9 and len(set(picks.indices)) == 9  # ... then seconds, no repeats
    assert picks.distances[0] == float("inf")
    gaps = picks.distances[1:]
    assert all(a >= b - 1e-6 for a, b in zip(gaps, gaps[1:], strict=False))  # farthest-first
    assert min(gaps[:5]) > 2 * max(gaps[5:])  # between clusters, then within


def test_labeled_seeds_steer_picks_to_uncovered_clusters():
    x, cluster = clusters()
    seeds = x[cluster < 4][::10] + 0.01  # labeled images in clusters 0-3
    picks = k_center_greedy(x, 2, seeds=seeds)
    assert sorted(cluster[picks.indices].tolist()) == [4, 5]
    assert all(d > 0.5 for d in picks.distances)


def test_without_seeds_the_first_pick_is_typical_or_given():
    x = torch.cat([torch.zeros(5, 3) + torch.tensor([1.0, 0, 0]), torch.tensor([[0.0, 1.0, 0.0]])])
    x[:5, 1] = torch.linspace(0.0, 0.2, 5)
    assert k_center_greedy(x, 1).indices[0] != 5  # not the outlier
    assert k_center_greedy(x, 1, first=5).indices == [5]


def test_chunked_distances_equal_the_full_matrix():
    x, _ = clusters(k=4, per=25)
    seeds = torch.randn(37, x.shape[1])
    xu, su = unit_rows(x), unit_rows(seeds)
    full = torch.cdist(xu, su).min(dim=1).values ** 2
    assert nearest_seed_sq_distance(xu, su, chunk=7).tolist() == pytest.approx(full.tolist(), abs=1e-5)
    a = k_center_greedy(x, 10, seeds=seeds, chunk=7)
    b = k_center_greedy(x, 10, seeds=seeds)
    assert a.indices == b.indices


def test_budget_beyond_the_pool_and_empty():
    x, _ = clusters(k=2, per=3)
    assert sorted(k_center_greedy(x, 100).indices) == list(range(6))
    assert k_center_greedy(x, 0).indices == []
