"""fp32 ONNX -> int8 ONNX by static quantization (QDQ), calibrated on real, preprocessed images."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from clarivis.export.onnx import INPUT_NAME

# Images per calibration batch: MinMax keeps running extremes, so the batch only trades memory
# for speed; 16 images of 224 px are 10 MB.
CALIBRATION_BATCH = 16
# onnxruntime's calibrators hold every activation of every calibration batch until the end (its
# MinMax option CalibMaxIntermediateOutputs, meant to bound that, drops the held batches without
# reducing them in onnxruntime 1.32: no ranges at all). Memory grows with the calibration images.
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
_LINEAR_OPS = ("Gemm", "MatMul")


@dataclass(frozen=True)
class QuantizeOptions:
    """How quantize_int8 quantizes. Defaults measured on resnet18 CIFAR-10 bundles, 1,000
    held-out images (benchmarks/README.md, "Export"): keeping the first convolution and the
    classifier in fp32 took top-1 agreement with PyTorch from 91.4 to 95.5 % (2 epochs, val
    0.29) and from 96.8 to 98.0 % (8 epochs, val 0.51) for 0.1 MB. Percentile calibration adds
    1.6 and 0.3 points more but holds 2.7x the memory of MinMax (5.1 against 1.9 GB for 128
    images of 224 px into resnet18), so it is an option. Per-tensor scales, Entropy, int8
    activations, reduce_range, 1,000 calibration images or leaving Add/pooling in fp32 each
    gained at most 3 points on the all-int8 graph (per-tensor the most) and at most 0.4 (one
    check set's noise) on this one."""

    # Layers left fp32 (names of end_layers): the first convolution (it sees raw normalised
    # pixels, whose range no 8-bit grid fits well; most of the gain) and the classifier (the
    # last Gemm/MatMul, whose rounding flips near-tie labels directly): 2 of resnet18's 21.
    keep_fp32: tuple[str, ...] = ("first_conv", "classifier")
    per_channel: bool = True  # one weight scale per output channel (filters differ by 100x)
    method: str = "minmax"  # minmax | entropy | percentile (CALIBRATION_METHODS; see above)
    activations: str = "uint8"  # uint8 | int8 (ACTIVATION_TYPES); weights are always int8
    reduce_range: bool = False  # 7-bit weights: no U8S8 overflow on CPUs without VNNI
    # None: every op onnxruntime can quantize (Add, pooling, ...); a tuple: only these types.
    op_types: tuple[str, ...] | None = None


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray,
                  options: QuantizeOptions | None = None) -> Path:
    """Static int8 quantization of `fp32_path`, calibrated on `calibration` (float32 (N, 3, S, S),
    preprocessed exactly as predict does), written to `int8_path`.

    Choices, each the one onnxruntime documents for CPUs: QDQ format (portable: any execution
    provider fuses Q/DQ pairs, and the file is still a valid float graph to tools); uint8
    activations with int8 weights (U8S8, the fast path of x86 VNNI/AVX2 kernels); per-channel
    weight scales (convolutions' filters differ in range by orders of magnitude; one scale per
    tensor costs CNNs several points of agreement); MinMax ranges (with a few hundred real images
    the observed extremes are stable, and it is the fastest calibrator); the first convolution
    and the classifier left in fp32 (QuantizeOptions)."""
    opts = options or QuantizeOptions()
    int8_path = Path(int8_path)
    logging.getLogger("root").setLevel(logging.ERROR)  # quantize_static logs a hint per call
    # Work beside the output: os.replace cannot move a file across file systems.
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as tmp:
        # Shape inference and graph fusion (Conv+BN, ...) before quantizing: onnxruntime's advice,
        # so scales are fitted on the graph that will run rather than on ops that fuse away.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        ends = end_layers(onnx.load(str(prepared)))
        exclude = [ends[which] for which in opts.keep_fp32 if ends.get(which)]
        out = Path(tmp) / "int8.onnx"
        reader = PixelReader(calibration, equal_batches=opts.method != "minmax")
        quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ,
                        per_channel=opts.per_channel, reduce_range=opts.reduce_range,
                        activation_type=ACTIVATION_TYPES[opts.activations],
                        weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        op_types_to_quantize=list(opts.op_types) if opts.op_types else None,
                        calibrate_method=CALIBRATION_METHODS[opts.method])
        os.replace(out, int8_path)
    return int8_path


def end_layers(model: onnx.ModelProto) -> dict[str, str | None]:
    """Node names of the first Conv (a CNN's stem, a ViT's patch embedding) and of the last
    Gemm/MatMul (the classifier: a timm head is the graph's last linear op), in the graph's
    topological order; None for a model that lacks one."""
    nodes = list(model.graph.node)
    return {
        "first_conv": next((n.name for n in nodes if n.op_type == "Conv"), None),
        "classifier": next((n.name for n in reversed(nodes) if n.op_type in _LINEAR_OPS), None),
    }


class PixelReader(CalibrationDataReader):
    """Feeds normalised float32 (N, 3, S, S) pixels, batch by batch, to the calibrator."""

    def __init__(self, pixels: np.ndarray, batch_size: int = CALIBRATION_BATCH, *,
                 equal_batches: bool = False) -> None:
        if equal_batches and len(pixels) > batch_size:
            # The histogram calibrators stack each tensor's batches into one array, which a
            # shorter last batch breaks: it is dropped (under 16 of a few hundred images).
            pixels = pixels[:len(pixels) - len(pixels) % batch_size]
        self.pixels, self.batch_size = pixels, batch_size
        self._batches: Iterator[dict[str, np.ndarray]] | None = None
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = ({INPUT_NAME: np.ascontiguousarray(self.pixels[i:i + self.batch_size])}
                         for i in range(0, len(self.pixels), self.batch_size))
