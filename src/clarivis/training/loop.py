"""The training run: data -> model -> epochs with validation, early stopping, checkpoints and
the best model saved as a ModelBundle. Readable top to bottom; `run_training` is the entry."""

from __future__ import annotations

import json
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn

from clarivis.config import TrainConfig, validate_config, write_yaml
from clarivis.data import cache
from clarivis.data.batch_augment import BatchAugment, Normalize
from clarivis.data.dataset import ImageDataset, class_counts, imbalance_ratio
from clarivis.data.loaders import (
    StreamBatches,
    TensorBatches,
    epoch_order,
    make_batches,
    place_cache,
    shard,
)
from clarivis.data.scan import scan_images, write_skipped
from clarivis.data.sources import DatasetIndex, Sample, fingerprint, index_dataset
from clarivis.data.splits import resolve_splits
from clarivis.data.transforms import INTERPOLATIONS, Preprocess, eval_transform, train_transform
from clarivis.errors import ClarivisError, DataError, ResumeError
from clarivis.models.bundle import make_bundle_config, save_bundle
from clarivis.models.factory import (
    check_model_name,
    check_weights_file,
    create_model,
    pretrained_cfg,
    set_backbone_trainable,
)
from clarivis.training import defaults
from clarivis.training import distributed as ddp
from clarivis.training.callbacks import EpochProgress, RunLogger
from clarivis.training.checkpoint import CHECKPOINT_NAME, load_resume, save_checkpoint

IMBALANCE_THRESHOLD = 1.5  # largest/smallest class above this gets balanced sampling
# Below this many val images the best epoch is the one of lowest val loss, not highest accuracy
# (one image is more than half a point of accuracy; see _is_improvement).
SMALL_VAL_IMAGES = 200


@dataclass
class TrainResult:
    run_dir: Path
    bundle_dir: Path
    best_epoch: int
    best_val_accuracy: float | None  # None when trained without a validation split
    epochs_run: int
    stopped_early: bool
    images_per_second: float  # training throughput, last epoch
    history: list[dict] = field(default_factory=list)


@dataclass
class PreparedData:
    index: DatasetIndex
    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    train_images: list[torch.Tensor] | None
    val_images: list[torch.Tensor] | None
    sizes: list[tuple[int, int]]
    skipped: list[tuple[str, str]]
    fingerprint: str
    from_record: bool = False  # decode check taken from an earlier run's record


# ----------------------------------------------------------------------------- entry point


def run_training(
    config: TrainConfig, *, resume: str | Path | None = None, console: Console | None = None
) -> TrainResult:
    """Train a model as `config` says, or continue the run in folder `resume`. Under torchrun
    every rank calls this; rank 0 alone prints and writes files."""
    started = time.perf_counter()  # a --time-limit counts from here: data preparation included
    device = defaults.resolve_device(config.device)  # fail fast on settings, before the images
    world = ddp.init_world(device)
    try:
        device = ddp.device_for(world, device)
        console = console or Console(stderr=True, soft_wrap=True)
        if not world.is_main:
            console = Console(quiet=True)
        return _run(config, resume, console, device, world, started)
    finally:
        ddp.close_world(world)


def _run(config, resume, console, device, world, started) -> TrainResult:
    if config.linear_probe and world.distributed:  # one forward pass and a CPU fit: no sharing
        raise ClarivisError("--linear-probe runs in one process; drop --nproc")
    start_state = None
    if resume is not None:
        run_dir = Path(resume)
        start_state, config = _load_resume(run_dir, config, console)
    else:
        run_dir = ddp.from_main(world, _new_run_dir(config) if world.is_main else None)
    if config.model:
        check_model_name(config.model)
    if config.weights and start_state is None:
        check_weights_file(config.weights)
    created = not run_dir.exists()
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)  # an unwritable --out fails now, not after the scan
    try:
        data = _prepare_in_turn(config, console, world)
    except ClarivisError:
        if world.is_main and created and not any(run_dir.iterdir()):
            run_dir.rmdir()  # leave no empty run folder behind a data error
        raise
    if start_state is not None and start_state["fingerprint"] != data.fingerprint:
        raise ResumeError(
            f"{run_dir} was trained on other data than {config.data}; "
            "resume with the same data or start a new run"
        )
    config = _resolve_defaults(config, data, device, world.size)
    balanced = _balanced_sampling(config, data)
    if world.is_main:
        write_yaml(config, run_dir / "config.yaml")
        write_skipped(data.skipped, run_dir / "skipped_files.txt")
        _write_split(run_dir, data)
        report = _write_data_report(run_dir, config, data, balanced)
        _print_data_summary(console, config, data, report, device, world)
    if config.linear_probe:
        from clarivis.training.linear_probe import fit_linear_probe

        return fit_linear_probe(config, data, device, run_dir, console)
    return _fit(config, data, device, run_dir, start_state, balanced, console, world, started)


def _prepare_in_turn(config: TrainConfig, console: Console, world) -> PreparedData:
    """Rank 0 decodes first and records the result; the other ranks then read that record
    instead of decoding the same files again."""
    if world.is_main:
        data = prepare_data(config, console)
    ddp.barrier(world)
    if not world.is_main:
        data = prepare_data(config, console)
    return data


def _new_run_dir(config: TrainConfig) -> Path:
    if config.out:
        run_dir = Path(config.out)
        if (run_dir / CHECKPOINT_NAME).exists():
            raise ClarivisError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                "or choose another --out"
            )
        return run_dir
    name = Path(config.data.rstrip("/")).stem or "data"
    return Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def _load_resume(run_dir: Path, given: TrainConfig, console: Console) -> tuple[dict, TrainConfig]:
    def is_training_run(state: dict) -> None:
        if "method" in state:  # written by clarivis pretrain
            raise ResumeError(f"{run_dir} is a pretraining run; continue it with clarivis "
                              "pretrain --resume")

    return load_resume(run_dir, given, validate_config, console, check_state=is_training_run)


# ----------------------------------------------------------------------------- data


def prepare_data(config: TrainConfig, console: Console) -> PreparedData:
    """Index, split, decode-check and (when small) preload the dataset."""
    index = index_dataset(config.data)
    splits = resolve_splits(index, config.val_fraction, config.seed)
    t0 = time.perf_counter()
    with console.status("checking images (once; later runs reuse the result)..."):
        train_scan = scan_images(splits["train"])
        val_scan = scan_images(splits.get("val", []))
    skipped = train_scan.skipped + val_scan.skipped
    if not train_scan.samples:
        raise DataError(
            f"none of the {len(splits['train'])} training images in {config.data} could be read; "
            "check the files (all are corrupt or not images)"
        )
    class_names = sorted({s.label for s in train_scan.samples})
    if len(class_names) < 2:
        raise DataError(
            f"only class '{class_names[0]}' has readable training images; "
            "a classifier needs at least 2 classes"
        )
    val, val_images = _keep_known(val_scan.samples, val_scan.images, set(class_names))
    how = "from the record of an earlier run" if train_scan.from_record else "by decoding"
    console.print(
        f"checked {len(train_scan.samples) + len(val_scan.samples) + len(skipped)} images "
        f"{how} in {time.perf_counter() - t0:.1f}s"
    )
    return PreparedData(
        index=index, class_names=class_names, train=train_scan.samples, val=val,
        train_images=train_scan.images, val_images=val_images, sizes=train_scan.sizes,
        skipped=skipped,
        fingerprint=fingerprint(index.all_samples, index.root),
        from_record=train_scan.from_record,
    )


def _keep_known(samples, images, known: set[str]):
    keep = [i for i, s in enumerate(samples) if s.label in known]
    kept_images = [images[i] for i in keep] if images is not None else None
    return [samples[i] for i in keep], kept_images


def _resolve_defaults(config: TrainConfig, data: PreparedData, device, world_size: int = 1) -> TrainConfig:
    """Fill every `None` with the choice for this data and device (then saved as config.yaml)."""
    values = config.model_dump()
    fine_tune = config.pretrained or config.weights is not None
    if values["img_size"] is None:
        pretrained_size = None
        if fine_tune and config.model:
            pretrained_size = (pretrained_cfg(config.model).get("input_size") or (3, 224, 224))[1]
        values["img_size"] = defaults.pick_img_size(data.sizes, pretrained_size)
    if values["model"] is None:
        values["model"] = defaults.pick_model(device, values["img_size"])
    if values["batch_size"] is None:  # per process; the global batch is world_size times it
        values["batch_size"] = defaults.pick_batch_size(
            len(data.train) // world_size, values["img_size"], config.recipe)
    if values["resize_mode"] is None:
        values["resize_mode"] = defaults.pick_resize_mode(fine_tune)
    if values["crop_pct"] is None:
        weights_crop = pretrained_cfg(values["model"]).get("crop_pct") if fine_tune else None
        values["crop_pct"] = defaults.pick_crop_pct(values["resize_mode"], weights_crop)
    if values["warmup_epochs"] is None:
        values["warmup_epochs"] = defaults.pick_warmup_epochs(config.epochs)
    if values["lr"] is None:
        values["lr"] = defaults.pick_lr(config.optimizer, values["batch_size"] * world_size, fine_tune,
                                        text_init=config.init_from_text)
    if values["cache"] is None:
        n = len(data.train) + len(data.val)
        values["cache"] = cache.cache_bytes(n, values["img_size"]) <= cache.DEFAULT_CACHE_BUDGET
    if values["workers"] is None:
        values["workers"] = 0 if values["cache"] else defaults.pick_workers(data.train_images is not None)
    values["device"] = str(device)
    values["out"] = config.out
    return validate_config(values)


def _write_split(run_dir: Path, data: PreparedData) -> None:
    split = {name: [{"path": s.path, "label": s.label} for s in samples]
             for name, samples in (("train", data.train), ("val", data.val))}
    (run_dir / "split.json").write_text(json.dumps(split))


def _balanced_sampling(config: TrainConfig, data: PreparedData) -> bool:
    ratio = imbalance_ratio(class_counts(data.train, data.class_names))
    return config.balance == "sampler" or (config.balance == "auto" and ratio >= IMBALANCE_THRESHOLD)


def _write_data_report(run_dir: Path, config: TrainConfig, data: PreparedData, balanced: bool) -> dict:
    counts = class_counts(data.train, data.class_names)
    ratio = imbalance_ratio(counts)
    widths = [w for w, _ in data.sizes]
    heights = [h for _, h in data.sizes]
    report = {
        "layout": data.index.layout,
        "classes": data.class_names,
        "train_counts": counts,
        "val_counts": class_counts(data.val, data.class_names),
        "imbalance_ratio": round(ratio, 3),
        "balanced_sampling": balanced,
        "skipped": len(data.skipped),
        "image_width": {"min": min(widths), "median": float(np.median(widths)), "max": max(widths)},
        "image_height": {"min": min(heights), "median": float(np.median(heights)),
                         "max": max(heights)},
        "decoded_from_record": data.from_record,
        "fingerprint": data.fingerprint,
    }
    (run_dir / "data_report.json").write_text(json.dumps(report, indent=2))
    return report


def _print_data_summary(console, config, data, report, device, world) -> None:
    where = f"{world.size} processes on {device.type}" if world.distributed else str(device)
    console.print(
        f"[bold]{len(data.train)}[/] train / [bold]{len(data.val)}[/] val images, "
        f"{len(data.class_names)} classes ({data.index.layout} layout); model "
        f"[bold]{config.model}[/] at {config.img_size}px, batch {config.batch_size} on {where}"
    )
    if data.skipped:
        console.print(
            f"[yellow]skipped {len(data.skipped)} unreadable file(s); listed in skipped_files.txt"
        )
    if report["imbalance_ratio"] >= IMBALANCE_THRESHOLD:
        action = "balanced by weighted sampling" if report["balanced_sampling"] else "not balanced"
        console.print(
            f"[yellow]class imbalance {report['imbalance_ratio']:.1f}:1 (largest/smallest), {action}"
        )


# ----------------------------------------------------------------------------- training


def _fit(config, data, device, run_dir, start_state, balanced, console, world, started) -> TrainResult:
    seed_everything(config.seed)  # same initial weights on every rank (DDP also broadcasts them)
    fresh = start_state is None  # on resume the checkpoint supplies every weight
    if config.init_from_text and fresh:  # the head starts as CLIP's zero-shot classifier
        from clarivis.zeroshot.classify import text_initialized_model

        model = text_initialized_model(config, data.class_names)
    else:
        model = create_model(
            config.model, num_classes=len(data.class_names), img_size=config.img_size,
            pretrained=config.pretrained and fresh, weights=config.weights if fresh else None,
            drop_rate=config.drop_rate, **config.model_kwargs,
        )
    if config.sync_bn:
        model = ddp.sync_batchnorm(model, world, device)
    cfg = pretrained_cfg(config.model)
    preprocess = _preprocess_for(config, cfg)
    train_batches, val_batches = _batch_sources(config, data, preprocess, device, world, console)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(model, config, device)
    ema = ModelEmaV3(model, decay=config.ema_decay) if config.ema else None
    amp_dtype = _amp_dtype(config, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    mixup = _make_mixup(config, len(data.class_names))
    loss_fn = SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(
        label_smoothing=config.label_smoothing)
    bundle_config = make_bundle_config(
        architecture=config.model, class_names=data.class_names, preprocess=preprocess,
        model_kwargs={**config.model_kwargs,
                      **({"img_size": config.img_size} if cfg.get("fixed_input_size") else {})},
    )
    targets = _targets(data.train, data.class_names)
    order = partial(epoch_order, targets, seed=config.seed, balanced=balanced,
                    num_classes=len(data.class_names), rank=world.rank, world=world.size)
    steps_per_epoch = len(_epoch_batches(order(epoch=1), config.batch_size))
    scheduler, _ = warmup_cosine(optimizer, peak_lr=config.lr, min_lr=config.lr * config.min_lr_ratio,
                                 total_steps=config.epochs * steps_per_epoch,
                                 warmup_steps=int(config.warmup_epochs * steps_per_epoch))
    state = {"epoch": 0, "global_step": 0, "best": None, "bad_epochs": 0, "history": []}
    logger = RunLogger(run_dir) if world.is_main else None
    if start_state is not None:
        state = _restore(start_state, model, optimizer, ema, scaler)
        if logger is not None:
            logger.truncate_after(state["epoch"])
        console.print(f"resuming {run_dir} after epoch {state['epoch']}")
    budget = TimeBudget(config.time_limit, config.epochs * steps_per_epoch, world,
                        spent_s=state.get("train_seconds", 0.0),
                        setup_s=time.perf_counter() - started)
    scheduler.step_update(budget.position(state["global_step"]))
    bundle_dir = run_dir / "model"
    stopped_early, ips = False, 0.0
    train_model, wrapped_frozen = model, None
    try:
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            # Same data order/augmentation on resume; each rank draws its own augmentation.
            seed_everything(config.seed * 1000 + epoch + 7919 * world.rank)
            train_batches.set_epoch(_epoch_batches(order(epoch=epoch), config.batch_size), epoch)
            frozen = epoch <= config.freeze_epochs
            if frozen != wrapped_frozen:  # DDP registers the trainable parameters when built
                set_backbone_trainable(model, not frozen)
                train_model, wrapped_frozen = _wrap(model, config, world, device), frozen
            train_stats = train_one_epoch(
                train_model, train_batches, optimizer, scheduler, budget, loss_fn, state, console,
                epoch=epoch, epochs=config.epochs, grad_clip=config.grad_clip, amp_dtype=amp_dtype,
                scaler=scaler, ema=ema, mixup=mixup, world=world, device=device,
            )
            ips = train_stats["images_per_second"]
            eval_model = ema.module if ema is not None else model
            t_val = time.perf_counter()
            val_stats = validate(eval_model, val_batches, device, amp_dtype, world) if data.val else {}
            budget.reserve_for_validation(time.perf_counter() - t_val)
            record = {"epoch": epoch, **train_stats, **val_stats,
                      "lr": optimizer.param_groups[0]["lr"], "frozen_backbone": frozen}
            state["history"].append(record)
            improved = _is_improvement(val_stats, state["best"], len(data.val))
            if improved or not val_stats:
                state["best"] = {"epoch": epoch, **val_stats}
                state["bad_epochs"] = 0
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch
            # Rank 0's clock decides a time limit, so every rank stops after the same epoch.
            state["train_seconds"] = budget.elapsed()
            stopped_early = ddp.from_main(world, _should_stop(config, state, budget))
            if world.is_main:
                logger.log_epoch(record)
                if improved or not val_stats:
                    bundle_config.training = _training_summary(config, data, state, epoch, world)
                    save_bundle(bundle_dir, eval_model, bundle_config)
                _print_epoch(console, record, improved)
                last = stopped_early or epoch == config.epochs
                save_checkpoint(run_dir / CHECKPOINT_NAME,
                                _checkpoint(state, model, optimizer, ema, scaler, data, last))
            if stopped_early:
                break
        ddp.barrier(world)  # no rank leaves before rank 0 has written the bundle
    finally:
        if logger is not None:
            logger.close()
    best = state["best"] or {}
    return TrainResult(
        run_dir=run_dir, bundle_dir=bundle_dir, best_epoch=best.get("epoch", state["epoch"]),
        best_val_accuracy=best.get("val_accuracy"), epochs_run=state["epoch"],
        stopped_early=stopped_early, images_per_second=ips, history=state["history"],
    )


def _wrap(model: nn.Module, config: TrainConfig, world, device) -> nn.Module:
    wrapped = ddp.wrap_model(model, world, device)
    return torch.compile(wrapped) if config.compile else wrapped


def _targets(samples: list[Sample], class_names: list[str]) -> list[int]:
    class_to_idx = {name: i for i, name in enumerate(class_names)}
    return [class_to_idx[s.label] for s in samples]


def _epoch_batches(order: list[int], batch_size: int) -> list[list[int]]:
    if not order:
        return []
    return make_batches(order, min(batch_size, len(order)), drop_last=len(order) > batch_size)


def _batch_sources(config, data, preprocess, device, world, console):
    """(train, val) batch sources: the tensor cache with batched augmentation on the device, or
    the DataLoader stream (see data/loaders.py)."""
    train_targets = _targets(data.train, data.class_names)
    val_targets = _targets(data.val, data.class_names)
    # Validation keeps every image: no dropped last batch.
    val_order = make_batches(shard(len(data.val), world.rank, world.size), config.batch_size * 2,
                             drop_last=False)
    if config.cache:
        train_pixels, val_pixels = _open_caches(data, preprocess, console, world)
        augment = BatchAugment(preprocess, device, augment=config.augment, hflip=config.hflip)
        train = TensorBatches(place_cache(train_pixels, device), train_targets, augment, device)
        val = TensorBatches(place_cache(val_pixels, device), val_targets, Normalize(preprocess, device),
                            device)
    else:
        class_to_idx = {name: i for i, name in enumerate(data.class_names)}
        train_ds = ImageDataset(
            data.train, class_to_idx,
            train_transform(preprocess, augment=config.augment, hflip=config.hflip), data.train_images,
            img_size=preprocess.img_size,
        )
        val_ds = ImageDataset(data.val, class_to_idx, eval_transform(preprocess), data.val_images,
                              img_size=preprocess.img_size)
        train = StreamBatches(train_ds, device, workers=config.workers, seed=config.seed)
        val = StreamBatches(val_ds, device, workers=config.workers, seed=config.seed)
    val.set_epoch(val_order, 0)
    return train, val


def _open_caches(data, preprocess, console, world):
    """Rank 0 builds the tensor caches; the other ranks then open the same files."""
    pixels = {}
    for turn in (True, False):
        if world.is_main == turn:
            for name, samples, decoded in (("train", data.train, data.train_images),
                                           ("val", data.val, data.val_images)):
                t0 = time.perf_counter()
                with console.status(f"caching {name} images as tensors..."):
                    pixels[name], hit = cache.open_pixel_cache(samples, preprocess, decoded=decoded)
                if not hit and samples:
                    console.print(f"cached {len(samples)} {name} images in "
                                  f"{time.perf_counter() - t0:.1f}s (reused by later runs)")
        if turn:
            ddp.barrier(world)
    data.train_images = data.val_images = None  # consumed into the caches
    return pixels["train"], pixels["val"]


def train_one_epoch(
    model, batches, optimizer, scheduler, budget, loss_fn, state, console, *, epoch, epochs,
    grad_clip, amp_dtype, scaler, ema, mixup, world, device,
) -> dict:
    model.train()
    # Running sums stay on the device: no GPU->CPU sync per step (only for the progress bar).
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    autocast = _autocast(device, amp_dtype)
    with EpochProgress(console, epoch, epochs, len(batches)) as progress:
        for images, targets in batches:
            hard_targets = targets
            if mixup is not None:
                images, targets = mixup(images, targets)
            with autocast:
                logits = model(images)
                loss = loss_fn(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            state["global_step"] += 1
            scheduler.step_update(budget.position(state["global_step"]))
            if ema is not None:
                ema.update(_unwrap(model), step=state["global_step"])
            n = images.shape[0]
            total_loss += loss.detach().float() * n
            correct += (logits.argmax(1) == hard_targets).sum()
            seen += n
            if progress.wants_update():
                _check_finite(total_loss, epoch)
                progress.update(images=n, loss=total_loss.item() / seen, acc=correct.item() / seen)
            else:
                progress.advance(images=n)
            if budget.spent:
                break  # the time limit is reached mid-epoch: validate and save now
    _check_finite(total_loss, epoch)
    elapsed = time.perf_counter() - start
    loss_sum, correct_sum, seen_sum = ddp.sum_across(
        world, [total_loss.item(), float(correct.item()), float(seen)], device)
    return {"train_loss": loss_sum / max(seen_sum, 1), "train_accuracy": correct_sum / max(seen_sum, 1),
            "images_per_second": seen_sum / max(elapsed, 1e-9), "epoch_seconds": elapsed}


def _check_finite(total_loss: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(total_loss):
        raise ClarivisError(f"training diverged (loss {total_loss.item()}) in epoch {epoch}; lower --lr")


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


@torch.no_grad()
def validate(model, batches, device, amp_dtype, world) -> dict:
    """Loss and accuracy over the whole validation split (each rank its shard, then summed)."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    autocast = _autocast(device, amp_dtype)
    for images, targets in batches:
        with autocast:
            logits = model(images)
        total_loss += F.cross_entropy(logits.float(), targets, reduction="sum").item()
        correct += int((logits.argmax(1) == targets).sum())
        seen += len(targets)
    total_loss, correct, seen = ddp.sum_across(world, [total_loss, correct, seen], device)
    return {"val_loss": total_loss / max(seen, 1), "val_accuracy": correct / max(seen, 1)}


# ----------------------------------------------------------------------------- helpers


def _preprocess_for(config: TrainConfig, cfg: dict) -> Preprocess:
    """The model's own normalisation and interpolation (what pretrained weights expect)."""
    interpolation = cfg.get("interpolation")
    return Preprocess(
        img_size=config.img_size, resize_mode=config.resize_mode, crop_pct=config.crop_pct,
        mean=tuple(cfg.get("mean", Preprocess.mean)), std=tuple(cfg.get("std", Preprocess.std)),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
    )


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


def _autocast(device: torch.device, amp_dtype):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
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


def _amp_dtype(config: TrainConfig, device: torch.device):
    if not config.amp or device.type != "cuda":
        return None  # CPU autocast is slower than fp32 on most CPUs
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _make_mixup(config: TrainConfig, num_classes: int) -> Mixup | None:
    if config.mixup <= 0 and config.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix,
                 label_smoothing=config.label_smoothing, num_classes=num_classes)


def _is_improvement(val: dict, best: dict | None, val_images: int = SMALL_VAL_IMAGES) -> bool:
    """Higher val accuracy wins; equal accuracy with lower val loss wins too. On a small val split
    the val loss alone decides: on 24 images one image moves accuracy by 4 points, so the best
    accuracy is often an early epoch's luck (seen on hymenoptera: epoch 2 of 5 kept at 0.958 val,
    0.863 test), while the loss weighs every image's confidence."""
    if not val:
        return False
    if best is None or "val_accuracy" not in best:
        return True
    if val_images < SMALL_VAL_IMAGES:
        return val["val_loss"] < best["val_loss"]
    if val["val_accuracy"] != best["val_accuracy"]:
        return val["val_accuracy"] > best["val_accuracy"]
    return val["val_loss"] < best["val_loss"]


def _should_stop(config: TrainConfig, state: dict, budget: TimeBudget) -> bool:
    if config.patience and state["bad_epochs"] >= config.patience:
        return True
    return budget.spent


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


def _training_summary(config, data, state, epoch, world) -> dict:
    best = state["best"] or {}
    return {
        "dataset_fingerprint": data.fingerprint, "data": str(config.data), "epoch": epoch,
        "epochs": config.epochs, "best_val_accuracy": best.get("val_accuracy"),
        "best_val_loss": best.get("val_loss"), "train_images": len(data.train),
        "val_images": len(data.val), "seed": config.seed, "processes": world.size,
        "trained_at": datetime.now().isoformat(timespec="seconds"),
    }


def _print_epoch(console: Console, r: dict, improved: bool) -> None:
    val = (f" val_loss {r['val_loss']:.3f} val_acc {r['val_accuracy']:.3f}"
           if "val_accuracy" in r else "")
    mark = " [green]*best[/]" if improved else ""
    console.print(
        f"epoch {r['epoch']:>3}  loss {r['train_loss']:.3f} acc {r['train_accuracy']:.3f}{val}  "
        f"{r['images_per_second']:.0f} img/s  {r['epoch_seconds']:.1f}s{mark}"
    )


def _checkpoint(state, model, optimizer, ema, scaler, data, finished) -> dict:
    return {
        **state,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "fingerprint": data.fingerprint,
        "class_names": data.class_names,
        "finished": finished,
    }


def _restore(ckpt, model, optimizer, ema, scaler) -> dict:
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ema is not None and ckpt.get("ema") is not None:
        ema.load_state_dict(ckpt["ema"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    keys = ("epoch", "global_step", "best", "bad_epochs", "history")
    return {**{k: ckpt[k] for k in keys}, "train_seconds": ckpt.get("train_seconds", 0.0)}

