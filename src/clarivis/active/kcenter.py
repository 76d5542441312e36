"""Greedy k-center ("farthest-first traversal") over L2-normalized embeddings: the core-set
selection of Sener & Savarese 2018 ("Active Learning for Convolutional Neural Networks: A
Core-Set Approach"). Each pick is the image farthest from everything already labeled or
picked, so a batch covers the pool instead of piling up near one confusing example.

Memory: only (N,) nearest-center distances are kept; the distances to labeled seeds are
computed in (CHUNK x CHUNK) blocks, so a 50,000 x 512 pool with 50,000 seeds needs the two
matrices plus 64 MB, never the 10 GB full distance matrix."""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK = 4096  # rows per block of the seed distance computation: 4096 x 4096 float32 = 64 MB


@dataclass
class KCenterResult:
    indices: list[int]  # picks in pick order
    distances: list[float]  # Euclidean distance (0..2 on unit vectors) of each pick to the
    #                         nearest seed or earlier pick when it was chosen; non-increasing
    #                         after the first. inf for a first pick without seeds.


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, D) -> float32 (N, D) rows scaled to length 1 (cosine geometry: the scale of
    pre-logit features varies with the image's contrast, its direction is what it shows)."""
    return torch.nn.functional.normalize(x.float(), dim=1)


def nearest_seed_sq_distance(x: torch.Tensor, seeds: torch.Tensor, *, chunk: int = CHUNK) -> torch.Tensor:
    """(N, D), (M, D) unit rows -> (N,) squared distance of each row to its nearest seed,
    in blocks of chunk x chunk (||a - b||^2 = 2 - 2 a.b for unit vectors)."""
    best = torch.full((len(x),), 4.0)  # 4 = the largest squared distance between unit vectors
    for i in range(0, len(x), chunk):
        rows = x[i:i + chunk]
        for j in range(0, len(seeds), chunk):
            sim = rows @ seeds[j:j + chunk].T  # (chunk, chunk) cosine similarities
            best[i:i + chunk] = torch.minimum(best[i:i + chunk], 2.0 - 2.0 * sim.max(dim=1).values)
    return best.clamp_min(0.0)


def k_center_greedy(x: torch.Tensor, k: int, *, seeds: torch.Tensor | None = None,
                    first: int | None = None, chunk: int = CHUNK) -> KCenterResult:
    """Pick min(k, N) rows of x (N, D), each the farthest from the seeds (M, D) and earlier
    picks, after scaling all rows to length 1. Without seeds the first pick is `first`, or the
    row nearest the mean (a typical image rather than an outlier)."""
    k = min(k, len(x))
    if k <= 0:
        return KCenterResult([], [])
    x = unit_rows(x)
    if seeds is not None and len(seeds):
        dist, start = nearest_seed_sq_distance(x, unit_rows(seeds), chunk=chunk), None  # (N,)
    else:
        dist = torch.full((len(x),), float("inf"))  # nothing covered yet
        start = first if first is not None else int((x @ unit_rows(x.mean(0, keepdim=True))[0]).argmax())
    return _greedy(x, k, dist, start)


def _greedy(x: torch.Tensor, k: int, dist: torch.Tensor, start: int | None) -> KCenterResult:
    """Farthest-first from squared distances `dist` (N,); `start` forces the first pick."""
    picked: list[int] = []
    gaps: list[float] = []
    taken = torch.zeros(len(x), dtype=torch.bool)
    for n in range(k):
        i = start if (n == 0 and start is not None) else int(dist.masked_fill(taken, -1.0).argmax())
        gaps.append(float(dist[i].sqrt()))
        picked.append(i)
        taken[i] = True
        # One (N, D) @ (D,) product per pick: memory stays at N floats.
        dist = torch.minimum(dist, (2.0 - 2.0 * (x @ x[i])).clamp_min(0.0))
    return KCenterResult(picked, gaps)
