"""The pretraining run: unlabeled images -> a method (timm backbone + lightly heads and loss) ->
epochs under a warm-up + cosine lr, with metrics.jsonl, a resumable checkpoint and
RUN/backbone.safetensors written after every epoch (a killed or timed-out run keeps its last
one). Readable top to bottom; `pretrain` is the entry."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from timm.optim import create_optimizer_v2

from clarivis import runs
from clarivis.config import write_yaml
from clarivis.data.scan import write_skipped
from clarivis.device import resolve_device
from clarivis.distributed import World
from clarivis.errors import ClarivisError, ResumeError
from clarivis.extras import needs
from clarivis.models.factory import check_model_name, check_weights_file, pretrained_cfg
from clarivis.ssl.backbone import (
    BACKBONE_NAME,
    create_backbone,
    normalization,
    save_backbone,
    train_command,
)
from clarivis.ssl.config import PretrainConfig, build_pretrain_config, validate_pretrain_config
from clarivis.ssl.data import UnlabeledData, ViewBatches, ViewDataset, prepare_unlabeled
from clarivis.ssl.methods import Method, build_method
from clarivis.ssl.views import view_transform
from clarivis.training import defaults
from clarivis.training.callbacks import LOG_EVERY_S, REFRESH_S, RunLogger
from clarivis.training.checkpoint import CHECKPOINT_NAME, load_resume, save_checkpoint
from clarivis.training.engine import TimeBudget, seed_everything, warmup_cosine

with needs("ssl", "clarivis pretrain"):
    from lightly.utils.debug import std_of_l2_normalized

MIN_LR_RATIO = 0.01  # cosine floor as a fraction of the peak
# Mean per-dimension std of the L2-normalised embeddings below this fraction of 1/sqrt(D)
# (the value for well-spread embeddings) means they have nearly collapsed to one point.
COLLAPSE_RATIO = 0.1


@dataclass
class PretrainResult:
    run_dir: Path
    backbone_path: Path  # RUN/backbone.safetensors: timm key names, no head
    config: PretrainConfig  # as resolved for the data and device
    epochs_run: int
    stopped_early: bool  # the time limit ended the run before its last epoch
    images_per_second: float  # images (each seen as all its views) per second, last epoch
    history: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def next_command(self) -> str:
        """The `clarivis train` line that fine-tunes this backbone on labeled data."""
        return train_command(self.config, self.backbone_path)


def pretrain(
    data: str | Path,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    config: str | Path | None = None,
    console: Console | None = None,
    **settings: Any,
) -> PretrainResult:
    """Pretrain a timm backbone on unlabeled images (self-supervised); settings are
    PretrainConfig fields (model=, method=, epochs=, time_limit=, ...)."""
    if out is not None:
        settings["out"] = str(out)
    resolved = build_pretrain_config(config, data=str(data), **settings)
    return run_pretraining(resolved, resume=resume, console=console)


def run_pretraining(config: PretrainConfig, *, resume: str | Path | None = None,
                    console: Console | None = None) -> PretrainResult:
    started = time.perf_counter()  # a time limit counts from here: the image check included
    device = resolve_device(config.device)  # fail fast on settings, before the images
    console = console or Console(stderr=True, soft_wrap=True)
    start_state = None
    if resume is not None:
        run_dir = Path(resume)
        start_state, config = _load_resume(run_dir, config, console)
    else:
        run_dir = runs.new_run_dir(config.data, config.out, tag=config.method)
    if config.model:
        check_model_name(config.model)
    if config.weights and start_state is None:
        check_weights_file(config.weights)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)  # an unwritable --out fails now, not after the scan
    try:
        data = prepare_unlabeled(config.data, console)
    except ClarivisError:
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()  # leave no empty run folder behind a data error
        raise
    if start_state is not None and start_state["fingerprint"] != data.fingerprint:
        raise ResumeError(f"{run_dir} was pretrained on other images than {config.data}; resume "
                          "with the same images or start a new run")
    config = _resolve_defaults(config, data, device)
    write_yaml(config, run_dir / runs.RUN_CONFIG)
    write_skipped(data.skipped, run_dir / runs.SKIPPED)
    _print_summary(console, config, data)
    return _fit(config, data, device, run_dir, start_state, console, started)


def _load_resume(run_dir: Path, given: PretrainConfig, console: Console):
    def is_pretraining_run(state: dict) -> None:
        if "method" not in state:
            raise ResumeError(f"{run_dir} is a training run, not a pretraining run; continue it "
                              "with clarivis train --resume")

    return load_resume(run_dir, given, validate_pretrain_config, console,
                       check_state=is_pretraining_run)


def _resolve_defaults(config: PretrainConfig, data: UnlabeledData, device) -> PretrainConfig:
    """Fill every `None` with the choice for these images and this device (saved as config.yaml)."""
    values = config.model_dump()
    n = len(data.samples)
    if values["img_size"] is None:
        values["img_size"] = defaults.pick_img_size(data.sizes)
    if values["model"] is None:
        values["model"] = defaults.pick_model(device, values["img_size"])
    if values["batch_size"] is None:
        values["batch_size"] = defaults.pick_batch_size(n, values["img_size"])
    values["batch_size"] = min(values["batch_size"], n)  # one full batch at least
    if values["lr"] is None:
        values["lr"] = defaults.pick_lr("adamw", values["batch_size"], config.weights is not None)
    if values["workers"] is None:
        values["workers"] = defaults.pick_workers(data.images is not None)
    values["device"] = str(device)
    return validate_pretrain_config(values)


def _print_summary(console: Console, config: PretrainConfig, data: UnlabeledData) -> None:
    console.print(
        f"[bold]{len(data.samples)}[/] unlabeled images; [bold]{config.method}[/] on "
        f"[bold]{config.model}[/] at {config.img_size}px, batch {config.batch_size} on {config.device}"
    )
    if data.skipped:
        console.print(f"[yellow]skipped {len(data.skipped)} unreadable file(s); listed in "
                      "skipped_files.txt")


# ----------------------------------------------------------------------------- training


def _fit(config, data, device, run_dir, start_state, console, started) -> PretrainResult:
    seed_everything(config.seed)
    fresh = start_state is None  # on resume the checkpoint supplies every weight
    backbone = create_backbone(config if fresh else config.model_copy(update={"weights": None}))
    method = build_method(config.method, backbone).to(device)
    method.to(memory_format=torch.channels_last)  # oneDNN/cuDNN's fastest conv layout
    batches = _batches(config, data, device)
    # timm's factory leaves biases, norms and the ViT tokens undecayed (Method.no_weight_decay).
    optimizer = create_optimizer_v2(method, opt="adamw", lr=config.lr,
                                    weight_decay=config.weight_decay)
    scheduler, total, warmup = _schedule(optimizer, config, batches.steps_per_epoch())
    state = {"epoch": 0, "global_step": 0, "history": [], "train_seconds": 0.0}
    logger = RunLogger(run_dir)
    if start_state is not None:
        state = _restore(start_state, method, optimizer)
        logger.truncate_after(state["epoch"])
        console.print(f"resuming {run_dir} after epoch {state['epoch']}")
    budget = TimeBudget(config.time_limit, total, World(), spent_s=state["train_seconds"],
                        setup_s=time.perf_counter() - started)
    scheduler.step_update(budget.position(state["global_step"]))
    stopped_early, ips, path = False, 0.0, run_dir / BACKBONE_NAME
    try:
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            seed_everything(config.seed * 1000 + epoch)  # same views on resume
            batches.set_epoch(epoch)
            stats = train_one_epoch(method, batches, Steps(optimizer, scheduler, budget, total, warmup),
                                    state, console, epoch=epoch, epochs=config.epochs)
            ips = stats["images_per_second"]
            record = {"epoch": epoch, **stats, "lr": optimizer.param_groups[0]["lr"]}
            state["history"].append(record)
            state["epoch"], state["train_seconds"] = epoch, budget.elapsed()
            logger.log_epoch(record)
            _print_epoch(console, record)
            stopped_early = budget.spent and epoch < config.epochs
            last = budget.spent or epoch == config.epochs
            path = save_backbone(method.export_backbone(), run_dir,
                                 _info(config, data, state, run_dir))
            save_checkpoint(run_dir / CHECKPOINT_NAME,
                            _checkpoint(state, method, optimizer, data, last))
            if budget.spent:
                break
    finally:
        logger.close()
    return PretrainResult(run_dir=run_dir, backbone_path=path, config=config,
                          epochs_run=state["epoch"], stopped_early=stopped_early,
                          images_per_second=ips, history=state["history"], skipped=data.skipped)


def _schedule(optimizer, config: PretrainConfig, steps_per_epoch: int):
    """Linear warm-up, then cosine to MIN_LR_RATIO of the peak at the last step: (scheduler,
    total steps, warm-up steps). With a time limit the clock moves it (TimeBudget.position)."""
    total = config.epochs * steps_per_epoch
    scheduler, warmup = warmup_cosine(optimizer, peak_lr=config.lr, min_lr=config.lr * MIN_LR_RATIO,
                                      total_steps=total,
                                      warmup_steps=int(config.warmup_epochs * steps_per_epoch))
    return scheduler, total, warmup


def _batches(config: PretrainConfig, data: UnlabeledData, device) -> ViewBatches:
    mean, std = normalization(config.model)
    fixed = bool(pretrained_cfg(config.model).get("fixed_input_size"))
    transform = view_transform(config.method, config.img_size, mean, std, fixed_input_size=fixed)
    dataset = ViewDataset(data.samples, data.images, config.img_size, transform)
    return ViewBatches(dataset, device, batch_size=config.batch_size, workers=config.workers,
                       seed=config.seed)


@dataclass
class Steps:
    """The optimizer and its schedule over the whole run (the clock of a time limit included)."""

    optimizer: torch.optim.Optimizer
    scheduler: object  # timm CosineLRScheduler (engine.warmup_cosine)
    budget: TimeBudget
    total: int  # optimizer steps in the planned run
    warmup: int  # of which warm-up steps


def train_one_epoch(method: Method, batches: ViewBatches, steps: Steps, state: dict, console: Console,
                    *, epoch: int, epochs: int) -> dict:
    """One pass over the images (or until the time limit); returns the epoch's averages."""
    method.train()
    # Running sums stay on the device: no GPU->CPU sync per step.
    device = next(method.parameters()).device
    loss_sum, std_sum = torch.zeros((), device=device), torch.zeros((), device=device)
    seen, dim, start = 0, 1, time.perf_counter()
    with _progress(console, epoch, epochs, len(batches)) as progress:
        for views in batches:
            position = steps.budget.position(state["global_step"])  # schedule step (time-aware)
            method.momentum_update(position, steps.total)
            loss, features = method(views)  # features: (V*B, D) backbone outputs
            steps.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            method.before_optimizer_step(warming_up=position < steps.warmup)
            steps.optimizer.step()
            state["global_step"] += 1
            steps.scheduler.step_update(steps.budget.position(state["global_step"]))
            n, dim = views[0].shape[0], features.shape[1]
            loss_sum += loss.detach().float() * n
            std_sum += std_of_l2_normalized(features.detach().float()) * n
            seen += n
            progress.advance(loss_sum, seen)
            if steps.budget.spent:
                break  # the time limit is reached mid-epoch: save now
    if not torch.isfinite(loss_sum):
        raise ClarivisError(f"pretraining diverged (loss {loss_sum.item()}) in epoch {epoch}; "
                            "lower --lr")
    elapsed = time.perf_counter() - start
    return {"train_loss": loss_sum.item() / max(seen, 1),
            "embedding_std": std_sum.item() / max(seen, 1),
            "embedding_std_ideal": 1 / math.sqrt(dim),
            "images_per_second": seen / max(elapsed, 1e-9), "epoch_seconds": elapsed}


class _progress:
    """A transient bar on terminals; logs get a plain line every LOG_EVERY_S instead. The loss
    is read (a GPU sync) about twice a second, not every step."""

    def __init__(self, console: Console, epoch: int, epochs: int, steps: int):
        self.bar = Progress(
            TextColumn(f"pretrain {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("eta"), TimeRemainingColumn(),
            console=console, transient=True, disable=not console.is_terminal,
        )
        self.task = self.bar.add_task("pretrain", total=steps, loss=0.0)
        self.console, self.epoch, self.steps, self.step = console, epoch, steps, 0
        self.start = self.last_read = self.last_line = time.perf_counter()

    def __enter__(self) -> _progress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def advance(self, loss_sum: torch.Tensor, seen: int) -> None:
        self.step += 1
        now = time.perf_counter()
        if now - self.last_read < REFRESH_S and self.step < self.steps:
            self.bar.update(self.task, advance=1)
            return
        loss = loss_sum.item() / max(seen, 1)
        self.bar.update(self.task, advance=1, loss=loss)
        self.last_read = now
        if not self.console.is_terminal and now - self.last_line >= LOG_EVERY_S:
            eta = (self.steps - self.step) * (now - self.start) / self.step
            self.console.print(f"  epoch {self.epoch} step {self.step}/{self.steps} loss "
                               f"{loss:.3f} eta {eta:.0f}s")
            self.last_line = now


def _print_epoch(console: Console, r: dict) -> None:
    console.print(
        f"epoch {r['epoch']:>3}  loss {r['train_loss']:.3f}  embedding std "
        f"{r['embedding_std']:.3f} (spread {r['embedding_std_ideal']:.3f})  "
        f"{r['images_per_second']:.0f} img/s  {r['epoch_seconds']:.1f}s"
    )
    if r["embedding_std"] < COLLAPSE_RATIO * r["embedding_std_ideal"]:
        console.print("[yellow]the embeddings have nearly collapsed to one point; lower --lr or "
                      "try another --method")


def _info(config: PretrainConfig, data: UnlabeledData, state: dict, run_dir: Path) -> dict:
    mean, std = normalization(config.model)
    return {
        "model": config.model, "img_size": config.img_size, "model_kwargs": config.model_kwargs,
        "method": config.method, "mean": list(mean), "std": list(std), "epochs": state["epoch"],
        "images": len(data.samples), "data_fingerprint": data.fingerprint,
        "train_command": train_command(config, run_dir / BACKBONE_NAME),
        "saved_at": datetime.now().isoformat(timespec="seconds"),
    }


def _checkpoint(state: dict, method: Method, optimizer, data: UnlabeledData, finished: bool) -> dict:
    return {**state, "method": method.state_dict(), "optimizer": optimizer.state_dict(),
            "fingerprint": data.fingerprint, "finished": finished}


def _restore(ckpt: dict, method: Method, optimizer) -> dict:
    method.load_state_dict(ckpt["method"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return {k: ckpt[k] for k in ("epoch", "global_step", "history", "train_seconds")}

