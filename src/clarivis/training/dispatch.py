"""`run_training`: the one entry of a training run. It sets up the process world (torchrun),
the run folder and the prepared data, then picks the fitter: the epoch loop (loop.fit) or the
linear probe (linear_probe.fit_linear_probe)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from clarivis import runs
from clarivis.config import TrainConfig, validate_config
from clarivis.device import resolve_device
from clarivis.errors import ClarivisError, ResumeError
from clarivis.models.factory import check_model_name, check_weights_file
from clarivis.training import distributed as ddp
from clarivis.training import prepare
from clarivis.training.checkpoint import load_resume
from clarivis.training.linear_probe import fit_linear_probe
from clarivis.training.loop import RunPlace, fit
from clarivis.training.result import TrainResult

__all__ = ["TrainResult", "run_training"]


def run_training(
    config: TrainConfig, *, resume: str | Path | None = None, console: Console | None = None
) -> TrainResult:
    """Train a model as `config` says, or continue the run in folder `resume`. Under torchrun
    every rank calls this; rank 0 alone prints and writes files."""
    started = time.perf_counter()  # a --time-limit counts from here: data preparation included
    device = resolve_device(config.device)  # fail fast on settings, before the images
    world = ddp.init_world(device)
    try:
        device = ddp.device_for(world, device)
        console = console or Console(stderr=True, soft_wrap=True)
        if not world.is_main:
            console = Console(quiet=True)
        return _run(config, resume, device=device, world=world, console=console, started=started)
    finally:
        ddp.close_world(world)


def _run(config: TrainConfig, resume: str | Path | None, *, device: torch.device, world: ddp.World,
         console: Console, started: float) -> TrainResult:
    if config.linear_probe and world.distributed:  # one forward pass and a CPU fit: no sharing
        raise ClarivisError("--linear-probe runs in one process; drop --nproc")
    start_state = None
    if resume is not None:
        run_dir = Path(resume)
        start_state, config = _load_resume(run_dir, config, console)
    else:
        run_dir = ddp.from_main(world, runs.new_run_dir(config.data, config.out) if world.is_main else None)
    place = RunPlace(run_dir, device, world, console, started)
    _check_model(config, resumed=start_state is not None)
    data = _prepare(config, place)
    if start_state is not None and start_state["fingerprint"] != data.fingerprint:
        raise ResumeError(
            f"{place.run_dir} was trained on other data than {config.data}; "
            "resume with the same data or start a new run"
        )
    if config.linear_probe and data.multilabel:
        raise ClarivisError("--linear-probe fits a single-label head; train multi-label data "
                            "without it (add --freeze-epochs to warm up the head first)")
    config = prepare.resolve_defaults(config, data, place.device, world.size)
    balanced = prepare.balanced_sampling(config, data)
    if world.is_main:
        report = prepare.write_run_files(place.run_dir, config, data, balanced)
        prepare.print_data_summary(console, config, data, report, place.device, world)
    if config.linear_probe:
        return fit_linear_probe(config, data, place.device, place.run_dir, console)
    return fit(config, data, place, start_state=start_state, balanced=balanced)


def _check_model(config: TrainConfig, *, resumed: bool) -> None:
    if config.model:
        check_model_name(config.model)
    if config.weights and not resumed:
        check_weights_file(config.weights)


def _prepare(config: TrainConfig, place: RunPlace) -> prepare.PreparedData:
    """The prepared data; a data error leaves no empty run folder behind."""
    run_dir = place.run_dir
    created = not run_dir.exists()
    if place.world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)  # an unwritable --out fails now, not after the scan
    try:
        return prepare.prepare_in_turn(config, place.console, place.world)
    except ClarivisError:
        if place.world.is_main and created and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise


def _load_resume(run_dir: Path, given: TrainConfig, console: Console) -> tuple[dict, TrainConfig]:
    def is_training_run(state: dict) -> None:
        if "method" in state:  # written by clarivis pretrain
            raise ResumeError(f"{run_dir} is a pretraining run; continue it with clarivis "
                              "pretrain --resume")

    return load_resume(run_dir, given, validate_config, console, check_state=is_training_run)


