"""zeroshot_classify and the zero-shot ModelBundle: valid rows, CLIP's own logits, error rows,
and a bundle that predict, evaluate, explain and export accept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tests.tiny import LABELS, full_clip

import clarivis
from clarivis.api import Classifier
from clarivis.models.bundle import load_bundle
from clarivis.models.clip import class_text_embeddings
from clarivis.models.open_clip import clip_tokenizer, resolve_clip
from clarivis.models.prompts import DEFAULT_TEMPLATES
from clarivis.zeroshot.classify import save_zeroshot_bundle, zeroshot_classifier


def _clip_args(tiny_clip) -> dict:
    return {"clip": str(tiny_clip.config), "clip_weights": tiny_clip.weights, "device": "cpu"}


def test_rows_are_valid_predictions(tiny_clip, colour_data, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    images = [colour_data / "red_square", tmp_path / "broken.jpg", Image.new("RGB", (50, 30), "blue")]
    rows = clarivis.zeroshot_classify(images, ",".join(LABELS), top_k=3, **_clip_args(tiny_clip))
    assert len(rows) == 10 + 1 + 1
    broken = [r for r in rows if r.error]
    assert [r.source for r in broken] == [str(tmp_path / "broken.jpg")] and not broken[0].top_k
    for row in (r for r in rows if not r.error):
        probs = [p for _, p in row.top_k]
        assert [lbl for lbl, _ in row.top_k] != [] and {lbl for lbl, _ in row.top_k} == set(LABELS)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)  # top_k == number of labels
        assert probs == sorted(probs, reverse=True)
        assert row.label == row.top_k[0][0] and row.confidence == probs[0]
    assert rows[-1].source == "<image 2>"
    top1 = clarivis.zeroshot_classify(colour_data / "red_square" / "0.png", LABELS, top_k=1,
                                      **_clip_args(tiny_clip))
    assert len(top1[0].top_k) == 1


def test_logits_are_clips_zero_shot_logits(tiny_clip):
    """logit_scale * cos(image embedding, ensembled class text embedding), from open_clip itself."""
    clf = zeroshot_classifier(LABELS, **_clip_args(tiny_clip))
    clip = full_clip(tiny_clip.config, tiny_clip.weights)
    text = class_text_embeddings(clip, clip_tokenizer(resolve_clip(str(tiny_clip.config))), LABELS,
                                 DEFAULT_TEMPLATES)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = clip.logit_scale.exp() * F.normalize(clip.encode_image(x), dim=-1) @ text.T
    assert torch.allclose(clf.logits(x), expected, atol=1e-4)
    assert clf.config.resize_mode == "crop" and clf.config.interpolation == "bicubic"


def test_bundle_round_trip_without_the_config_file(tiny_clip, colour_data, tmp_path):
    """The bundle holds the open_clip config: loading needs neither the JSON nor a registry."""
    config = tmp_path / "mine.json"
    shutil.copy(tiny_clip.config, config)
    bundle = save_zeroshot_bundle(tmp_path / "zs", LABELS, clip=str(config),
                                  clip_weights=tiny_clip.weights, device="cpu")
    config.unlink()
    raw = json.loads((bundle / "config.json").read_text())
    assert raw["architecture"] == "open_clip:mine" and raw["model_kwargs"]["clip_config"]["embed_dim"] == 32
    assert raw["training"]["method"] == "zero-shot"
    assert raw["training"]["templates"] == list(DEFAULT_TEMPLATES)
    model, _ = load_bundle(bundle)
    direct = zeroshot_classifier(LABELS, **_clip_args(tiny_clip))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), direct.model(x))
    image = colour_data / "green_circle" / "3.png"
    assert Classifier.load(bundle).predict(image)[0].top_k == direct.predict(image)[0].top_k


@pytest.fixture(scope="module")
def colour_bundle(tiny_clip, tmp_path_factory):
    """A zero-shot bundle whose labels are the colour data's class folder names."""
    return save_zeroshot_bundle(tmp_path_factory.mktemp("zs") / "model",
                                ["red_square", "green_circle", "blue_triangle"], **_clip_args(tiny_clip))


def test_evaluate_and_explain_take_the_bundle(colour_bundle, colour_data, tmp_path):
    result = Classifier.load(colour_bundle).evaluate(colour_data)
    assert result.num_samples == 30 and 0.0 <= result.accuracy <= 1.0
    from clarivis.explain import explain

    found = list(explain(colour_bundle, [colour_data / "red_square" / "1.png"], out=tmp_path, device="cpu"))
    assert found[0].error is None and found[0].heatmap.shape == (32, 32)
    assert found[0].png and Path(found[0].png).exists()


def test_grad_cam_explains_the_last_block_of_the_tower(colour_bundle):
    from clarivis.explain.cam import cam_maps, cam_target

    model, _ = load_bundle(colour_bundle)
    target = cam_target(model, 32)
    assert target.name == "visual.transformer.resblocks.1.ln_1"
    maps = cam_maps(model, torch.randn(2, 3, 32, 32), [0, 2], method="gradcam")
    assert maps.shape == (2, 32, 32) and 0.0 <= maps.min() and maps.max() <= 1.0


def test_onnx_export_agrees_with_torch(colour_bundle, colour_data, tmp_path):
    from clarivis.export import export_bundle

    bundle = shutil.copytree(colour_bundle, tmp_path / "model")
    result = export_bundle(bundle, check_data=colour_data, device="cpu")
    assert result.passed, result.lines()
    assert result.fp32.agreement == 1.0 and result.fp32.max_abs_logit_diff < 1e-3
    from clarivis.runtime import predict_files

    onnx_rows = list(predict_files(bundle, [colour_data / "blue_triangle" / "2.png"], top_k=3))
    torch_rows = Classifier.load(bundle).predict(colour_data / "blue_triangle" / "2.png", top_k=3)
    assert onnx_rows[0].label == torch_rows[0].label
    assert onnx_rows[0].confidence == pytest.approx(torch_rows[0].confidence, abs=1e-3)
