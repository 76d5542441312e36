"""Does `clarivis check` find wrong labels? Plant them and count.

From any class-folder dataset (--data DIR/<class>/*.jpg): take the first --per-class images of
the first --classes classes, move --wrong-per-class of each class (seeded) into another class's
folder, and run the check as a user does, once per variant:

  weights   clarivis check DIR --json J --model MODEL --weights W    (pretrained features)
  scratch   clarivis check DIR --json J --no-cached                  (a small model per fold)

A planted error counts as found when it is among the first --top label issues of the JSON
(most suspect first). Issue 12's case: 3 CIFAR-10 classes x 120 images, 18 planted, top 40.

    python benchmarks/label_check_planted.py --data CIFAR/train --weights efficientnet_lite0.in1k.safetensors
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
from pathlib import Path

import common

NAME = "label_check_planted"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="DIR/<class>/*.jpg or DIR/train/<class>/*.jpg")
    p.add_argument("--weights", help="pretrained weights for --model (needed by the weights variant)")
    p.add_argument("--model", default="efficientnet_lite0", help="timm name of --weights")
    p.add_argument("--classes", type=int, default=3, help="the first N classes (sorted names) [3]")
    p.add_argument("--per-class", type=int, default=120, help="images of each class [120]")
    p.add_argument("--wrong-per-class", type=int, default=6, help="planted errors per class [6]")
    p.add_argument("--top", type=int, default=40, help="the most suspect label issues counted [40]")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="plant seeds [0 1 2]")
    p.add_argument("--variants", nargs="+", choices=["weights", "scratch"], default=["weights", "scratch"])
    p.add_argument("--device", default=None, help="cpu | cuda [cuda when available]")
    common.add_output_args(p)
    args = p.parse_args()
    if "weights" in args.variants and not args.weights:
        p.error("the weights variant needs --weights (or --variants scratch)")
    return args


def plant(by_class: dict[str, list[Path]], out: Path, *, per_class: int, wrong_per_class: int,
          seed: int) -> list[str]:
    """out/<class>/<source class>_<file>: copies of the first per_class files of each class,
    wrong_per_class of them (seeded) under another class; returns the planted paths. Every file
    is renamed alike (CIFAR's class folders reuse file names), so names give nothing away to
    the check, only to this script."""
    rng = random.Random(seed)
    names = list(by_class)
    planted = []
    for name, files in by_class.items():
        files = files[:per_class]
        wrong = set(rng.sample(range(len(files)), wrong_per_class))
        for i, source in enumerate(files):
            label = rng.choice([n for n in names if n != name]) if i in wrong else name
            target = out / label / f"{name}_{source.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            if i in wrong:
                planted.append(str(target.resolve()))
    return planted


def run_check(variant: str, folder: Path, json_path: Path, args, device: str) -> dict:
    command = [sys.executable, "-m", "clarivis", "check", str(folder), "--json", str(json_path),
               "--device", device, "--top", "1"]
    command += (["--model", args.model, "--weights", args.weights] if variant == "weights"
                else ["--no-cached"])
    run = common.run_child(command, env=common.child_env(args.threads), label=variant)
    if run.returncode not in (0, 1) or not json_path.exists():  # 1: findings of severity error
        raise SystemExit(f"error: clarivis check failed ({variant}): {run.output_tail[-3:]}")
    return {"report": json.loads(json_path.read_text()), "wall_s": run.wall_s}


def score(report: dict, planted: list[str], top: int) -> dict:
    issues = report["label_issues"]
    ranked = [str(Path(i["path"]).resolve()) for i in issues]
    hits = set(ranked[:top]) & set(planted)
    check = report["label_check"]
    return {"found_in_top": len(hits), "planted": len(planted), "flagged": len(issues),
            "found_flagged": len(set(ranked) & set(planted)), "method": check.get("method"),
            "features": check.get("features"), "reg_c": check.get("reg_c"),
            "oof_accuracy": check.get("oof_accuracy")}


def main() -> None:
    args = parse_args()
    device = args.device or common.default_device()
    by_class = common.class_folder_images(common.dataset_root(args.data))
    by_class = {name: by_class[name] for name in list(by_class)[:args.classes]}
    runs = []
    with common.work_dir(args.work_dir, args.keep) as tmp:
        for seed in args.seeds:
            folder = tmp / f"planted-s{seed}"
            planted = plant(by_class, folder, per_class=args.per_class,
                            wrong_per_class=args.wrong_per_class, seed=seed)
            for variant in args.variants:
                done = run_check(variant, folder, tmp / f"check-s{seed}-{variant}.json", args, device)
                row = {"seed": seed, "variant": variant, "wall_s": done["wall_s"],
                       **score(done["report"], planted, args.top)}
                runs.append(row)
                print(f"seed {seed} {variant}: {row['found_in_top']}/{row['planted']} planted in the "
                      f"top {args.top} ({row['flagged']} flagged, out-of-fold accuracy "
                      f"{row['oof_accuracy']:.3f}, C {row['reg_c']}, {row['wall_s']:.0f} s)",
                      file=sys.stderr)
    summary = {v: [r["found_in_top"] for r in runs if r["variant"] == v] for v in args.variants}
    result = {
        "benchmark": NAME,
        "settings": {"data": Path(args.data).name, "classes": list(by_class),
                     "per_class": args.per_class, "wrong_per_class": args.wrong_per_class,
                     "top": args.top, "seeds": args.seeds, "model": args.model,
                     "weights": Path(args.weights).name if args.weights else None},
        "runs": runs,
        "summary": {v: {"found_in_top": hits, "mean": round(statistics.mean(hits), 2)}
                    for v, hits in summary.items()},
        "machine": common.describe_machine(device),
    }
    path = common.write_result(result, args.json, NAME, device)
    planted_n = args.classes * args.wrong_per_class
    print("; ".join(f"{v}: {'/'.join(map(str, hits))} of {planted_n} planted in the top {args.top}"
                    for v, hits in summary.items()) + f" (seeds {args.seeds}) -> {path}")


if __name__ == "__main__":
    main()
