"""Defaults adapt to the data and the device."""

from __future__ import annotations

import torch

from clarivis.training.defaults import (
    pick_batch_size,
    pick_crop_pct,
    pick_img_size,
    pick_lr,
    pick_model,
)


def test_image_size_follows_the_data_not_imagenet():
    assert pick_img_size([(32, 32)] * 10) == 32  # CIFAR stays at 32 px
    assert pick_img_size([(8, 8)]) == 32  # tiny images get the minimum
    assert pick_img_size([(100, 80)] * 3) == 96  # median sqrt(w*h) = 89 -> next multiple of 32
    assert pick_img_size([(4000, 3000)]) == 224  # photos are capped
    assert pick_img_size([(32, 32)], pretrained_size=224) == 224  # weights call for their size


def test_model_and_batch_size_fit_the_device_and_data():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    # Small images from scratch: networks made for them (models/small_nets.py), narrower on CPU.
    assert pick_model(cpu, 32) == "airnet_s" and pick_model(gpu, 32) == "airnet_m"
    assert pick_model(cpu, 224) == "mobilenetv3_large_100" and pick_model(gpu, 224) == "resnet50"
    assert pick_batch_size(45_000) == 64  # large images: fits every default model
    assert pick_batch_size(45_000, img_size=32) == 256  # small images: per-layer overheads
    assert pick_batch_size(4_500, img_size=32) == 256  # from 16 steps an epoch
    assert pick_batch_size(4_000, img_size=32) == 64
    assert pick_batch_size(45_000, img_size=32, recipe="fast") == 512
    assert pick_batch_size(600, img_size=32, recipe="fast") == 32  # no 1-step epochs
    assert pick_lr("sgd", 512, fine_tune=False) == 0.4  # linear scaling, capped
    assert pick_batch_size(300) == 16  # tiny data: enough steps per epoch
    assert pick_lr("adamw", 64, fine_tune=False) == 2e-3
    assert pick_lr("adamw", 32, fine_tune=True) == 1e-3  # the tutorial's lr at its batch
    assert pick_lr("adamw", 64, fine_tune=True, text_init=True) == 2e-5  # CLIP head from text


def test_the_weights_crop_margin_is_kept_off_upsampled_images():
    photos, thumbnails = [(500, 375)] * 5, [(32, 32)] * 5
    assert pick_crop_pct("crop", 0.875, photos, 224) == 0.875  # timm's own evaluation crop
    assert pick_crop_pct("crop", 0.875, thumbnails, 224) == 1.0  # 32 -> 224: keep every pixel
    assert pick_crop_pct("crop", 0.875) == 0.875  # sizes unknown: the weights' crop
    assert pick_crop_pct("pad", 0.875, photos, 224) == 1.0  # the letterbox never crops
