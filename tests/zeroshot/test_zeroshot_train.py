"""train --init-from-text: the head starts as CLIP's zero-shot classifier of the class folder
names; the result is an ordinary bundle. Also the linear probe on CLIP embeddings."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

import clarivis
from clarivis.api import Classifier
from clarivis.config import build_config
from clarivis.errors import ConfigError
from clarivis.models.bundle import load_bundle
from clarivis.models.clip import text_initialized_model
from clarivis.zeroshot.classify import zeroshot_classifier

CLASSES = ["blue_triangle", "green_circle", "red_square"]  # sorted, as training orders them
QUIET = {"workers": 0, "device": "cpu", "report": False, "batch_size": 8}


def _settings(tiny_clip, **extra) -> dict:
    return {"model": f"open_clip:{tiny_clip.config}", "weights": str(tiny_clip.weights),
            "init_from_text": True, **QUIET, **extra}


def test_head_starts_as_the_zero_shot_classifier(tiny_clip, colour_data):
    config = build_config(data=str(colour_data), **_settings(tiny_clip))
    model = text_initialized_model(config.model, CLASSES, img_size=config.img_size, weights=config.weights,
                                   pretrained=config.pretrained, templates=config.text_templates,
                                   drop_rate=config.drop_rate)
    # Folder names are prompted as words: 'blue_triangle' -> 'a photo of the large blue triangle.'
    zero_shot = zeroshot_classifier([c.replace("_", " ") for c in CLASSES], clip=str(tiny_clip.config),
                                    clip_weights=tiny_clip.weights, device="cpu")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), zero_shot.model(x), atol=1e-5)


@pytest.fixture(scope="module")
def text_run(tiny_clip, colour_data, tmp_path_factory):
    """One epoch at a vanishing lr: the saved bundle must still be the zero-shot classifier."""
    out = tmp_path_factory.mktemp("run") / "run"
    return clarivis.train(colour_data, out=out, console=Console(file=io.StringIO()),
                          **_settings(tiny_clip, epochs=1, lr=1e-9))


def test_one_epoch_gives_a_bundle_equal_to_zero_shot(text_run, tiny_clip):
    model, config = load_bundle(text_run.bundle_dir)
    assert config.architecture == f"open_clip:{tiny_clip.config}" and config.class_names == CLASSES
    assert config.model_kwargs["clip_config"]["embed_dim"] == 32 and config.resize_mode == "crop"
    zero_shot = zeroshot_classifier([c.replace("_", " ") for c in CLASSES], clip=str(tiny_clip.config),
                                    clip_weights=tiny_clip.weights, device="cpu")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), zero_shot.model(x), atol=1e-3)


def test_trained_bundle_predicts_and_evaluates(text_run, colour_data):
    clf = Classifier.load(text_run.bundle_dir)
    row = clf.predict(colour_data / "red_square" / "0.png", top_k=3)[0]
    assert row.error is None and {lbl for lbl, _ in row.top_k} == set(CLASSES)
    assert clf.evaluate(colour_data).num_samples == 30


def test_training_lr_is_lower_from_text(tiny_clip, colour_data, tmp_path):
    import yaml

    lrs = {}
    for init in (True, False):
        result = clarivis.train(colour_data, out=tmp_path / str(init), console=Console(file=io.StringIO()),
                                **_settings(tiny_clip, epochs=1, init_from_text=init))
        lrs[init] = yaml.safe_load((result.run_dir / "config.yaml").read_text())["lr"]
    assert lrs[False] == pytest.approx(1e-3 * (8 / 32) ** 0.5)  # AdamW fine-tuning default
    assert lrs[True] == pytest.approx(2e-5 * (8 / 64) ** 0.5)  # the head already classifies


@pytest.mark.parametrize("settings, fragment", [
    ({"model": "test_resnet", "init_from_text": True}, "needs an open_clip model"),
    ({"model": "open_clip:ViT-B-32", "init_from_text": True}, "needs the CLIP weights"),
    ({"model": "open_clip:ViT-B-32", "init_from_text": True, "weights": "w.pt", "linear_probe": True},
     "either --init-from-text or --linear-probe"),
    ({"text_templates": ["a photo"]}, "exactly one '{}'"),
])
def test_init_from_text_settings_are_checked(settings, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        build_config(data="x", **settings)
    assert "\n" not in str(info.value)


def test_linear_probe_on_clip_embeddings(tiny_clip, colour_data, tmp_path):
    result = clarivis.train(colour_data, out=tmp_path / "probe", console=Console(file=io.StringIO()),
                            model=f"open_clip:{tiny_clip.config}", weights=str(tiny_clip.weights),
                            linear_probe=True, **QUIET)
    model, config = load_bundle(result.bundle_dir)
    assert config.model_kwargs["clip_config"]["embed_dim"] == 32
    assert model.get_classifier().weight.shape == (3, 32)
    assert Classifier.load(result.bundle_dir).evaluate(colour_data).accuracy > 0.5
