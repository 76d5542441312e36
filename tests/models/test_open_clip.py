"""Finding and loading open_clip models (models/open_clip.py): registry names, config JSON files,
weights files, the tokenizer."""

from __future__ import annotations

import json
import shutil

import open_clip
import pytest
import torch

from clarivis.errors import ModelError
from clarivis.models.open_clip import (
    build_clip,
    clip_preprocess,
    clip_tokenizer,
    load_clip,
    resolve_clip,
)


def test_config_json_needs_no_registry_entry(tiny_clip):
    spec = resolve_clip(str(tiny_clip.config))
    assert spec.name == "tiny-clip" and not spec.registered
    assert spec.embed_dim == 32 and spec.image_size == 32
    pp = clip_preprocess(spec)  # open_clip's defaults: OpenAI mean/std, bicubic, shortest + crop
    assert pp.img_size == 32 and pp.resize_mode == "crop" and pp.interpolation == "bicubic"
    assert pp.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert resolve_clip(f"open_clip:{tiny_clip.config}").config == spec.config


def test_hub_style_config_file_with_preprocessing(tmp_path, tiny_clip):
    folder = tmp_path / "my-clip"
    folder.mkdir()
    raw = {"model_cfg": json.loads(tiny_clip.config.read_text()),
           "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize_mode": "squash"}}
    (folder / "open_clip_config.json").write_text(json.dumps(raw))
    spec = resolve_clip(str(folder / "open_clip_config.json"))
    pp = clip_preprocess(spec)
    assert spec.name == "my-clip" and pp.mean == (0.5, 0.5, 0.5) and pp.resize_mode == "squash"


def test_registry_name_and_hub_tag_settings():
    spec = resolve_clip("open_clip:ViT-B-32")
    assert spec.registered and spec.embed_dim == 512 and spec.image_size == 224
    assert not spec.config.get("quick_gelu")
    # OpenAI's weights were trained with QuickGELU: naming the tag switches the activation.
    assert resolve_clip("ViT-B-32", pretrained="openai").config["quick_gelu"] is True
    assert resolve_clip("ViT-B-32", image_size=160).image_size == 160


@pytest.mark.parametrize("spec, fragment", [
    ("ViT-B-33", "similar: ViT-B-32"),
    ("nope/missing.json", "not found"),
])
def test_unknown_models_are_one_line_errors(spec, fragment):
    with pytest.raises(ModelError, match=fragment) as info:
        resolve_clip(spec)
    assert "\n" not in str(info.value)


def test_a_json_that_is_no_clip_config(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ModelError, match="not an open_clip model config"):
        resolve_clip(str(tmp_path / "x.json"))


def test_weights_file_loads_both_towers(tiny_clip):
    model = load_clip(resolve_clip(str(tiny_clip.config)), weights=tiny_clip.weights)
    saved = open_clip.factory.load_state_dict(str(tiny_clip.weights))
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_weights_of_another_architecture_are_refused(tmp_path, tiny_clip):
    other = json.loads(tiny_clip.config.read_text())
    other["embed_dim"] = 16
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ModelError, match="do not fit open_clip 'other'"):
        load_clip(resolve_clip(str(tmp_path / "other.json")), weights=tiny_clip.weights)
    with pytest.raises(ModelError, match="not found"):
        load_clip(resolve_clip(str(tmp_path / "other.json")), weights=tmp_path / "missing.pt")


def test_registered_name_with_a_local_weights_file(tmp_path, tiny_clip):
    """The registry path (what --clip ViT-B-32 --clip-weights FILE takes), on a tiny config
    registered under a name of its own: no 600 MB ViT-B-32 file in the test suite."""
    shutil.copy(tiny_clip.config, tmp_path / "clarivis-test-tiny.json")
    open_clip.add_model_config(tmp_path / "clarivis-test-tiny.json")
    spec = resolve_clip("clarivis-test-tiny")
    assert spec.registered
    model = load_clip(spec, weights=tiny_clip.weights)
    assert model.visual.conv1.weight.shape == (64, 3, 8, 8)


def test_tokenizer_ships_with_open_clip(tiny_clip):
    tokenizer = clip_tokenizer(resolve_clip(str(tiny_clip.config)))
    tokens = tokenizer(["a photo of a cat.", "itap of a dog."])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    assert tokenizer.decode(tokens[0].tolist()).startswith("<start_of_text>a photo of a cat")


def test_build_gives_random_weights_of_the_config(tiny_clip):
    model = build_clip(resolve_clip(str(tiny_clip.config)))
    with torch.no_grad():
        assert model.encode_image(torch.zeros(2, 3, 32, 32)).shape == (2, 32)
