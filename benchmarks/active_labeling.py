"""Does `clarivis suggest` beat random picks? Active labeling on CIFAR-10 (issue 6).

A fixed, stratified test set and an unlabeled pool are embedded ONCE with a frozen ImageNet
backbone (efficientnet_lite0 by default: the features `clarivis train --linear-probe` uses).
For every seed, a random seed set (--start-per-class labels per class) is labeled, then for
every strategy, --rounds times:

  fit a logistic-regression head on the labeled embeddings (what --linear-probe fits), predict
  the pool, choose --per-round images with clarivis.active.select.select (the code `clarivis
  suggest` runs, on the same probabilities and embeddings), "label" them from the true labels

and the test accuracy of the head refitted after each round is recorded. The strategies share
each seed's start set, so their differences are paired.

    python benchmarks/active_labeling.py --data CIFAR/train --weights efficientnet_lite0.in1k.safetensors
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import numpy as np

import common

NAME = "active_labeling"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="DIR/<class>/*.jpg (e.g. the CIFAR-10 JPEGs)")
    p.add_argument("--weights", required=True, help="pretrained backbone weights for --model")
    p.add_argument("--model", default="efficientnet_lite0", help="timm name of --weights")
    p.add_argument("--img-size", type=int, default=160,
                   help="input side in px [160: CIFAR's 32 px upsampled; 224 costs 2x the time]")
    p.add_argument("--test-per-class", type=int, default=200, help="held-out test images per class [200]")
    p.add_argument("--pool-per-class", type=int, default=1000,
                   help="unlabeled pool images per class [1000: a 10,000-image pool]")
    p.add_argument("--start-per-class", type=int, default=2, help="random labels per class to start [2]")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per-round", type=int, default=200, help="labels added per round [200]")
    p.add_argument("--seeds", type=int, default=5, help="start sets (and random draws) [5]")
    p.add_argument("--strategies", default="hybrid,random,margin,entropy,kcenter",
                   help="comma-separated clarivis.active strategies [all five]")
    p.add_argument("--pool-factor", type=int, default=None,
                   help="hybrid's candidates per labeled image [clarivis's default]")
    # Fixed, not cross-validated per fit: train --linear-probe's CV picks C in 1e-4..0.1 for 20 to
    # 620 CIFAR labels, test accuracy moves < 1 point over C = 1e-3..1e-2, and CV costs 20-75 s a
    # fit on 2 cores against ~2 s (80 fits per run).
    p.add_argument("--reg-c", type=float, default=0.003,
                   help="inverse L2 strength of the head [0.003]; 0: chosen by CV at every fit, as "
                        "train --linear-probe does (slow)")
    p.add_argument("--features", default=None,
                   help="an .npz file caching the embeddings: read when it exists, else written")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu | cuda [cuda when available]")
    common.add_output_args(p)
    return p.parse_args()


def split_files(by_class: dict, test_per_class: int, pool_per_class: int) -> tuple[list, list]:
    """(test, pool) lists of (path, class index): the first test_per_class sorted files of each
    class are the test set, the next pool_per_class the pool (no RNG: the same for every seed)."""
    test, pool = [], []
    for c, files in enumerate(by_class.values()):
        if len(files) < test_per_class + pool_per_class:
            raise SystemExit(f"error: a class has {len(files)} images, fewer than "
                             f"--test-per-class + --pool-per-class")
        test += [(p, c) for p in files[:test_per_class]]
        pool += [(p, c) for p in files[test_per_class:test_per_class + pool_per_class]]
    return test, pool


def embed_all(args, test: list, pool: list) -> tuple[np.ndarray, np.ndarray, float]:
    """float32 (N_test, D), (N_pool, D) frozen-backbone embeddings and the embedding seconds;
    from --features when it holds them."""
    cache = Path(args.features) if args.features else None
    if cache is not None and cache.exists():
        saved = np.load(cache)
        if len(saved["test"]) == len(test) and len(saved["pool"]) == len(pool):
            return saved["test"], saved["pool"], float(saved["seconds"])
    from clarivis.embeddings import embed_images, load_encoder

    clf = load_encoder(args.model, weights=args.weights, img_size=args.img_size, device=args.device)
    t0 = time.perf_counter()
    vectors = []
    for rows in (test, pool):
        result = embed_images(clf, [str(p) for p, _ in rows], batch_size=args.batch_size)
        if result.skipped:
            raise SystemExit(f"error: {len(result.skipped)} images could not be read, e.g. "
                             f"{result.skipped[0]}")
        vectors.append(result.vectors)
    seconds = time.perf_counter() - t0
    if cache is not None:
        np.savez(cache, test=vectors[0], pool=vectors[1], seconds=seconds)
    return vectors[0], vectors[1], seconds


def fit_head(x: np.ndarray, y: np.ndarray, num_classes: int, reg_c: float | None, seed: int):
    """The --linear-probe head (clarivis.training.linear_probe): standardized multinomial
    logistic regression, C by stratified CV unless fixed."""
    from clarivis.training.linear_probe import fit_logistic_head

    return fit_logistic_head(x, y, num_classes, seed=seed, reg_c=reg_c or None)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def run_strategy(strategy: str, start: list[int], data: dict, args, seed: int) -> list[dict]:
    """Test accuracy after each round: fit on the labeled rows, select, add, refit."""
    import torch

    from clarivis.active.select import POOL_FACTOR, select

    labeled = list(start)
    records = []
    head = data["start_head"]
    for r in range(1, args.rounds + 1):
        t0 = time.perf_counter()
        unlabeled = np.setdiff1d(np.arange(len(data["pool_y"])), labeled)  # sorted pool rows
        probs = softmax(head.logits(data["pool_x"][unlabeled]))  # (U, C) the head's probabilities
        choice = select(args.per_round, strategy=strategy, probs=torch.from_numpy(probs).float(),
                        embeddings=torch.from_numpy(data["pool_x"][unlabeled]),
                        labeled=torch.from_numpy(data["pool_x"][labeled]),
                        pool_factor=args.pool_factor or POOL_FACTOR, seed=seed * 1000 + r)
        select_s = time.perf_counter() - t0
        labeled += unlabeled[choice.indices].tolist()
        head = fit_head(data["pool_x"][labeled], data["pool_y"][labeled], data["classes"],
                        args.reg_c, seed)
        records.append({"strategy": strategy, "seed": seed, "round": r, "labels": len(labeled),
                        "test_accuracy": accuracy(head, data), "reg_c": head.reg_c,
                        "select_seconds": round(select_s, 3),
                        "classes_in_batch": len(np.unique(data["pool_y"][unlabeled[choice.indices]]))})
    return records


def accuracy(head, data: dict) -> float:
    return float((head.logits(data["test_x"]).argmax(1) == data["test_y"]).mean())


def start_set(pool_y: np.ndarray, per_class: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [i for c in np.unique(pool_y) for i in rng.sample(list(np.flatnonzero(pool_y == c)), per_class)]


def summarize(runs: list[dict], strategies: list[str]) -> list[dict]:
    """Mean and sample standard deviation over seeds, per strategy and round."""
    out = []
    for s in strategies:
        for r in sorted({x["round"] for x in runs}):
            acc = [x["test_accuracy"] for x in runs if x["strategy"] in (s, "start") and x["round"] == r]
            labels = next(x["labels"] for x in runs if x["round"] == r)
            out.append({"strategy": s, "round": r, "labels": labels, "mean": statistics.mean(acc),
                        "std": statistics.stdev(acc) if len(acc) > 1 else 0.0, "runs": len(acc)})
    return out


def paired_gains(runs: list[dict], strategy: str) -> list[dict]:
    """strategy - random per seed and round: mean, std and how many seeds it won."""
    out = []
    for r in sorted({x["round"] for x in runs if x["round"] > 0}):
        diff = []
        for seed in sorted({x["seed"] for x in runs}):
            acc = {x["strategy"]: x["test_accuracy"] for x in runs if x["round"] == r and x["seed"] == seed}
            if strategy in acc and "random" in acc:
                diff.append(acc[strategy] - acc["random"])
        if diff:
            out.append({"round": r, "mean": statistics.mean(diff),
                        "std": statistics.stdev(diff) if len(diff) > 1 else 0.0,
                        "wins": sum(d > 0 for d in diff), "seeds": len(diff)})
    return out


def main() -> None:
    args = parse_args()
    device = args.device or common.default_device()
    args.device = device
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    by_class = common.class_folder_images(Path(args.data))
    test, pool = split_files(by_class, args.test_per_class, args.pool_per_class)
    test_x, pool_x, embed_s = embed_all(args, test, pool)
    print(f"embedded {len(test)} test + {len(pool)} pool images at {args.img_size} px in {embed_s:.0f} s",
          flush=True)
    data = {"test_x": test_x, "test_y": np.array([c for _, c in test]), "pool_x": pool_x,
            "pool_y": np.array([c for _, c in pool]), "classes": len(by_class)}
    runs = []
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        start = start_set(data["pool_y"], args.start_per_class, seed)
        data["start_head"] = fit_head(pool_x[start], data["pool_y"][start], data["classes"], args.reg_c, seed)
        runs.append({"strategy": "start", "seed": seed, "round": 0, "labels": len(start),
                     "test_accuracy": accuracy(data["start_head"], data)})
        for s in strategies:
            runs += run_strategy(s, start, data, args, seed)
            last = runs[-1]
            print(f"seed {seed} {s}: {last['labels']} labels, test accuracy {last['test_accuracy']:.3f}",
                  flush=True)
    loop_s = time.perf_counter() - t0
    summary = summarize(runs, strategies)
    gains = {s: paired_gains(runs, s) for s in strategies if s != "random"}
    result = {"benchmark": NAME, "machine": common.describe_machine(device), "model": args.model,
              "img_size": args.img_size, "settings": {k: v for k, v in vars(args).items()
                                                      if k not in ("json", "work_dir", "keep")},
              "test_images": len(test), "pool_images": len(pool), "embed_seconds": round(embed_s, 1),
              "rounds_seconds": round(loop_s, 1), "summary": summary, "gain_over_random": gains,
              "runs": runs}
    path = common.write_result(result, args.json, NAME, device)
    final = {s["strategy"]: s for s in summary if s["round"] == args.rounds}
    text = ", ".join(f"{s} {final[s]['mean']:.3f}±{final[s]['std']:.3f}" for s in strategies)
    print(f"{NAME}: test accuracy after {args.rounds} rounds of {args.per_round} labels "
          f"({final[strategies[0]]['labels']} labels, {args.seeds} seeds): {text}; wrote {path}")


if __name__ == "__main__":
    main()
