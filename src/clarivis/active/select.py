"""Which pool images to label next, by strategy:

  hybrid (default)  uncertainty + core-set: keep the pool_factor x budget images of smallest
                    margin, then greedy k-center among them, seeded by the labeled images. This
                    is the pre-filter-then-diversify scheme of Zhdanov 2019 ("Diverse mini-batch
                    Active Learning", arXiv:1901.05954: top beta*k by margin, then a diverse
                    subset) with the core-set of Sener & Savarese 2018 as the diversity step;
                    BADGE (Ash et al., ICLR 2020) and Cluster-Margin (Citovsky et al. 2021)
                    combine the same two signals. Margin alone fills a batch with near-copies of
                    one confusion; k-center alone chases outliers; together a batch is both
                    informative and spread out.
  margin, entropy   the most uncertain images (scores.py), no diversity.
  kcenter           core-set only: farthest-first over the whole pool.
  random            a seeded random draw (the baseline every method must beat).

All take calibrated probabilities (N, C) and/or embeddings (N, D) of the pool; embeddings of
already labeled images (M, D) seed k-center so a batch avoids what is labeled."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clarivis.active.kcenter import k_center_greedy
from clarivis.active.scores import margin, uncertainty

STRATEGIES = ("hybrid", "margin", "entropy", "kcenter", "random")
DEFAULT_STRATEGY = "hybrid"
# Candidates kept by the hybrid's uncertainty pre-filter, per image of budget (Zhdanov 2019 uses
# 10). On CIFAR-10 (benchmarks/active_labeling.py: 3 rounds of 200 from a 10,000 pool, 10 seeds)
# 2, 3 and 5 ended within a point of each other, 10 and 20 0.5-1.2 points below them;
# 3 leaves k-center room to drop near-duplicates (photo bursts, video frames) that fill the
# most uncertain few.
POOL_FACTOR = 3
NEEDS_PROBS = frozenset({"hybrid", "margin", "entropy"})
NEEDS_EMBEDDINGS = frozenset({"hybrid", "kcenter"})


@dataclass
class Selection:
    indices: list[int]  # pool rows, in queue order (ask first = index 0)
    scores: list[float | None]  # the strategy's ranking value per row, larger = asked earlier
    reasons: list[str]  # why each row was chosen, for the labeler
    candidates: int  # pool rows the final choice was made among


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def select(budget: int, *, strategy: str = DEFAULT_STRATEGY, probs: torch.Tensor | None = None,
           embeddings: torch.Tensor | None = None, labeled: torch.Tensor | None = None,
           pool_factor: int = POOL_FACTOR, seed: int = 0) -> Selection:
    """Choose min(budget, N) pool rows. probs: (N, C) calibrated probabilities (hybrid, margin,
    entropy); embeddings: (N, D) features (hybrid, kcenter); labeled: (M, D) features of
    labeled images, seeding k-center."""
    check_strategy(strategy)
    if strategy in NEEDS_PROBS and probs is None:
        raise ValueError(f"strategy {strategy} needs probabilities")
    if strategy in NEEDS_EMBEDDINGS and embeddings is None:
        raise ValueError(f"strategy {strategy} needs embeddings")
    n = len(probs) if probs is not None else len(embeddings)
    budget = min(budget, n)
    if strategy == "random":
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:budget].tolist()
        return Selection(order, [None] * budget, [f"random draw (seed {seed})"] * budget, n)
    if strategy == "kcenter":
        return _kcenter(embeddings, budget, labeled)
    if strategy == "hybrid":
        return _hybrid(probs, embeddings, budget, labeled, pool_factor)
    return _uncertain(probs, budget, strategy)


def _most_uncertain_first(u: torch.Tensor) -> torch.Tensor:
    """(N,) uncertainty -> (N,) row indices, most uncertain first (stable: ties by row)."""
    return torch.argsort(-u, stable=True)


def _uncertain(probs: torch.Tensor, budget: int, measure: str) -> Selection:
    u = uncertainty(probs, measure)  # margin: 1 - margin; entropy: normalized entropy
    order = _most_uncertain_first(u)[:budget].tolist()
    shown = margin(probs) if measure == "margin" else u  # the value a labeler recognises
    return Selection(order, [float(u[i]) for i in order],
                     [f"{measure} {float(shown[i]):.3f} (rank {r + 1} of {len(u)} by uncertainty)"
                      for r, i in enumerate(order)], len(u))


def _kcenter(embeddings: torch.Tensor, budget: int, labeled: torch.Tensor | None) -> Selection:
    kc = k_center_greedy(embeddings, budget, seeds=labeled)
    return Selection(kc.indices, kc.distances,
                     [_distance_text(d, labeled) for d in kc.distances], len(embeddings))


def _hybrid(probs: torch.Tensor, embeddings: torch.Tensor, budget: int,
            labeled: torch.Tensor | None, pool_factor: int) -> Selection:
    u = uncertainty(probs, "margin")  # (N,) 1 - margin
    ranked = _most_uncertain_first(u)
    candidates = ranked[:max(budget, pool_factor * budget)]  # most uncertain first
    # Without labeled seeds, k-center starts from the most uncertain candidate (row 0).
    kc = k_center_greedy(embeddings[candidates], budget, seeds=labeled, first=0)
    rank_of = torch.empty_like(ranked)
    rank_of[ranked] = torch.arange(len(ranked))
    picks = sorted(zip(candidates[kc.indices].tolist(), kc.distances, strict=True),
                   key=lambda p: int(rank_of[p[0]]))  # the diverse batch, most uncertain first
    m = margin(probs)
    reasons = [f"margin {float(m[i]):.3f} (rank {int(rank_of[i]) + 1} of {len(u)} by uncertainty); "
               + _distance_text(d, labeled) for i, d in picks]
    return Selection([i for i, _ in picks], [float(u[i]) for i, _ in picks], reasons,
                     len(candidates))


def _distance_text(distance: float, labeled: torch.Tensor | None) -> str:
    if distance == float("inf"):
        return "first pick of the batch"
    near = "labeled or queued" if labeled is not None and len(labeled) else "queued"
    return f"distance {distance:.2f} to the nearest {near} image"  # unit vectors: 0..2
