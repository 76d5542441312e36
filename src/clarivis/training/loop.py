"""The epoch loop of a training run: the model, optimizer and schedule for a prepared dataset,
then epochs with validation, early stopping, checkpoints and the best model saved as a
ModelBundle. The state that a checkpoint carries is one typed object, TrainState."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn

from clarivis import runs
from clarivis.config import TrainConfig
from clarivis.data.loaders import epoch_order
from clarivis.models.bundle import save_bundle
from clarivis.models.clip import text_initialized_model
from clarivis.models.factory import create_model, pretrained_cfg, set_backbone_trainable
from clarivis.spec import BundleConfig
from clarivis.training import distributed as ddp
from clarivis.training import engine
from clarivis.training.batches import batch_sources, epoch_batches
from clarivis.training.callbacks import RunLogger
from clarivis.training.checkpoint import save_checkpoint
from clarivis.training.prepare import PreparedData, class_targets, preprocess_for
from clarivis.training.result import TrainResult

# Below this many val images the best epoch is the one of lowest val loss, not highest accuracy
# (one image is more than half a point of accuracy; see is_improvement).
SMALL_VAL_IMAGES = 200


@dataclass
class TrainState:
    """Where a run is: saved in every checkpoint (as a dict, the keys below) and restored on
    --resume. Changed only by `record_epoch` and the engine's global_step."""

    epoch: int = 0  # last finished epoch
    global_step: int = 0  # optimizer steps so far (the schedule's clock)
    best: dict | None = None  # {"epoch", "val_loss", "val_accuracy"} of the saved bundle
    bad_epochs: int = 0  # epochs since the last improvement (early stopping)
    history: list[dict] = field(default_factory=list)  # one record per epoch
    train_seconds: float = 0.0  # wall time spent training (a resumed time limit counts it)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> TrainState:
        keys = ("epoch", "global_step", "best", "bad_epochs", "history")
        return cls(**{k: ckpt[k] for k in keys}, train_seconds=ckpt.get("train_seconds", 0.0))

    def record_epoch(self, record: dict, val_stats: dict, val_images: int, multilabel: bool = False) -> bool:
        """Add the epoch's record; True when its model is the new best (to be saved)."""
        self.history.append(record)
        self.epoch = record["epoch"]
        improved = is_improvement(val_stats, self.best, val_images,
                                  key="val_map" if multilabel else "val_accuracy")
        if improved or not val_stats:
            self.best = {"epoch": self.epoch, **val_stats}
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False


@dataclass
class RunPlace:
    """Where and how a run executes (the same for every epoch)."""

    run_dir: Path
    device: torch.device
    world: ddp.World
    console: Console
    started: float  # time.perf_counter() at the start of the run: a time limit counts from it
    logger: RunLogger | None = None  # metrics.jsonl and TensorBoard (rank 0 only), set by fit


@dataclass
class Trainable:
    """The model and everything that updates or evaluates it."""

    model: nn.Module
    step: engine.Step
    train_batches: object  # TensorBatches | StreamBatches (data/loaders.py)
    val_batches: object
    order: partial  # order(epoch=E) -> this rank's sample indices for epoch E
    steps_per_epoch: int  # optimizer steps of one epoch on this rank
    bundle_config: object  # spec.BundleConfig of the bundle to save


def fit(config: TrainConfig, data: PreparedData, place: RunPlace, *, start_state: dict | None,
        balanced: bool) -> TrainResult:
    """Train `config.epochs` epochs (or continue from `start_state`, a checkpoint)."""
    engine.seed_everything(config.seed)  # same initial weights on every rank (DDP also broadcasts them)
    job = _build(config, data, place, fresh=start_state is None, balanced=balanced)
    state = TrainState()
    place.logger = logger = RunLogger(place.run_dir) if place.world.is_main else None
    if start_state is not None:
        state = _restore(start_state, job)
        if logger is not None:
            logger.truncate_after(state.epoch)
        place.console.print(f"resuming {place.run_dir} after epoch {state.epoch}")
    job.step.budget = engine.TimeBudget(config.time_limit, config.epochs * job.steps_per_epoch, place.world,
                                        spent_s=state.train_seconds,
                                        setup_s=time.perf_counter() - place.started)
    job.step.scheduler.step_update(job.step.budget.position(state.global_step))
    try:
        stopped_early, ips = _run_epochs(config, data, place, job, state)
    finally:
        if logger is not None:
            logger.close()
    best = state.best or {}
    return TrainResult(
        run_dir=place.run_dir, bundle_dir=place.run_dir / runs.BUNDLE_DIR,
        best_epoch=best.get("epoch", state.epoch), best_val_accuracy=best.get("val_accuracy"),
        best_val_map=best.get("val_map"),
        epochs_run=state.epoch, stopped_early=stopped_early, images_per_second=ips,
        history=state.history,
    )


def _build(config: TrainConfig, data: PreparedData, place: RunPlace, *, fresh: bool,
           balanced: bool) -> Trainable:
    device, world = place.device, place.world
    model = _create_model(config, data.class_names, fresh)
    if config.sync_bn:
        model = ddp.sync_batchnorm(model, world, device)
    cfg = pretrained_cfg(config.model)
    preprocess = preprocess_for(config, cfg)
    train_batches, val_batches = batch_sources(config, data, preprocess, device, world, place.console)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = engine.make_optimizer(model, config, device)
    amp_dtype = engine.amp_dtype(config, device)
    mixup = engine.make_mixup(config, len(data.class_names))
    targets = class_targets(data.train, data.class_names)
    order = partial(epoch_order, targets, seed=config.seed, balanced=balanced,
                    num_classes=len(data.class_names), rank=world.rank, world=world.size)
    steps_per_epoch = len(epoch_batches(order(epoch=1), config.batch_size))
    scheduler, _ = engine.warmup_cosine(optimizer, peak_lr=config.lr,
                                        min_lr=config.lr * config.min_lr_ratio,
                                        total_steps=config.epochs * steps_per_epoch,
                                        warmup_steps=int(config.warmup_epochs * steps_per_epoch))
    step = engine.Step(
        optimizer=optimizer, scheduler=scheduler, budget=None, grad_clip=config.grad_clip,
        loss_fn=_loss(config, data, targets, device, mixup=mixup is not None),
        amp_dtype=amp_dtype, scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        ema=ModelEmaV3(model, decay=config.ema_decay) if config.ema else None, mixup=mixup,
        world=world, device=device, multilabel=data.multilabel,
    )
    bundle_config = BundleConfig.for_model(
        architecture=config.model, class_names=data.class_names, preprocess=preprocess,
        task="multilabel" if data.multilabel else "multiclass",
        model_kwargs={**config.model_kwargs,
                      **({"img_size": config.img_size} if cfg.get("fixed_input_size") else {})},
    )
    return Trainable(model, step, train_batches, val_batches, order, steps_per_epoch, bundle_config)


# Multi-label BCE: a label seen in fraction f of the images has its positives weighted
# sqrt((1 - f) / f), at most MAX_POS_WEIGHT: rare labels still pull on the features (the full
# ratio over-predicts them: the thresholds fitted afterwards then have to undo it).
MAX_POS_WEIGHT = 10.0


def _loss(config: TrainConfig, data: PreparedData, targets: list, device, *, mixup: bool) -> nn.Module:
    """Cross-entropy (soft targets under Mixup/CutMix) for single-label data; BCE on logits or
    the asymmetric loss (timm's AsymmetricLossMultiLabel, the paper's defaults) for multi-label."""
    if not data.multilabel:
        return SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(
            label_smoothing=config.label_smoothing)
    if config.multilabel_loss == "asl":
        from timm.loss import AsymmetricLossMultiLabel

        return AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=1, clip=0.05)
    pos_weight = None
    if config.balance != "none" and targets:
        share = torch.tensor(targets).mean(0).clamp(min=1.0 / len(targets))  # (C,) positives
        pos_weight = ((1 - share) / share).sqrt().clamp(1.0, MAX_POS_WEIGHT).to(device)
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight)


def _create_model(config: TrainConfig, class_names: list[str], fresh: bool) -> nn.Module:
    """The run's model; on resume (not fresh) the checkpoint supplies every weight later."""
    if config.init_from_text and fresh:  # the head starts as CLIP's zero-shot classifier
        return text_initialized_model(
            config.model, class_names, img_size=config.img_size, weights=config.weights,
            pretrained=config.pretrained, templates=config.text_templates, drop_rate=config.drop_rate)
    return create_model(
        config.model, num_classes=len(class_names), img_size=config.img_size,
        pretrained=config.pretrained and fresh, weights=config.weights if fresh else None,
        drop_rate=config.drop_rate, **config.model_kwargs,
    )


def _run_epochs(config: TrainConfig, data: PreparedData, place: RunPlace, job: Trainable,
                state: TrainState) -> tuple[bool, float]:
    """The epochs from state.epoch + 1: (stopped early, last epoch's images/s)."""
    world, step = place.world, job.step
    stopped_early, ips = False, 0.0
    train_model, wrapped_frozen = job.model, None
    for epoch in range(state.epoch + 1, config.epochs + 1):
        # Same data order/augmentation on resume; each rank draws its own augmentation.
        engine.seed_everything(config.seed * 1000 + epoch + 7919 * world.rank)
        job.train_batches.set_epoch(epoch_batches(job.order(epoch=epoch), config.batch_size), epoch)
        frozen = epoch <= config.freeze_epochs
        if frozen != wrapped_frozen:  # DDP registers the trainable parameters when built
            set_backbone_trainable(job.model, not frozen)
            train_model, wrapped_frozen = engine.wrap(job.model, config, world, place.device), frozen
        train_stats = engine.train_one_epoch(train_model, job.train_batches, step, state, place.console,
                                             epoch=epoch, epochs=config.epochs)
        ips = train_stats["images_per_second"]
        eval_model = step.ema.module if step.ema is not None else job.model
        t_val = time.perf_counter()
        val_stats = (engine.validate(eval_model, job.val_batches, place.device, step.amp_dtype, world,
                                     multilabel=data.multilabel) if data.val else {})
        step.budget.reserve_for_validation(time.perf_counter() - t_val)
        record = {"epoch": epoch, **train_stats, **val_stats,
                  "lr": step.optimizer.param_groups[0]["lr"], "frozen_backbone": frozen}
        improved = state.record_epoch(record, val_stats, len(data.val), data.multilabel)
        # Rank 0's clock decides a time limit, so every rank stops after the same epoch.
        state.train_seconds = step.budget.elapsed()
        stopped_early = ddp.from_main(world, should_stop(config, state, step.budget))
        if world.is_main:
            _save_epoch(config, data, place, job, state, eval_model=eval_model, improved=improved,
                        last=stopped_early or epoch == config.epochs)
        if stopped_early:
            break
    ddp.barrier(world)  # no rank leaves before rank 0 has written the bundle
    return stopped_early, ips


def _save_epoch(config: TrainConfig, data: PreparedData, place: RunPlace, job: Trainable,
                state: TrainState, *, eval_model: nn.Module, improved: bool, last: bool) -> None:
    """Rank 0, after each epoch: the log line, the bundle when it improved, the checkpoint."""
    record = state.history[-1]
    place.logger.log_epoch(record)
    if improved:
        job.bundle_config.training = _training_summary(config, data, state, place.world)
        save_bundle(place.run_dir / runs.BUNDLE_DIR, eval_model, job.bundle_config)
    _print_epoch(place.console, record, improved and "val_accuracy" in record)
    save_checkpoint(place.run_dir / runs.CHECKPOINT, _checkpoint(state, job, data, last))


def is_improvement(val: dict, best: dict | None, val_images: int = SMALL_VAL_IMAGES, *,
                   key: str = "val_accuracy") -> bool:
    """Higher val accuracy (`key`: val_map for multi-label) wins; equal accuracy with lower val
    loss wins too. On a small val split
    the val loss alone decides: on 24 images one image moves accuracy by 4 points, so the best
    accuracy is often an early epoch's luck (seen on hymenoptera: epoch 2 of 5 kept at 0.958 val,
    0.863 test), while the loss weighs every image's confidence."""
    if not val:
        return False
    if best is None or key not in best:
        return True
    if val_images < SMALL_VAL_IMAGES:
        return val["val_loss"] < best["val_loss"]
    if val[key] != best[key]:
        return val[key] > best[key]
    return val["val_loss"] < best["val_loss"]


def should_stop(config: TrainConfig, state: TrainState, budget: engine.TimeBudget) -> bool:
    if config.patience and state.bad_epochs >= config.patience:
        return True
    return budget.spent


def _training_summary(config: TrainConfig, data: PreparedData, state: TrainState, world) -> dict:
    best = state.best or {}
    return {
        "dataset_fingerprint": data.fingerprint, "data": str(config.data), "epoch": state.epoch,
        "epochs": config.epochs, "best_val_accuracy": best.get("val_accuracy"),
        **({"best_val_map": best["val_map"]} if "val_map" in best else {}),
        "best_val_loss": best.get("val_loss"), "train_images": len(data.train),
        "val_images": len(data.val), "seed": config.seed, "processes": world.size,
        "trained_at": datetime.now().isoformat(timespec="seconds"),
    }


def _print_epoch(console: Console, r: dict, improved: bool) -> None:
    val = (f" val_loss {r['val_loss']:.3f} val_acc {r['val_accuracy']:.3f}"
           if "val_accuracy" in r else "")
    if "val_map" in r:
        val += f" val_mAP {r['val_map']:.3f}"
    mark = " [green]*best[/]" if improved else ""
    console.print(
        f"epoch {r['epoch']:>3}  loss {r['train_loss']:.3f} acc {r['train_accuracy']:.3f}{val}  "
        f"{r['images_per_second']:.0f} img/s  {r['epoch_seconds']:.1f}s{mark}"
    )


def _checkpoint(state: TrainState, job: Trainable, data: PreparedData, finished: bool) -> dict:
    step = job.step
    return {
        **asdict(state),
        "model": job.model.state_dict(),
        "optimizer": step.optimizer.state_dict(),
        "ema": step.ema.state_dict() if step.ema is not None else None,
        "scaler": step.scaler.state_dict() if step.scaler is not None else None,
        "fingerprint": data.fingerprint,
        "class_names": data.class_names,
        "finished": finished,
    }


def _restore(ckpt: dict, job: Trainable) -> TrainState:
    step = job.step
    job.model.load_state_dict(ckpt["model"])
    step.optimizer.load_state_dict(ckpt["optimizer"])
    if step.ema is not None and ckpt.get("ema") is not None:
        step.ema.load_state_dict(ckpt["ema"])
    if step.scaler is not None and ckpt.get("scaler") is not None:
        step.scaler.load_state_dict(ckpt["scaler"])
    return TrainState.from_checkpoint(ckpt)
