"""How far do a few labels go with a pretrained backbone? `clarivis train --linear-probe` on
frozen ImageNet features, against training from scratch on the same labels.

For every K in --labels-per-class and every seed: draw K labeled images per class from the
class folders (the rest of a fixed held-out test split never enters training), then

  probe     clarivis train MANIFEST --model efficientnet_lite0 --weights W --linear-probe
  scratch   clarivis train MANIFEST --model resnet18 --img-size 32 --epochs --scratch-epochs
            (seed 0 only; a fixed number of epochs, not minutes: the machine is shared)

and evaluate both bundles on the test split with Classifier.evaluate (the product path: the
bundle's own preprocessing, 224 px for the probe, 32 px for scratch).

    python benchmarks/few_label_probe.py --data CIFAR/train --weights efficientnet_lite0.in1k.safetensors
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import common

NAME = "few_label_probe"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="DIR/<class>/*.jpg (e.g. the CIFAR-10 JPEGs)")
    p.add_argument("--weights", required=True, help="pretrained backbone weights for --model")
    p.add_argument("--model", default="efficientnet_lite0", help="timm name of --weights")
    p.add_argument("--labels-per-class", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--seeds", type=int, default=3, help="labeled draws per K [3]")
    p.add_argument("--test-per-class", type=int, default=200,
                   help="held-out test images per class [200: 2,000 for CIFAR-10, ±0.9 points]")
    p.add_argument("--scratch-model", default="resnet18")
    p.add_argument("--scratch-epochs", type=int, default=100,
                   help="epochs of each from-scratch baseline run [100: small labeled sets need many]")
    p.add_argument("--methods", nargs="+", choices=["probe", "scratch"], default=["probe", "scratch"])
    p.add_argument("--device", default=None, help="cpu | cuda [cuda when available]")
    common.add_output_args(p)
    return p.parse_args()


def split_rows(by_class: dict, test_per_class: int, k: int, seed: int) -> list[tuple]:
    """(path, label, split) rows: the first test_per_class files of each class are the test
    split for every seed; K training images per class are drawn from the rest."""
    rng = random.Random(seed)
    rows = []
    for label, files in by_class.items():
        rows += [(p, label, "test") for p in files[:test_per_class]]
        rows += [(p, label, "train") for p in rng.sample(files[test_per_class:], k)]
    return rows


def run_one(manifest: Path, out: Path, device: str, **settings) -> dict:
    import clarivis

    t0 = time.perf_counter()
    result = clarivis.train(manifest, out=out, device=device, val_fraction=0.0, report=False,
                            workers=0, **settings)
    train_s = time.perf_counter() - t0
    metrics = clarivis.Classifier.load(result.bundle_dir, device=device).evaluate(manifest)
    return {"test_accuracy": metrics.accuracy, "train_seconds": round(train_s, 1),
            "total_seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    args = parse_args()
    device = args.device or common.default_device()
    by_class = common.class_folder_images(Path(args.data))
    runs = []
    with common.work_dir(args.work_dir, args.keep) as tmp:
        for k in args.labels_per_class:
            for seed in range(args.seeds):
                manifest = common.write_manifest(split_rows(by_class, args.test_per_class, k, seed),
                                                 tmp / f"k{k}-s{seed}.csv")
                if "probe" in args.methods:
                    probe = run_one(manifest, tmp / f"probe-k{k}-s{seed}", device, model=args.model,
                                    weights=args.weights, linear_probe=True, seed=seed)
                    runs.append({"method": "linear_probe", "labels_per_class": k, "seed": seed, **probe})
                    print(f"K={k} seed {seed}: probe {probe['test_accuracy']:.3f}", flush=True)
                if seed == 0 and "scratch" in args.methods:
                    scratch = run_one(manifest, tmp / f"scratch-k{k}", device, model=args.scratch_model,
                                      img_size=32, epochs=args.scratch_epochs, seed=seed)
                    runs.append({"method": "scratch", "labels_per_class": k, "seed": seed, **scratch})
                    print(f"K={k}: scratch {scratch['test_accuracy']:.3f}", flush=True)
    summary = summarize(runs)
    result = {"benchmark": NAME, "machine": common.describe_machine(device), "model": args.model,
              "scratch_model": args.scratch_model, "scratch_epochs": args.scratch_epochs,
              "test_images": args.test_per_class * len(by_class), "classes": len(by_class),
              "summary": summary, "runs": runs}
    path = common.write_result(result, args.json, NAME, device)
    text = "; ".join(f"K={s['labels_per_class']}:"
                     + (f" probe {s['probe_mean']:.3f}±{s['probe_std']:.3f}" if s["probe_runs"] else "")
                     + (f" scratch {s['scratch']:.3f}" if s["scratch"] is not None else "")
                     for s in summary)
    print(f"{NAME}: test accuracy {text}; wrote {path}")


def summarize(runs: list[dict]) -> list[dict]:
    out = []
    for k in sorted({r["labels_per_class"] for r in runs}):
        probe = [r["test_accuracy"] for r in runs if r["labels_per_class"] == k
                 and r["method"] == "linear_probe"]
        scratch = [r["test_accuracy"] for r in runs if r["labels_per_class"] == k
                   and r["method"] == "scratch"]
        out.append({"labels_per_class": k, "probe_mean": statistics.mean(probe) if probe else None,
                    "probe_std": statistics.stdev(probe) if len(probe) > 1 else 0.0,
                    "probe_runs": len(probe), "scratch": scratch[0] if scratch else None})
    return out


if __name__ == "__main__":
    main()
