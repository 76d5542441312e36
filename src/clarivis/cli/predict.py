"""A model over images: `predict`, `zeroshot` (labels as words, no training), `embed` (the
features) and `suggest` (which images to label next)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

import clarivis
from clarivis.cli.output import (
    check_row_format,
    exit_if_skipped,
    exit_if_unreadable,
    print_rows,
    stderr,
    stdout,
)
from clarivis.errors import ClarivisError
from clarivis.models.prompts import DEFAULT_CLIP
from clarivis.prediction import check_backend

app = typer.Typer(rich_markup_mode=None)  # plain help: "[on]" is a default, not a style
Opt = typer.Option


@app.command()
def predict(  # one parameter a flag: Typer reads the option list from this signature
    model: Annotated[str, typer.Argument(help="ModelBundle folder (runs/NAME/model)")],
    images: Annotated[list[str], typer.Argument(help="image files, folders or globs")],
    top_k: Annotated[int, Opt(help="labels per image")] = 5,
    fmt: Annotated[str, Opt("--format", help="table | json | csv")] = "table",
    batch_size: Annotated[int, Opt(help="images per forward pass")] = 64,
    device: Annotated[Optional[str], Opt()] = None,
    out_file: Annotated[Optional[str], Opt("--out", help="stream into .csv/.jsonl/.parquet")] = None,
    resume: Annotated[bool, Opt("--resume", help="with --out: skip images already in it")] = False,
    reject: Annotated[bool, Opt("--reject/--no-reject",
                                help="answer 'unknown' for images unlike any class [on]")] = True,
    backend: Annotated[str, Opt(help="torch | onnx (needs clarivis export)")] = "torch",
    int8: Annotated[bool, Opt("--int8", help="with --backend onnx: use model.int8.onnx")] = False,
) -> None:
    """Top-k labels with calibrated probabilities; unreadable files become error rows; images
    unlike the training classes are answered 'unknown' (open-set threshold fitted on val). A
    multi-label model answers each image's label set (empty when no class reaches its
    threshold); json and csv add every class's probability."""
    check_row_format(fmt)
    check_backend(backend)
    if backend == "onnx" and out_file is not None:
        raise ClarivisError("--out streams with --backend torch only; drop --out or --backend onnx")
    if out_file is not None:
        if fmt != "table":
            raise ClarivisError("--format is for printing; with --out the file name's suffix "
                                "(.csv, .jsonl, .parquet) picks the format")
        options = dict(resume=resume, top_k=top_k, batch_size=batch_size, device=device, reject=reject)
        predict_into(model, images, out_file, options)
        return
    if resume:
        raise ClarivisError("--resume continues an --out file; add --out FILE")
    from clarivis.batch_predict.writers import RowLayout
    from clarivis.data.expand import SkippedFiles  # here: --help imports no PIL
    from clarivis.spec import read_bundle_config

    # A multi-label model answers label sets; its rows carry every class's probability.
    layout = RowLayout.for_model(read_bundle_config(model), top_k)
    left_out = SkippedFiles()
    rows = clarivis.predict_rows(model, images, backend=backend, top_k=layout.predict_k,
                                 batch_size=batch_size, device=device, reject=reject, int8=int8,
                                 on_skip=left_out)
    failed = print_rows(rows, fmt, layout)
    report_left_out(left_out.lines())
    exit_if_unreadable(failed)


def predict_into(model: str, images: list[str], out_file: str, options: dict[str, Any]) -> None:
    """`predict --out`: streaming into a file (under torchrun, split over the processes);
    `options` are PredictOptions' fields, which predict_to_file checks before anything runs."""
    with clarivis.PredictProgress(stderr) as progress:
        summary = clarivis.predict_to_file(model, images, out_file, on_progress=progress, **options)
    if not summary.is_main:  # rank 0 reports for all processes
        return
    stdout.print(summary.line(), markup=False, highlight=False, soft_wrap=True)
    report_left_out(summary.left_out.lines())
    if summary.errors:
        raise typer.Exit(1)


def report_left_out(lines: list[str]) -> None:
    """The files a folder walk left out (not images), on stderr: they change no exit code (a
    README beside the photos is no failure), and files in an image format clarivis does not read
    are error rows instead."""
    for line in lines:
        stderr.print(line, style="yellow", markup=False, highlight=False)


@app.command()
def zeroshot(  # one parameter a flag: Typer reads the option list from this signature
    images: Annotated[Optional[list[str]], typer.Argument(help="image files, folders or globs")] = None,
    labels: Annotated[str, Opt(help="'a cat,a dog,a pizza' or a text file with one label a line")] = "",
    clip: Annotated[str, Opt(help="open_clip model name or model-config JSON file")] = DEFAULT_CLIP,
    clip_weights: Annotated[Optional[str], Opt(help="open_clip checkpoint file [hub, online]")] = None,
    pretrained: Annotated[Optional[str], Opt(help="open_clip hub tag, e.g. laion2b_s34b_b79k "
                                                   "[the model's first]; with --clip-weights: "
                                                   "the tag the file holds")] = None,
    templates: Annotated[Optional[str], Opt(help="text file of prompt templates with {} "
                                                 "[7 of CLIP's ImageNet prompts]")] = None,
    top_k: Annotated[int, Opt(help="labels per image")] = 5,
    fmt: Annotated[str, Opt("--format", help="table | json | csv")] = "table",
    batch_size: Annotated[int, Opt(help="images per forward pass")] = 64,
    device: Annotated[Optional[str], Opt()] = None,
    save_bundle_dir: Annotated[Optional[str], Opt("--save-bundle", help="also write the classifier as a "
                                                  "ModelBundle folder (predict, evaluate, export take "
                                                  "it)")] = None,
) -> None:
    """Classify images into labels written as words, by CLIP image-text similarity: no training
    images. Unreadable files become error rows (exit code 1)."""
    check_row_format(fmt)
    if not images and not save_bundle_dir:
        raise ClarivisError("nothing to do: give images to classify and/or --save-bundle DIR")
    with stderr.status("loading CLIP and embedding the labels"):
        clf = clarivis.zeroshot_classifier(labels, clip=clip, clip_weights=clip_weights,
                                           pretrained=pretrained, templates=templates, device=device)
    if save_bundle_dir:
        written = clarivis.save_bundle(save_bundle_dir, clf.model, clf.config)
        stderr.print(f"wrote the zero-shot model to {written}")
    if not images:
        return
    exit_if_unreadable(print_rows(clf.iter_predict(images, top_k=top_k, batch_size=batch_size), fmt))


@app.command()
def embed(
    images: Annotated[list[str], typer.Argument(help="images, folders, globs or a labeled dataset")],
    model: Annotated[str, Opt(help="ModelBundle folder, or a timm name (with --weights)")],
    out_file: Annotated[str, Opt("--out", help="embeddings file: .npy (+ .rows.csv) or .parquet")],
    weights: Annotated[Optional[str], Opt(help="local weights for a timm name")] = None,
    img_size: Annotated[Optional[int], Opt(help="input size for a timm name [its pretrained size]")] = None,
    batch_size: Annotated[int, Opt(help="images per forward pass")] = 64,
    device: Annotated[Optional[str], Opt()] = None,
) -> None:
    """Write the embeddings a model's head sees (one row per image) for your own analysis."""
    source = images[0] if len(images) == 1 else images
    result = clarivis.embed(source, model=model, weights=weights, img_size=img_size,
                            batch_size=batch_size, device=device, out=out_file)
    labeled = " with labels" if result.labels else ""
    stdout.print(f"{len(result.paths)} embeddings of {result.dim} dims{labeled}: {out_file}")
    exit_if_skipped(result.skipped)


@app.command()
def suggest(  # one parameter a flag: Typer reads the option list from this signature
    unlabeled: Annotated[list[str], typer.Argument(help="unlabeled images: files, folders or globs")],
    model: Annotated[str, Opt(help="ModelBundle folder (RUN/model) or its run folder")],
    budget: Annotated[int, Opt(help="images to put in the labeling queue")] = 100,
    strategy: Annotated[str, Opt(help="hybrid | margin | entropy | kcenter | random [hybrid: the "
                                      "most uncertain, spread out by k-center]")] = "hybrid",
    labeled: Annotated[Optional[str], Opt(help="folder or CSV of images already labeled: kept out "
                                               "of the queue, which spreads away from them")] = None,
    out_dir: Annotated[Optional[str], Opt("--out", help="folder for queue.csv and queue.html "
                                                        "[runs/<name>-queue-<time>]")] = None,
    top: Annotated[int, Opt(min=0, help="queue rows shown in the table")] = 10,
    batch_size: Annotated[int, Opt(help="images per forward pass")] = 64,
    device: Annotated[Optional[str], Opt()] = None,
) -> None:
    """Which unlabeled images to label next: writes a ranked labeling queue (queue.csv with an
    empty label column to fill in, queue.html with thumbnails). Exit code 1 when some inputs
    could not be read (they are listed in skipped.txt; the queue is still written)."""
    source = unlabeled[0] if len(unlabeled) == 1 else unlabeled
    result = clarivis.suggest(source, model=model, budget=budget, strategy=strategy, labeled=labeled,
                              out=out_dir, batch_size=batch_size, device=device, console=stderr)
    table = Table("rank", "predicted", "conf.", "runner-up", "margin", "entropy",
                  title=f"labeling queue: {len(result.rows)} of {result.pool} images ({strategy})")
    table.add_column("image", overflow="fold")
    for r in result.rows[:top]:
        table.add_row(str(r.rank), r.predicted, f"{r.confidence:.3f}", r.runner_up, f"{r.margin:.3f}",
                      f"{r.entropy:.3f}", r.path)
    if top:
        stdout.print(table)
    for note in result.notes:
        stderr.print(f"note: {note}", highlight=False)
    stdout.print(f"queue: {result.csv_path} (fill in the label column)\npage:  {result.html_path}",
                 highlight=False, soft_wrap=True)
    if result.skipped:
        for s in result.skipped[:5]:
            stderr.print(f"[yellow]skipped {s['path']}: {s['reason']}", highlight=False)
        stderr.print(f"[yellow]{len(result.skipped)} input(s) could not be read (listed in "
                     f"{result.out_dir / 'skipped.txt'})")
        raise typer.Exit(1)
