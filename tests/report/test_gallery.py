"""The top-losses gallery: worst validation images first, a heat map each, CNN and ViT."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image
from tests.tiny import CNN, VIT, write_image

import clarivis
from clarivis.report.gallery import gallery_method, top_losses


@pytest.mark.parametrize("model, method", [(CNN, "gradcam"), (VIT, "ig")])
def test_worst_images_first_with_a_heat_map(tmp_path, model, method):
    for i in range(16):
        write_image(tmp_path / "data" / "red" / f"r{i}.png", (220, 20, 20))
        write_image(tmp_path / "data" / "blue" / f"b{i}.png", (20, 20, 220))
    result = clarivis.train(tmp_path / "data", out=tmp_path / "run", model=model, epochs=1,
                            workers=0, img_size=32, val_fraction=0.25, report=False)
    assert gallery_method(clarivis.Classifier.load(result.bundle_dir)) == method
    split = json.loads((result.run_dir / "split.json").read_text())
    items = top_losses(result.bundle_dir, split, count=3)
    assert len(items) == 3 and [it["method"] for it in items] == [method] * 3
    losses = [it["loss"] for it in items]
    assert losses == sorted(losses, reverse=True)
    val_paths = {v["path"] for v in split["val"]}
    assert all(it["path"] in val_paths and it["true"] in ("red", "blue") for it in items)
    png = base64.b64decode(items[0]["png"].split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).size[0] > 2 * 32
    assert top_losses(result.bundle_dir, {"val": []}) == []
