"""The `clarivis` command: parse, call the package, print with rich. No logic lives here.

One module per area; the commands are imported when they run or show their --help (cli/lazy.py),
so `clarivis --help` imports none of them. An area module imports at the top only what its
help needs and is cheap (typer, rich, the configs, errors, prediction rows, serve's settings,
torch-free helpers) and calls the package through its lazy public API at run time
(`clarivis.audit(...)`, `clarivis.serve_model(...)`: src/clarivis/__init__.py), so a command's
--help imports no torch, and a command whose extra is not installed shows its help and stops
with one line naming the extra when it runs.

    train.py     train
    pretrain.py  pretrain (the 'ssl' extra)
    evaluate.py  evaluate, audit, explain, report
    check.py     check (the 'trust' extra)
    predict.py   predict, zeroshot, embed, suggest
    search.py    index, search (the 'search' extra)
    export.py    export
    serve.py     serve, monitor (the 'serve' extra)
    datasets.py  datasets make
    options.py   flags named after config fields: help defaults read from the config, the
                 settings a user gave
    output.py    the stdout/stderr consoles and the prediction-row printers
    lazy.py      the command group that imports a command's area when it runs
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from clarivis.cli.lazy import LazyCommand, LazyGroup
from clarivis.cli.output import stderr
from clarivis.errors import ClarivisError

# `clarivis --help` lists the commands in this order, each with its summary: the first sentence
# of the command's help (tests/e2e/test_cli_lazy.py checks that they agree).
COMMANDS: dict[str, LazyCommand] = {
    "train": LazyCommand("clarivis.cli.train",
                         "Train a classifier; the best model is saved as a ModelBundle in <out>/model."),
    "evaluate": LazyCommand("clarivis.cli.evaluate", "Accuracy, top-5, balanced accuracy, "
                            "precision/recall/F1, confusion matrix, ECE."),
    "predict": LazyCommand("clarivis.cli.predict", "Top-k labels with calibrated probabilities; "
                           "unreadable files become error rows; images unlike the training classes "
                           "are answered 'unknown' (open-set threshold fitted on val)."),
    "check": LazyCommand("clarivis.cli.check", "Corrupt files, duplicates and train/test leaks, "
                         "imbalance, odd sizes and modes, and suspected label errors (cleanlab)."),
    "explain": LazyCommand("clarivis.cli.evaluate", "Heat maps of what the model looked at (Grad-CAM, "
                           "Grad-CAM++, Integrated Gradients), as PNG overlays next to the original "
                           "with the predicted label and confidence."),
    "audit": LazyCommand("clarivis.cli.evaluate", "Calibration, subgroups, unknown-class rejection, "
                         "corruptions and attacks on a test set; saved as audit.json in the run folder "
                         "(the report reads it) and printed as tables."),
    "report": LazyCommand("clarivis.cli.evaluate", "One self-contained HTML report (opens offline) "
                          "from what the run folder holds."),
    "export": LazyCommand("clarivis.cli.export", "model.onnx (and model.int8.onnx) in the bundle, "
                          "checked against PyTorch on held-out images and timed on the CPU; results "
                          "recorded in config.json."),
    "serve": LazyCommand("clarivis.cli.serve", "HTTP API (/v1/predict, /v1/explain, /v1/model, "
                         "/v1/monitor, the Open Inference Protocol under /v2, /metrics, /docs) and a "
                         "web page at /, with every prediction logged."),
    "monitor": LazyCommand("clarivis.cli.serve", "Traffic, latency, confidence and class drift of a "
                           "served model, from its prediction log."),
    "embed": LazyCommand("clarivis.cli.predict", "Write the embeddings a model's head sees (one row "
                         "per image) for your own analysis."),
    "index": LazyCommand("clarivis.cli.search", "Build or update a searchable index of image "
                         "embeddings; moved files keep their vectors, changed files are embedded "
                         "again, files gone from the folders given are deleted."),
    "search": LazyCommand("clarivis.cli.search", "The indexed images nearest to query images or "
                          "words, with cosine scores, as a table, JSON (one object per query) or a "
                          "self-contained HTML page of thumbnails."),
    "zeroshot": LazyCommand("clarivis.cli.predict", "Classify images into labels written as words, "
                            "by CLIP image-text similarity: no training images."),
    "pretrain": LazyCommand("clarivis.cli.pretrain", "Self-supervised pretraining (no labels) of a "
                            "backbone for `train --weights`."),
    "suggest": LazyCommand("clarivis.cli.predict", "Which unlabeled images to label next: writes a "
                           "ranked labeling queue (queue.csv with an empty label column to fill in, "
                           "queue.html with thumbnails)."),
    "datasets": LazyCommand("clarivis.cli.datasets", "Built-in datasets, generated locally (no "
                            "downloads)."),
}


class Commands(LazyGroup):
    table = COMMANDS


app = typer.Typer(
    cls=Commands,
    help="From a folder of labeled images to a classifier you can trust and ship.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    rich_markup_mode=None,  # help is plain text: "[64; less for tiny data]" is a default, not a style
)


@app.callback()
def clarivis() -> None:
    """The group's own step (none): Typer builds a group, not a single command, from a callback."""


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except ClarivisError as e:
        # escaped: messages hold brackets (pip install "clarivis[serve]") that are not styles
        stderr.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:  # unwritable --out, disk full, files vanishing mid-run
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        stderr.print(f"[bold red]error:[/] {e.strerror or e}{where}; check the path, its permissions "
                     "and free disk space", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        stderr.print("interrupted; a training run continues with --resume RUN_FOLDER")
        sys.exit(130)
