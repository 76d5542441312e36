"""`clarivis check` (the 'trust' extra): what is wrong with a labeled dataset."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

import clarivis
from clarivis.cli.output import stderr, stdout

app = typer.Typer(rich_markup_mode=None)  # plain help: "[on]" is a default, not a style
Opt = typer.Option


@app.command()
def check(  # one parameter a flag: Typer reads the option list from this signature
    data: Annotated[str, typer.Argument(help="labeled images: folder, split folder or CSV")],
    model: Annotated[Optional[str], Opt(help="features that score the labels: a ModelBundle, or a "
                                             "timm name with --weights or --pretrained [with weights: "
                                             "efficientnet_lite0; without: its hub weights if cached, "
                                             "else train a small model per fold]")] = None,
    weights: Annotated[Optional[str], Opt(help="local weights of the backbone, e.g. an ImageNet file "
                                               "or a pretrain run's backbone.safetensors")] = None,
    pretrained: Annotated[bool, Opt("--pretrained", help="timm hub weights of the backbone")] = False,
    img_size: Annotated[Optional[int], Opt(help="backbone input size [its pretrained size]")] = None,
    cached: Annotated[bool, Opt("--cached/--no-cached", help="without --model/--weights: use cached "
                                                             "hub weights when present [on]")] = True,
    json_path: Annotated[Optional[str], Opt("--json", help="write all findings as JSON")] = None,
    labels: Annotated[bool, Opt("--labels/--no-labels", help="look for label errors [on]")] = True,
    folds: Annotated[int, Opt(min=2, help="cross-validation folds for the label check")] = 5,
    group_by: Annotated[Optional[str], Opt(help="manifest column (e.g. patient_id): a group in two "
                                                "splits is a leak; label-check folds keep groups "
                                                "whole")] = None,
    task: Annotated[str, Opt(help="auto | multiclass | multilabel [auto: multilabel when the CSV "
                                  "has a labels column]")] = "auto",
    label_sep: Annotated[str, Opt(help="separator of a multi-label cell")] = ";",
    similar_cosine: Annotated[float, Opt(min=0, max=1, help="feature cosine from which two images "
                                         "are look-alikes (flipped, cropped or edited copies; with "
                                         "a backbone's features; 1: off)")] = 0.85,
    top: Annotated[int, Opt(min=1, help="findings shown in the table (all go to --json)")] = 50,
    device: Annotated[Optional[str], Opt()] = None,
) -> None:
    """Corrupt files, duplicates and train/test leaks, imbalance, odd sizes and modes, and
    suspected label errors (cleanlab). Exit code 1 when there are errors (corrupt, leaks, one
    image under two labels).

    A multi-label manifest (a labels column) is checked label by label: each suspect image
    gets the labels likely missing from its set and those likely wrong."""
    result = clarivis.check_data(data, model=model, weights=weights, pretrained=pretrained,
                                 img_size=img_size, cached=cached, label_issues=labels, folds=folds,
                                 group_by=group_by, task=task, label_sep=label_sep,
                                 similar_cosine=similar_cosine, device=device, console=stderr)
    written = clarivis.save_check(result, json_path) if json_path else None  # before printing (| head)
    findings = result.findings
    colours = {"error": "red", "warning": "yellow", "info": "dim"}
    table = Table("severity", "kind", "message", title=f"{len(findings)} findings in {data}")
    table.add_column("path(s)", overflow="fold")
    for f in findings[:top]:
        more = f" (+{len(f.paths) - 3})" if len(f.paths) > 3 else ""
        table.add_row(f"[{colours[f.severity]}]{f.severity}[/]", f.kind, f.message,
                      "\n".join(f.paths[:3]) + more)
    stdout.print(table)
    if len(findings) > top:
        stderr.print(f"{len(findings) - top} more findings; --json writes them all")
    if written:
        stderr.print(f"wrote {written}")
    if any(f.severity == "error" for f in findings):
        raise typer.Exit(1)
