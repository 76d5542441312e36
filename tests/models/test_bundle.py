"""The ModelBundle: config.json + model.safetensors restore the same model and preprocessing."""

from __future__ import annotations

import json

import pytest
import torch
from tests.tiny import CNN, VIT

from clarivis.data.transforms import Preprocess
from clarivis.errors import ModelError
from clarivis.models.bundle import load_bundle, save_bundle
from clarivis.models.factory import create_model
from clarivis.spec import BundleConfig


@pytest.mark.parametrize("name, size", [(CNN, 32), (VIT, 48)])
def test_bundle_round_trip_gives_identical_outputs(tmp_path, name, size):
    model = create_model(name, num_classes=3, img_size=size).eval()
    pp = Preprocess(img_size=size, resize_mode="squash", interpolation="bicubic")
    config = BundleConfig.for_model(
        architecture=name, class_names=["a", "b", "c"], preprocess=pp,
        model_kwargs={"img_size": size} if name == VIT else {},
    )
    save_bundle(tmp_path / "model", model, config)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "config.json", "model.safetensors"]
    loaded, loaded_config = load_bundle(tmp_path / "model")
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded_config.preprocess == pp and loaded_config.class_names == ["a", "b", "c"]
    raw = json.loads((tmp_path / "model" / "config.json").read_text())
    for key in ("schema_version", "clarivis_version", "architecture", "num_classes",
                "class_names", "input_size", "mean", "std", "interpolation", "resize_mode",
                "temperature", "training"):
        assert key in raw
    assert raw["temperature"] == 1.0


def test_run_folder_is_accepted_for_its_bundle(tmp_path):
    config = BundleConfig.for_model(architecture=CNN, class_names=["a", "b"],
                                preprocess=Preprocess(img_size=32))
    save_bundle(tmp_path / "run" / "model", create_model(CNN, num_classes=2), config)
    _, loaded = load_bundle(tmp_path / "run")
    assert loaded.class_names == ["a", "b"]


def test_folder_without_config_is_not_a_bundle(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelError, match="not a ModelBundle"):
        load_bundle(tmp_path / "m")
    with pytest.raises(ModelError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_damaged_config_is_reported(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="damaged"):
        load_bundle(tmp_path / "m")
