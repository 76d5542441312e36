"""`clarivis export`: a bundle's model as ONNX fp32 (and int8), checked against PyTorch on
held-out images and timed, with the results written into the bundle's config.json. A
single-label model is checked on its top-1 class, a multi-label one on its label set."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from clarivis.classifier import Classifier
from clarivis.errors import DataError
from clarivis.export.check import Speed, label_set_agreement, measure_speed, top1_agreement
from clarivis.export.images import choose_images
from clarivis.export.onnx import OPSET, export_onnx
from clarivis.export.quantize import QuantizeOptions, quantize_int8
from clarivis.fileio import sha256_hex
from clarivis.models.bundle import load_bundle, update_bundle_config
from clarivis.spec import (
    FAILED_INT8_NAME,
    INT8_ONNX_NAME,
    ONNX_NAME,
    WEIGHTS_NAME,
    BundleConfig,
    resolve_bundle_path,
)

# Agreement with PyTorch each file must reach on the check images: the same top-1 class, or for
# a multi-label model the same label set. fp32 differs from PyTorch only by float summation
# order, so more than 1 in 1,000 changed answers means a broken export; int8 rounding
# legitimately flips near-ties (near-threshold classes), which a 2 % budget allows.
MIN_AGREEMENT = {"fp32": 0.999, "int8": 0.98}
# An int8 model that missed its bar is left as spec.FAILED_INT8_NAME: a name nothing loads
# (predict and serve --int8 read model.int8.onnx only), for a user who wants to judge it, or time
# it, without calibrating again. Removed by the next export, which makes or declines a new one.
_BATCH = 64  # images per model call while computing check logits
# What `agreement` compares, as recorded: the arg-max class, or the whole multi-label set (every
# class's sigmoid(logit / T_c + b_c) >= threshold_c decision) of each check image.
TOP1, LABEL_SET = "top1", "label_set"


@dataclass
class ExportedModel:
    file: str  # name inside the bundle folder
    agreement: float  # share of check images with PyTorch's answer (see `compared`), 0..1
    min_agreement: float  # the bar it had to reach
    images: int  # check images it was measured on
    max_abs_logit_diff: float  # largest |onnx - torch| over the check logits
    ms_per_image: float  # CPU latency, batch 1, ms (median)
    images_per_s: float  # CPU throughput at batch 32
    size_mb: float
    compared: str = TOP1  # TOP1 | LABEL_SET: what had to agree
    # multi-label: share of the images x classes in/out decisions that agree (finer than sets)
    class_agreement: float | None = None

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_agreement

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class ExportResult:
    bundle_dir: Path
    opset: int
    fp32: ExportedModel
    int8: ExportedModel | None
    torch: Speed  # the PyTorch model timed the same way, for comparison
    check_source: str  # where the check images came from
    calibration_source: str | None
    calibration_images: int
    skipped: list[str] = field(default_factory=list)  # unreadable check/calibration files
    # multi-label: the per-class temperatures and thresholds the label sets were checked with
    # (a later re-fit of the thresholds changes the sets, not this record)
    label_rule: dict[str, list[float]] | None = None

    @property
    def passed(self) -> bool:
        """Everything asked for passed: fp32, and int8 when --int8 asked for it too."""
        return self.fp32.passed and (self.int8 is None or self.int8.passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "opset": self.opset, "passed": self.passed,
            "fp32": self.fp32.to_dict(), "int8": self.int8.to_dict() if self.int8 else None,
            "torch": self.torch.to_dict(), "check_source": self.check_source,
            "calibration_source": self.calibration_source, "calibration_images": self.calibration_images,
            # How int8 was made, so a recorded agreement can be told apart from a later default's.
            "quantization": asdict(QuantizeOptions()) if self.int8 else None,
            "threads": torch.get_num_threads(), "skipped": len(self.skipped),
        } | ({"label_rule": self.label_rule} if self.label_rule else {})

    def lines(self) -> list[str]:
        """What the CLI prints: one line per model, then the verdict when something failed."""
        out = [f"torch: {self.torch.ms_per_image:.2f} ms/image, {self.torch.images_per_s:.0f} images/s"]
        for name, m in (("fp32", self.fp32), ("int8", self.int8)):
            if m is not None:
                verdict = "ok" if m.passed else f"BELOW the {m.min_agreement:.1%} bar"
                what = "gives PyTorch's label set" if m.compared == LABEL_SET else "agrees with PyTorch"
                out.append(f"{name}: {m.file} ({m.size_mb:.1f} MB) {what} on "
                           f"{m.agreement:.2%} of {m.images} images ({verdict}); "
                           f"{m.ms_per_image:.2f} ms/image, {m.images_per_s:.0f} images/s")
        if not self.fp32.passed:
            out.append(f"EXPORT CHECK FAILED: {ONNX_NAME} does not predict like the PyTorch model; "
                       "it was written but do not serve it (use --backend torch)")
        elif self.int8 is not None and not self.int8.passed:
            out.append(f"INT8 CHECK FAILED: int8 was not kept as {INT8_ONNX_NAME} (left as "
                       f"{FAILED_INT8_NAME} to inspect); {ONNX_NAME} passed and is ready "
                       "(--backend onnx without --int8)")
        return out


def export_bundle(model: str | Path, *, int8: bool = False, calibration_data: str | Path | None = None,
                  check_data: str | Path | None = None, device: str | None = None) -> ExportResult:
    """Write model.onnx (and model.int8.onnx) into the bundle, check them against PyTorch on held-out
    images, time them on the CPU, and record it all under `export` in config.json.

    A model that misses its agreement bar makes `passed` False (the CLI exits 1: with --int8 the
    user asked for both files). An fp32 file that fails stays, loudly flagged; an int8 file that
    fails is not kept as model.int8.onnx (FAILED_INT8_NAME), and never costs the fp32 file."""
    folder = resolve_bundle_path(model)
    images = choose_images(folder, int8=int8, calibration_data=calibration_data, check_data=check_data)
    clf = Classifier.load(folder, device=device, reject=False)
    check, skipped = _pixels(clf, images.check)
    if len(check) == 0:
        raise DataError(f"none of the {len(images.check)} check images could be read; pass --check-data DIR")
    reference = np.concatenate([clf.logits(torch.from_numpy(check[i:i + _BATCH])).numpy()
                                for i in range(0, len(check), _BATCH)])
    cpu_model = clf.model if clf.device.type == "cpu" else load_bundle(folder, "cpu")[0]
    fp32_path = export_onnx(cpu_model, folder / ONNX_NAME, img_size=clf.config.preprocess.img_size)
    fp32 = _check(fp32_path, check, reference, "fp32", clf.config)
    quantized, calibration_count = None, 0
    if int8:
        calibration, bad = _pixels(clf, images.calibration)
        skipped += bad
        if len(calibration) == 0:
            raise DataError(f"none of the {len(images.calibration)} calibration images could be read")
        calibration_count = len(calibration)
        quantized = _quantize_and_keep(folder, fp32_path, calibration, check, reference, clf.config)
    else:
        # An int8 file from older weights would silently disagree.
        for stale in (INT8_ONNX_NAME, FAILED_INT8_NAME):
            (folder / stale).unlink(missing_ok=True)
    torch_speed = measure_speed(lambda x: clf.logits(torch.from_numpy(x)), check)
    result = ExportResult(folder, OPSET, fp32, quantized, torch_speed, images.check_source,
                          images.calibration_source, calibration_count, skipped, _label_rule(clf.config))
    update_bundle_config(folder, export={**result.to_dict(), "weights_sha256": _weights_digest(folder)})
    return result


def _quantize_and_keep(folder: Path, fp32_path: Path, calibration: np.ndarray, check: np.ndarray,
                       reference: np.ndarray, config: BundleConfig) -> ExportedModel:
    """Quantize, check, and keep the int8 file as model.int8.onnx only if it reached its bar;
    otherwise as FAILED_INT8_NAME, with no model.int8.onnx left (not even an older one) for
    predict or serve --int8 to pick up. fp32 is never touched here."""
    candidate = quantize_int8(fp32_path, folder / FAILED_INT8_NAME, calibration)
    result = _check(candidate, check, reference, "int8", config)
    if result.passed:
        os.replace(candidate, folder / INT8_ONNX_NAME)
        result.file = INT8_ONNX_NAME
    else:
        (folder / INT8_ONNX_NAME).unlink(missing_ok=True)
    return result


def _pixels(clf: Any, paths: list[str]) -> tuple[np.ndarray, list[str]]:
    """Files -> float32 (N, 3, S, S), preprocessed exactly as Classifier.predict does; and the
    paths it could not read."""
    prepared = [clf.prepare((p, None)) for p in paths]
    good = [t for _, t in prepared if not isinstance(t, str)]
    bad = [p for p, t in prepared if isinstance(t, str)]
    if not good:
        return np.zeros((0, 3, 1, 1), np.float32), bad
    batch = clf.normalize(torch.stack(good).to(clf.device)).cpu().contiguous()  # NCHW, not channels_last
    return batch.numpy().astype(np.float32, copy=False), bad


def _check(path: Path, pixels: np.ndarray, reference: np.ndarray, kind: str,
           config: BundleConfig) -> ExportedModel:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

    logits = np.concatenate([run(pixels[i:i + _BATCH]) for i in range(0, len(pixels), _BATCH)])
    speed = measure_speed(run, pixels)
    compared, class_agreement = TOP1, None
    if config.multilabel:
        compared = LABEL_SET
        agreement, class_agreement = label_set_agreement(
            reference, logits, config.label_temperatures(), config.label_thresholds())
    else:
        agreement = top1_agreement(reference, logits)
    return ExportedModel(
        file=path.name, agreement=agreement, min_agreement=MIN_AGREEMENT[kind],
        images=len(pixels), max_abs_logit_diff=float(np.abs(logits - reference).max()),
        ms_per_image=speed.ms_per_image, images_per_s=speed.images_per_s,
        size_mb=round(path.stat().st_size / 1e6, 2), compared=compared, class_agreement=class_agreement,
    )


def _label_rule(config: BundleConfig) -> dict[str, list[float]] | None:
    if not config.multilabel:
        return None
    return {"temperatures": config.label_temperatures(), "biases": config.label_biases(),
            "thresholds": config.label_thresholds()}


def _weights_digest(folder: Path) -> str:
    """Which weights the ONNX files were made from (a retrained bundle makes them stale)."""
    return sha256_hex(folder / WEIGHTS_NAME)[:16]
