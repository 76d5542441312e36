"""`clarivis export`: the bundle's model as ONNX, checked against PyTorch."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

import clarivis
from clarivis.cli.output import stderr, stdout

app = typer.Typer(rich_markup_mode=None)  # plain help: "[the run's val split]" is not a style
Opt = typer.Option


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="ModelBundle folder (runs/NAME/model)")],
    int8: Annotated[bool, Opt("--int8", help="also write model.int8.onnx (static int8, calibrated); "
                                          "one below its agreement bar is set aside as "
                                          "model.int8.failed-check.onnx (exit code 1)")] = False,
    calibration_data: Annotated[Optional[str], Opt(help="images calibrating --int8 "
                                                     "[the run's val split]")] = None,
    check_data: Annotated[Optional[str], Opt(help="held-out images for the PyTorch agreement check "
                                               "[the run's test split, else val]")] = None,
    device: Annotated[Optional[str], Opt(help="device of the PyTorch reference")] = None,
) -> None:
    """model.onnx (and model.int8.onnx) in the bundle, checked against PyTorch on held-out images
    and timed on the CPU; results recorded in config.json. Exit code 1 when a file asked for
    missed its agreement bar; a passing model.onnx is kept whatever int8 does."""
    with stderr.status("exporting, checking and timing"):
        result = clarivis.export_bundle(model, int8=int8, calibration_data=calibration_data,
                                        check_data=check_data, device=device)
    for line in result.lines():
        stdout.print(line, markup=False, highlight=False, soft_wrap=True)
    if not result.passed:
        raise typer.Exit(1)
