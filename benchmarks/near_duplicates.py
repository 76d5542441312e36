"""Near-duplicate search at scale: how long does `clarivis check` take to find every pair of
perceptual hashes at most 6 bits apart (its near-duplicate and train/test-leak rule) at 50k, 200k
and 1M images, and does it find all of them?

Arms, on the same hashes:
  all-pairs     the blocked numpy XOR + popcount over every pair (clarivis up to 20k hashes)
  multi-index   clarivis's multi-index hashing (data/quality.py: pigeonhole over 7 chunks): exact
  usearch-b1    a USearch HNSW index over the 64-bit hashes (Hamming metric), k=32 neighbours
                per hash, pairs within 6 bits kept: the vector index's library (issue 16), if
                installed

The hashes are real: clarivis's own pHashes of --data (decoded by `check_quality`, cached as
.npy). Sizes beyond the real set are made from it: each extra hash is a real one with 10-20
random bits flipped (a new image with the real bit statistics and clusters), and 1 in 200 of
them is a near copy of another (1-6 bits flipped), so that there are pairs to find. All-pairs
runs up to --all-pairs-up-to hashes; beyond it its time is extrapolated (n^2) and marked so.

    python benchmarks/near_duplicates.py --data CIFAR/train                # ~10 min on 2 cores
    python benchmarks/near_duplicates.py --data CIFAR/train --sizes 50000,200000 --all-pairs-up-to 200000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import common

NAME = "near_duplicates"
DISTANCE = 6  # clarivis check's default (data/quality.py NEAR_DUPLICATE_DISTANCE)


def real_hashes(data: Path, cache: Path) -> np.ndarray:
    """The pHashes clarivis check computes for every readable image of `data` (cached)."""
    if cache.exists():
        return np.load(cache)
    from clarivis.data.quality import inspect_files
    from clarivis.data.sources import index_dataset

    started = time.perf_counter()
    files = inspect_files(index_dataset(data))
    hashes = np.array([f.phash for f in files if f.ok], dtype=np.uint64)
    print(f"hashed {len(hashes):,} images in {time.perf_counter() - started:.0f} s")
    np.save(cache, hashes)
    return hashes


def flip_bits(hashes: np.ndarray, low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """Each hash with a uniform random number in [low, high] of distinct bits flipped."""
    flips = rng.integers(low, high + 1, len(hashes))
    order = np.argsort(rng.random((len(hashes), 64)), axis=1)  # a random bit order per hash
    chosen = order < flips[:, None]  # (n, 64): the first `flips` positions of that order
    masks = (chosen.astype(np.uint64) << np.arange(64, dtype=np.uint64)).sum(1, dtype=np.uint64)
    return hashes ^ masks


def grow(real: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n hashes: the real ones, then new images made from them and 1 in 200 near copies."""
    rng = np.random.default_rng(seed)
    extra = n - len(real)
    if extra <= 0:
        return real[:n]
    new = flip_bits(real[rng.integers(0, len(real), extra)], 10, 20, rng)
    copies = rng.random(extra) < 1 / 200
    sources = rng.integers(0, len(real) + np.arange(extra))[copies]  # any earlier hash
    pool = np.concatenate([real, new])
    new[copies] = flip_bits(pool[sources], 1, DISTANCE, rng)
    return np.concatenate([real, new])


def usearch_pairs(hashes: np.ndarray, k: int = 32) -> tuple[set, float, float]:
    """(pairs within DISTANCE, build s, search s) from a USearch b1 Hamming index."""
    from usearch.index import Index

    bits = np.unpackbits(hashes.view(np.uint8)).reshape(len(hashes), 64)
    packed = np.packbits(bits, axis=1)  # (n, 8) uint8, the layout USearch's b1 expects
    index = Index(ndim=64, metric="hamming", dtype="b1")
    started = time.perf_counter()
    index.add(np.arange(len(hashes)), packed)
    built = time.perf_counter() - started
    found = index.search(packed, k)
    searched = time.perf_counter() - started - built
    pairs = {(min(i, int(j)), max(i, int(j))) for i in range(len(hashes))
             for j, d in zip(found.keys[i], found.distances[i], strict=True)
             if int(j) != i and d <= DISTANCE}
    return pairs, built, searched


def measure(hashes: np.ndarray, all_pairs_up_to: int, usearch: bool) -> dict:
    from clarivis.data.quality import _all_pairs, _near_pairs

    n = len(hashes)
    started = time.perf_counter()
    exact = set(_near_pairs(hashes, DISTANCE))
    row = {"hashes": n, "pairs": len(exact), "multi_index_s": time.perf_counter() - started}
    if n <= all_pairs_up_to:
        started = time.perf_counter()
        i, j = _all_pairs(hashes, DISTANCE)
        row["all_pairs_s"] = time.perf_counter() - started
        row["multi_index_exact"] = set(zip(i.tolist(), j.tolist(), strict=True)) == exact
    if usearch:
        pairs, built, searched = usearch_pairs(hashes)
        row |= {"usearch_build_s": built, "usearch_search_s": searched,
                "usearch_recall": len(pairs & exact) / max(1, len(exact))}
    return row


def extrapolate(rows: list[dict]) -> None:
    """All-pairs time where it was not run: the largest measured size scaled by n^2."""
    measured = [r for r in rows if "all_pairs_s" in r]
    if not measured:
        return
    base = measured[-1]
    for r in rows:
        if "all_pairs_s" not in r:
            r["all_pairs_s_extrapolated"] = base["all_pairs_s"] * (r["hashes"] / base["hashes"]) ** 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="an image folder or manifest (e.g. the CIFAR-10 JPEGs)")
    p.add_argument("--sizes", default="50000,200000,1000000")
    p.add_argument("--all-pairs-up-to", type=int, default=200_000,
                   help="largest size the all-pairs arm runs at [200000: ~1 min on 2 cores]")
    p.add_argument("--no-usearch", action="store_true", help="skip the USearch arm")
    p.add_argument("--cache", default=None, help="the .npy of real hashes [DATA's name in the temp dir]")
    p.add_argument("--json", default=None, help="results file [results/near_duplicates-cpu.json]")
    args = p.parse_args()

    data = Path(args.data)
    default_cache = Path(tempfile.gettempdir()) / f"phash-{data.resolve().name}.npy"
    cache = Path(args.cache) if args.cache else default_cache
    real = real_hashes(data, cache)
    try:
        import usearch  # noqa: F401
        use_usearch = not args.no_usearch
    except ImportError:
        use_usearch = False
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows.append(measure(grow(real, n), args.all_pairs_up_to, use_usearch))
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    extrapolate(rows)
    result = {"benchmark": NAME, "distance": DISTANCE, "real_hashes": len(real), "data": data.name,
              "machine": common.describe_machine("cpu"), "rows": rows}
    path = common.write_result(result, args.json, NAME, "cpu")
    last = rows[-1]
    all_pairs = last.get("all_pairs_s") or last.get("all_pairs_s_extrapolated")
    print(f"near duplicates at {last['hashes']:,} hashes: multi-index {last['multi_index_s']:.1f} s, "
          f"all pairs {all_pairs:.0f} s ({all_pairs / last['multi_index_s']:.0f}x), "
          f"{last['pairs']:,} pairs; {path}")


if __name__ == "__main__":
    main()
