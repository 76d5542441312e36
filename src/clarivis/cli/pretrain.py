"""`clarivis pretrain` (the 'ssl' extra): every flag but --resume and --config is named after the
PretrainConfig field it sets, and shows that field's default (tests/e2e/test_cli_options.py)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

import clarivis
from clarivis.cli.options import default_text, given_settings, parse_model_kwargs
from clarivis.cli.output import stderr, stdout
from clarivis.ssl.config import PretrainConfig

app = typer.Typer(rich_markup_mode=None)  # plain help: "[100]" is a default, not a style
Opt = typer.Option


def default(field: str) -> str:
    """PretrainConfig's default of `field`, as the help shows it."""
    return default_text(PretrainConfig, field)


@app.command()
def pretrain(  # one parameter a flag: Typer reads the option list from this signature
    ctx: typer.Context,
    data: Annotated[str, typer.Argument(help="unlabeled images: a folder (flat or subfolders) or CSV")],
    model: Annotated[Optional[str], Opt(help="timm model name [as train picks it]")] = None,
    method: Annotated[Optional[str], Opt(help=f"simclr | byol | dino [{default('method')}]")] = None,
    epochs: Annotated[Optional[int], Opt(
        help=f"[{default('epochs')}]; bound the time with --time-limit")] = None,
    batch_size: Annotated[Optional[int], Opt(help="[256 for small images; less for tiny data]")] = None,
    lr: Annotated[Optional[float], Opt(help="peak AdamW learning rate [as train picks it]")] = None,
    img_size: Annotated[Optional[int], Opt(help="input size in px [typical data size]")] = None,
    time_limit: Annotated[Optional[float], Opt(help="stop after this many minutes")] = None,
    out: Annotated[Optional[str], Opt("--out", help="run folder [runs/<data>-<method>-<time>]")] = None,
    resume: Annotated[Optional[str], Opt(help="continue the run in this folder")] = None,
    config: Annotated[Optional[str], Opt(help="YAML file of settings (flags override it)")] = None,
    weights: Annotated[Optional[str], Opt(help="start from these local weights")] = None,
    model_kwargs: Annotated[Optional[dict], Opt(parser=parse_model_kwargs, metavar="<str>",
                                                help="timm kwargs, e.g. patch_size=4")] = None,
    device: Annotated[Optional[str], Opt(help="cpu | cuda | mps [best available]")] = None,
    seed: Annotated[Optional[int], Opt(help=f"[{default('seed')}]")] = None,
    workers: Annotated[Optional[int], Opt(help="DataLoader workers [by cores]")] = None,
) -> None:
    """Self-supervised pretraining (no labels) of a backbone for `train --weights`."""
    settings = given_settings(PretrainConfig, ctx.params)  # data and out are fields too
    result = clarivis.pretrain(**settings, resume=resume, config=config, console=stderr)
    why = " (time limit)" if result.stopped_early else ""
    stderr.print(f"[bold green]done[/]: {result.epochs_run} epochs{why}")
    stdout.print(f"backbone: {result.backbone_path}\nrun:      {result.run_dir}\n"
                 f"next:     {result.next_command}", highlight=False, soft_wrap=True)
