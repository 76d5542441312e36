"""What does self-supervised pretraining on unlabeled images buy when only 1% or 10% of them are
labeled? `clarivis pretrain` against training from scratch on the same labels and budget.

A fixed, seeded, stratified test set (--test-per-class images of every class) is held out and
never trained on. Then, on the same machine and one pipeline at a time:

  pretrain     clarivis pretrain UNLABELED.csv --method M --time-limit P
               (every remaining image, no labels)
  for each label fraction F (the 1% set is part of the 10% set; all seeded, per class):
    probe      clarivis train LABELS.csv --linear-probe --weights RUN/backbone.safetensors
               (frozen pretrained backbone, logistic-regression head; seconds)
    fine-tune  clarivis train LABELS.csv --weights RUN/backbone.safetensors --time-limit T
    scratch    clarivis train LABELS.csv --time-limit P+T     (same total budget, no pretraining)

Every run trains on all of its labels (--val-fraction 0: with 45 labels a class, none are to be
spared for validation; the last model is kept) and is scored with `clarivis evaluate` on the test
set. The gain is the test accuracy of probe / fine-tune minus that of scratch.

    python benchmarks/ssl_low_label.py --data DATA/train                          # ~40 min, 2 CPU cores
    python benchmarks/ssl_low_label.py --data DATA/train --pretrain-min 120 --finetune-min 15   # GPU
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import common

NAME = "ssl_low_label"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="class-folder dataset DIR/<class>/*.jpg (or DIR/train/...)")
    p.add_argument("--model", default="resnet18", help="timm model of every pipeline [resnet18]")
    p.add_argument("--img-size", type=int, default=32, help="[32]")
    p.add_argument("--model-kwargs", default=None, help="timm kwargs, e.g. patch_size=4 for a ViT")
    p.add_argument("--method", default="simclr", help="simclr | byol | dino [simclr]")
    p.add_argument("--pretrain-min", type=float, default=10.0, help="pretraining budget, minutes [10]")
    p.add_argument("--finetune-min", type=float, default=2.0,
                   help="fine-tuning budget per label fraction, minutes; scratch gets "
                        "pretrain + fine-tune [2]")
    p.add_argument("--label-fractions", default="0.01,0.1", help="labeled share of the images [0.01,0.1]")
    p.add_argument("--test-per-class", type=int, default=500,
                   help="held-out test images per class [500: 5,000 for CIFAR-10, about ±0.7 points]")
    p.add_argument("--train-args", default="",
                   help="extra flags for the fine-tune and scratch runs, e.g. '--recipe fast'")
    p.add_argument("--finetune-args", default="",
                   help="extra flags for the fine-tune runs only, e.g. '--lr 1e-3 --freeze-epochs 1' "
                        "(default: train's own choice from --weights, a tenth of the scratch lr)")
    p.add_argument("--max-epochs", type=int, default=1000,
                   help="epoch cap of every time-limited run; the time limits end them [1000]")
    p.add_argument("--images", type=int, default=0,
                   help="use only the first N/classes images of every class, 0 = all [0] (smoke tests)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test split, label draws and runs [0]")
    p.add_argument("--device", default=None, help="cpu | cuda [cuda when available]")
    common.add_output_args(p)
    common.add_cache_arg(p)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    device = args.device or common.default_device()
    root = common.dataset_root(args.data)
    by_class = common.dataset_by_class(root, args.images)
    test, pool = split_test(by_class, args.test_per_class, args.seed)
    fractions = [float(f) for f in args.label_fractions.split(",") if f.strip()]
    n_pool = sum(len(files) for files in pool.values())
    print(f"{NAME}: {n_pool} unlabeled / {len(test)} test images, {len(by_class)} classes, "
          f"{args.method} {args.pretrain_min:g} min + fine-tune {args.finetune_min:g} min on {device}",
          file=sys.stderr)
    with common.work_dir(args.work_dir, args.keep) as tmp:
        env = common.child_env(args.threads, common.clarivis_cache(args, tmp / "cache"))
        test_csv = common.write_manifest(test, tmp / "test.csv")
        unlabeled = common.write_manifest([(p,) for files in pool.values() for p in files],
                                          tmp / "unlabeled.csv")
        pretraining = run_pretrain(args, device, unlabeled, tmp / "pretrain", env)
        backbone = tmp / "pretrain" / "backbone.safetensors"
        fractions_result = {
            f"{f:g}": compare_on_labels(args, device, labeled_subset(pool, f), backbone, test_csv,
                                        tmp / f"labels-{f:g}", env)
            for f in fractions
        }
    result = {
        "benchmark": NAME,
        "settings": {"data": "/".join(root.resolve().parts[-2:]), "unlabeled_images": n_pool,
                     "test_images": len(test), "classes": len(by_class), "model": args.model,
                     "img_size": args.img_size, "model_kwargs": args.model_kwargs,
                     "method": args.method, "pretrain_min": args.pretrain_min,
                     "finetune_min": args.finetune_min, "scratch_min": scratch_minutes(args),
                     "train_args": args.train_args, "finetune_args": args.finetune_args,
                     "device": device, "seed": args.seed, "threads": args.threads},
        "pretrain": pretraining,
        "fractions": fractions_result,
        "machine": common.describe_machine(device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = common.write_result(result, args.json, NAME, device)
    print(summary_line(result, path))


# ----------------------------------------------------------------------------- data


def split_test(by_class: dict[str, list[Path]], per_class: int,
               seed: int) -> tuple[list[tuple[Path, str]], dict[str, list[Path]]]:
    """(test rows, the rest per class in a seeded order): label draws take a prefix of that order,
    so the smaller labeled set is part of the larger one."""
    rng = random.Random(seed)
    test, pool = [], {}
    for label, files in by_class.items():
        files = list(files)
        rng.shuffle(files)
        if len(files) <= per_class:
            raise SystemExit(f"error: class {label} has {len(files)} images, not more than "
                             f"--test-per-class {per_class}")
        test += [(p, label) for p in files[:per_class]]
        pool[label] = files[per_class:]
    return test, pool


def labeled_subset(pool: dict[str, list[Path]], fraction: float) -> list[tuple[Path, str]]:
    """The first `fraction` of every class's seeded order (at least 2: CV needs 2 folds)."""
    return [(p, label) for label, files in pool.items()
            for p in files[:max(2, round(len(files) * fraction))]]


# ----------------------------------------------------------------------------- pipelines


def model_args(args: argparse.Namespace, device: str) -> list[str]:
    extra = ["--model-kwargs", args.model_kwargs] if args.model_kwargs else []
    return ["--model", args.model, "--img-size", str(args.img_size), *extra, "--device", device,
            "--seed", str(args.seed)]


def scratch_minutes(args: argparse.Namespace) -> float:
    return args.pretrain_min + args.finetune_min


def run_pretrain(args: argparse.Namespace, device: str, unlabeled: Path, run_dir: Path,
                 env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "clarivis", "pretrain", str(unlabeled), *model_args(args, device),
               "--method", args.method, "--epochs", str(args.max_epochs),
               "--time-limit", f"{args.pretrain_min:.4f}", "--out", str(run_dir)]
    run = common.run_child(command, env=env, timeout_s=grace(args.pretrain_min), label="pretrain")
    history = common.read_jsonl(run_dir / "metrics.jsonl")
    config = common.read_yaml(run_dir / "config.yaml")
    return {
        "epochs": len(history), "wall_s": run.wall_s, "peak_rss_mib": run.peak_rss_mib,
        "final_loss": history[-1]["train_loss"] if history else None,
        "embedding_std": history[-1]["embedding_std"] if history else None,
        "embedding_std_ideal": history[-1]["embedding_std_ideal"] if history else None,
        "images_per_second": history[-1]["images_per_second"] if history else None,
        "history": history,
        "config": {k: config.get(k) for k in ("method", "batch_size", "lr", "weight_decay", "workers")},
        "process": run.to_dict(),
    }


def compare_on_labels(args: argparse.Namespace, device: str, labeled: list[tuple[Path, str]],
                      backbone: Path, test_csv: Path, tmp: Path, env: dict[str, str]) -> dict[str, Any]:
    """Probe, fine-tune and scratch on the same labels; accuracies on the test set and gains."""
    labels_csv = common.write_manifest(labeled, tmp / "labels.csv")
    weights = ["--weights", str(backbone)]
    budget = ["--epochs", str(args.max_epochs), "--time-limit"]
    train_args = shlex.split(args.train_args)
    pipelines = {
        "linear_probe": ["--linear-probe", *weights],
        "fine_tune": [*weights, *budget, f"{args.finetune_min:.4f}", *train_args,
                      *shlex.split(args.finetune_args)],
        "scratch": [*budget, f"{scratch_minutes(args):.4f}", *train_args],
    }
    minutes = {"linear_probe": 10.0, "fine_tune": args.finetune_min, "scratch": scratch_minutes(args)}
    results = {}
    for name, extra in pipelines.items():
        if name != "scratch" and not backbone.exists():
            results[name] = {"test_accuracy": None, "error": "pretraining wrote no backbone"}
            continue
        results[name] = train_and_evaluate(args, device, labels_csv, test_csv, tmp / name, extra,
                                           minutes[name], env)
    scratch = results["scratch"]["test_accuracy"]
    gains = {name: round(r["test_accuracy"] - scratch, 4)
             for name, r in results.items()
             if name != "scratch" and r["test_accuracy"] is not None and scratch is not None}
    return {"labels": len(labeled), "labels_per_class": round(len(labeled) / len(
        {label for _, label in labeled})), "pipelines": results, "gain_over_scratch": gains}


def train_and_evaluate(args: argparse.Namespace, device: str, labels_csv: Path, test_csv: Path,
                       run_dir: Path, extra: list[str], minutes: float,
                       env: dict[str, str]) -> dict[str, Any]:
    label = f"{labels_csv.parent.name}/{run_dir.name}"
    command = [sys.executable, "-m", "clarivis", "train", str(labels_csv), *model_args(args, device),
               "--val-fraction", "0", "--no-report", "--out", str(run_dir), *extra]
    run = common.run_child(command, env=env, timeout_s=grace(minutes), label=label)
    accuracy, evaluation = None, None
    if run.ok:
        metrics = run_dir / "test_metrics.json"
        evaluation = common.run_child(
            [sys.executable, "-m", "clarivis", "evaluate", str(run_dir / "model"), str(test_csv),
             "--json", str(metrics), "--device", device], env=env, timeout_s=1800, label=f"{label} eval")
        accuracy = json.loads(metrics.read_text()).get("accuracy") if metrics.exists() else None
    history = common.read_jsonl(run_dir / "metrics.jsonl")
    config = common.read_yaml(run_dir / "config.yaml")
    return {
        "test_accuracy": accuracy, "epochs": len(history), "wall_s": run.wall_s,
        "final_train_accuracy": history[-1].get("train_accuracy") if history else None,
        "config": {k: config.get(k) for k in ("batch_size", "lr", "time_limit", "linear_probe")},
        "process": run.to_dict(), "eval_process": evaluation.to_dict() if evaluation else None,
    }


def grace(minutes: float) -> float:
    """Kill a run this long after its budget: the budget itself, at least 5 minutes more."""
    return minutes * 60 + max(300.0, minutes * 60)


# ----------------------------------------------------------------------------- summary


def summary_line(r: dict[str, Any], path: Path) -> str:
    s, pre = r["settings"], r["pretrain"]
    parts = [f"{s['method']} {s['pretrain_min']:g} min ({pre['epochs']} epochs on "
             f"{s['unlabeled_images']} images)"]
    for fraction, f in r["fractions"].items():
        accs = {name: p["test_accuracy"] for name, p in f["pipelines"].items()}
        gains = f["gain_over_scratch"]
        text = ", ".join(
            f"{name.replace('_', '-')} {_fmt(acc)}" + (f" ({gains[name]:+.3f})" if name in gains else "")
            for name, acc in accs.items())
        parts.append(f"{float(fraction):.0%} labels ({f['labels']}): {text}")
    return (f"{NAME} test acc on {s['test_images']} images, {s['model']} {s['img_size']}px on "
            f"{s['device']}: " + " | ".join(parts) + f" | {path}")


def _fmt(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "n/a"


if __name__ == "__main__":
    main()
