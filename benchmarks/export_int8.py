"""int8 quantization settings compared on one bundle: top-1 agreement with PyTorch, size and CPU
speed of model.int8.onnx for each variant of clarivis.export.quantize.QuantizeOptions and of
the number of calibration images.

The check images and the calibration images are separate folders (neither seen in training),
so every variant is measured on the same held-out images with the same reference logits:

    python benchmarks/export_int8.py --model-dir RUN/model --check DIR --calibration DIR

Prints one Markdown table row per variant (the "Export" section of benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from clarivis.classifier import Classifier
from clarivis.export.check import measure_speed
from clarivis.export.images import _folder_images, _sample
from clarivis.export.onnx import export_onnx
from clarivis.export.pipeline import ExportedModel, _check, _pixels
from clarivis.export.quantize import QuantizeOptions, quantize_int8

_WEIGHTED = ("Conv", "Gemm", "MatMul")
# (label, calibration images, options): the former default first, then one change at a time.
VARIANTS = [
    ("former default: per-channel MinMax, all layers int8", 256,
     QuantizeOptions(keep_fp32=())),
    ("per-tensor MinMax, all layers int8", 256, QuantizeOptions(keep_fp32=(), per_channel=False)),
    ("per-channel Entropy, all layers int8", 256, QuantizeOptions(keep_fp32=(), method="entropy")),
    ("per-channel Percentile, all layers int8", 256,
     QuantizeOptions(keep_fp32=(), method="percentile")),
    ("per-channel MinMax, all layers int8, 1000 calibration images", 1000,
     QuantizeOptions(keep_fp32=())),
    ("first conv + classifier fp32 (new default)", 256, QuantizeOptions()),
    ("first conv + classifier fp32, 512 calibration images", 512, QuantizeOptions()),
    ("first conv + classifier fp32, 1000 calibration images", 1000, QuantizeOptions()),
    ("first conv + classifier fp32, Percentile", 256, QuantizeOptions(method="percentile")),
    ("int8 activations (S8S8), all layers int8", 256,
     QuantizeOptions(keep_fp32=(), activations="int8")),
    ("7-bit weights (reduce_range), all layers int8", 256,
     QuantizeOptions(keep_fp32=(), reduce_range=True)),
    ("first conv + classifier fp32, S8S8", 256, QuantizeOptions(activations="int8")),
    ("first conv + classifier fp32, reduce_range", 256, QuantizeOptions(reduce_range=True)),
    ("first conv + classifier fp32, S8S8, Percentile", 256,
     QuantizeOptions(activations="int8", method="percentile")),
    ("only Conv/Gemm/MatMul int8 (Add, pooling fp32)", 256,
     QuantizeOptions(keep_fp32=(), op_types=_WEIGHTED)),
    ("first conv + classifier fp32, only Conv/Gemm/MatMul int8", 256, QuantizeOptions(op_types=_WEIGHTED)),
    ("first conv + classifier fp32, Percentile, reduce_range", 256,
     QuantizeOptions(method="percentile", reduce_range=True)),
    ("first conv + classifier fp32, only Conv/Gemm/MatMul, Percentile", 256,
     QuantizeOptions(op_types=_WEIGHTED, method="percentile")),
    ("first conv fp32 only", 256, QuantizeOptions(keep_fp32=("first_conv",))),
    ("classifier fp32 only", 256, QuantizeOptions(keep_fp32=("classifier",))),
    ("first conv + classifier fp32, Entropy", 256, QuantizeOptions(method="entropy")),
    ("first conv + classifier fp32, Percentile, 1000 calibration images", 1000,
     QuantizeOptions(method="percentile")),
    ("first conv + classifier fp32, per-tensor", 256, QuantizeOptions(per_channel=False)),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="a ModelBundle folder (RUN/model)")
    p.add_argument("--check", required=True, help="held-out images the agreement is measured on")
    p.add_argument("--calibration", required=True, help="images that calibrate int8 (1,000 or more)")
    p.add_argument("--check-images", type=int, default=1000, help="check images used [1000]")
    p.add_argument("--only", type=int, nargs="*", help="indices of VARIANTS to run [all]")
    p.add_argument("--repeats", type=int, default=3,
                   help="speed measurements per model; the fastest is reported (other processes "
                        "only ever slow a run down) [3]")
    args = p.parse_args()

    clf = Classifier.load(args.model_dir, device="cpu", reject=False)
    check, _ = _pixels(clf, _sample(_folder_images(args.check), args.check_images))
    calibration_paths = _sample(_folder_images(args.calibration), max(n for _, n, _ in VARIANTS))
    calibration, _ = _pixels(clf, calibration_paths)
    with torch.inference_mode():
        reference = np.concatenate([clf.logits(torch.from_numpy(check[i:i + 64])).numpy()
                                    for i in range(0, len(check), 64)])
    torch_speed = min((measure_speed(lambda x: clf.logits(torch.from_numpy(x)), check)
                       for _ in range(args.repeats)), key=lambda speed: speed.ms_per_image)
    print(f"{args.model_dir}: {len(check)} check images, {torch.get_num_threads()} threads; "
          f"torch {torch_speed.ms_per_image:.2f} ms/image, {torch_speed.images_per_s:.0f} images/s")
    print("| variant | calibration images | agreement | max logit diff | ms/image | images/s | MB | "
          "quantize s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = export_onnx(clf.model, Path(tmp) / "model.onnx", img_size=clf.config.preprocess.img_size)
        fp32 = _fastest(_check(fp32_path, check, reference, "fp32"), fp32_path, check, args.repeats)
        print(f"| ONNX fp32 | - | {fp32.agreement:.1%} | {fp32.max_abs_logit_diff:.1e} | "
              f"{fp32.ms_per_image:.2f} | {fp32.images_per_s:,.0f} | {fp32.size_mb:.1f} | - |")
        for index, (label, count, options) in enumerate(VARIANTS):
            if args.only and index not in args.only:
                continue
            start = time.perf_counter()
            path = quantize_int8(fp32_path, Path(tmp) / f"int8-{index}.onnx", calibration[:count], options)
            seconds = time.perf_counter() - start
            m = _fastest(_check(path, check, reference, "int8"), path, check, args.repeats)
            print(f"| {label} | {count} | {m.agreement:.1%} | {m.max_abs_logit_diff:.2f} | "
                  f"{m.ms_per_image:.2f} | {m.images_per_s:,.0f} | {m.size_mb:.1f} | {seconds:.0f} |",
                  flush=True)


def _fastest(m: ExportedModel, path: Path, check: np.ndarray, repeats: int) -> ExportedModel:
    """`m` with the best latency and throughput of `repeats` measurements (its own included)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(repeats - 1):
        speed = measure_speed(lambda x: session.run(None, {name: x})[0], check)
        m.ms_per_image = min(m.ms_per_image, speed.ms_per_image)
        m.images_per_s = max(m.images_per_s, speed.images_per_s)
    return m


if __name__ == "__main__":
    main()
