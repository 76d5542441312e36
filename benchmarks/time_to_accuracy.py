"""Best validation accuracy within a wall-clock budget: clarivis recipes against a tutorial baseline.

One fixed split (a seeded 10% of every class held out as val) is written as a CSV manifest with a
`split` column, and as an ImageFolder symlink tree, so every pipeline validates on the same images.

  clarivis-RECIPE  `python -m clarivis train MANIFEST [--recipe RECIPE] --time-limit BUDGET_MIN`;
                   the timeline comes from metrics.jsonl, each epoch stamped when its line appears
  baseline         benchmarks/baseline.py (tutorial loop, resnet18 at 32 px by default): epochs
                   until the budget is spent, validating after each

The clock of every pipeline starts when its child process starts (imports and data loading
included); only epochs whose validation finished within the budget count.

    python benchmarks/time_to_accuracy.py --data DIR --budget-s 600
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import common

NAME = "time_to_accuracy"
SCRIPT = str(Path(__file__).resolve())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="class-folder dataset DIR/<class>/*.jpg (or DIR/train/...)")
    p.add_argument("--budget-s", type=float, default=600.0, help="wall-clock budget per pipeline, s [600]")
    p.add_argument("--device", default=None, help="cpu | cuda [cuda when available]")
    p.add_argument("--recipes", default="default,fast",
                   help="clarivis recipes, comma-separated; 'default' passes no --recipe flag [default,fast]")
    p.add_argument("--images", type=int, default=0,
                   help="use only the first N/classes images of every class, 0 = all [0] (smoke tests)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held out per class [0.1]")
    p.add_argument("--seed", type=int, default=0, help="seed of the val split [0]")
    p.add_argument("--no-baseline", action="store_true", help="measure the clarivis recipes only")
    p.add_argument("--baseline-model", default="resnet18", help="timm model of the baseline [resnet18]")
    p.add_argument("--baseline-img-size", type=int, default=32, help="[32]")
    p.add_argument("--baseline-model-kwargs", default=None, help="timm kwargs of the baseline model")
    p.add_argument("--baseline-lr", type=float, default=1e-3, help="constant AdamW lr [1e-3]")
    p.add_argument("--baseline-batch-size", type=int, default=128, help="[128]")
    p.add_argument("--baseline-workers", type=int, default=None,
                   help="DataLoader workers [2 on CPU, min(8, cores) on CUDA]")
    p.add_argument("--clarivis-args", default="", help="extra flags for every clarivis run")
    p.add_argument("--grace-s", type=float, default=None,
                   help="kill a pipeline this long after the budget [the budget, at least 120 s]")
    common.add_output_args(p)
    common.add_cache_arg(p)
    return p.parse_args()


def main() -> None:
    if common.is_worker_call():
        common.worker_main({"baseline": baseline_worker})
        return
    args = parse_args()
    device = args.device or common.default_device()
    root = common.dataset_root(args.data)
    by_class = common.dataset_by_class(root, args.images)
    rows = common.seeded_val_split(by_class, args.val_fraction, args.seed)
    n_val = sum(1 for r in rows if r[2] == "val")
    print(f"{NAME}: {len(rows) - n_val} train / {n_val} val images, {len(by_class)} classes, "
          f"budget {args.budget_s:.0f}s on {device}", file=sys.stderr)
    timeout = args.budget_s + (args.grace_s if args.grace_s is not None else max(120.0, args.budget_s))
    pipelines: dict[str, dict[str, Any]] = {}
    with common.work_dir(args.work_dir, args.keep) as tmp:
        manifest = common.write_manifest(rows, tmp / "split.csv")
        for recipe in filter(None, (r.strip() for r in args.recipes.split(","))):
            pipelines[f"clarivis-{recipe}"] = measure_clarivis(args, recipe, device, manifest,
                                                               tmp / f"run-{recipe}", timeout)
        if not args.no_baseline:
            tree = common.write_symlink_tree(rows, tmp / "imagefolder")
            pipelines["baseline"] = measure_baseline(args, device, tree, rows[0][0], len(by_class),
                                                     tmp, timeout)
    result = {
        "benchmark": NAME,
        "settings": {"data": "/".join(root.resolve().parts[-2:]), "train_images": len(rows) - n_val,
                     "val_images": n_val, "classes": len(by_class), "budget_s": args.budget_s,
                     "device": device, "seed": args.seed, "threads": args.threads},
        "pipelines": pipelines,
        "machine": common.describe_machine(device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = common.write_result(result, args.json, NAME, device)
    print(summary_line(result, path))


def best_within(timeline: list[dict[str, Any]], budget_s: float) -> float | None:
    """Best val accuracy among the epochs finished (validation included) within the budget."""
    accs = [e["val_accuracy"] for e in timeline
            if e["elapsed_s"] <= budget_s and e.get("val_accuracy") is not None]
    return max(accs) if accs else None


# ----------------------------------------------------------------------------- clarivis


def measure_clarivis(args: argparse.Namespace, recipe: str, device: str, manifest: Path, run_dir: Path,
                     timeout_s: float) -> dict[str, Any]:
    """One recipe through the CLI; epochs are stamped when their metrics.jsonl line appears."""
    command = [sys.executable, "-m", "clarivis", "train", str(manifest)]
    if recipe != "default":
        command += ["--recipe", recipe]
    command += ["--time-limit", f"{args.budget_s / 60:.4f}", "--out", str(run_dir), "--device", device]
    command += shlex.split(args.clarivis_args)
    timeline: list[dict[str, Any]] = []

    def watch(elapsed_s: float) -> None:
        for record in common.read_jsonl(run_dir / "metrics.jsonl")[len(timeline):]:
            timeline.append({"epoch": record.get("epoch"), "elapsed_s": round(elapsed_s, 1),
                             "val_accuracy": record.get("val_accuracy"),
                             "train_loss": record.get("train_loss"),
                             "epoch_seconds": record.get("epoch_seconds"),
                             "images_per_second": record.get("images_per_second")})

    cache = common.clarivis_cache(args, run_dir.with_name(run_dir.name + "-cache"))
    env = common.child_env(args.threads, cache)
    run = common.run_child(command, env=env, timeout_s=timeout_s, on_poll=watch, label=f"clarivis-{recipe}")
    config = common.read_yaml(run_dir / "config.yaml")
    return pipeline_result(timeline, run, args.budget_s, {
        k: config.get(k) for k in ("model", "img_size", "epochs", "batch_size", "lr", "augment",
                                   "workers", "time_limit")})


def pipeline_result(timeline: list[dict[str, Any]], run: Any, budget_s: float,
                    config: dict[str, Any]) -> dict[str, Any]:
    """What is reported of one pipeline: only epochs finished within the budget count."""
    return {
        "best_val_accuracy": best_within(timeline, budget_s),
        "epochs_within_budget": sum(1 for e in timeline if e["elapsed_s"] <= budget_s),
        "timeline": timeline,
        "wall_s": run.wall_s,
        "peak_rss_mib": run.peak_rss_mib,
        "config": config,
        "process": run.to_dict(),
    }


# ----------------------------------------------------------------------------- baseline


def measure_baseline(args: argparse.Namespace, device: str, tree: Path, first_image: Path,
                     num_classes: int, tmp: Path, timeout_s: float) -> dict[str, Any]:
    import baseline

    workers = args.baseline_workers if args.baseline_workers is not None else baseline.default_workers(device)
    spec = {
        "device": device, "train_dir": str(tree / "train"), "val_dir": str(tree / "val"),
        "native_size": common.native_image_size(first_image), "model": args.baseline_model,
        "img_size": args.baseline_img_size, "num_classes": num_classes,
        "model_kwargs": common.parse_model_kwargs(args.baseline_model_kwargs), "lr": args.baseline_lr,
        "batch_size": args.baseline_batch_size, "workers": workers, "budget_s": args.budget_s,
    }
    result, run = common.run_worker(SCRIPT, "baseline", spec, tmp, threads=args.threads,
                                    timeout_s=timeout_s)
    return pipeline_result(result.get("timeline", []), run, args.budget_s,
                           {k: spec[k] for k in ("model", "img_size", "lr", "batch_size", "workers")})


def baseline_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Epochs while the next one can still finish within the budget (judged by the last one)."""
    import baseline

    def elapsed() -> float:
        return time.time() - spec["started_at"]  # from the child's start: imports and data included

    device, budget = spec["device"], spec["budget_s"]
    train_tf, val_tf = baseline.tutorial_transforms(spec["img_size"], spec["native_size"])
    loader_args = {"batch_size": spec["batch_size"], "workers": spec["workers"], "device": device}
    train_loader = baseline.tutorial_loader(Path(spec["train_dir"]), train_tf, shuffle=True, **loader_args)
    val_loader = baseline.tutorial_loader(Path(spec["val_dir"]), val_tf, shuffle=False, **loader_args)
    model, optimizer, criterion = baseline.build(spec["model"], spec["num_classes"], spec["img_size"],
                                                 spec["model_kwargs"], device, lr=spec["lr"])
    timeline: list[dict[str, Any]] = []
    last_epoch_s = 0.0
    while elapsed() + last_epoch_s <= budget:
        begin = elapsed()
        stats = baseline.train_epoch(model, train_loader, optimizer, criterion, device)
        accuracy = baseline.evaluate(model, val_loader, device)
        last_epoch_s = elapsed() - begin
        timeline.append({"epoch": len(timeline) + 1, "elapsed_s": round(elapsed(), 1),
                         "val_accuracy": accuracy, "train_loss": stats["train_loss"],
                         "epoch_seconds": stats["epoch_seconds"],
                         "images_per_second": stats["images_per_second"]})
        print(f"baseline epoch {len(timeline)}: val_acc {accuracy:.3f} at {elapsed():.0f}s "
              f"({stats['images_per_second']:.0f} img/s)", file=sys.stderr)
    return {"timeline": timeline}


# ----------------------------------------------------------------------------- summary


def summary_line(r: dict[str, Any], path: Path) -> str:
    s = r["settings"]
    parts = []
    for name, p in r["pipelines"].items():
        acc = p["best_val_accuracy"]
        acc_text = f"{acc:.4f}" if acc is not None else "n/a"
        failed = "" if p["process"]["returncode"] == 0 else f", exit {p['process']['returncode']}"
        parts.append(f"{name} {acc_text} ({p['epochs_within_budget']} epochs, {p['wall_s']:.0f}s, "
                     f"{common.fmt_gib(p['peak_rss_mib'])} GiB{failed})")
    return (f"{NAME} best val acc within {s['budget_s']:.0f}s on {s['device']} "
            f"({s['train_images']} train / {s['val_images']} val): " + " | ".join(parts) + f" | {path}")


if __name__ == "__main__":
    main()
