"""Edited copies found by features: images whose backbone features point the same way although
their pixels differ (a flip, a crop, a colour change, a strong re-encode: what the perceptual
hash of data.quality misses). Runs in `clarivis check` when the label check has a pretrained
backbone's features (not a ModelBundle's: datacheck/check.py skips those); its groups join the
duplicate groups, so a flipped copy of a training image in the test split is reported as a leak."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clarivis.data.quality import DuplicateGroup, FileInfo, find_root, sort_groups

# Cosine of pre-logits features at or above which two images are called edited copies. Measured
# with ImageNet efficientnet_lite0 at 224 px (benchmarks/README.md, "similar_images.py"): on the
# 396 ants/bees photos no two different photos reach 0.77, while a mirror image, a 85% centre crop,
# a colour change or a 10 degree rotation of a photo keeps median 0.89-0.95; on 3,000 of
# CIFAR-10's 32 px photos, whose features are blurrier, 16 pairs reach it, 11 of them CIFAR's own
# near copies.
SIMILAR_COSINE = 0.85
_BLOCK = 1024  # rows per block of the (block, N) cosine matrix: 1024 x 100k x 4 B = 400 MB
# Above this many images the exact pass (N^2 D / 2 multiply-adds: ~1 min at 100k on 2 cores)
# gives way to an HNSW index (USearch, the `search` extra) asked for each image's nearest ones.
_EXACT_UP_TO = 100_000
_NEIGHBOURS = 16  # per image, in the HNSW pass: groups of edited copies are rarely larger
# A photo and its edits make groups of 2-10 (an augmented export: 3-5, a burst: 10-30). A linked
# component larger than this is features that cannot tell images apart (a chain through one
# class, or weights that never learned), not copies: it is left out and counted.
MAX_GROUP = 50


@dataclass
class SimilarImages:
    groups: list[DuplicateGroup]  # most harmful first, as data.quality's groups
    too_large: list[int] = field(default_factory=list)  # sizes of the components left out


def similar_groups(vectors: np.ndarray, files: list[FileInfo], known: list[DuplicateGroup], *,
                   threshold: float = SIMILAR_COSINE) -> SimilarImages:
    """Groups of `files` (aligned with `vectors`, (N, D)) linked by feature cosines at or above
    `threshold`, leaving out a group whose images are all already in one `known` group (an
    exact or near copy found by hash says more) and any larger than MAX_GROUP."""
    unit = vectors.astype(np.float32) / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    i, j, cosine = similar_pairs(unit, threshold)
    parent = list(range(len(files)))
    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        parent[find_root(parent, a)] = find_root(parent, b)
    members: dict[int, list[int]] = {}
    for a in sorted(set(i.tolist()) | set(j.tolist())):
        members.setdefault(find_root(parent, a), []).append(a)
    weakest: dict[int, float] = {}  # the lowest linking cosine of each component
    for a, c in zip(i.tolist(), cosine.tolist(), strict=True):
        r = find_root(parent, a)
        weakest[r] = min(weakest.get(r, 1.0), c)
    group_of = {p: n for n, g in enumerate(known) for p in g.paths}
    groups, too_large = [], []
    for r, indices in members.items():
        if len(indices) > MAX_GROUP:
            too_large.append(len(indices))
            continue
        paths = [files[k].path for k in indices]
        if len({group_of.get(p, -1 - n) for n, p in enumerate(paths)}) == 1:
            continue  # one hash group already holds them all
        groups.append(DuplicateGroup("similar", paths, [files[k].split for k in indices],
                                     [files[k].label for k in indices],
                                     similarity=round(weakest[r], 4)))
    return SimilarImages(sort_groups(groups), sorted(too_large, reverse=True))


def similar_pairs(unit: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine), i < j, of unit vectors at least `threshold` apart in cosine: every pair
    (exact) up to _EXACT_UP_TO vectors, each vector's _NEIGHBOURS nearest beyond (when USearch is
    installed; else exact, slower)."""
    if len(unit) > _EXACT_UP_TO:
        try:
            return _hnsw_pairs(unit, threshold)
        except ImportError:
            pass
    found_i, found_j, found_c = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for start in range(0, len(unit), _BLOCK):
        cos = unit[start:start + _BLOCK] @ unit[start:].T  # (b, N - start)
        i, j = np.nonzero(cos >= threshold)
        keep = j > i  # the upper triangle: each pair once, never an image with itself
        found_i.append(i[keep] + start)
        found_j.append(j[keep] + start)
        found_c.append(cos[i[keep], j[keep]])
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_c)


def _hnsw_pairs(unit: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from usearch.index import Index  # the `search` extra; ImportError: the exact pass instead

    index = Index(ndim=unit.shape[1], metric="cos", dtype="f32")
    keys = np.arange(len(unit))
    index.add(keys, unit)
    found = index.search(unit, _NEIGHBOURS + 1)  # + 1: each vector finds itself first
    i = np.repeat(keys, found.keys.shape[1])
    j = found.keys.reshape(-1).astype(np.int64)
    cosine = 1.0 - found.distances.reshape(-1)  # USearch's "cos" distance is 1 - cosine
    keep = (cosine >= threshold) & (i != j) & (j >= 0) & (j < len(unit))
    a, b = np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])
    pair, first = np.unique(a * len(unit) + b, return_index=True)  # found from both ends: once
    return pair // len(unit), pair % len(unit), cosine[keep][first].astype(np.float32)
