"""Preprocessing: resize modes keep or cut content as documented; one definition for all."""

from __future__ import annotations

import pytest
import torch

from clarivis.data.transforms import Preprocess, eval_transform, resize_transform, train_transform


def wide_image() -> torch.Tensor:
    """A 20x60 image: left third red, middle green, right third blue (uint8, CHW)."""
    img = torch.zeros(3, 20, 60, dtype=torch.uint8)
    img[0, :, :20] = 255
    img[1, :, 20:40] = 255
    img[2, :, 40:] = 255
    return img


def test_pad_keeps_the_whole_image_and_pads_with_the_mean():
    pp = Preprocess(img_size=30, resize_mode="pad")
    out = resize_transform(pp)(wide_image())
    assert out.shape == (3, 30, 30)
    # All three colour bands survive (nothing cut off) ...
    assert out[0, 15, 2] > 200 and out[1, 15, 15] > 200 and out[2, 15, 28] > 200
    # ... and the letterbox bars are the mean colour, i.e. zero after normalisation.
    assert tuple(out[:, 0, 15].tolist()) == tuple(round(m * 255) for m in pp.mean)
    normalised = eval_transform(pp)(wide_image())
    assert normalised[:, 0, 15].abs().max() < 0.02


def test_crop_cuts_the_sides_and_squash_keeps_them_distorted():
    crop = resize_transform(Preprocess(img_size=30, resize_mode="crop"))(wide_image())
    assert crop.shape == (3, 30, 30)
    assert crop[0, :, 2:-2].max() == 0 and crop[2, :, 2:-2].max() == 0  # red, blue cut off
    assert crop[1].float().mean() > 200
    squash = resize_transform(Preprocess(img_size=30, resize_mode="squash"))(wide_image())
    assert squash[0, 15, 1] > 200 and squash[2, 15, 28] > 200


@pytest.mark.parametrize("preset", ["none", "light", "randaugment", "trivialaugment"])
@pytest.mark.parametrize("size", [32, 96])
def test_train_presets_give_normalised_model_inputs(preset, size):
    x = train_transform(Preprocess(img_size=size), augment=preset)(wide_image())
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert x.min() >= -3 and x.max() <= 3


def test_crop_pct_resizes_the_shorter_side_then_keeps_the_centre():
    """timm's crop_pct 0.875: a 64x64 image -> shorter side floor(32 / 0.875) = 36 -> centre 32,
    so 2 px of the resized image (3.5 px of the original) are cut off on every side."""
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    image[:, 3:61, 3:61] = 255  # white square, black frame 3 px wide (1.7 px once resized)
    full = resize_transform(Preprocess(img_size=32, resize_mode="crop"))(image)
    cropped = resize_transform(Preprocess(img_size=32, resize_mode="crop", crop_pct=0.875))(image)
    assert full.shape == cropped.shape == (3, 32, 32)
    assert full[:, 0, 16].max() < 30  # the frame is still there at crop_pct 1
    assert cropped[:, 16, 0].min() > 200 and cropped[:, 0, 16].min() > 200  # gone at 0.875


def test_preprocess_round_trips_through_a_dict():
    pp = Preprocess(img_size=48, resize_mode="crop", mean=(0.5,) * 3, std=(0.5,) * 3,
                    interpolation="bicubic", crop_pct=0.9)
    assert Preprocess.from_dict(pp.to_dict()) == pp
