"""fp32 ONNX -> int8 ONNX by static quantization (QDQ), calibrated on real, preprocessed images."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
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


class PixelReader(CalibrationDataReader):
    """Feeds normalised float32 (N, 3, S, S) pixels, batch by batch, to the calibrator."""

    def __init__(self, pixels: np.ndarray, batch_size: int = CALIBRATION_BATCH) -> None:
        self.pixels, self.batch_size = pixels, batch_size
        self._batches: Iterator[dict[str, np.ndarray]] | None = None
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = ({INPUT_NAME: np.ascontiguousarray(self.pixels[i:i + self.batch_size])}
                         for i in range(0, len(self.pixels), self.batch_size))


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray) -> Path:
    """Static int8 quantization of `fp32_path`, calibrated on `calibration` (float32 (N, 3, S, S),
    preprocessed exactly as predict does), written to `int8_path`.

    Choices, each the one onnxruntime documents for CPUs: QDQ format (portable: any execution
    provider fuses Q/DQ pairs, and the file is still a valid float graph to tools); uint8
    activations with int8 weights (U8S8, the fast path of x86 VNNI/AVX2 kernels); per-channel
    weight scales (convolutions' filters differ in range by orders of magnitude; one scale per
    tensor costs CNNs several points of agreement); MinMax ranges (with a few hundred real images
    the observed extremes are stable, and it is the fastest calibrator)."""
    int8_path = Path(int8_path)
    logging.getLogger("root").setLevel(logging.ERROR)  # quantize_static logs a hint per call
    # Work beside the output: os.replace cannot move a file across file systems.
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as tmp:
        # Shape inference and graph fusion (Conv+BN, ...) before quantizing: onnxruntime's advice,
        # so scales are fitted on the graph that will run rather than on ops that fuse away.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        out = Path(tmp) / "int8.onnx"
        quantize_static(str(prepared), str(out), PixelReader(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        os.replace(out, int8_path)
    return int8_path
