"""`clarivis datasets make`: the built-in datasets, generated locally."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from clarivis.cli.output import stdout
from clarivis.data.builtin import make_dataset

datasets = typer.Typer(help="Built-in datasets, generated locally (no downloads).",
                       no_args_is_help=True, rich_markup_mode=None)
app = typer.Typer(rich_markup_mode=None)  # the area's app holds the `datasets` group
app.add_typer(datasets, name="datasets")
Opt = typer.Option


@datasets.command("make")
def datasets_make(
    name: Annotated[str, typer.Argument(help="shapes | digits")],
    directory: Annotated[str, typer.Argument(help="new folder to write the images into")],
    seed: Annotated[int, Opt()] = 0,
    per_class: Annotated[Optional[int], Opt(min=1, help="images per class (shapes)")] = None,
    # accepted and unused (kept: removing a flag breaks scripts that pass it)
    model_kwargs: Annotated[Optional[str], Opt(help="timm kwargs, e.g. patch_size=8")] = None,
    img_size: Annotated[Optional[int], Opt(min=8, help="image side in px")] = None,
) -> None:
    """Write a built-in dataset as train/val/test class folders plus manifest CSVs."""
    path = make_dataset(name, directory, seed=seed, per_class=per_class, img_size=img_size)
    stdout.print(f"wrote {name} to {path} (train/, val/, test/, manifest.csv)")
