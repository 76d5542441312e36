"""The epoch engine, shared by training and pretraining (ssl/): seeding, the optimizer, AMP,
the warm-up + cosine schedule, the wall-clock budget, one training epoch and validation. No
data preparation and no run-folder files here: the loop (loop.py) and ssl/run.py own those."""

from __future__ import annotations

import random
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn

from clarivis.config import TrainConfig
from clarivis.errors import ClarivisError
from clarivis.training import distributed as ddp
from clarivis.training.callbacks import EpochProgress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # timm leaves biases, norms and the model's no_weight_decay() set (ViT position
    # embeddings, class token) undecayed; SGD there is Nesterov momentum.
    extra = {"momentum": config.momentum} if config.optimizer == "sgd" else {}
    if device.type == "cuda":
        extra["fused"] = True  # one kernel for the whole update instead of one per tensor
    if config.layer_decay and config.layer_decay < 1 and hasattr(model, "group_matcher"):
        # One param group per layer group, each with its lr_scale (the scheduler applies it).
        extra["layer_decay"] = config.layer_decay
    return create_optimizer_v2(model, opt=config.optimizer, lr=config.lr,
                               weight_decay=config.weight_decay, **extra)


def amp_dtype(config: TrainConfig, device: torch.device):
    if not config.amp or device.type != "cuda":
        return None  # CPU autocast is slower than fp32 on most CPUs
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def make_mixup(config: TrainConfig, num_classes: int) -> Mixup | None:
    if config.mixup <= 0 and config.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix,
                 label_smoothing=config.label_smoothing, num_classes=num_classes)


def autocast(device: torch.device, amp_dtype):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()


def warmup_cosine(optimizer, *, peak_lr: float, min_lr: float, total_steps: int,
                  warmup_steps: int) -> tuple[CosineLRScheduler, int]:
    """Linear warm-up from 1% of the peak, then cosine to min_lr at the last step: (scheduler,
    warm-up steps actually used, at most half the run). The warm-up is part of the run, not added
    to it (added, a 1-of-3-epoch warm-up left the run ending at a quarter of the peak lr). Shared
    with ssl/ (pretraining); with a time limit the clock moves it (TimeBudget.position)."""
    warmup_steps = min(warmup_steps, total_steps // 2)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=max(2, total_steps - warmup_steps), lr_min=min_lr,
        warmup_t=warmup_steps, warmup_lr_init=peak_lr * 0.01, warmup_prefix=True, t_in_epochs=False,
    )
    return scheduler, warmup_steps


class TimeBudget:
    """With --time-limit, wall time drives the schedule: the lr follows the cosine as if the
    run's fraction of its training time were its fraction of the steps (whichever is further),
    so it has annealed when the time is up, and training stops right there, mid-epoch if need
    be. A run cut off with a half-finished schedule is worse than a shorter schedule completed.
    The limit covers the whole run: data preparation (`setup_s`) and the final validation (as
    long as the last one took) are taken off the training time."""

    SYNC_EVERY = 16  # steps between DDP ranks agreeing on rank 0's clock (same lr everywhere)

    def __init__(self, limit_minutes: float | None, total_steps: int, world, *,
                 spent_s: float = 0.0, setup_s: float = 0.0):
        self.total_s = limit_minutes * 60 if limit_minutes else None
        self.setup_s, self.validation_s = setup_s, 0.0
        self.total_steps, self.world = total_steps, world
        self.start = time.perf_counter() - spent_s  # a resumed run keeps the time already spent
        self.fraction = spent_s / self.limit_s if self.limit_s else 0.0

    @property
    def limit_s(self) -> float | None:
        """Seconds of training steps the limit leaves (at least one)."""
        if self.total_s is None:
            return None
        return max(1.0, self.total_s - self.setup_s - self.validation_s)

    def reserve_for_validation(self, seconds: float) -> None:
        self.validation_s = seconds

    def elapsed(self) -> float:
        """Wall seconds since training started (validations between epochs included)."""
        return time.perf_counter() - self.start

    def position(self, step: int) -> int:
        """The schedule step for optimizer step `step`."""
        if self.limit_s is None:
            return step
        if not self.world.distributed or step % self.SYNC_EVERY == 0:
            self.fraction = ddp.from_main(self.world, self.elapsed() / self.limit_s)
        return max(step, int(self.fraction * self.total_steps))

    @property
    def spent(self) -> bool:
        return self.limit_s is not None and self.fraction >= 1.0


def wrap(model: nn.Module, config: TrainConfig, world, device) -> nn.Module:
    wrapped = ddp.wrap_model(model, world, device)
    return torch.compile(wrapped) if config.compile else wrapped


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def check_finite(total_loss: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(total_loss):
        raise ClarivisError(f"training diverged (loss {total_loss.item()}) in epoch {epoch}; lower --lr")


@dataclass
class Step:
    """What one optimizer step needs besides the batch: built once per run by the loop."""

    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    budget: TimeBudget
    loss_fn: nn.Module
    grad_clip: float | None  # max gradient norm; None or 0: no clipping
    amp_dtype: torch.dtype | None  # bfloat16/float16 on CUDA with --amp, else None (fp32)
    scaler: torch.amp.GradScaler | None  # float16 only
    ema: ModelEmaV3 | None
    mixup: Mixup | None
    world: ddp.World
    device: torch.device
    multilabel: bool = False  # targets are multi-hot (N, C); accuracy is per label


def correct_count(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Images right (single-label: top-1), or, multi-label, the share of each image's C yes/no
    decisions at logit 0 (probability 0.5) that are right, summed: 1 - Hamming loss per image."""
    if multilabel:
        return ((logits > 0) == (targets > 0.5)).float().mean(1).sum()
    return (logits.argmax(1) == targets).sum().float()


def train_one_epoch(model: nn.Module, batches, step: Step, state, console: Console, *, epoch: int,
                    epochs: int) -> dict:
    """One pass over `batches` (or until the time limit); `state.global_step` advances."""
    model.train()
    # Running sums stay on the device: no GPU->CPU sync per step (only for the progress bar).
    total_loss = torch.zeros((), device=step.device)
    correct = torch.zeros((), device=step.device)
    seen = 0
    start = time.perf_counter()
    with EpochProgress(console, epoch, epochs, len(batches)) as progress:
        for images, targets in batches:
            logits, loss = optimizer_step(model, images, targets, step)
            state.global_step += 1
            step.scheduler.step_update(step.budget.position(state.global_step))
            if step.ema is not None:
                step.ema.update(unwrap(model), step=state.global_step)
            n = images.shape[0]
            total_loss += loss.detach().float() * n
            correct += correct_count(logits.detach().float(), targets, step.multilabel)
            seen += n
            if progress.wants_update():
                check_finite(total_loss, epoch)
                progress.update(images=n, loss=total_loss.item() / seen, acc=correct.item() / seen)
            else:
                progress.advance(images=n)
            if step.budget.spent:
                break  # the time limit is reached mid-epoch: validate and save now
    check_finite(total_loss, epoch)
    elapsed = time.perf_counter() - start
    loss_sum, correct_sum, seen_sum = ddp.sum_across(
        step.world, [total_loss.item(), float(correct.item()), float(seen)], step.device)
    return {"train_loss": loss_sum / max(seen_sum, 1), "train_accuracy": correct_sum / max(seen_sum, 1),
            "images_per_second": seen_sum / max(elapsed, 1e-9), "epoch_seconds": elapsed}


def optimizer_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                   step: Step) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (mixup, autocast), backward (loss scaling, clipping) and the update:
    (logits (N, C), loss) of the batch. Accuracy is counted against the un-mixed `targets`."""
    if step.mixup is not None:
        images, targets = step.mixup(images, targets)
    with autocast(step.device, step.amp_dtype):
        logits = model(images)
        loss = step.loss_fn(logits, targets)
    step.optimizer.zero_grad(set_to_none=True)
    if step.scaler is not None:
        step.scaler.scale(loss).backward()
        step.scaler.unscale_(step.optimizer)
    else:
        loss.backward()
    if step.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), step.grad_clip)
    if step.scaler is not None:
        step.scaler.step(step.optimizer)
        step.scaler.update()
    else:
        step.optimizer.step()
    return logits, loss


@torch.no_grad()
def validate(model, batches, device, amp_dtype, world, *, multilabel: bool = False) -> dict:
    """Loss and accuracy over the whole validation split (each rank its shard, then summed).
    Multi-label: the mean BCE per label, the per-label accuracy and val_map, the macro mean
    average precision (the threshold-free score epochs are ranked by)."""
    model.eval()
    total_loss, correct, seen = 0.0, 0.0, 0
    scores, truths = [], []
    for images, targets in batches:
        with autocast(device, amp_dtype):
            logits = model(images).float()
        if multilabel:
            per_image = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
            total_loss += per_image.sum().item()
            scores.append(torch.sigmoid(logits).cpu())
            truths.append(targets.cpu())
        else:
            total_loss += F.cross_entropy(logits, targets, reduction="sum").item()
        correct += float(correct_count(logits, targets, multilabel))
        seen += len(targets)
    total_loss, correct, seen = ddp.sum_across(world, [total_loss, correct, seen], device)
    stats = {"val_loss": total_loss / max(seen, 1), "val_accuracy": correct / max(seen, 1)}
    if multilabel:  # every rank gathers, one with no val image too (else the others would wait)
        from clarivis.multilabel_metrics import mean_ap

        probs = ddp.gather_rows(world, torch.cat(scores) if scores else torch.empty(0))
        truth = ddp.gather_rows(world, torch.cat(truths) if truths else torch.empty(0))
        if len(probs):
            stats["val_map"] = mean_ap(probs, truth)
    return stats
