"""Multi-label from the CLI on real photos: 2x2 mosaics of CIFAR-10 JPEGs labelled with the set of
their classes, clarivis against a plain BCE loop with a fixed 0.5 threshold (issue 15).

Data. The CIFAR-10 training JPEGs (--data DIR/<class>/, DIR/train/<class>/ or the .tar.gz, unpacked
into the scratch folder) are split per class with --seed: --holdout-fraction (0.2) of every class
is the test pool, the rest the train pool. A mosaic is four tiles drawn from one pool (each tile
used once while the pool lasts), pasted 2x2 (64 px from 32 px tiles) and saved as PNG (lossless:
the tiles keep their one JPEG generation); its labels are the set of the four classes (two cats
are {cat}). Train and test mosaics never share a source photo. Each set is a CSV manifest
`path,labels` with the names joined by ';', which clarivis reads as multi-label.

Arms, one process at a time, each with its own fresh decode cache:

  clarivis-bce  `python -m clarivis train train.csv --out RUN --epochs E [--model M]` (its
                defaults: BCE with rare labels' positives weighted, epochs ranked by val mAP, a
                temperature and an F1-best threshold per class fitted on its held-out val split),
                then `python -m clarivis evaluate RUN/model test.csv --json OUT`.
  clarivis-asl  the same with `--multilabel-loss asl` (timm's asymmetric loss); --arms drops it.
  baseline      this script as `--worker baseline`: the model clarivis resolved (RUN/config.yaml:
                architecture, img size, epochs, batch size, optimizer, lr, weight decay, warm-up +
                cosine to min_lr_ratio), trained on the same training images (RUN/split.json's
                train split) with a plain loop: BCEWithLogitsLoss without pos_weight, random crop
                (padding img/8) + flip, no grad clipping, no EMA, the last epoch's weights;
                plain sigmoid, every class at 0.5; scored with clarivis.multilabel_metrics.
                compute_multilabel_metrics, the function `clarivis evaluate` uses.

Reported per arm: mAP macro/micro (threshold-free ranking), F1 macro/micro, precision/recall macro,
subset accuracy (exact label set) and Hamming loss at that arm's thresholds, train and evaluate
wall time; the per-class table is in the JSON.

    python benchmarks/multilabel_mosaics.py --data cifar10-jpeg-train.tar.gz          # CPU, ~12 min
    python benchmarks/multilabel_mosaics.py --data DATA --preset gpu --device cuda    # larger run
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

NAME = "multilabel_mosaics"
SEP = ";"
ARMS = ("clarivis-bce", "clarivis-asl", "baseline")


@dataclass(frozen=True)
class Preset:
    train_mosaics: int
    test_mosaics: int
    epochs: int
    why: str


PRESETS = {
    "cpu": Preset(2000, 1000, 8, "about 15 minutes for the three arms on 2 CPU cores shared with other "
                                 "work (airnet_s at 64 px trained at 40-60 img/s there, one thread)"),
    "gpu": Preset(10000, 2500, 30, "every train-pool photo once (40,000 tiles), 30 epochs; minutes on a GPU"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True,
                   help="CIFAR-10 JPEGs: DIR/<class>/, DIR/train/<class>/ or a .tar.gz")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                   help="sizes: " + "; ".join(f"{k}: {v.train_mosaics} train / {v.test_mosaics} test "
                                              f"mosaics, {v.epochs} epochs" for k, v in PRESETS.items()))
    p.add_argument("--train-mosaics", type=int, default=None, help="[preset]")
    p.add_argument("--test-mosaics", type=int, default=None, help="[preset]")
    p.add_argument("--epochs", type=int, default=None, help="every arm [preset]")
    p.add_argument("--holdout-fraction", type=float, default=0.2,
                   help="share of every class's photos kept for test mosaics [0.2]")
    p.add_argument("--model", default=None,
                   help="timm model for every arm [what clarivis picks; the other arms take the "
                        "one its first run resolved]")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)} [all]")
    p.add_argument("--seed", type=int, default=0, help="mosaics, split and every arm's seed [0]")
    p.add_argument("--device", default=None, help="cpu | cuda for every arm [cuda when available]")
    p.add_argument("--report", action="store_true",
                   help="let clarivis train write report.html (its time counts in train_wall_s) [off]")
    p.add_argument("--clarivis-args", default="", help="extra flags for both clarivis train runs")
    p.add_argument("--timeout-s", type=float, default=None, help="kill a process after this many seconds")
    common.add_output_args(p)
    common.add_cache_arg(p)
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    args.train_mosaics = args.train_mosaics or preset.train_mosaics
    args.test_mosaics = args.test_mosaics or preset.test_mosaics
    args.epochs = args.epochs or preset.epochs
    args.arm_list = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not args.arm_list or set(args.arm_list) - set(ARMS):
        p.error(f"--arms takes some of {', '.join(ARMS)}")
    if "baseline" in args.arm_list and not any(a.startswith("clarivis") for a in args.arm_list):
        p.error("the baseline copies a clarivis run's settings: keep clarivis-bce or clarivis-asl in --arms")
    if not 0 < args.holdout_fraction < 1:
        p.error("--holdout-fraction must be between 0 and 1")
    return args


# ----------------------------------------------------------------------------- mosaics


def unpacked(data: str, tmp: Path) -> Path:
    """The class-folder root of --data; a .tar.gz is unpacked into tmp first."""
    path = Path(data)
    if path.name.endswith((".tar.gz", ".tgz")):
        root = tmp / "unpacked"
        root.mkdir()
        with tarfile.open(path) as tar:
            tar.extractall(root, filter="data")
        path = root
    while not (path / "train").is_dir() and len(dirs := [d for d in path.iterdir() if d.is_dir()]) == 1:
        path = dirs[0]  # a wrapper folder
    return common.dataset_root(str(path))


def source_pools(by_class: dict[str, list[Path]], holdout: float,
                 seed: int) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """(train pool, test pool) of (photo, class): a seeded `holdout` share of every class for test."""
    rows = common.seeded_val_split(by_class, holdout, seed)
    train = [(p, c) for p, c, split in rows if split == "train"]
    test = [(p, c) for p, c, split in rows if split == "val"]
    return train, test


def draw_tiles(pool: list[tuple[Path, str]], n_mosaics: int,
               rng: random.Random) -> list[list[tuple[Path, str]]]:
    """n_mosaics groups of 4 tiles: the pool shuffled and dealt out, reshuffled only when used up
    (so a photo repeats only when 4 x n_mosaics exceeds the pool)."""
    tiles: list[tuple[Path, str]] = []
    while len(tiles) < 4 * n_mosaics:
        deck = list(pool)
        rng.shuffle(deck)
        tiles.extend(deck)
    return [tiles[4 * i: 4 * i + 4] for i in range(n_mosaics)]


def write_mosaics(groups: list[list[tuple[Path, str]]], folder: Path, manifest: Path) -> Path:
    """Paste each group 2x2 into one PNG; write `path,labels` (sorted class names, ';')."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        for i, group in enumerate(groups):
            tiles = [Image.open(p).convert("RGB") for p, _ in group]
            w, h = tiles[0].size
            mosaic = Image.new("RGB", (2 * w, 2 * h))
            for k, tile in enumerate(tiles):
                tile = tile if tile.size == (w, h) else tile.resize((w, h))
                mosaic.paste(tile, ((k % 2) * w, (k // 2) * h))
            path = folder / f"{i:05d}.png"
            mosaic.save(path)
            writer.writerow([str(path.resolve()), SEP.join(sorted({c for _, c in group}))])
    return manifest


def read_manifest(path: Path) -> list[tuple[str, list[str]]]:
    with path.open(newline="") as f:
        return [(r["path"], [x for x in r["labels"].split(SEP) if x]) for r in csv.DictReader(f)]


def label_stats(rows: list[tuple[str, list[str]]], class_names: list[str]) -> dict[str, Any]:
    """Mean labels per mosaic, share of each label, how many distinct label sets, and what
    answers that look at no pixel score (the floor every arm is read against): mAP of random
    scores (each class's AP is its label rate), macro F1 of saying every label on every image,
    Hamming loss of saying none."""
    n = len(rows)
    rates = [sum(c in ls for _, ls in rows) / n for c in class_names]
    return {"mosaics": n, "mean_labels": round(sum(len(ls) for _, ls in rows) / n, 3),
            "label_rates": {c: round(r, 3) for c, r in zip(class_names, rates, strict=True)},
            "distinct_label_sets": len({tuple(ls) for _, ls in rows}),
            "no_pixels": {"map_random": round(sum(rates) / len(rates), 4),
                          "f1_macro_all_labels": round(sum(2 * r / (1 + r) for r in rates) / len(rates), 4),
                          "hamming_no_labels": round(sum(rates) / len(rates), 4)}}


# ----------------------------------------------------------------------------- clarivis arms


def measure_clarivis(args: argparse.Namespace, arm: str, model: str | None, train_csv: Path,
                     test_csv: Path, run_dir: Path) -> dict[str, Any]:
    """train + evaluate through the CLI, each in its own process."""
    train = [sys.executable, "-m", "clarivis", "train", str(train_csv), "--out", str(run_dir),
             "--epochs", str(args.epochs), "--seed", str(args.seed)]
    train += (["--model", model] if model else []) + (["--device", args.device] if args.device else [])
    train += ["--multilabel-loss", "asl"] if arm == "clarivis-asl" else []
    train += [] if args.report else ["--no-report"]  # the HTML report is not what is measured
    train += shlex.split(args.clarivis_args)
    metrics_json = run_dir.with_name(run_dir.name + "-test.json")
    evaluate = [sys.executable, "-m", "clarivis", "evaluate", str(run_dir / "model"), str(test_csv),
                "--json", str(metrics_json)] + (["--device", args.device] if args.device else [])
    cache = common.clarivis_cache(args, run_dir.with_name(run_dir.name + "-cache"))
    env = common.child_env(args.threads, cache)
    runs = [common.run_child(train, env=env, timeout_s=args.timeout_s, label=f"{arm} train")]
    if runs[0].ok:
        runs.append(common.run_child(evaluate, env=env, timeout_s=args.timeout_s, label=f"{arm} evaluate"))
    metrics = _read_json(metrics_json) if all(r.ok for r in runs) else {}
    epochs = common.read_jsonl(run_dir / "metrics.jsonl")
    config = common.read_yaml(run_dir / "config.yaml")
    bundle = _read_json(run_dir / "model" / "config.json")
    return {
        **headline(metrics),
        "per_class": metrics.get("per_class"),
        "train_wall_s": runs[0].wall_s,
        "evaluate_wall_s": runs[1].wall_s if len(runs) > 1 else None,
        "epochs_run": len(epochs),
        "best_epoch": (bundle.get("training") or {}).get("epoch"),
        "best_val_map": max((e["val_map"] for e in epochs if e.get("val_map") is not None), default=None),
        "val_map_by_epoch": [round(e["val_map"], 4) for e in epochs if e.get("val_map") is not None],
        "thresholds": bundle.get("thresholds"),
        "temperatures": bundle.get("temperatures"),
        "peak_rss_mib": max(r.peak_rss_mib for r in runs),
        "config": {k: config.get(k) for k in ("model", "img_size", "epochs", "batch_size", "lr", "optimizer",
                                              "weight_decay", "warmup_epochs", "min_lr_ratio", "momentum",
                                              "grad_clip", "augment", "multilabel_loss", "balance",
                                              "val_fraction")},
        "processes": [r.to_dict() for r in runs],
    }


METRIC_KEYS = ("map_macro", "map_micro", "f1_macro", "f1_micro", "precision_macro", "recall_macro",
               "subset_accuracy", "hamming_loss")


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: round(metrics[k], 4) if metrics.get(k) is not None else None for k in METRIC_KEYS}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


# ----------------------------------------------------------------------------- baseline


def measure_baseline(args: argparse.Namespace, source_run: Path, test_csv: Path, tmp: Path) -> dict[str, Any]:
    config = common.read_yaml(source_run / "config.yaml")
    bundle = _read_json(source_run / "model" / "config.json")
    split = _read_json(source_run / "split.json")
    if not config or not bundle or not split:
        return {**headline({}), "error": f"{source_run.name} left no config.yaml, bundle or split.json"}
    spec = {
        "train": [(s["path"], s.get("labels") or []) for s in split["train"]],
        "test_csv": str(test_csv), "class_names": bundle["class_names"],
        "mean": bundle.get("mean"), "std": bundle.get("std"), "seed": args.seed,
        "device": args.device or common.default_device(),
        **{k: config[k] for k in ("model", "img_size", "epochs", "batch_size", "lr", "optimizer",
                                  "weight_decay", "warmup_epochs", "min_lr_ratio", "momentum",
                                  "model_kwargs")},
    }
    result, run = common.run_worker(__file__, "baseline", spec, tmp, threads=args.threads,
                                    timeout_s=args.timeout_s)
    return {**headline(result.get("metrics", {})), "per_class": result.get("metrics", {}).get("per_class"),
            "train_wall_s": run.wall_s, "train_seconds_in_script": result.get("train_seconds"),
            "evaluate_seconds_in_script": result.get("evaluate_seconds"),
            "epochs_run": len(result.get("epochs", [])), "epochs": result.get("epochs"),
            "peak_rss_mib": run.peak_rss_mib, "settings_from": source_run.name,
            "config": {k: spec[k] for k in ("model", "img_size", "epochs", "batch_size", "lr", "optimizer",
                                           "weight_decay", "warmup_epochs", "min_lr_ratio")},
            "processes": [run.to_dict()]}


def _load_images(paths: list[str], size: int):
    """uint8 (N, 3, size, size) of the mosaics (they are already square)."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = []
    for path in paths:
        with Image.open(path) as img:
            img = img.convert("RGB")
            arrays.append(np.asarray(img if img.size == (size, size) else img.resize((size, size))))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _multi_hot(label_lists: list[list[str]], class_names: list[str]):
    import torch

    index = {c: i for i, c in enumerate(class_names)}
    targets = torch.zeros(len(label_lists), len(class_names))
    for row, labels in enumerate(label_lists):
        targets[row, [index[c] for c in labels]] = 1.0
    return targets


def _augment(batch, pad: int, generator):
    """Random crop with `pad` px of zero padding, then a random horizontal flip, per image."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = batch.shape
    padded = F.pad(batch, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    return out


def baseline_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The plain loop: BCEWithLogitsLoss, fixed 0.5 threshold, clarivis's optimizer and schedule."""
    import torch
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from torch import nn

    from clarivis.models.factory import create_model  # registers clarivis's small nets with timm
    from clarivis.multilabel_metrics import compute_multilabel_metrics

    torch.manual_seed(spec["seed"])
    generator = torch.Generator().manual_seed(spec["seed"])
    device, size, names = torch.device(spec["device"]), spec["img_size"], spec["class_names"]
    start = time.perf_counter()
    images = _load_images([p for p, _ in spec["train"]], size)
    targets = _multi_hot([ls for _, ls in spec["train"]], names)
    test_rows = read_manifest(Path(spec["test_csv"]))
    test_images, test_targets = _load_images([p for p, _ in test_rows], size), _multi_hot(
        [ls for _, ls in test_rows], names)
    mean = torch.tensor(spec["mean"]).view(1, 3, 1, 1).to(device) * 255
    std = torch.tensor(spec["std"]).view(1, 3, 1, 1).to(device) * 255

    model = create_model(spec["model"], num_classes=len(names), img_size=size,
                         **(spec.get("model_kwargs") or {})).to(device)
    extra = {"momentum": spec["momentum"]} if spec["optimizer"] == "sgd" else {}
    optimizer = create_optimizer_v2(model, opt=spec["optimizer"], lr=spec["lr"],
                                    weight_decay=spec["weight_decay"], **extra)
    batch, n = spec["batch_size"], len(images)
    steps_per_epoch = n // batch if n % batch <= 1 else n // batch + 1  # no 1-image batch (BatchNorm)
    total = spec["epochs"] * steps_per_epoch
    warmup = min(int(spec["warmup_epochs"] * steps_per_epoch), total // 2)
    scheduler = CosineLRScheduler(optimizer, t_initial=max(2, total - warmup),
                                  lr_min=spec["lr"] * spec["min_lr_ratio"], warmup_t=warmup,
                                  warmup_lr_init=spec["lr"] * 0.01, warmup_prefix=True, t_in_epochs=False)
    criterion, step, epochs = nn.BCEWithLogitsLoss(), 0, []
    for epoch in range(1, spec["epochs"] + 1):
        model.train()
        t0, loss_sum = time.perf_counter(), 0.0
        order = torch.randperm(n, generator=generator)
        for b in range(steps_per_epoch):
            idx = order[b * batch: (b + 1) * batch if b < steps_per_epoch - 1 else n]
            x = (_augment(images[idx], size // 8, generator).to(device).float() - mean) / std
            loss = criterion(model(x), targets[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            loss_sum += loss.item() * len(idx)
        epochs.append({"epoch": epoch, "train_loss": round(loss_sum / n, 4),
                       "epoch_seconds": round(time.perf_counter() - t0, 2)})
        print(f"epoch {epoch} loss {loss_sum / n:.4f} {time.perf_counter() - t0:.1f}s", flush=True)
    train_seconds = time.perf_counter() - start

    t0 = time.perf_counter()
    model.eval()
    with torch.inference_mode():
        logits = [model((test_images[i:i + 256].to(device).float() - mean) / std).cpu()
                  for i in range(0, len(test_images), 256)]
    probs = torch.sigmoid(torch.cat(logits))  # plain sigmoid: no temperature
    metrics = compute_multilabel_metrics(probs, test_targets, names, [0.5] * len(names))
    return {"metrics": metrics.to_dict(), "epochs": epochs, "train_seconds": round(train_seconds, 2),
            "evaluate_seconds": round(time.perf_counter() - t0, 2)}


# ----------------------------------------------------------------------------- main


def main() -> None:
    args = parse_args()
    device = args.device or common.default_device()
    result: dict[str, Any] = {
        "benchmark": NAME,
        "settings": {"preset": args.preset, "train_mosaics": args.train_mosaics,
                     "test_mosaics": args.test_mosaics, "epochs": args.epochs, "model": args.model,
                     "holdout_fraction": args.holdout_fraction, "seed": args.seed, "device": device,
                     "arms": args.arm_list, "threads": args.threads, "clarivis_args": args.clarivis_args,
                     "warm_cache": args.warm_cache, "report": args.report},
        "arms": {},
    }
    with common.work_dir(args.work_dir, args.keep) as tmp:
        t0 = time.perf_counter()
        by_class = common.class_folder_images(unpacked(args.data, tmp))
        train_pool, test_pool = source_pools(by_class, args.holdout_fraction, args.seed)
        rng = random.Random(args.seed)
        train_csv = write_mosaics(draw_tiles(train_pool, args.train_mosaics, rng), tmp / "mosaics" / "train",
                                  tmp / "train.csv")
        test_csv = write_mosaics(draw_tiles(test_pool, args.test_mosaics, rng), tmp / "mosaics" / "test",
                                 tmp / "test.csv")
        names = sorted(by_class)
        result["data"] = {"classes": names, "train_pool_photos": len(train_pool),
                          "test_pool_photos": len(test_pool),
                          "train": label_stats(read_manifest(train_csv), names),
                          "test": label_stats(read_manifest(test_csv), names),
                          "mosaic_px": common.native_image_size(tmp / "mosaics" / "train" / "00000.png")[0],
                          "build_seconds": round(time.perf_counter() - t0, 1)}
        print(f"{NAME}: {args.train_mosaics} train / {args.test_mosaics} test mosaics of "
              f"{result['data']['mosaic_px']} px, {result['data']['test']['mean_labels']:.2f} labels each "
              f"(test), {args.epochs} epochs, arms {', '.join(args.arm_list)}", file=sys.stderr)
        model, source_run = args.model, None
        for arm in args.arm_list:
            if arm == "baseline":
                continue
            run_dir = tmp / arm
            result["arms"][arm] = measure_clarivis(args, arm, model, train_csv, test_csv, run_dir)
            model = model or result["arms"][arm]["config"].get("model")  # every arm on the same model
            source_run = source_run or (run_dir if (run_dir / "split.json").exists() else None)
            print(f"{NAME}: {arm}: {arm_text(result['arms'][arm])}", file=sys.stderr)
            common.write_result(result, args.json, NAME, device)  # partial, in case a later arm fails
        if "baseline" in args.arm_list:
            result["arms"]["baseline"] = (
                measure_baseline(args, source_run, test_csv, tmp) if source_run
                else {**headline({}), "error": "no clarivis run to copy settings from"})
            print(f"{NAME}: baseline: {arm_text(result['arms']['baseline'])}", file=sys.stderr)
    result["settings"]["model"] = model
    result["machine"] = common.describe_machine(device)
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    path = common.write_result(result, args.json, NAME, device)
    print(summary_line(result, path))


def _f(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "n/a"


def arm_text(arm: dict[str, Any]) -> str:
    wall = arm.get("train_wall_s")
    return (f"mAP {_f(arm['map_macro'])}, F1 {_f(arm['f1_macro'])}/{_f(arm['f1_micro'])}, "
            f"subset {_f(arm['subset_accuracy'])}, Hamming {_f(arm['hamming_loss'])}"
            + (f", train {wall:.0f}s" if wall else ""))


def summary_line(result: dict[str, Any], path: Path) -> str:
    s = result["settings"]
    parts = [f"{name} {arm_text(arm)}" for name, arm in result["arms"].items()]
    floor = result.get("data", {}).get("test", {}).get("no_pixels")
    if floor:
        parts.append(f"no pixels: mAP {_f(floor['map_random'])}, F1 {_f(floor['f1_macro_all_labels'])} "
                     f"(every label), Hamming {_f(floor['hamming_no_labels'])} (none)")
    return (f"{NAME} {s['model']} on {s['device']} ({s['train_mosaics']} train / {s['test_mosaics']} test "
            f"mosaics, {s['epochs']} ep; F1 macro/micro): " + " | ".join(parts) + f" | {path}")


if __name__ == "__main__":
    if common.is_worker_call():
        common.worker_main({"baseline": baseline_worker})
    else:
        main()
