"""`clarivis train`: every flag but --resume, --config and --nproc is named after the TrainConfig
field it sets, and shows that field's default (tests/e2e/test_cli_options.py checks both)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

import clarivis
from clarivis.cli.options import default_text, given_settings, parse_model_kwargs
from clarivis.cli.output import stderr, stdout
from clarivis.config import TrainConfig, parse_window
from clarivis.torchrun import launched_by_torchrun, relaunch_with_torchrun

app = typer.Typer(rich_markup_mode=None)  # plain help: "[30]" is a default, not a style
Opt = typer.Option


def default(field: str) -> str:
    """TrainConfig's default of `field`, as the help shows it."""
    return default_text(TrainConfig, field)


@app.command()
def train(  # one parameter a flag: Typer reads the option list from this signature
    ctx: typer.Context,
    data: Annotated[str, typer.Argument(help="class folders, train/val/test folders or CSV")],
    out: Annotated[Optional[str], Opt("--out", help="run folder [runs/<data>-<time>]")] = None,
    resume: Annotated[Optional[str], Opt(help="continue the run in this folder")] = None,
    config: Annotated[Optional[str], Opt(help="YAML file of settings (flags override it)")] = None,
    model: Annotated[Optional[str], Opt(help="timm model name [adapts to data/device]")] = None,
    pretrained: Annotated[Optional[bool], Opt("--pretrained", help="timm hub weights")] = None,
    weights: Annotated[Optional[str], Opt(help="local .safetensors/.pt weights")] = None,
    linear_probe: Annotated[Optional[bool], Opt(
        "--linear-probe", help="frozen backbone + logistic-regression head (few labels)")] = None,
    init_from_text: Annotated[Optional[bool], Opt(
        "--init-from-text", help="open_clip model: head starts as CLIP zero-shot on class names")] = None,
    model_kwargs: Annotated[Optional[dict], Opt(parser=parse_model_kwargs, metavar="<str>",
                                                help="timm kwargs, e.g. patch_size=8")] = None,
    img_size: Annotated[Optional[int], Opt(help="input size in px [typical data size]")] = None,
    resize_mode: Annotated[Optional[str], Opt(
        help="pad | crop | squash [pad; crop with --weights/--pretrained]")] = None,
    crop_pct: Annotated[Optional[float], Opt(
        help="crop mode: centre share of the resized shorter side [the weights' own, else 1]")] = None,
    epochs: Annotated[Optional[int], Opt(help=f"maximum epochs [{default('epochs')}]")] = None,
    batch_size: Annotated[Optional[int], Opt(help="[64; less for tiny data]")] = None,
    lr: Annotated[Optional[float], Opt(help="peak learning rate [by optimizer/batch]")] = None,
    optimizer: Annotated[Optional[str], Opt(help=f"adamw | sgd [{default('optimizer')}]")] = None,
    layer_decay: Annotated[Optional[float], Opt(
        help=f"fine-tuning: lr factor per layer group below the head, e.g. 0.8 "
             f"[{default('layer_decay')} = off]")] = None,
    warmup_epochs: Annotated[Optional[float], Opt(help="lr warm-up epochs [by run length]")] = None,
    weight_decay: Annotated[Optional[float], Opt(help=f"[{default('weight_decay')}]")] = None,
    task: Annotated[Optional[str], Opt(
        help="auto | multiclass | multilabel [auto: multilabel when the CSV has a labels column]")] = None,
    label_sep: Annotated[Optional[str], Opt(
        help=f"separator of a multi-label cell [{default('label_sep')}]")] = None,
    multilabel_loss: Annotated[Optional[str], Opt(
        help=f"multi-label loss: bce | asl [{default('multilabel_loss')}]")] = None,
    threshold_precision: Annotated[Optional[float], Opt(
        help="multi-label: fit each class's threshold to reach this val precision [best F1]")] = None,
    val_fraction: Annotated[Optional[float], Opt(
        help=f"held out for validation [{default('val_fraction')}]")] = None,
    group_by: Annotated[Optional[str], Opt(
        help="manifest column (e.g. patient_id) whose groups stay in one split [none]")] = None,
    window: Annotated[Optional[tuple], Opt(parser=parse_window, metavar="CENTER,WIDTH",
                                           help="DICOM window, e.g. 40,400 [each file's own]")] = None,
    augment: Annotated[Optional[str], Opt(help="none|light|randaugment|trivialaugment")] = None,
    hflip: Annotated[Optional[bool], Opt("--hflip/--no-hflip",
                                         help=f"random flips [{default('hflip')}]")] = None,
    mixup: Annotated[Optional[float], Opt(help=f"Mixup alpha [{default('mixup')}]")] = None,
    cutmix: Annotated[Optional[float], Opt(help=f"CutMix alpha [{default('cutmix')}]")] = None,
    label_smoothing: Annotated[Optional[float], Opt(help=f"[{default('label_smoothing')}]")] = None,
    freeze_epochs: Annotated[Optional[int], Opt(
        help=f"head-only warm-up epochs [{default('freeze_epochs')}]")] = None,
    ema: Annotated[Optional[bool], Opt("--ema/--no-ema", help=f"EMA of weights [{default('ema')}]")] = None,
    patience: Annotated[Optional[int], Opt(
        help=f"early-stopping patience in epochs [{default('patience')}]")] = None,
    balance: Annotated[Optional[str], Opt(help=f"auto | sampler | none [{default('balance')}]")] = None,
    device: Annotated[Optional[str], Opt(help="cpu | cuda | mps [best available]")] = None,
    workers: Annotated[Optional[int], Opt(help="DataLoader workers [by cores]")] = None,
    seed: Annotated[Optional[int], Opt(help=f"[{default('seed')}]")] = None,
    time_limit: Annotated[Optional[float], Opt(help="stop after this many minutes")] = None,
    recipe: Annotated[Optional[str], Opt(help="default | fast (short large-batch runs)")] = None,
    cache: Annotated[Optional[bool], Opt("--cache/--no-cache",
                                         help="decoded tensor cache [when it fits 4 GiB]")] = None,
    channels_last: Annotated[Optional[bool], Opt(
        "--channels-last/--no-channels-last",
        help=f"conv-friendly memory layout [{default('channels_last')}]")] = None,
    compile: Annotated[Optional[bool], Opt("--compile", help="torch.compile the model")] = None,
    sync_bn: Annotated[Optional[bool], Opt("--sync-bn", help="SyncBatchNorm under DDP (GPU)")] = None,
    nproc: Annotated[Optional[int], Opt(help="processes (DDP via torchrun on this machine)")] = None,
    report: Annotated[Optional[bool], Opt("--report/--no-report",
                                          help=f"write report.html [{default('report')}]")] = None,
) -> None:
    """Train a classifier; the best model is saved as a ModelBundle in <out>/model."""
    if nproc is not None and nproc > 1 and not launched_by_torchrun():
        raise typer.Exit(relaunch_with_torchrun(nproc, sys.argv[1:]))
    settings = given_settings(TrainConfig, ctx.params)  # data and out are TrainConfig fields too
    result = clarivis.train(**settings, resume=resume, config=config, console=stderr)
    acc, val_map = result.best_val_accuracy, getattr(result, "best_val_map", None)
    best = (f", best val mAP {val_map:.3f} (epoch {result.best_epoch})" if val_map is not None else
            f", best val accuracy {acc:.3f} (epoch {result.best_epoch})" if acc is not None else "")
    stderr.print(f"[bold green]done[/]: {result.epochs_run} epochs{best}")
    stdout.print(f"model:  {result.bundle_dir}\nrun:    {result.run_dir}")
