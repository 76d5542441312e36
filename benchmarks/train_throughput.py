"""Training throughput (images/s) of clarivis, against its limit and against a tutorial baseline.

  (a) limit     forward + backward + optimizer step of the same timm model on random tensors
                already on the device, with the batch size, memory format, AMP, optimizer (timm
                create_optimizer_v2, fused on CUDA as clarivis does), grad clipping and compile
                setting clarivis chose for the run (its config.yaml); warm-up steps excluded.
                No data pipeline at all.
  (b) clarivis  `python -m clarivis train MANIFEST ...` end to end; img/s of the LAST epoch in
                metrics.jsonl (the first may include building caches), and total wall time.
  (c) baseline  torchvision ImageFolder + DataLoader + the same model, as tutorials write it
                (benchmarks/baseline.py); img/s of the last epoch.

All three see the same deterministic subset (first N/classes images of every class). Each runs
alone in its own child process, so peak RSS and thread settings belong to one pipeline.

    python benchmarks/train_throughput.py --data DIR --model resnet18 --img-size 32
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import common

NAME = "train_throughput"
SCRIPT = str(Path(__file__).resolve())
FALLBACK_BATCH_SIZE = 64  # clarivis's usual choice, used only when its run failed


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="class-folder dataset DIR/<class>/*.jpg (or DIR/train/...)")
    p.add_argument("--model", default="resnet18", help="timm model name [resnet18]")
    p.add_argument("--img-size", type=int, default=32, help="input side in px [32]")
    p.add_argument("--model-kwargs", default=None,
                   help="timm kwargs for all three, e.g. patch_size=4 (vit_tiny_patch16_224; --img-size "
                        "already reaches fixed-input-size models)")
    p.add_argument("--images", type=int, default=10000, help="subset size, 0 = every image [10000]")
    p.add_argument("--epochs", type=int, default=2, help="epochs of (b) and (c); the last is measured [2]")
    p.add_argument("--device", default=None, help="cpu | cuda [cuda when available]")
    p.add_argument("--limit-warmup", type=int, default=5, help="untimed steps of (a) [5]")
    p.add_argument("--limit-steps", type=int, default=10, help="timed steps of (a), at least [10]")
    p.add_argument("--limit-seconds", type=float, default=10.0, help="timed seconds of (a), at least [10]")
    p.add_argument("--baseline-batch-size", type=int, default=128, help="[128]")
    p.add_argument("--baseline-workers", type=int, default=None,
                   help="DataLoader workers of (c) [2 on CPU, min(8, cores) on CUDA]")
    p.add_argument("--clarivis-args", default="", help="extra flags for clarivis train, e.g. '--workers 2'")
    p.add_argument("--timeout-s", type=float, default=None, help="kill a pipeline after this many seconds")
    common.add_output_args(p)
    common.add_cache_arg(p)
    return p.parse_args()


def main() -> None:
    if common.is_worker_call():
        common.worker_main({"limit": limit_worker, "baseline": baseline_worker})
        return
    args = parse_args()
    device = args.device or common.default_device()
    data = dataset_root(Path(args.data))
    by_class = common.class_folder_images(data)
    rows = common.stratified_first(by_class, args.images or None)
    native = common.native_image_size(rows[0][0])
    print(f"{NAME}: {len(rows)} images of {len(by_class)} classes from {data}, {args.model} at "
          f"{args.img_size}px on {device}", file=sys.stderr)
    with common.work_dir(args.work_dir, args.keep) as tmp:
        manifest = common.write_manifest(rows, tmp / "subset.csv")
        tree = common.write_symlink_tree(rows, tmp / "imagefolder")
        clarivis = measure_clarivis(args, device, manifest, tmp / "clarivis-run")
        limit = measure_limit(args, device, clarivis, len(by_class), tmp)
        baseline = measure_baseline(args, device, tree / "train", native, len(by_class), tmp)
    result = {
        "benchmark": NAME,
        "settings": {
            "data": "/".join(data.resolve().parts[-2:]), "images": len(rows), "classes": len(by_class),
            "native_size": native, "model": args.model, "img_size": args.img_size,
            "model_kwargs": args.model_kwargs, "epochs": args.epochs, "device": device,
            "threads": args.threads,
        },
        "limit": limit,
        "clarivis": clarivis,
        "baseline": baseline,
        "ratios": ratios(limit["images_per_second"], clarivis["images_per_second"],
                         baseline["images_per_second"]),
        "machine": common.describe_machine(device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = common.write_result(result, args.json, NAME, device)
    print(summary_line(result, path))


def ratios(a: float | None, b: float | None, c: float | None) -> dict[str, float | None]:
    """b/a: how close clarivis gets to the model's own speed; b/c: clarivis against the baseline."""
    return {"clarivis_over_limit": common.fmt_ratio(b, a), "clarivis_over_baseline": common.fmt_ratio(b, c),
            "baseline_over_limit": common.fmt_ratio(c, a)}


def dataset_root(path: Path) -> Path:
    """DIR itself, or DIR/train when DIR holds a train/ split folder (e.g. the CIFAR archive root)."""
    if not path.is_dir():
        raise SystemExit(f"error: {path} is not a folder; pass a class-folder dataset DIR/<class>/*.jpg")
    return path / "train" if (path / "train").is_dir() else path


# ----------------------------------------------------------------------------- (b) clarivis


def measure_clarivis(args: argparse.Namespace, device: str, manifest: Path, run_dir: Path) -> dict[str, Any]:
    """`clarivis train` through its CLI, in a child process; figures from the run folder."""
    command = [sys.executable, "-m", "clarivis", "train", str(manifest), "--model", args.model,
               "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--val-fraction", "0",
               "--out", str(run_dir), "--device", device]
    kwargs = clarivis_model_kwargs(args.model_kwargs, args.img_size)
    if kwargs:
        command += ["--model-kwargs", kwargs]
    command += shlex.split(args.clarivis_args)
    env = common.child_env(args.threads, common.clarivis_cache(args, run_dir.parent / "clarivis-cache"))
    run = common.run_child(command, env=env, timeout_s=args.timeout_s, label="clarivis")
    epochs = common.read_jsonl(run_dir / "metrics.jsonl")
    config = common.read_yaml(run_dir / "config.yaml")
    keys = ("epoch", "train_loss", "train_accuracy", "images_per_second", "epoch_seconds")
    later = [e["images_per_second"] for e in epochs[1:]]
    return {
        # Last epoch: the first may include one-off work (cache building, lazy initialisation).
        "images_per_second": epochs[-1]["images_per_second"] if run.ok and epochs else None,
        "images_per_second_mean_after_first": sum(later) / len(later) if later else None,
        "wall_s": run.wall_s,
        "epochs": [{k: e.get(k) for k in keys} for e in epochs],
        "batch_size": config.get("batch_size"),
        "workers": config.get("workers"),
        "channels_last": config.get("channels_last"),
        "amp": config.get("amp"),
        "optimizer": config.get("optimizer"),
        "momentum": config.get("momentum"),
        "compile": config.get("compile"),
        "lr": config.get("lr"),
        "weight_decay": config.get("weight_decay"),
        "label_smoothing": config.get("label_smoothing"),
        "grad_clip": config.get("grad_clip"),
        "process": run.to_dict(),
    }


def clarivis_model_kwargs(text: str | None, img_size: int) -> str | None:
    """--model-kwargs for clarivis without img_size: clarivis gives fixed-input-size models (ViT)
    --img-size itself and fails with both (TypeError: multiple values for 'img_size')."""
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    kept = [item for item in items if item.partition("=")[0].strip() != "img_size"]
    given = common.parse_model_kwargs(text).get("img_size")
    if given is not None and given != img_size:
        raise SystemExit(f"error: --model-kwargs img_size={given} differs from --img-size {img_size}")
    return ",".join(kept) or None


# ----------------------------------------------------------------------------- (a) limit


def measure_limit(args: argparse.Namespace, device: str, clarivis: dict[str, Any], num_classes: int,
                  tmp: Path) -> dict[str, Any]:
    """The same model's training step without any data pipeline, as clarivis configured it."""
    cuda = device.startswith("cuda")
    channels_last = clarivis["channels_last"]
    if channels_last is None:
        channels_last = cuda  # older clarivis: no such field, channels_last on CUDA only
    batch_size = clarivis["batch_size"] or FALLBACK_BATCH_SIZE
    spec = {
        "device": device, "model": args.model, "img_size": args.img_size, "num_classes": num_classes,
        "model_kwargs": common.parse_model_kwargs(args.model_kwargs), "batch_size": batch_size,
        "channels_last": channels_last, "amp": cuda and clarivis["amp"] is not False,
        "optimizer": clarivis["optimizer"] or "adamw", "momentum": clarivis["momentum"] or 0.9,
        "fused": cuda,  # clarivis's loop asks for the fused (one-kernel) optimizer step on CUDA
        "compile": bool(clarivis["compile"]),
        "lr": clarivis["lr"] or 2e-3, "weight_decay": clarivis["weight_decay"] or 0.05,
        "label_smoothing": clarivis["label_smoothing"] or 0.0, "grad_clip": clarivis["grad_clip"],
        "warmup_steps": args.limit_warmup, "min_steps": args.limit_steps, "min_seconds": args.limit_seconds,
    }
    result, run = common.run_worker(SCRIPT, "limit", spec, tmp, threads=args.threads,
                                    timeout_s=args.timeout_s)
    return {"images_per_second": result.get("images_per_second") if run.ok else None,
            "batch_size_from": "clarivis config.yaml" if clarivis["batch_size"] else "fallback",
            **{k: v for k, v in spec.items() if k != "model_kwargs"}, **result, "process": run.to_dict()}


def limit_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from timm.optim import create_optimizer_v2
    from torch import nn

    device, batch = spec["device"], spec["batch_size"]
    model = common.create_timm_model(spec["model"], spec["num_classes"], spec["img_size"],
                                     spec["model_kwargs"]).to(device)
    model.train()
    images = torch.randn(batch, 3, spec["img_size"], spec["img_size"], device=device)
    targets = torch.randint(0, spec["num_classes"], (batch,), device=device)
    if spec["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    extra: dict[str, Any] = {"momentum": spec["momentum"]} if spec["optimizer"] == "sgd" else {}
    if spec["fused"]:
        extra["fused"] = True
    optimizer = create_optimizer_v2(model, opt=spec["optimizer"], lr=spec["lr"],
                                    weight_decay=spec["weight_decay"], **extra)
    forward = torch.compile(model) if spec["compile"] else model  # compiled during the warm-up
    criterion = nn.CrossEntropyLoss(label_smoothing=spec["label_smoothing"])
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if spec["amp"] else nullcontext()

    def step() -> None:
        with amp:
            loss = criterion(forward(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if spec["grad_clip"]:
            nn.utils.clip_grad_norm_(model.parameters(), spec["grad_clip"])
        optimizer.step()

    for _ in range(spec["warmup_steps"]):
        step()
    common.synchronize(device)
    steps, start = 0, time.perf_counter()
    # No sync inside the loop: the GPU may run behind the timer; the final sync settles it.
    while steps < spec["min_steps"] or time.perf_counter() - start < spec["min_seconds"]:
        step()
        steps += 1
    common.synchronize(device)
    seconds = time.perf_counter() - start
    print(f"limit: {steps} steps of {batch} in {seconds:.1f}s", file=sys.stderr)
    return {"images_per_second": steps * batch / seconds, "steps": steps, "seconds": seconds}


# ----------------------------------------------------------------------------- (c) baseline


def measure_baseline(args: argparse.Namespace, device: str, train_dir: Path, native: tuple[int, int],
                     num_classes: int, tmp: Path) -> dict[str, Any]:
    import baseline

    workers = args.baseline_workers if args.baseline_workers is not None else baseline.default_workers(device)
    spec = {
        "device": device, "train_dir": str(train_dir), "native_size": native, "model": args.model,
        "img_size": args.img_size, "num_classes": num_classes,
        "model_kwargs": common.parse_model_kwargs(args.model_kwargs),
        "batch_size": args.baseline_batch_size, "workers": workers, "epochs": args.epochs,
    }
    result, run = common.run_worker(SCRIPT, "baseline", spec, tmp, threads=args.threads,
                                    timeout_s=args.timeout_s)
    epochs = result.get("epochs", [])
    later = [e["images_per_second"] for e in epochs[1:]]
    return {"images_per_second": epochs[-1]["images_per_second"] if run.ok and epochs else None,
            "images_per_second_mean_after_first": sum(later) / len(later) if later else None,
            "batch_size": args.baseline_batch_size, "workers": workers, "epochs": epochs,
            "wall_s": run.wall_s, "process": run.to_dict()}


def baseline_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import baseline

    device = spec["device"]
    train_tf, _ = baseline.tutorial_transforms(spec["img_size"], spec["native_size"])
    loader = baseline.tutorial_loader(Path(spec["train_dir"]), train_tf, batch_size=spec["batch_size"],
                                      shuffle=True, workers=spec["workers"], device=device)
    model, optimizer, criterion = baseline.build(spec["model"], spec["num_classes"], spec["img_size"],
                                                 spec["model_kwargs"], device)
    epochs = []
    for epoch in range(1, spec["epochs"] + 1):
        stats = baseline.train_epoch(model, loader, optimizer, criterion, device)
        epochs.append({"epoch": epoch, **stats})
        print(f"baseline epoch {epoch}: {stats['images_per_second']:.0f} img/s, "
              f"{stats['epoch_seconds']:.1f}s", file=sys.stderr)
    return {"epochs": epochs}


# ----------------------------------------------------------------------------- summary


def summary_line(r: dict[str, Any], path: Path) -> str:
    s, a, b, c, ratios = r["settings"], r["limit"], r["clarivis"], r["baseline"], r["ratios"]
    rss = "/".join(common.fmt_gib(x["process"]["peak_rss_mib"]) for x in (a, b, c))
    vs = (f" = {ratios['clarivis_over_limit'] or 'n/a'}x limit, "
          f"{ratios['clarivis_over_baseline'] or 'n/a'}x baseline")
    return (f"{NAME} {s['model']}@{s['img_size']}px {s['device']} ({s['images']} images, "
            f"{s['epochs']} epochs): limit {common.fmt_ips(a['images_per_second'])} [bs {a['batch_size']}] | "
            f"clarivis {common.fmt_ips(b['images_per_second'])} [bs {b['batch_size']}]{vs} | "
            f"baseline {common.fmt_ips(c['images_per_second'])} [bs {c['batch_size']}] | "
            f"peak RSS GiB a/b/c {rss} | {path}")


if __name__ == "__main__":
    main()
