"""The export's check for multi-label bundles: label sets, after each class's temperature and
threshold, agree with PyTorch's (issue 15)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.tiny import CNN, trained_multilabel, write_multilabel

from clarivis.export.check import label_set_agreement, label_sets


def test_label_sets_apply_each_class_temperature_and_threshold():
    logits = np.array([[2.0, -2.0, 0.0], [0.4, 3.0, -1.0]], np.float32)
    sets = label_sets(logits, temperatures=[1.0, 2.0, 1.0], thresholds=[0.6, 0.5, 0.5])
    # sigmoid: row 0 (0.88, 0.27, 0.5), row 1 (0.60, 0.82, 0.27) with T = 2 for the second class
    assert sets.tolist() == [[True, False, True], [False, True, False]]


def test_one_flipped_class_breaks_that_images_set():
    reference = np.array([[2.0, -2.0, 0.1], [1.0, 1.0, 1.0]], np.float32)
    candidate = reference + np.array([[0, 0, -0.2], [0, 0, 0]], np.float32)  # 3rd class: in -> out
    sets, decisions = label_set_agreement(reference, candidate, [1.0] * 3, [0.5] * 3)
    assert (sets, decisions) == (0.5, pytest.approx(5 / 6))


@pytest.mark.slow  # training (shared per session) and two exports: 15-25 s on 2 busy cores
def test_int8_export_checks_label_sets(tmp_path_factory):
    from clarivis.export import check, export_bundle, pipeline

    base = tmp_path_factory.mktemp("ml-int8")
    # A copy: the trained bundle is shared by the session's tests, and exporting writes into it.
    bundle = Path(shutil.copytree(trained_multilabel(base, CNN), base / "model"))
    held = write_multilabel(base / "held", 64, seed=11).parent / "images"
    with pytest.MonkeyPatch.context() as patch:
        quick = lambda run, pixels: check.measure_speed(run, pixels, budget_s=0.05)  # noqa: E731
        patch.setattr(pipeline, "measure_speed", quick)  # speed is not under test here
        result = export_bundle(bundle, int8=True, calibration_data=held, check_data=held, device="cpu")
    print("\n" + "\n".join(result.lines()))
    assert result.passed and result.int8.compared == "label_set" == result.fp32.compared
    assert result.int8.agreement >= pipeline.MIN_AGREEMENT["int8"] and result.int8.images == 32
    recorded = json.loads((bundle / "config.json").read_text())["export"]
    assert recorded["int8"]["compared"] == "label_set" and recorded["int8"]["file"] == "model.int8.onnx"
    assert 0.98 <= recorded["int8"]["class_agreement"] <= 1
