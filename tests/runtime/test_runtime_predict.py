"""clarivis.runtime.Predictor against Classifier.predict, its errors, and the no-torch promise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.tiny import held_out

from clarivis.errors import ModelError
from clarivis.runtime import Predictor, RuntimePrediction, predict_files

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def awkward_images(export_base, tmp_path_factory) -> list[Path]:
    """Inputs whose decoding differs from a plain open: a 512 px JPEG (16x the 32 px input, so
    it decodes reduced), a PNG with alpha, an EXIF-rotated JPEG, a greyscale image."""
    root = tmp_path_factory.mktemp("awkward")
    source = Image.open(sorted((held_out(export_base) / "green").glob("*.png"))[0]).convert("RGB")
    big = root / "big.jpg"
    source.resize((512, 384), Image.Resampling.BICUBIC).save(big, quality=90)
    with Image.open(big) as im:  # the case under test: libjpeg's reduced decode must apply
        im.draft("RGB", (64, 64))
        assert im.size[0] < 512
    alpha = np.dstack([np.asarray(source.resize((40, 30))), np.full((30, 40), 120, np.uint8)])
    Image.fromarray(alpha, "RGBA").save(root / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to display
    source.resize((60, 24)).save(root / "rotated.jpg", exif=exif)
    source.convert("L").save(root / "grey.png")
    return [big, root / "alpha.png", root / "rotated.jpg", root / "grey.png"]


def _compare(torch_rows, runtime_rows, atol: float) -> float:
    """Labels equal row by row; returns the largest probability difference."""
    worst = 0.0
    for a, b in zip(torch_rows, runtime_rows, strict=True):
        assert (a.source, a.label, a.error) == (b.source, b.label, b.error)
        assert [lbl for lbl, _ in a.top_k] == [lbl for lbl, _ in b.top_k] or a.error
        for (_, p), (_, q) in zip(a.top_k, b.top_k, strict=True):
            worst = max(worst, abs(p - q))
        if a.ood_score is not None:
            assert b.ood_score == pytest.approx(a.ood_score, abs=1e-2)
    assert worst <= atol
    return worst


def test_runtime_predicts_like_the_classifier(cnn_export, export_base, awkward_images):
    from clarivis.api import Classifier

    bundle, _ = cnn_export
    files = sorted(str(p) for p in held_out(export_base).rglob("*.*")) + [str(p) for p in awkward_images]
    clf = Classifier.load(bundle, device="cpu")
    predictor = Predictor(bundle)
    worst = _compare(clf.predict(files, top_k=3), predictor.predict(files, top_k=3, batch_size=7), atol=1e-2)
    print(f"\nfp32 runtime vs Classifier on {len(files)} files: max |dprob| {worst:.2e}")
    images = [Image.open(p) for p in awkward_images]  # in memory: converted, not rotated, as predict
    _compare(clf.predict(images, top_k=3), predictor.predict(images, top_k=3), atol=1e-2)


def test_int8_runtime_labels_mostly_match(cnn_export, export_base):
    from clarivis.api import Classifier

    bundle, _ = cnn_export
    files = sorted(str(p) for p in held_out(export_base).rglob("*.*"))
    expected = [p.label for p in Classifier.load(bundle, device="cpu", reject=False).predict(files)]
    got = [p.label for p in Predictor(bundle, int8=True, reject=False).predict(files)]
    agreement = np.mean([a == b for a, b in zip(expected, got, strict=True)])
    print(f"\nint8 runtime vs Classifier labels on {len(files)} files: {agreement:.1%}")
    assert agreement >= 0.98


def test_temperature_and_rejection_come_from_the_bundle(cnn_export, tmp_path, export_base):
    bundle, _ = cnn_export
    copy = tmp_path / "model"
    shutil.copytree(bundle, copy)
    config = json.loads((copy / "config.json").read_text())
    config["temperature"], config["ood"] = 1e6, {"score": "energy", "threshold": 1e9}
    (copy / "config.json").write_text(json.dumps(config))
    file = str(next(held_out(export_base).rglob("*.png")))
    [row] = Predictor(copy).predict([file])
    uniform = 1 / len(config["class_names"])  # T -> infinity flattens the softmax
    assert row.label == "unknown" and row.confidence == pytest.approx(uniform, abs=1e-3)
    [kept] = Predictor(copy, reject=False).predict([file])
    assert kept.label in config["class_names"]


def test_predict_pixels_and_stable_service_surface(cnn_export):
    bundle, _ = cnn_export
    predictor = Predictor(bundle.parent)  # the run folder works too
    assert predictor.class_names == json.loads((bundle / "config.json").read_text())["class_names"]
    assert isinstance(predictor.config, dict)
    logits = predictor.predict_pixels(np.zeros((7, 3, 32, 32), np.float32))
    assert logits.shape == (7, len(predictor.class_names))
    rows = predictor.predict([Image.new("RGB", (50, 20), (200, 40, 40))], top_k=2)
    assert isinstance(rows[0], RuntimePrediction) and rows[0].source == "<image 0>"
    assert set(rows[0].to_dict()) == {"source", "label", "confidence", "top_k", "error", "ood_score"}


def test_unreadable_inputs_become_error_rows(cnn_export, tmp_path, export_base):
    bundle, _ = cnn_export
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "empty").mkdir()
    good = str(next(held_out(export_base).rglob("*.png")))
    rows = list(predict_files(bundle, [good, str(tmp_path / "corrupt.jpg"), str(tmp_path / "nope.png"),
                                       str(tmp_path / "empty"), good], top_k=2, batch_size=1))
    assert [r.error is None for r in rows] == [True, False, False, False, True]
    assert "corrupt" in rows[1].error and rows[2].error == "file not found"
    assert rows[3].error == "folder holds no images" and rows[4].label is not None
    assert not Predictor(bundle).predict([str(tmp_path / "corrupt.jpg")])[0].label


def test_missing_model_onnx_says_to_export(cnn_export, tmp_path):
    bundle, _ = cnn_export
    shutil.copy(bundle / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelError, match=r"no model\.onnx; run `clarivis export .*` first") as info:
        Predictor(tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="--int8"):
        Predictor(tmp_path, int8=True)


def test_runtime_never_imports_torch(cnn_export, awkward_images):
    bundle, _ = cnn_export
    code = textwrap.dedent(f"""
        import json, sys
        import clarivis.runtime
        from PIL import Image
        p = clarivis.runtime.Predictor({str(bundle)!r}, int8=True)
        rows = p.predict([{str(awkward_images[0])!r}, Image.new("RGB", (9, 9))], top_k=2)
        rows += list(clarivis.runtime.predict_files({str(bundle)!r}, [{str(awkward_images[1])!r}]))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "timm"))
        print(json.dumps({{"heavy": heavy, "labels": [r.label for r in rows]}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["heavy"] == [] and all(out["labels"])


def test_onnx_from_other_weights_is_refused(cnn_export, tmp_path):
    bundle, _ = cnn_export
    copy = tmp_path / "model"
    shutil.copytree(bundle, copy)
    (copy / "model.safetensors").write_bytes(b"retrained" + (copy / "model.safetensors").read_bytes())
    with pytest.raises(ModelError, match="exported from other weights; run `clarivis export"):
        Predictor(copy)
