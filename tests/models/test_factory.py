"""Model creation by name (the family registry; timm models), local weights (safe loading, head
replacement), freezing."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file
from tests.tiny import CNN, VIT

from clarivis.errors import ModelError
from clarivis.models.factory import (
    CLIP,
    TIMM,
    check_model_name,
    classifier_parameters,
    create_model,
    family_of,
    load_state_dict_file,
    set_backbone_trainable,
)
from clarivis.models.hub_cache import cached_hub_weights


@pytest.mark.parametrize("name, size", [(CNN, 32), (VIT, 64), ("test_efficientnet", 48)])
def test_models_build_for_the_requested_classes_and_size(name, size):
    model = create_model(name, num_classes=7, img_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_unknown_model_names_a_fix():
    with pytest.raises(ModelError, match="unknown model 'resnet_9000'.*similar"):
        create_model("resnet_9000", num_classes=2)


@pytest.mark.parametrize("name, size", [(CNN, 32), (VIT, 64)])
def test_local_weights_load_and_head_is_replaced(tmp_path, name, size):
    source = create_model(name, num_classes=1000, img_size=size)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_model(name, num_classes=3, img_size=size, weights=path)
    head = {id(p) for p in classifier_parameters(model)}
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        if value.shape == loaded[key].shape:
            assert torch.equal(value, loaded[key]), key  # backbone copied exactly
    assert model.get_classifier().out_features == 3 and head
    # The new head starts at zero: uniform predictions, loss ln(3), no shock to the backbone.
    assert all(p.abs().sum() == 0 for p in classifier_parameters(model))


def test_vit_weights_from_another_input_size_are_resampled(tmp_path):
    source = create_model(VIT, num_classes=5, img_size=64)
    path = tmp_path / "vit.pt"
    torch.save(source.state_dict(), path)  # a plain .pt state dict works too
    model = create_model(VIT, num_classes=5, img_size=32, weights=path).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_headless_backbone_weights_load(tmp_path):
    source = create_model(CNN, num_classes=10)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    save_file(state, str(tmp_path / "backbone.safetensors"))
    model = create_model(CNN, num_classes=4, weights=tmp_path / "backbone.safetensors")
    assert torch.equal(model.state_dict()["conv1.0.weight"], state["conv1.0.weight"])


def test_weights_of_another_architecture_are_refused(tmp_path):
    save_file({k: v.contiguous() for k, v in create_model(VIT, num_classes=2).state_dict().items()},
              str(tmp_path / "vit.safetensors"))
    with pytest.raises(ModelError, match="do not fit 'test_resnet'"):
        create_model(CNN, num_classes=2, weights=tmp_path / "vit.safetensors")


class Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('arbitrary code ran')",))


def test_pickled_objects_are_never_executed(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"fc.weight": Boom()}))
    with pytest.raises(ModelError, match="cannot read weights"):
        load_state_dict_file(path)


def test_missing_and_garbage_weight_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_state_dict_file(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ModelError, match="cannot read weights"):
        load_state_dict_file(tmp_path / "junk.safetensors")


def test_freezing_leaves_only_the_head_trainable():
    model = create_model(CNN, num_classes=3)
    set_backbone_trainable(model, False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in classifier_parameters(model)}
    set_backbone_trainable(model, True)
    assert all(p.requires_grad for p in model.parameters())


def test_registry_sends_each_name_to_its_family():
    assert family_of("open_clip:ViT-B-32") is CLIP
    assert family_of(CNN) is TIMM and family_of("airnet_s") is TIMM  # small nets: timm-registered
    check_model_name("airnet_s")
    assert cached_hub_weights("open_clip:ViT-B-32") is None  # open_clip weights are no timm files
