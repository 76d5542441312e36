"""The common baseline: image classification training as a typical PyTorch tutorial writes it.
torchvision ImageFolder + RandomCrop/flip/ToTensor/Normalize, a DataLoader with a few workers,
a timm model, AdamW at a constant lr, CrossEntropyLoss, `.to(device)` per batch, bf16 autocast
on CUDA. Nothing here is tuned: it is the yardstick clarivis is compared with."""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from common import create_timm_model, synchronize

# ImageNet statistics, as most tutorials use (the cost is the same for any constants).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
BATCH_SIZE = 128
LR = 1e-3  # torch's AdamW default
WEIGHT_DECAY = 0.05  # as clarivis, so only the pipeline differs


def default_workers(device: str) -> int:
    """2 workers on CPU (tutorial default), more on GPU machines where the GPU waits for data."""
    return min(8, os.cpu_count() or 1) if device.startswith("cuda") else 2


def tutorial_transforms(img_size: int, native_size: tuple[int, int]) -> tuple[Any, Any]:
    """(train, val) transforms; resize first only when the images are not img_size square already
    (native_size: (width, height) of the dataset's first image)."""
    square = tuple(native_size) == (img_size, img_size)
    resize = [] if square else [transforms.Resize(img_size), transforms.CenterCrop(img_size)]
    train = transforms.Compose([
        *resize,
        transforms.RandomCrop(img_size, padding=img_size // 8),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    val = transforms.Compose([*resize, transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return train, val


def tutorial_loader(folder: Path, transform, *, batch_size: int, shuffle: bool, workers: int,
                    device: str) -> DataLoader:
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    # Not in tutorials, but a 1-image last batch makes BatchNorm fail in training mode.
    drop_last = shuffle and len(dataset) % batch_size == 1
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=device.startswith("cuda"), drop_last=drop_last)


def build(model_name: str, num_classes: int, img_size: int, model_kwargs: dict[str, Any],
          device: str, lr: float = LR) -> tuple[nn.Module, torch.optim.Optimizer, nn.Module]:
    model = create_timm_model(model_name, num_classes, img_size, model_kwargs).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    return model, optimizer, nn.CrossEntropyLoss()


def autocast(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()


def train_epoch(model: nn.Module, loader: DataLoader, optimizer, criterion, device: str) -> dict:
    """One epoch; images/s over the whole epoch (worker start-up and data waits included)."""
    model.train()
    running_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        with autocast(device):
            outputs = model(images)
            loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * labels.size(0)
        correct += (outputs.argmax(1) == labels).sum().item()
        seen += labels.size(0)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"train_loss": running_loss / seen, "train_accuracy": correct / seen,
            "images_per_second": seen / seconds, "epoch_seconds": seconds, "images": seen}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: str) -> float:
    """Top-1 accuracy on the loader's images."""
    model.eval()
    correct, seen = 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with autocast(device):
            outputs = model(images)
        correct += (outputs.argmax(1) == labels).sum().item()
        seen += labels.size(0)
    return correct / seen
