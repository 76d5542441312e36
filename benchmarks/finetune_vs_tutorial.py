"""Fine-tuning ImageNet weights: clarivis defaults against a tutorial loop, same model, size, epochs.

For every dataset in --datasets, a train/test split is written as a symlink ImageFolder tree
(SCRATCH/<dataset>-s<seed>/{train,test}/<class>/...) and the same files go to both sides:

  clarivis  `python -m clarivis train TREE/train --model M --weights W --img-size S --epochs E
            --out RUN` (nothing else: its defaults are what is measured; --clarivis-args adds
            flags for experiments), then `python -m clarivis evaluate RUN/model TREE/test --json`.
            Wall time = both processes, start to exit (imports, caching, report included), with
            a fresh CLARIVIS_CACHE_DIR per run.
  tutorial  `python benchmarks/tutorial_finetune.py TREE/train TREE/test ...`: the plain timm +
            torchvision loop a user copies (RandomResizedCrop 0.35-1 + flip, AdamW 1e-3
            one-cycle, label smoothing 0.1, batch 32, 2 workers). Wall time = its process.

Datasets (defaults from issue 12; --img-size/--epochs override them for every dataset chosen):
  cifar        CIFAR-10 JPEGs (--cifar DIR/<class>/ or DIR/train/<class>/): 100 train and 100
               test images a class drawn with the seed; 96 px, 3 epochs
  digits       sign-language digits (--digits DIR/<digit>/*.JPG, 2,062 photos of 100 px): a
               seeded 20% of every class held out as test; 128 px, 5 epochs
  hymenoptera  PyTorch's transfer-learning tutorial data (--hymenoptera DIR/{train,val}/):
               train on train, test on val; 224 px, 5 epochs
Each of --cifar/--digits/--hymenoptera may also be a .tar.gz, unpacked into the scratch folder.

The two sides run one at a time and alternate (clarivis first on even runs, the tutorial first on
odd ones) over --seeds x --repeats.

    python benchmarks/finetune_vs_tutorial.py --weights efficientnet_lite0.in1k.safetensors \
        --cifar CIFAR --digits sign-language-digits.tar.gz --hymenoptera hymenoptera.tar.gz
"""

from __future__ import annotations

import argparse
import random
import shlex
import statistics
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import common

NAME = "finetune_vs_tutorial"
TUTORIAL = str(common.BENCH_DIR / "tutorial_finetune.py")


@dataclass(frozen=True)
class Case:
    """One dataset's default settings; `why` says how they were chosen."""

    img_size: int  # px, both sides
    epochs: int
    why: str


CASES = {
    "cifar": Case(96, 3, "issue 12's transfer case: 1,000 CIFAR-10 images of 32 px upscaled to 96"),
    "digits": Case(128, 5, "the photos are 100 px; 128 gives the ImageNet features more pixels per "
                           "hand at 1.6x the CPU cost of 100 px (224 would cost 5x); 5 epochs of "
                           "~1,650 images are ~260 steps of 32, a short fine-tune, minutes on a CPU"),
    "hymenoptera": Case(224, 5, "PyTorch's tutorial trains at 224 (its resnet18 reaches 0.94-0.96 "
                                "after 25 epochs); 5 epochs keep a CPU run to minutes"),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="ImageNet weights of --model (.safetensors or .pt)")
    p.add_argument("--model", default="efficientnet_lite0", help="timm model name [efficientnet_lite0]")
    p.add_argument("--datasets", default="cifar,digits,hymenoptera",
                   help="comma-separated, of " + ", ".join(CASES) + " [all three]")
    p.add_argument("--cifar", help="CIFAR-10 JPEGs: DIR/<class>/*.jpg, DIR/train/<class>/ or a .tar.gz")
    p.add_argument("--digits", help="sign-language digits: DIR/<digit>/*.JPG or a .tar.gz")
    p.add_argument("--hymenoptera", help="hymenoptera_data: DIR/{train,val}/<class>/ or a .tar.gz")
    p.add_argument("--img-size", type=int, default=None, help="px for every dataset [per dataset]")
    p.add_argument("--epochs", type=int, default=None, help="for every dataset [per dataset]")
    p.add_argument("--cifar-train-per-class", type=int, default=100, help="[100]")
    p.add_argument("--cifar-test-per-class", type=int, default=100, help="[100]")
    p.add_argument("--digits-test-fraction", type=float, default=0.2, help="[0.2]")
    p.add_argument("--seeds", default="0",
                   help="comma-separated: each draws its own split and seeds both sides; clarivis "
                        "gets --seed only when it is not 0, its default [0]")
    p.add_argument("--repeats", type=int, default=1, help="runs of both sides per seed [1]")
    p.add_argument("--device", default=None,
                   help="cpu | cuda, passed to both sides [each side's own default: cuda when available]")
    p.add_argument("--clarivis-args", default="", help="extra flags for clarivis train (experiments)")
    p.add_argument("--sides", default="clarivis,tutorial",
                   help="which sides to run, e.g. 'clarivis' to try flags against a tutorial figure "
                        "measured before [clarivis,tutorial]")
    p.add_argument("--tutorial-batch-size", type=int, default=32, help="[32]")
    p.add_argument("--tutorial-workers", type=int, default=2, help="DataLoader workers [2]")
    p.add_argument("--timeout-s", type=float, default=None, help="kill a process after this many seconds")
    common.add_output_args(p)
    common.add_cache_arg(p)
    args = p.parse_args()
    args.dataset_list = list(dict.fromkeys(d.strip() for d in args.datasets.split(",") if d.strip()))
    unknown = [d for d in args.dataset_list if d not in CASES]
    if unknown:
        p.error(f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    missing = [d for d in args.dataset_list if not getattr(args, d)]
    if missing:
        p.error("give " + " ".join(f"--{d} PATH" for d in missing) + " or leave them out of --datasets")
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.side_list = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not args.side_list or set(args.side_list) - {"clarivis", "tutorial"}:
        p.error("--sides takes clarivis, tutorial or both")
    return args


# ----------------------------------------------------------------------------- data


def source_dir(path_arg: str, name: str, tmp: Path) -> Path:
    """The dataset folder; a .tar.gz is unpacked into tmp first and single wrapper folders skipped."""
    path = Path(path_arg)
    if not path.name.endswith((".tar.gz", ".tgz")):
        return path
    root = tmp / f"unpacked-{name}"
    root.mkdir()
    with tarfile.open(path) as tar:
        tar.extractall(root, filter="data")
    while True:
        entries = [e for e in root.iterdir() if not e.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir():
            return root
        root = entries[0]


def split_rows(name: str, root: Path, seed: int, args: argparse.Namespace) -> list[tuple[Path, str, str]]:
    """(path, label, 'train'|'test') rows of one dataset for one seed."""
    if name == "cifar":
        rng = random.Random(seed)
        n_train, n_test = args.cifar_train_per_class, args.cifar_test_per_class
        rows = []
        for label, files in common.dataset_by_class(common.dataset_root(str(root))).items():
            if len(files) < n_train + n_test:
                raise SystemExit(f"error: class {label} of {root} has {len(files)} images, "
                                 f"fewer than {n_train} + {n_test}")
            picked = rng.sample(files, n_train + n_test)
            rows += [(p, label, "train") for p in picked[:n_train]]
            rows += [(p, label, "test") for p in picked[n_train:]]
        return rows
    if name == "digits":
        rows = common.seeded_val_split(common.class_folder_images(root), args.digits_test_fraction, seed)
        return [(p, label, "test" if split == "val" else "train") for p, label, split in rows]
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise SystemExit(f"error: {root} needs train/ and val/ class folders (hymenoptera_data)")
    return [(p, label, split) for folder, split in (("train", "train"), ("val", "test"))
            for label, files in common.class_folder_images(root / folder).items() for p in files]


# ----------------------------------------------------------------------------- the two sides


def measure_clarivis(args: argparse.Namespace, case: Case, seed: int, tree: Path,
                     run_dir: Path) -> dict[str, Any]:
    """train + evaluate through the CLI, each in its own process; wall = both."""
    train = [sys.executable, "-m", "clarivis", "train", str(tree / "train"), "--model", args.model,
             "--weights", str(Path(args.weights).resolve()), "--img-size", str(case.img_size),
             "--epochs", str(case.epochs), "--out", str(run_dir)]
    train += (["--seed", str(seed)] if seed else []) + (["--device", args.device] if args.device else [])
    train += shlex.split(args.clarivis_args)
    metrics_json = run_dir.with_name(run_dir.name + "-test.json")
    evaluate = [sys.executable, "-m", "clarivis", "evaluate", str(run_dir / "model"), str(tree / "test"),
                "--json", str(metrics_json)] + (["--device", args.device] if args.device else [])
    cache = common.clarivis_cache(args, run_dir.with_name(run_dir.name + "-cache"))
    env = common.child_env(args.threads, cache)
    runs = [common.run_child(train, env=env, timeout_s=args.timeout_s, label="clarivis train")]
    if runs[0].ok:
        runs.append(common.run_child(evaluate, env=env, timeout_s=args.timeout_s, label="clarivis evaluate"))
    accuracy = _read_json(metrics_json).get("accuracy") if all(r.ok for r in runs) else None
    epochs = common.read_jsonl(run_dir / "metrics.jsonl")
    config = common.read_yaml(run_dir / "config.yaml")
    return {
        "test_accuracy": round(accuracy, 4) if accuracy is not None else None,
        "wall_s": round(sum(r.wall_s for r in runs), 2),
        "train_wall_s": runs[0].wall_s,
        "evaluate_wall_s": runs[1].wall_s if len(runs) > 1 else None,
        "epochs_run": len(epochs),
        "epoch_seconds": round(sum(e.get("epoch_seconds") or 0 for e in epochs), 2),
        "best_val_accuracy": max((e["val_accuracy"] for e in epochs if e.get("val_accuracy") is not None),
                                 default=None),
        "peak_rss_mib": max(r.peak_rss_mib for r in runs),
        "config": {k: config.get(k) for k in ("model", "img_size", "epochs", "batch_size", "lr", "optimizer",
                                              "weight_decay", "augment", "resize_mode", "label_smoothing",
                                              "freeze_epochs", "val_fraction", "workers", "cache")},
        "processes": [r.to_dict() for r in runs],
    }


def measure_tutorial(args: argparse.Namespace, case: Case, seed: int, tree: Path,
                     out: Path) -> dict[str, Any]:
    command = [sys.executable, TUTORIAL, str(tree / "train"), str(tree / "test"), "--model", args.model,
               "--weights", str(Path(args.weights).resolve()), "--img-size", str(case.img_size),
               "--epochs", str(case.epochs), "--batch-size", str(args.tutorial_batch_size),
               "--workers", str(args.tutorial_workers), "--seed", str(seed), "--json", str(out)]
    command += ["--device", args.device] if args.device else []
    run = common.run_child(command, env=common.child_env(args.threads), timeout_s=args.timeout_s,
                           label="tutorial")
    result = _read_json(out) if run.ok else {}
    return {
        "test_accuracy": result.get("test_accuracy"),
        "wall_s": run.wall_s,
        "train_seconds_in_script": result.get("train_seconds"),  # epochs + data setup, not imports
        "steps": result.get("steps"),
        "batch_size": args.tutorial_batch_size,
        "peak_rss_mib": run.peak_rss_mib,
        "processes": [run.to_dict()],
    }


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


# ----------------------------------------------------------------------------- main


def main() -> None:
    args = parse_args()
    device = args.device or common.default_device()
    result: dict[str, Any] = {
        "benchmark": NAME,
        "settings": {"model": args.model, "weights": Path(args.weights).name, "device": device,
                     "seeds": args.seed_list, "repeats": args.repeats, "threads": args.threads,
                     "sides": args.side_list, "clarivis_args": args.clarivis_args,
                     "warm_cache": args.warm_cache, "tutorial_batch_size": args.tutorial_batch_size,
                     "tutorial_workers": args.tutorial_workers},
        "datasets": {},
    }
    order_index = 0
    with common.work_dir(args.work_dir, args.keep) as tmp:
        for name in args.dataset_list:
            default = CASES[name]
            case = Case(args.img_size or default.img_size, args.epochs or default.epochs, default.why)
            root = source_dir(getattr(args, name), name, tmp)
            entry: dict[str, Any] = {"settings": asdict(case), "runs": []}
            result["datasets"][name] = entry
            for seed in args.seed_list:
                rows = split_rows(name, root, seed, args)
                tree = common.write_symlink_tree(rows, tmp / f"{name}-s{seed}")
                entry["settings"].update({
                    "classes": len({r[1] for r in rows}),
                    "train_images": sum(r[2] == "train" for r in rows),
                    "test_images": sum(r[2] == "test" for r in rows)})
                print(f"{NAME}: {name} seed {seed}: {entry['settings']['train_images']} train / "
                      f"{entry['settings']['test_images']} test images, {entry['settings']['classes']} "
                      f"classes, {args.model} at {case.img_size}px, {case.epochs} epochs", file=sys.stderr)
                for repeat in range(args.repeats):
                    order = ["clarivis", "tutorial"][:: 1 if order_index % 2 == 0 else -1]
                    order_index += 1
                    run: dict[str, Any] = {"seed": seed, "repeat": repeat, "order": order}
                    for side in (s for s in order if s in args.side_list):
                        tag = f"{name}-s{seed}-r{repeat}-{side}"
                        run[side] = (measure_clarivis(args, case, seed, tree, tmp / tag) if side == "clarivis"
                                     else measure_tutorial(args, case, seed, tree, tmp / f"{tag}.json"))
                    entry["runs"].append(run)
                    print(f"{NAME}: {name} seed {seed} repeat {repeat}: " + run_text(run), file=sys.stderr)
            entry["summary"] = summarize(entry["runs"])
            common.write_result(result, args.json, NAME, device)  # partial, in case a later one fails
    result["machine"] = common.describe_machine(device)
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    path = common.write_result(result, args.json, NAME, device)
    print(summary_line(result, path))


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the runs a side finished (a failed or killed run has no accuracy, and its wall
    time would say nothing); accuracy_diff = clarivis - tutorial, wall_ratio = tutorial /
    clarivis (> 1: clarivis is faster)."""

    def mean(side: str, key: str) -> float | None:
        values = [r[side][key] for r in runs if side in r and r[side]["test_accuracy"] is not None]
        return round(statistics.mean(values), 4) if values else None

    out = {f"{side}_{key}": mean(side, key) for side in ("clarivis", "tutorial")
           for key in ("test_accuracy", "wall_s")}
    ca, ta = out["clarivis_test_accuracy"], out["tutorial_test_accuracy"]
    out["accuracy_diff"] = round(ca - ta, 4) if ca is not None and ta is not None else None
    out["wall_ratio"] = common.fmt_ratio(out["tutorial_wall_s"], out["clarivis_wall_s"])
    out["runs"] = len(runs)
    return out


def _acc(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "n/a"


def _secs(value: float | None) -> str:
    return f"{value:.0f}s" if value is not None else "n/a"


def run_text(run: dict[str, Any]) -> str:
    return ", ".join(f"{side} {_acc(run[side]['test_accuracy'])} in {_secs(run[side]['wall_s'])}"
                     for side in ("clarivis", "tutorial") if side in run)


def summary_line(result: dict[str, Any], path: Path) -> str:
    parts = []
    for name, entry in result["datasets"].items():
        s, st = entry["summary"], entry["settings"]
        diff = f"{s['accuracy_diff']:+.3f}" if s["accuracy_diff"] is not None else "n/a"
        ratio = f"{s['wall_ratio']:.2f}x" if s["wall_ratio"] else "n/a"
        parts.append(f"{name} ({st['img_size']}px, {st['epochs']} ep): "
                     f"clarivis {_acc(s['clarivis_test_accuracy'])} in {_secs(s['clarivis_wall_s'])}, "
                     f"tutorial {_acc(s['tutorial_test_accuracy'])} in "
                     f"{_secs(s['tutorial_wall_s'])}, diff {diff}, wall ratio {ratio}")
    return (f"{NAME} {result['settings']['model']} on {result['settings']['device']} "
            f"(mean of {len(result['settings']['seeds']) * result['settings']['repeats']} run(s)): "
            + " | ".join(parts) + f" | {path}")


if __name__ == "__main__":
    main()
