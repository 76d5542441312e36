"""Full CIFAR-10 on one GPU: `clarivis train --recipe fast` against airbench94 (github
KellerJordan/cifar10-airbench), time to a target test accuracy (94%) and the accuracy reached.

Data: the CIFAR-10 train split as class-folder JPEGs (DIR/<class>/*.jpg or DIR/train/<class>/...).
A seeded, stratified 10,000 of it is held out as the test set (or --test-dir gives one), the rest
(40,000) is what both sides train on. airbench gets the very same images, decoded once into the
uint8 tensors its CifarLoader reads (cifar10/train.pt and test.pt in its working folder).

  clarivis   for each of --epochs (ascending, stopping at the first that reaches --target):
             `python -m clarivis train TRAIN --recipe fast --device cuda --epochs E`, then
             `python -m clarivis evaluate RUN/model TEST`; time = the train process's wall time
             (imports, decoding and caching included) and its epochs' own seconds
  airbench   the script's main() imported from --airbench PATH (default airbench94_muon.py; a
             legacy script such as legacy/airbench94.py works too), one warm-up run (airbench's
             own: it compiles the model), then --airbench-runs runs; its own timer (training and
             TTA evaluation, what its README reports) and the runs' mean test accuracy

    python benchmarks/cifar10_fast_gpu.py --data DIR --airbench PATH_TO_CHECKOUT
    python benchmarks/cifar10_fast_gpu.py --data DIR --smoke   # CPU, tiny, no airbench: plumbing only
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import io
import os
import re
import shlex
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import common

NAME = "cifar10_fast_gpu"
SCRIPT = str(Path(__file__).resolve())
TEST_PER_CLASS = 1000  # 10 classes x 1,000 = CIFAR-10's own test-set size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True,
                   help="CIFAR-10 train split as DIR/<class>/*.jpg (or DIR/train/...)")
    p.add_argument("--test-dir", default=None,
                   help="a separate labeled test folder; default: hold out 1,000 a class from --data")
    p.add_argument("--airbench", default=None, help="local checkout of KellerJordan/cifar10-airbench")
    p.add_argument("--airbench-script", default="airbench94_muon.py",
                   help="script inside the checkout [airbench94_muon.py]; legacy/airbench94.py also works")
    p.add_argument("--airbench-runs", type=int, default=5, help="runs after the warm-up [5]")
    p.add_argument("--target", type=float, default=0.94, help="test accuracy to reach [0.94]")
    p.add_argument("--epochs", default="10,15,20,30",
                   help="clarivis epochs to try, ascending; stops at the first reaching --target")
    p.add_argument("--device", default="cuda", help="[cuda]")
    p.add_argument("--clarivis-args", default="--val-fraction 0",
                   help="extra flags for clarivis train [--val-fraction 0: train on all, as airbench]")
    p.add_argument("--images", type=int, default=0,
                   help="use only the first N/classes images of every class, 0 = all [0] (smoke tests)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out test split [0]")
    p.add_argument("--smoke", action="store_true",
                   help="plumbing check on CPU: 200 images, --epochs 1, 20%% test, no airbench")
    common.add_output_args(p)
    common.add_cache_arg(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.device, args.images, args.epochs, args.airbench = "cpu", args.images or 200, "1", None
    args.epoch_list = sorted({int(e) for e in args.epochs.split(",") if e.strip()})
    if not args.epoch_list:
        p.error("--epochs needs at least one number")
    return args


def main() -> None:
    if common.is_worker_call():
        common.worker_main({"airbench": airbench_worker})
        return
    args = parse_args()
    root = common.dataset_root(args.data)
    by_class = common.dataset_by_class(root, args.images)
    test_per_class = TEST_PER_CLASS if not args.images else max(1, args.images // len(by_class) // 5)
    with common.work_dir(args.work_dir, args.keep) as tmp:
        train_rows, test_rows = split_rows(by_class, args.test_dir, test_per_class, args.seed)
        common.write_symlink_tree([(p, c, "train") for p, c in train_rows], tmp / "data")
        train_dir = tmp / "data" / "train"
        if args.test_dir:
            test_dir = Path(args.test_dir)
        else:
            common.write_symlink_tree([(p, c, "test") for p, c in test_rows], tmp / "data")
            test_dir = tmp / "data" / "test"
        print(f"{NAME}: {len(train_rows)} train / {len(test_rows)} test images on {args.device}",
              file=sys.stderr)
        pipelines = {"clarivis-fast": measure_clarivis(args, train_dir, test_dir, tmp)}
        if args.airbench:
            pipelines["airbench"] = measure_airbench(args, train_rows, test_rows, tmp)
    result = {
        "benchmark": NAME,
        "settings": {"data": "/".join(root.resolve().parts[-2:]), "train_images": len(train_rows),
                     "test_images": len(test_rows), "target": args.target, "device": args.device,
                     "seed": args.seed, "epochs_tried": args.epoch_list,
                     "clarivis_args": args.clarivis_args, "threads": args.threads,
                     "airbench_script": args.airbench_script if args.airbench else None},
        "pipelines": pipelines,
        "machine": common.describe_machine(args.device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = common.write_result(result, args.json, NAME, args.device)
    print(summary_line(result, path))


def split_rows(by_class: dict[str, list[Path]], test_dir: str | None, per_class: int,
               seed: int) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """(train, test) rows of (path, class): a seeded `per_class` of every class held out as test,
    or all of --data as train and --test-dir's images as test."""
    if test_dir:
        test = common.stratified_first(common.class_folder_images(Path(test_dir)), None)
        return common.stratified_first(by_class, None), test
    rows = common.seeded_val_split(by_class, per_class / max(1, min(len(v) for v in by_class.values())), seed)
    train = [(p, c) for p, c, split in rows if split == "train"]
    test = [(p, c) for p, c, split in rows if split == "val"]
    return train, test


# ----------------------------------------------------------------------------- clarivis


def measure_clarivis(args: argparse.Namespace, train_dir: Path, test_dir: Path, tmp: Path) -> dict[str, Any]:
    tries = []
    for epochs in args.epoch_list:
        run_dir = tmp / f"run-e{epochs}"
        command = [sys.executable, "-m", "clarivis", "train", str(train_dir), "--recipe", "fast",
                   "--device", args.device, "--epochs", str(epochs), "--out", str(run_dir),
                   "--no-report", *shlex.split(args.clarivis_args)]
        env = common.child_env(args.threads, common.clarivis_cache(args, tmp / f"cache-e{epochs}"))
        train = common.run_child(command, env=env, label=f"clarivis-e{epochs}")
        metrics_path = tmp / f"eval-e{epochs}.json"
        evaluate = common.run_child(
            [sys.executable, "-m", "clarivis", "evaluate", str(run_dir / "model"), str(test_dir),
             "--device", args.device, "--json", str(metrics_path), "--batch-size", "500"],
            env=env, label=f"evaluate-e{epochs}")
        history = [r for r in common.read_jsonl(run_dir / "metrics.jsonl") if "epoch" in r]
        config = common.read_yaml(run_dir / "config.yaml")
        accuracy = _read_accuracy(metrics_path)
        tries.append({
            "epochs": epochs, "test_accuracy": accuracy, "wall_s": train.wall_s,
            "epochs_s": round(sum(r.get("epoch_seconds") or 0.0 for r in history), 2),
            "images_per_second": history[-1].get("images_per_second") if history else None,
            "config": {k: config.get(k) for k in ("model", "img_size", "batch_size", "lr", "optimizer",
                                                  "augment", "label_smoothing")},
            "process": train.to_dict(), "evaluate_process": evaluate.to_dict(),
        })
        if accuracy is not None and accuracy >= args.target:
            break
    reached = next((t for t in tries if (t["test_accuracy"] or 0) >= args.target), None)
    return {"tries": tries, "reached_target": reached is not None,
            "time_to_target_s": reached["wall_s"] if reached else None,
            "train_s_to_target": reached["epochs_s"] if reached else None,
            "best_test_accuracy": max((t["test_accuracy"] or 0 for t in tries), default=None)}


def _read_accuracy(path: Path) -> float | None:
    import json

    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    value = metrics.get("accuracy", metrics.get("metrics", {}).get("accuracy"))
    return float(value) if value is not None else None


# ----------------------------------------------------------------------------- airbench


def measure_airbench(args: argparse.Namespace, train_rows, test_rows, tmp: Path) -> dict[str, Any]:
    """Decode the same images into airbench's tensor files, then run its main() in a worker."""
    folder = tmp / "airbench" / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    classes = sorted({c for _, c in train_rows})
    for name, rows in (("train.pt", train_rows), ("test.pt", test_rows)):
        save_tensor_file(rows, classes, folder / name)
    script = Path(args.airbench) / args.airbench_script
    if not script.is_file():
        raise SystemExit(f"{script} not found; pass --airbench CHECKOUT and --airbench-script")
    spec = {"script": str(script), "cwd": str(folder.parent), "runs": args.airbench_runs,
            "target": args.target}
    result, run = common.run_worker(SCRIPT, "airbench", spec, tmp, threads=args.threads)
    accs, times = result.get("accuracies", []), result.get("time_seconds", [])
    reached = [t for a, t in zip(accs, times, strict=True) if a >= args.target]
    return {**result, "process": run.to_dict(), "wall_s": run.wall_s,
            "mean_test_accuracy": sum(accs) / len(accs) if accs else None,
            "mean_time_s": sum(times) / len(times) if times else None,
            "reached_target": bool(accs) and sum(accs) / len(accs) >= args.target,
            "runs_reaching_target": len(reached)}


def save_tensor_file(rows: list[tuple[Path, str]], classes: list[str], path: Path) -> None:
    """airbench's CifarLoader format: {'images': uint8 (N, 32, 32, 3), 'labels': int64 (N,), 'classes'}."""
    import numpy as np
    import torch
    from PIL import Image

    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p, _ in rows])
    labels = torch.tensor([classes.index(c) for _, c in rows])
    torch.save({"images": torch.from_numpy(images), "labels": labels, "classes": classes}, path)


def airbench_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Import the airbench script (its __main__ block does not run) and call main() as its
    __main__ block does: a warm-up run, then `runs` timed runs; their printed tables are parsed
    for the script's own time_seconds."""
    import torch

    os.chdir(spec["cwd"])  # its CifarLoader reads cifar10/train.pt relative to the working folder
    module_spec = importlib.util.spec_from_file_location("airbench_script", spec["script"])
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    takes_model = len(inspect.signature(module.main).parameters) >= 2  # muon: main(run, model)
    model = None
    if takes_model:
        model = module.CifarNet().cuda().to(memory_format=torch.channels_last)
        model.compile(mode="max-autotune")

    def run(tag):
        out = io.StringIO()
        with redirect_stdout(out):
            accuracy = module.main(tag, model) if takes_model else module.main(tag)
        sys.stderr.write(out.getvalue())
        return float(accuracy), _last_time_seconds(out.getvalue())

    module.print_columns(module.logging_columns_list, is_head=True)
    t0 = time.perf_counter()
    run("warmup")
    warmup_s = time.perf_counter() - t0
    accuracies, times = [], []
    for i in range(spec["runs"]):
        accuracy, seconds = run(i)
        accuracies.append(accuracy)
        times.append(seconds)
    return {"accuracies": accuracies, "time_seconds": times, "warmup_wall_s": round(warmup_s, 2)}


def _last_time_seconds(table: str) -> float | None:
    """time_seconds of the last row of airbench's printed table ('|  a  |  b  |' rows)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()
            if line.strip().startswith("|")]
    header = next((r for r in rows if "time_seconds" in r), None)
    if header is None:
        header = ["run", "epoch", "train_loss", "train_acc", "val_acc", "tta_val_acc", "time_seconds"]
    col = header.index("time_seconds")
    for r in reversed(rows):
        if len(r) > col and re.fullmatch(r"[0-9.]+", r[col]):
            return float(r[col])
    return None


# ----------------------------------------------------------------------------- summary


def summary_line(r: dict[str, Any], path: Path) -> str:
    target = r["settings"]["target"]
    c = r["pipelines"]["clarivis-fast"]
    parts = [f"{NAME}: clarivis --recipe fast best {c['best_test_accuracy'] or 0:.4f}"]
    if c["reached_target"]:
        parts.append(f"{target:.0%} in {c['time_to_target_s']:.1f}s wall "
                     f"({c['train_s_to_target']:.1f}s epochs)")
    else:
        parts.append(f"{target:.0%} not reached")
    a = r["pipelines"].get("airbench")
    if a:
        acc, secs = a.get("mean_test_accuracy"), a.get("mean_time_s")
        parts.append(f"airbench mean {acc or 0:.4f} in {secs or 0:.2f}s (its timer)")
        if c["reached_target"] and a["reached_target"] and secs:
            parts.append(f"ratio {c['time_to_target_s'] / secs:.1f}x")
    return " | ".join(parts) + f" -> {path}"


if __name__ == "__main__":
    main()
