"""Whole-process wall time of a short training run: `clarivis train` (imports, data check, epochs,
validation metrics, calibration and the HTML report: everything the command does) against the
tutorial loop of benchmarks/baseline.py (torchvision ImageFolder + DataLoader, the same timm
model, image size and epochs), each in its own child process timed from start to exit.

On a short run the fixed costs (imports, the end-of-run report) weigh as much as the epochs; this
measures them where a user feels them. Both sides train on the same deterministic subset (the
first N/classes images of every class, sorted names) and are tested on held-out images (the next
ones of every class), outside the timed processes. Runs are interleaved (clarivis, tutorial,
tutorial, clarivis, ...) and the best of --repeats counts per side; every clarivis run starts with
an empty decode cache unless --warm-cache.

    python benchmarks/short_run_wall.py --data DIR [--images 5000 --epochs 3 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import common

NAME = "short_run_wall"
SCRIPT = str(Path(__file__).resolve())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="class-folder dataset DIR/<class>/*.jpg (or DIR/train/...)")
    p.add_argument("--images", type=int, default=5000, help="training images, stratified [5000]")
    p.add_argument("--test-images", type=int, default=1000,
                   help="held-out test images (the next ones of every class), 0 = no test [1000]")
    p.add_argument("--model", default="mobilenetv3_small_050", help="timm model of both sides")
    p.add_argument("--img-size", type=int, default=32, help="input side in px [32]")
    p.add_argument("--epochs", type=int, default=3, help="[3]")
    p.add_argument("--repeats", type=int, default=2, help="runs per side, interleaved; the best counts [2]")
    p.add_argument("--device", default=None,
                   help="cpu | cuda: passed to both sides [clarivis's own choice; the tutorial's: "
                        "cuda when available]")
    p.add_argument("--baseline-workers", type=int, default=None,
                   help="tutorial DataLoader workers [2 on CPU, min(8, cores) on CUDA]")
    p.add_argument("--clarivis-args", default="", help="extra flags for clarivis train, e.g. '--no-report'")
    p.add_argument("--timeout-s", type=float, default=None, help="kill a run after this many seconds")
    common.add_output_args(p)
    common.add_cache_arg(p)
    return p.parse_args()


def main() -> None:
    if common.is_worker_call():
        common.worker_main({"tutorial": tutorial_worker})
        return
    args = parse_args()
    device = args.device or common.default_device()
    data = common.dataset_root(args.data)
    by_class = common.class_folder_images(data)
    rows = common.stratified_first(by_class, args.images)
    used = {path for path, _ in rows}
    rest = {label: [p for p in files if p not in used] for label, files in by_class.items()}
    test_rows = common.stratified_first(rest, args.test_images) if args.test_images else []
    native = common.native_image_size(rows[0][0])
    print(f"{NAME}: {len(rows)} train + {len(test_rows)} test images of {len(by_class)} classes from "
          f"{data}, {args.model} at {args.img_size}px, {args.epochs} epochs, {args.repeats} runs a side",
          file=sys.stderr)
    runs: dict[str, list[dict[str, Any]]] = {"clarivis": [], "tutorial": []}
    with common.work_dir(args.work_dir, args.keep) as tmp:
        train_dir = common.write_symlink_tree(rows, tmp / "subset") / "train"
        test_dir = common.write_symlink_tree(test_rows, tmp / "test") / "train" if test_rows else None
        for r in range(args.repeats):
            # Interleaved, the first side alternating: drift of a shared machine hits both alike.
            order = ("clarivis", "tutorial") if r % 2 == 0 else ("tutorial", "clarivis")
            for side in order:
                if side == "clarivis":
                    runs[side].append(measure_clarivis(args, train_dir, test_dir, tmp / f"clarivis-{r}"))
                else:
                    runs[side].append(measure_tutorial(args, device, train_dir, test_dir, native,
                                                       len(by_class), tmp, r))
                print(f"{NAME}: {side} run {r + 1}: {runs[side][-1]['wall_s']} s", file=sys.stderr)
    best = {side: best_run(rs) for side, rs in runs.items()}
    c, t = best["clarivis"], best["tutorial"]
    result = {
        "benchmark": NAME,
        "settings": {
            "data": "/".join(data.resolve().parts[-2:]), "images": len(rows), "test_images": len(test_rows),
            "classes": len(by_class), "native_size": native, "model": args.model,
            "img_size": args.img_size, "epochs": args.epochs, "repeats": args.repeats,
            "device": device, "clarivis_args": args.clarivis_args, "threads": args.threads,
            "cold_cache": not args.warm_cache,
        },
        "clarivis": {"best_wall_s": c and c["wall_s"], "runs": runs["clarivis"]},
        "tutorial": {"best_wall_s": t and t["wall_s"], "runs": runs["tutorial"]},
        # > 1: clarivis's whole process finished sooner (best run against best run).
        "tutorial_over_clarivis": common.fmt_ratio(t and t["wall_s"], c and c["wall_s"]),
        "machine": common.describe_machine(device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = common.write_result(result, args.json, NAME, device)
    print(summary_line(result, path))


def best_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in runs if r["process"]["returncode"] == 0]
    return min(ok, key=lambda r: r["wall_s"]) if ok else None


# ----------------------------------------------------------------------------- clarivis


def measure_clarivis(args: argparse.Namespace, train_dir: Path, test_dir: Path | None,
                     run_dir: Path) -> dict[str, Any]:
    """`clarivis train DIR` as a user types it, timed from process start to exit; the phases
    from the run folder's file times; test accuracy afterwards, untimed (`clarivis evaluate`)."""
    command = [sys.executable, "-m", "clarivis", "train", str(train_dir), "--model", args.model,
               "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--out", str(run_dir)]
    if args.device:
        command += ["--device", args.device]
    command += shlex.split(args.clarivis_args)
    cache = common.clarivis_cache(args, run_dir.with_name(run_dir.name + "-cache"))
    if cache is not None:
        cache.mkdir(parents=True)
    started = time.time()
    run = common.run_child(command, env=common.child_env(args.threads, cache), timeout_s=args.timeout_s,
                           label="clarivis")
    epochs = common.read_jsonl(run_dir / "metrics.jsonl")
    result: dict[str, Any] = {
        "wall_s": run.wall_s,
        "epochs_s": round(sum(e.get("epoch_seconds", 0) for e in epochs), 2),
        "phases_s": phases(run_dir, started, run.wall_s),
        "val_accuracy": max((e["val_accuracy"] for e in epochs if e.get("val_accuracy") is not None),
                            default=None),
        "test_accuracy": None,
        "process": run.to_dict(),
    }
    if run.ok and test_dir is not None:
        metrics = run_dir / "test_metrics.json"
        evaluate = common.run_child(
            [sys.executable, "-m", "clarivis", "evaluate", str(run_dir / "model"), str(test_dir),
             "--json", str(metrics)] + (["--device", args.device] if args.device else []),
            env=common.child_env(args.threads), timeout_s=args.timeout_s, label="clarivis-test")
        if evaluate.ok:
            result["test_accuracy"] = json.loads(metrics.read_text())["accuracy"]
    return result


def phases(run_dir: Path, started: float, wall_s: float) -> dict[str, float | None]:
    """Seconds from process start to the end of the epochs (metrics.jsonl last written), then to
    the validation metrics (val_metrics.json), then to the report (report.html), then to exit."""
    marks = [("epochs_done", run_dir / "metrics.jsonl"), ("val_metrics_done", run_dir / "val_metrics.json"),
             ("report_done", run_dir / "report.html")]
    out: dict[str, float | None] = {}
    for name, path in marks:
        out[name] = round(path.stat().st_mtime - started, 2) if path.exists() else None
    out["exit"] = wall_s
    return out


# ----------------------------------------------------------------------------- tutorial


def measure_tutorial(args: argparse.Namespace, device: str, train_dir: Path, test_dir: Path | None,
                     native: tuple[int, int], num_classes: int, tmp: Path, repeat: int) -> dict[str, Any]:
    import baseline

    workers = args.baseline_workers if args.baseline_workers is not None else baseline.default_workers(device)
    spec = {"device": device, "train_dir": str(train_dir), "test_dir": str(test_dir) if test_dir else None,
            "native_size": native, "model": args.model, "img_size": args.img_size,
            "num_classes": num_classes, "batch_size": baseline.BATCH_SIZE, "workers": workers,
            "epochs": args.epochs}
    result, run = common.run_worker(SCRIPT, "tutorial", spec, tmp,
                                    threads=args.threads, timeout_s=args.timeout_s)
    test_s = result.get("test_seconds") or 0.0
    return {
        # The test pass runs in the same process after training; it is not part of the timed run.
        "wall_s": round(run.wall_s - test_s, 2) if run.ok else run.wall_s,
        "epochs_s": round(sum(e["epoch_seconds"] for e in result.get("epochs", [])), 2),
        "started_training_after_s": result.get("started_training_after_s"),
        "test_seconds": test_s,
        "test_accuracy": result.get("test_accuracy"),
        "batch_size": baseline.BATCH_SIZE, "workers": workers, "epochs": result.get("epochs", []),
        "process": run.to_dict(),
    }


def tutorial_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import baseline

    device = spec["device"]
    train_tf, test_tf = baseline.tutorial_transforms(spec["img_size"], spec["native_size"])
    loader = baseline.tutorial_loader(Path(spec["train_dir"]), train_tf, batch_size=spec["batch_size"],
                                      shuffle=True, workers=spec["workers"], device=device)
    model, optimizer, criterion = baseline.build(spec["model"], spec["num_classes"], spec["img_size"], {},
                                                 device)
    started_training = time.time() - spec["started_at"]
    epochs = []
    for epoch in range(1, spec["epochs"] + 1):
        stats = baseline.train_epoch(model, loader, optimizer, criterion, device)
        epochs.append({"epoch": epoch, **stats})
        print(f"tutorial epoch {epoch}: {stats['train_loss']:.3f} loss, {stats['epoch_seconds']:.1f}s",
              file=sys.stderr)
    result: dict[str, Any] = {"epochs": epochs, "started_training_after_s": round(started_training, 2)}
    if spec["test_dir"]:
        start = time.perf_counter()
        test = baseline.tutorial_loader(Path(spec["test_dir"]), test_tf, batch_size=spec["batch_size"],
                                        shuffle=False, workers=spec["workers"], device=device)
        result["test_accuracy"] = baseline.evaluate(model, test, device)
        result["test_seconds"] = round(time.perf_counter() - start, 2)
    return result


# ----------------------------------------------------------------------------- summary


def summary_line(r: dict[str, Any], path: Path) -> str:
    s, c, t = r["settings"], r["clarivis"], r["tutorial"]

    def side(x: dict[str, Any]) -> str:
        accs = [run["test_accuracy"] for run in x["runs"] if run["test_accuracy"] is not None]
        acc = f", test acc {sum(accs) / len(accs):.3f}" if accs else ""
        return f"best {x['best_wall_s']} s of {[run['wall_s'] for run in x['runs']]}{acc}"

    return (f"{NAME} {s['model']}@{s['img_size']}px {s['device']} ({s['images']} images, {s['epochs']} "
            f"epochs): clarivis {side(c)} | tutorial {side(t)} | tutorial/clarivis "
            f"{r['tutorial_over_clarivis'] or 'n/a'}x | {path}")


if __name__ == "__main__":
    main()
