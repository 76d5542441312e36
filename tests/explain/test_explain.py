import io
import json

import numpy as np
import pytest
from PIL import Image
from tests.tiny import CLASSES, CNN, VIT, tiny_classifier, write_image

from clarivis.errors import ClarivisError
from clarivis.explain import explain, overlay_png
from clarivis.models.bundle import save_bundle


@pytest.mark.parametrize("name", [CNN, VIT])
def test_files_folders_and_pil_images_get_maps_overlays_and_error_entries(name, tmp_path):
    clf = tiny_classifier(name)
    photos = tmp_path / "photos"
    write_image(photos / "a" / "cat.png", size=(40, 28))
    write_image(photos / "b" / "cat.png")  # same stem: its overlay must not overwrite the first
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    pil = Image.new("RGB", (20, 30), (10, 200, 10))
    out = tmp_path / "out"
    results = explain(clf, [photos, pil, tmp_path / "missing.png"], method="gradcam++", out=out)

    by_source = {r.source: r for r in results}
    broken = by_source[str(photos / "broken.jpg")]
    assert broken.error and broken.png is None and broken.heatmap is None
    assert by_source[str(tmp_path / "missing.png")].error == "file not found"
    good = [r for r in results if r.error is None]
    assert len(good) == 3 and len(results) == 5
    assert {r.png for r in good} == {str(out / "cat_gradcam++.png"), str(out / "cat-2_gradcam++.png"),
                                     str(out / "image-1_gradcam++.png")}
    predictions = {p.source: p for p in clf.predict([photos, pil])}  # explain reports predict's answer
    for r in good:
        assert r.heatmap.shape == (32, 32) and r.heatmap.dtype == np.float32
        assert 0.0 <= r.heatmap.min() and r.heatmap.max() <= 1.0
        assert r.label == predictions[r.source].label and r.target == r.label
        assert r.confidence == pytest.approx(predictions[r.source].confidence, abs=1e-6)
        png = Image.open(r.png)
        assert png.format == "PNG" and png.size == (2 * 224 + 8, 224 + 28)
    row = by_source["<image 1>"].to_dict()
    assert "heatmap" not in row and row["method"] == "gradcam++"
    json.dumps([r.to_dict() for r in results])


def test_a_bundle_path_and_a_target_class(tmp_path):
    clf = tiny_classifier(CNN)
    bundle = save_bundle(tmp_path / "model", clf.model, clf.config)
    image = write_image(tmp_path / "x.png")
    [result] = explain(bundle, image, method="ig", target="fox", device="cpu")
    assert result.target == "fox" and result.label in CLASSES and result.png is None
    [by_index] = explain(clf, image, method="ig", target=2)
    np.testing.assert_allclose(by_index.heatmap, result.heatmap, atol=1e-5)
    with pytest.raises(ClarivisError, match="class 'wolf'; the model's classes are cat, dog, fox"):
        explain(clf, image, target="wolf")
    with pytest.raises(ClarivisError, match="choose one of gradcam, gradcam\\+\\+, ig"):
        explain(clf, image, method="GradCAM")


def test_overlay_png_shows_the_input_beside_the_map():
    pixels = np.zeros((3, 32, 32), np.uint8)
    pixels[1] = 200  # a green image
    heat = np.zeros((32, 32), np.float32)
    heat[:16, :16] = 1.0  # hot top-left quarter
    image = Image.open(io.BytesIO(overlay_png(pixels, heat, "cat 93% · gradcam")))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (456, 252)
    rgb = np.asarray(image).astype(int)
    assert tuple(rgb[28 + 100, 100]) == (0, 200, 0)  # left: the input, unchanged
    hot, cold = rgb[28 + 40, 232 + 40], rgb[28 + 180, 232 + 180]  # right: blended with jet
    assert hot[0] - cold[0] > 50 and cold[2] - hot[2] > 50  # jet: red where the map is 1, blue at 0
    assert (rgb[:28] < 100).all(axis=2).sum() > 50  # dark caption text on the white bar
