"""The CLIP classifier (models/clip.py): timm's classifier interface on open_clip's image tower,
created through the factory by "open_clip:" names, saved and loaded as a ModelBundle."""

from __future__ import annotations

import json

import pytest
import torch

from clarivis.api import Classifier
from clarivis.data.transforms import Preprocess
from clarivis.errors import ModelError
from clarivis.models.bundle import load_bundle, save_bundle
from clarivis.models.clip import CLIPClassifier
from clarivis.models.factory import check_model_name, create_model, pretrained_cfg, set_backbone_trainable
from clarivis.spec import BundleConfig


@pytest.fixture(scope="module")
def clip_files(tiny_clip):
    return tiny_clip.config, tiny_clip.weights


@pytest.fixture(scope="module")
def name(clip_files) -> str:
    return f"open_clip:{clip_files[0]}"


def test_timm_classifier_interface(name):
    model = create_model(name, num_classes=3).eval()
    assert isinstance(model, CLIPClassifier) and model.num_features == 32 and model.num_classes == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        embeddings = model.forward_head(features, pre_logits=True)
        logits = model(x)
    assert features.shape == (2, 32) and logits.shape == (2, 3)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2))  # unit vectors reach the head
    assert torch.allclose(logits, model.get_classifier()(embeddings))
    model.reset_classifier(5)
    assert model.get_classifier().weight.shape == (5, 32) and model.num_classes == 5
    model.reset_classifier(0)
    with torch.no_grad():
        assert torch.allclose(model(x), embeddings)  # headless: the embeddings themselves


def test_factory_settings_for_clip_names(name, clip_files):
    check_model_name(name)
    cfg = pretrained_cfg(name)
    assert cfg["input_size"] == (3, 32, 32) and cfg["interpolation"] == "bicubic"
    assert cfg["fixed_input_size"] and cfg["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    with pytest.raises(ModelError, match="unknown open_clip model"):
        check_model_name("open_clip:ViT-Q-99")
    with pytest.raises(ModelError, match="no --model-kwargs"):
        create_model(name, num_classes=2, patch_size=4)


def test_weights_file_gives_the_image_tower_and_a_zero_head(name, clip_files):
    from safetensors.torch import load_file

    model = create_model(name, num_classes=4, weights=clip_files[1])
    saved = load_file(str(clip_files[1]))
    for key, value in model.visual.state_dict().items():
        assert torch.equal(value, saved[f"visual.{key}"]), key
    assert not model.head.weight.any() and not model.head.bias.any()
    set_backbone_trainable(model, False)  # freeze_epochs: only the head learns
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


def test_other_input_size_resizes_position_embeddings(name, clip_files):
    model = create_model(name, num_classes=2, img_size=48, weights=clip_files[1]).eval()
    assert model.visual.positional_embedding.shape == (1 + 6 * 6, 64)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 48)).shape == (1, 2)


def test_bundle_round_trip(tmp_path, name, clip_files):
    model = create_model(name, num_classes=3, weights=clip_files[1]).eval()
    torch.nn.init.normal_(model.head.weight)
    pp = Preprocess(img_size=32, resize_mode="crop", interpolation="bicubic")
    save_bundle(tmp_path / "m", model, BundleConfig.for_model(architecture=name, class_names=["a", "b", "c"],
                                                          preprocess=pp))
    stored = json.loads((tmp_path / "m" / "config.json").read_text())["model_kwargs"]["clip_config"]
    assert stored == json.loads(clip_files[0].read_text())
    loaded, config = load_bundle(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert config.preprocess == pp


def test_linear_probe_embeddings(name, clip_files):
    """What train --linear-probe fits its head on: forward_features + forward_head(pre_logits)."""
    model = create_model(name, num_classes=0, weights=clip_files[1])
    config = BundleConfig.for_model(architecture=name, class_names=[], preprocess=Preprocess(img_size=32))
    clf = Classifier(model, config, torch.device("cpu"))
    pixels = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    embeddings = clf.pixel_embeddings(pixels, batch_size=2)
    assert embeddings.shape == (5, 32) and torch.allclose(embeddings.norm(dim=1), torch.ones(5), atol=1e-5)
