"""Batched prediction throughput (images/s) of clarivis.Classifier against the raw model forward.

  files    Classifier.predict(paths): decode + preprocess + forward + softmax/top-k
  pil      Classifier.predict(PIL images), decoded before the clock starts: no file decoding
  forward  clf.model(batch) on the same images already decoded, preprocessed and stacked into
           one tensor on the device, same batch size, inference mode: the limit

Each pipeline passes over the whole set until it has run --min-seconds (5 s), so short sets on
fast machines still give stable figures.
Ratios files/forward and pil/forward say how much of the model's own speed the API delivers.
Each pipeline runs alone in its own child process (own peak RSS); one warm-up batch excluded.

    python benchmarks/predict_throughput.py --model-dir RUN/model --data DIR
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import common

NAME = "predict_throughput"
SCRIPT = str(Path(__file__).resolve())
BACKENDS = ("torch", "onnx")
PIPELINES = ("files", "pil", "forward")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="a ModelBundle folder (RUN/model)")
    p.add_argument("--data", required=True, help="images: class folders DIR/<class>/* or a flat folder")
    p.add_argument("--images", type=int, default=5000, help="images to predict, 0 = all [5000]")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass [256]")
    p.add_argument("--device", default=None, help="cpu | cuda [cuda when available]")
    p.add_argument("--min-seconds", type=float, default=5.0,
                   help="repeat the whole set until each pipeline has run this long, s [5]")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="[torch]; onnx: not available yet")
    p.add_argument("--timeout-s", type=float, default=None, help="kill a pipeline after this many seconds")
    common.add_output_args(p)
    return p.parse_args()


def main() -> None:
    if common.is_worker_call():
        common.worker_main({"predict": predict_worker, "forward": forward_worker})
        return
    args = parse_args()
    check_backend(args.backend)
    device = args.device or common.default_device()
    paths = image_files(Path(args.data), args.images or None)
    print(f"{NAME}: {len(paths)} images, batch {args.batch_size}, {args.backend} on {device}",
          file=sys.stderr)
    pipelines = {}
    with common.work_dir(args.work_dir, args.keep) as tmp:
        list_file = tmp / "images.txt"
        list_file.write_text("".join(f"{p.resolve()}\n" for p in paths))
        spec = {"model_dir": str(Path(args.model_dir).resolve()), "images": str(list_file),
                "batch_size": args.batch_size, "device": device, "backend": args.backend,
                "min_seconds": args.min_seconds}
        for name in PIPELINES:
            mode = "forward" if name == "forward" else "predict"
            result, run = common.run_worker(SCRIPT, mode, {**spec, "source": name}, tmp,
                                            threads=args.threads, timeout_s=args.timeout_s)
            pipelines[name] = {"images_per_second": result.get("images_per_second") if run.ok else None,
                               **result, "process": run.to_dict()}
    ips = {name: p["images_per_second"] for name, p in pipelines.items()}
    result = {
        "benchmark": NAME,
        "settings": {"data": "/".join(Path(args.data).resolve().parts[-2:]), "images": len(paths),
                     "batch_size": args.batch_size, "device": device, "backend": args.backend,
                     "threads": args.threads},
        "pipelines": pipelines,
        "ratios": {"files_over_forward": common.fmt_ratio(ips["files"], ips["forward"]),
                   "pil_over_forward": common.fmt_ratio(ips["pil"], ips["forward"])},
        "machine": common.describe_machine(device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = common.write_result(result, args.json, NAME, device)
    print(summary_line(result, path))


def image_files(root: Path, n: int | None) -> list[Path]:
    """A deterministic set: first n/classes per class folder, or the first n of a flat folder."""
    if not root.is_dir():
        raise SystemExit(f"error: {root} is not a folder of images")
    root = root / "train" if (root / "train").is_dir() else root
    if any(p.is_dir() for p in root.iterdir()):
        return [p for p, _ in common.stratified_first(common.class_folder_images(root), n)]
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in common.IMAGE_SUFFIXES)
    return files[:n] if n else files


# ----------------------------------------------------------------------------- backends


def check_backend(backend: str) -> None:
    if backend == "onnx":
        raise SystemExit("error: --backend onnx is not available yet (clarivis has no ONNX export); "
                         "use --backend torch")


def load_predictor(backend: str, model_dir: str, device: str):
    """An object with clarivis.Classifier's predict(images, batch_size=, top_k=), `model` and
    `transform`. The onnx backend goes here once clarivis can export: load the exported model
    (onnxruntime session) behind the same predict(); the forward pipeline then runs the session
    on the same preprocessed tensor."""
    check_backend(backend)
    from clarivis import Classifier

    return Classifier.load(model_dir, device=device)


# ----------------------------------------------------------------------------- workers


def decode(paths: list[str]) -> list:
    """RGB PIL images, pixels loaded (decoding happens here, not later inside predict)."""
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as img:
            images.append(img.convert("RGB"))
    return images


def predict_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Classifier.predict over files (decode included) or over already-decoded PIL images."""
    clf = load_predictor(spec["backend"], spec["model_dir"], spec["device"])
    paths = Path(spec["images"]).read_text().splitlines()
    inputs = paths if spec["source"] == "files" else decode(paths)
    batch = spec["batch_size"]
    clf.predict(inputs[:batch], batch_size=batch, top_k=1)  # warm-up: lazy init, allocator, caches
    common.synchronize(spec["device"])
    passes, errors, start = 0, 0, time.perf_counter()
    while passes == 0 or time.perf_counter() - start < spec["min_seconds"]:
        predictions = clf.predict(inputs, batch_size=batch, top_k=1)
        errors = sum(1 for p in predictions if p.error)
        passes += 1
    common.synchronize(spec["device"])
    seconds = time.perf_counter() - start
    print(f"{spec['source']}: {passes} x {len(inputs)} images in {seconds:.1f}s ({errors} errors)",
          file=sys.stderr)
    return {"images_per_second": passes * len(inputs) / seconds, "seconds": seconds, "passes": passes,
            "errors": errors}


def forward_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The model alone on one preprocessed tensor already on the device (the same model object,
    dtype and preprocessing the Classifier uses)."""
    import numpy as np
    import torch

    clf = load_predictor(spec["backend"], spec["model_dir"], spec["device"])
    images = decode(Path(spec["images"]).read_text().splitlines())
    pixels = [torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1) for img in images]
    # In the layout the Classifier gives its model (channels_last), so the ratio is the pipeline's.
    tensor = torch.stack([clf.transform(p) for p in pixels]).to(spec["device"])
    tensor = tensor.contiguous(memory_format=torch.channels_last)
    batch = spec["batch_size"]
    with torch.inference_mode():
        clf.model(tensor[:batch])  # warm-up
        common.synchronize(spec["device"])
        passes, start = 0, time.perf_counter()
        while passes == 0 or time.perf_counter() - start < spec["min_seconds"]:
            for i in range(0, len(tensor), batch):
                clf.model(tensor[i:i + batch])
            passes += 1
        common.synchronize(spec["device"])
        seconds = time.perf_counter() - start
    print(f"forward: {passes} x {len(tensor)} images in {seconds:.1f}s", file=sys.stderr)
    return {"images_per_second": passes * len(tensor) / seconds, "seconds": seconds, "passes": passes,
            "input_shape": list(tensor.shape[1:])}


# ----------------------------------------------------------------------------- summary


def summary_line(r: dict[str, Any], path: Path) -> str:
    s, p, ratios = r["settings"], r["pipelines"], r["ratios"]
    rss = "/".join(common.fmt_gib(p[name]["process"]["peak_rss_mib"]) for name in PIPELINES)
    return (f"{NAME} {s['backend']} {s['device']} ({s['images']} images, batch {s['batch_size']}): "
            f"files {common.fmt_ips(p['files']['images_per_second'])} "
            f"({ratios['files_over_forward'] or 'n/a'}x forward) | "
            f"pil {common.fmt_ips(p['pil']['images_per_second'])} "
            f"({ratios['pil_over_forward'] or 'n/a'}x forward) | "
            f"forward {common.fmt_ips(p['forward']['images_per_second'])} | "
            f"peak RSS GiB files/pil/forward {rss} | {path}")


if __name__ == "__main__":
    main()
