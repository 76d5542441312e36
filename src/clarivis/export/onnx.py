"""torch model -> ONNX (fp32) with a dynamic batch axis, verified by onnx.checker."""

from __future__ import annotations

import io
import os
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import onnx
import torch
from torch import nn

from clarivis.errors import ModelError

# Opset 18: the version torch.onnx's exporter (torch.export + onnxscript) writes natively, so
# no version-conversion pass touches the graph; every onnxruntime since 1.14 runs it, and
# onnxruntime.quantization handles it (QDQ needs 13+). Newer opsets add nothing a timm
# classifier uses and would lock out older runtimes on devices.
OPSET = 18
INPUT_NAME = "pixels"  # float32 (N, 3, S, S), normalised as the bundle says
OUTPUT_NAME = "logits"  # float32 (N, C), raw: temperature and softmax are applied outside
# A traced batch of 2, not 1: an example of 1 invites the exporter to specialise the axis.
_EXAMPLE_BATCH = 2


def export_onnx(model: nn.Module, path: str | Path, *, img_size: int, opset: int = OPSET) -> Path:
    """Write `model` (eval mode, any device) as ONNX at `path`, with a dynamic batch axis."""
    path = Path(path)
    model = model.eval().float().to("cpu")
    example = torch.zeros(_EXAMPLE_BATCH, 3, img_size, img_size)
    tmp = path.with_name(path.name + ".tmp")
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        # The exporter prints its progress and warns about things that are not ours to fix.
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                              opset_version=opset, dynamo=True, external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)  # by path: also valid past 2 GB
    except Exception as err:  # noqa: BLE001 - the exporter raises many types; all mean "cannot"
        tmp.unlink(missing_ok=True)
        reason = (str(err).splitlines() or [""])[0][:200]
        raise ModelError(f"this model cannot be exported to ONNX ({type(err).__name__}: {reason}); "
                         "use --backend torch") from err
    os.replace(tmp, path)  # readers never see a half-written model
    return path
