import numpy as np
import pytest
import torch
from tests.tiny import CNN, VIT, tiny_classifier
from torch import nn

from clarivis.errors import ClarivisError, ModelError
from clarivis.explain import METHODS, heatmaps
from clarivis.explain.cam import cam_target
from clarivis.models.factory import create_model


def _pixels(n: int, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(n)
    return torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)


@pytest.mark.parametrize("name", [CNN, VIT])
@pytest.mark.parametrize("method", METHODS)
def test_maps_have_the_input_size_and_lie_in_0_1(name, method):
    clf = tiny_classifier(name)
    maps = heatmaps(clf, _pixels(5), method=method, batch_size=2)  # 3 batches, the last one short
    assert maps.shape == (5, 32, 32) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert np.isclose(maps.reshape(5, -1).max(axis=1), 1.0, atol=1e-4).sum() >= 4  # normalised per image
    assert maps.reshape(5, -1).std(axis=1).min() > 0.01  # a map, not a constant


@pytest.mark.parametrize("name", [CNN, VIT])
def test_the_model_is_left_as_it_was(name):
    clf = tiny_classifier(name)
    pixels = _pixels(2)
    before = clf.predict_proba(clf.normalize(pixels))
    for method in METHODS:
        heatmaps(clf, pixels, method=method)
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in clf.model.modules())
    assert hooks == 0
    assert all(p.requires_grad and p.grad is None for p in clf.model.parameters())
    assert not clf.model.training
    assert torch.equal(clf.predict_proba(clf.normalize(pixels)), before)


def test_targets_default_to_the_predicted_class_and_change_the_map():
    clf = tiny_classifier(CNN)
    pixels = _pixels(4)
    predicted = clf.predict_proba(clf.normalize(pixels)).argmax(dim=1)
    np.testing.assert_allclose(heatmaps(clf, pixels), heatmaps(clf, pixels, targets=predicted), atol=1e-6)
    other = (predicted + 1) % 3
    assert np.abs(heatmaps(clf, pixels, targets=other) - heatmaps(clf, pixels)).max() > 0.1


def test_cnn_layer_is_the_deepest_stage_with_a_4x4_grid():
    model = create_model(CNN, num_classes=3).eval()
    assert cam_target(model, 32).name == "layer2"  # layer3 is 2x2, layer4 1x1 at 32 px
    assert cam_target(model, 64).name == "layer3"
    assert cam_target(model, 160).name == "layer4"  # 5x5: the final feature map
    efficientnet = create_model("test_efficientnet", num_classes=3).eval()
    assert cam_target(efficientnet, 160).name == "bn2"  # after conv_head: what the pool sees


def test_vit_tokens_become_the_patch_grid_without_prefix_tokens():
    model = create_model(VIT, num_classes=3, img_size=48, patch_size=8, reg_tokens=2).eval()
    target = cam_target(model, 48)
    assert target.name == f"blocks.{len(model.blocks) - 1}.norm1"
    prefix = model.num_prefix_tokens  # class token + 2 registers
    assert prefix == 3
    tokens = torch.arange(prefix + 36, dtype=torch.float32).view(1, -1, 1).expand(2, -1, 5)
    grid = target.reshape(tokens)  # (N, C, 6, 6): 48 px / 8 px patches, not 14x14
    assert grid.shape == (2, 5, 6, 6)
    assert grid[0, 0, 0, 0] == prefix and grid[0, 0, 0, 1] == prefix + 1 and grid[0, 0, 1, 0] == prefix + 6


def test_a_model_without_a_spatial_map_asks_for_integrated_gradients():
    class Flat(nn.Module):
        num_features = 8

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 16 * 16, 8)

        def forward(self, x):
            return self.fc(x.flatten(1))

    with pytest.raises(ModelError, match="--method ig"):
        cam_target(Flat(), 16)


def test_bad_method_and_bad_pixels_say_what_to_pass():
    clf = tiny_classifier(CNN)
    with pytest.raises(ClarivisError, match="method 'lime'; choose one of gradcam, gradcam"):
        heatmaps(clf, _pixels(1), method="lime")
    with pytest.raises(ClarivisError, match=r"uint8 \(N, 3, 32, 32\)"):
        heatmaps(clf, _pixels(1).float())
    with pytest.raises(ClarivisError, match="one each"):
        heatmaps(clf, _pixels(2), targets=[0])
    with pytest.raises(ClarivisError, match="0 to 2"):
        heatmaps(clf, _pixels(1), targets=[3])


@pytest.mark.parametrize("size", [32, 64])
def test_cnn_gradcam_is_pytorch_grad_cams(size):
    """CNN Grad-CAM runs on captum (pytorch_grad_cam's import costs the report 1.8 s of CPU):
    the maps must be the ones pytorch_grad_cam computes, scaling and resize included."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from clarivis.explain.cam import cam_maps

    clf = tiny_classifier(CNN, size)
    x = clf.normalize(_pixels(4, size))
    targets = [0, 1, 2, 1]
    target = cam_target(clf.model, size)
    assert target.reshape is None  # the captum path
    ours = cam_maps(clf.model, x, targets, method="gradcam")
    cam = GradCAM(model=clf.model, target_layers=[target.layer])
    try:
        with torch.enable_grad():
            theirs = cam(input_tensor=x.detach().requires_grad_(True),
                         targets=[ClassifierOutputTarget(t) for t in targets])
    finally:
        cam.activations_and_grads.release()
    # Real maps, not zeros on both sides (an untrained net's ReLU leaves some all-zero).
    assert (ours.reshape(4, -1).std(axis=1) > 0.01).sum() >= 2
    np.testing.assert_allclose(ours, np.clip(theirs, 0, 1), atol=1e-4)
