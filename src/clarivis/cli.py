"""The `clarivis` command: parse, call the Python API, print with rich. No logic lives here."""

from __future__ import annotations

import csv
import json
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from clarivis.errors import ClarivisError

app = typer.Typer(
    help="From a folder of labeled images to a classifier you can trust and ship.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    rich_markup_mode=None,  # help is plain text: "[64; less for tiny data]" is a default, not a style
)
datasets_app = typer.Typer(help="Built-in datasets, generated locally (no downloads).",
                           no_args_is_help=True, rich_markup_mode=None)
app.add_typer(datasets_app, name="datasets")

out = Console()  # results (tables, JSON, CSV) go to stdout
err = Console(stderr=True, soft_wrap=True)  # progress and messages; logs keep one line each

Opt = typer.Option


@app.command()
def train(
    data: Annotated[str, typer.Argument(help="class folders, train/val/test folders or CSV")],
    out_dir: Annotated[Optional[str], Opt("--out", help="run folder [runs/<data>-<time>]")] = None,
    resume: Annotated[Optional[str], Opt(help="continue the run in this folder")] = None,
    config: Annotated[Optional[str], Opt(help="YAML file of settings (flags override it)")] = None,
    model: Annotated[Optional[str], Opt(help="timm model name [adapts to data/device]")] = None,
    pretrained: Annotated[Optional[bool], Opt("--pretrained", help="timm hub weights")] = None,
    weights: Annotated[Optional[str], Opt(help="local .safetensors/.pt weights")] = None,
    linear_probe: Annotated[Optional[bool], Opt(
        "--linear-probe", help="frozen backbone + logistic-regression head (few labels)")] = None,
    init_from_text: Annotated[Optional[bool], Opt(
        "--init-from-text", help="open_clip model: head starts as CLIP zero-shot on class names")] = None,
    model_kwargs: Annotated[Optional[str], Opt(help="timm kwargs, e.g. patch_size=8")] = None,
    img_size: Annotated[Optional[int], Opt(help="input size in px [typical data size]")] = None,
    resize_mode: Annotated[Optional[str], Opt(
        help="pad | crop | squash [pad; crop with --weights/--pretrained]")] = None,
    crop_pct: Annotated[Optional[float], Opt(
        help="crop mode: centre share of the resized shorter side [the weights' own, else 1]")] = None,
    epochs: Annotated[Optional[int], Opt(help="maximum epochs [30]")] = None,
    batch_size: Annotated[Optional[int], Opt(help="[64; less for tiny data]")] = None,
    lr: Annotated[Optional[float], Opt(help="peak learning rate [by optimizer/batch]")] = None,
    optimizer: Annotated[Optional[str], Opt(help="adamw | sgd [adamw]")] = None,
    layer_decay: Annotated[Optional[float], Opt(
        help="fine-tuning: lr factor per layer group below the head, e.g. 0.8 [1 = off]")] = None,
    warmup_epochs: Annotated[Optional[float], Opt(help="lr warm-up epochs [by run length]")] = None,
    weight_decay: Annotated[Optional[float], Opt(help="[0.05]")] = None,
    val_fraction: Annotated[Optional[float], Opt(help="held out for validation [0.1]")] = None,
    augment: Annotated[Optional[str], Opt(help="none|light|randaugment|trivialaugment")] = None,
    hflip: Annotated[Optional[bool], Opt("--hflip/--no-hflip", help="random flips [on]")] = None,
    mixup: Annotated[Optional[float], Opt(help="Mixup alpha [0]")] = None,
    cutmix: Annotated[Optional[float], Opt(help="CutMix alpha [0]")] = None,
    label_smoothing: Annotated[Optional[float], Opt(help="[0.1]")] = None,
    freeze_epochs: Annotated[Optional[int], Opt(help="head-only warm-up epochs [0]")] = None,
    ema: Annotated[Optional[bool], Opt("--ema/--no-ema", help="EMA of weights [off]")] = None,
    patience: Annotated[Optional[int], Opt(help="early-stopping patience in epochs [8]")] = None,
    balance: Annotated[Optional[str], Opt(help="auto | sampler | none [auto]")] = None,
    device: Annotated[Optional[str], Opt(help="cpu | cuda | mps [best available]")] = None,
    workers: Annotated[Optional[int], Opt(help="DataLoader workers [by cores]")] = None,
    seed: Annotated[Optional[int], Opt(help="[0]")] = None,
    time_limit: Annotated[Optional[float], Opt(help="stop after this many minutes")] = None,
    recipe: Annotated[Optional[str], Opt(help="default | fast (short large-batch runs)")] = None,
    cache: Annotated[Optional[bool], Opt("--cache/--no-cache",
                                         help="decoded tensor cache [when it fits 4 GiB]")] = None,
    channels_last: Annotated[Optional[bool], Opt("--channels-last/--no-channels-last",
                                                 help="conv-friendly memory layout [on]")] = None,
    compile: Annotated[Optional[bool], Opt("--compile", help="torch.compile the model")] = None,
    sync_bn: Annotated[Optional[bool], Opt("--sync-bn", help="SyncBatchNorm under DDP (GPU)")] = None,
    nproc: Annotated[Optional[int], Opt(help="processes (DDP via torchrun on this machine)")] = None,
    report: Annotated[Optional[bool], Opt("--report/--no-report", help="write report.html [on]")] = None,
) -> None:
    """Train a classifier; the best model is saved as a ModelBundle in <out>/model."""
    from clarivis.api import train as train_api
    from clarivis.config import parse_kwargs
    from clarivis.training.distributed import launched_by_torchrun, relaunch_with_torchrun

    if nproc is not None and nproc > 1 and not launched_by_torchrun():
        raise typer.Exit(relaunch_with_torchrun(nproc, sys.argv[1:]))
    given = {k: v for k, v in locals().items()
             if k not in ("data", "out_dir", "resume", "config", "train_api", "parse_kwargs",
                          "nproc", "launched_by_torchrun", "relaunch_with_torchrun")}
    given["model_kwargs"] = parse_kwargs(model_kwargs) or None
    settings = {k: v for k, v in given.items() if v is not None}  # flags not given: defaults
    result = train_api(data, out=out_dir, resume=resume, config=config, console=err, **settings)
    acc = result.best_val_accuracy
    err.print(
        f"[bold green]done[/]: {result.epochs_run} epochs"
        + (f", best val accuracy {acc:.3f} (epoch {result.best_epoch})" if acc is not None else "")
    )
    out.print(f"model:  {result.bundle_dir}\nrun:    {result.run_dir}")


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="ModelBundle folder (runs/NAME/model)")],
    data: Annotated[str, typer.Argument(help="labeled images: folder, split folder or CSV")],
    json_path: Annotated[Optional[str], Opt("--json", help="write metrics JSON (+ PNG)")] = None,
    batch_size: Annotated[int, Opt(help="images per forward pass")] = 64,
    device: Annotated[Optional[str], Opt()] = None,
) -> None:
    """Accuracy, top-5, balanced accuracy, precision/recall/F1, confusion matrix, ECE."""
    from clarivis.api import Classifier, save_evaluation

    clf = Classifier.load(model, device=device)
    result = clf.evaluate(data, batch_size=batch_size)
    written = save_evaluation(result, json_path) if json_path else None  # before printing: a
    _print_evaluation(result)  # closed pipe (`| head`) must not cost the file
    if written:
        err.print(f"wrote {written[0]} and {written[1]}")


@app.command()
def predict(
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
    unlike the training classes are answered 'unknown' (open-set threshold fitted on val)."""
    from clarivis.api import Classifier

    if fmt not in ("table", "json", "csv"):
        raise ClarivisError(f"--format {fmt} is not supported; use table, json or csv")
    if backend not in ("torch", "onnx"):
        raise ClarivisError(f"unknown backend '{backend}'; choose torch or onnx")
    if backend == "onnx" and out_file is not None:
        raise ClarivisError("--out streams with --backend torch only; drop --out or --backend onnx")
    if out_file is not None:
        _predict_to_file(model, images, out_file, resume=resume, fmt=fmt, top_k=top_k,
                         batch_size=batch_size, device=device, reject=reject)
        return
    if resume:
        raise ClarivisError("--resume continues an --out file; add --out FILE")
    if backend == "onnx":
        from clarivis.runtime import predict_files

        rows = predict_files(model, images, top_k=top_k, batch_size=batch_size, int8=int8, reject=reject)
    else:
        clf = Classifier.load(model, device=device, reject=reject)
        rows = clf.iter_predict(images, top_k=top_k, batch_size=batch_size)
    failed = {"table": _print_table, "json": _print_json, "csv": _print_csv}[fmt](rows)
    if failed:
        err.print(f"[yellow]{failed} input(s) could not be read (see the error column)")
        raise typer.Exit(1)


def _predict_to_file(model: str, images: list[str], out_file: str, *, resume: bool, fmt: str,
                     top_k: int, batch_size: int, device: Optional[str], reject: bool) -> None:
    """`predict --out`: streaming into a file (under torchrun, split over the processes)."""
    from clarivis.batch_predict import PredictProgress, predict_to_file

    if fmt != "table":
        raise ClarivisError("--format is for printing; with --out the file name's suffix "
                            "(.csv, .jsonl, .parquet) picks the format")
    with PredictProgress(err) as progress:
        summary = predict_to_file(model, images, out_file, resume=resume, top_k=top_k,
                                  batch_size=batch_size, device=device, reject=reject,
                                  on_progress=progress)
    if not summary.is_main:  # rank 0 reports for all processes
        return
    out.print(summary.line(), markup=False, highlight=False, soft_wrap=True)
    if summary.errors:
        raise typer.Exit(1)


@app.command()
def check(
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
    top: Annotated[int, Opt(min=1, help="findings shown in the table (all go to --json)")] = 50,
    device: Annotated[Optional[str], Opt()] = None,
) -> None:
    """Corrupt files, duplicates and train/test leaks, imbalance, odd sizes and modes, and
    suspected label errors (cleanlab). Exit code 1 when there are errors (corrupt, leaks, one
    image under two labels)."""
    from clarivis.datacheck import check_data, save_check

    result = check_data(data, model=model, weights=weights, pretrained=pretrained, img_size=img_size,
                        cached=cached, label_issues=labels, folds=folds, device=device, console=err)
    written = save_check(result, json_path) if json_path else None  # before printing (| head)
    findings = result.findings
    colours = {"error": "red", "warning": "yellow", "info": "dim"}
    table = Table("severity", "kind", "message", title=f"{len(findings)} findings in {data}")
    table.add_column("path(s)", overflow="fold")
    for f in findings[:top]:
        more = f" (+{len(f.paths) - 3})" if len(f.paths) > 3 else ""
        table.add_row(f"[{colours[f.severity]}]{f.severity}[/]", f.kind, f.message,
                      "\n".join(f.paths[:3]) + more)
    out.print(table)
    if len(findings) > top:
        err.print(f"{len(findings) - top} more findings; --json writes them all")
    if written:
        err.print(f"wrote {written}")
    if any(f.severity == "error" for f in findings):
        raise typer.Exit(1)


@app.command()
def explain(
    model: Annotated[str, typer.Argument(help="ModelBundle folder (runs/NAME/model)")],
    images: Annotated[list[str], typer.Argument(help="image files, folders or globs")],
    method: Annotated[str, Opt(help="gradcam | gradcam++ | ig")] = "gradcam",
    out_dir: Annotated[str, Opt("--out", help="folder for the PNG overlays")] = "explanations",
    target: Annotated[Optional[str], Opt(help="class to explain [the predicted one]")] = None,
    device: Annotated[Optional[str], Opt()] = None,
) -> None:
    """Heat maps of what the model looked at (Grad-CAM, Grad-CAM++, Integrated Gradients), as PNG
    overlays next to the original with the predicted label and confidence."""
    from clarivis.explain import explain as explain_api

    table = Table("label", "confidence", "overlay")
    table.add_column("image", overflow="fold")
    failed = 0
    for e in explain_api(model, images, method=method, out=out_dir, target=target, device=device):
        if e.error:
            failed += 1
            table.add_row("[red]error[/]", "", e.error, e.source)
        else:
            table.add_row(e.label, f"{e.confidence:.3f}", e.png, e.source)
    out.print(table)
    if failed:
        err.print(f"[yellow]{failed} input(s) could not be read (see the error rows)")
        raise typer.Exit(1)


@app.command()
def audit(
    model: Annotated[str, typer.Argument(help="ModelBundle folder (runs/NAME/model)")],
    data: Annotated[str, typer.Argument(help="labeled test images: folder, split folder or CSV "
                                             "(extra CSV columns are group attributes)")],
    groups: Annotated[Optional[str], Opt(help="group columns to audit, e.g. lighting,site [all]")] = None,
    adversarial: Annotated[bool, Opt("--adversarial", help="FGSM/PGD attacks (slow on CPU)")] = False,
    adversarial_images: Annotated[int, Opt(min=1, help="images attacked")] = 256,
    robustness: Annotated[bool, Opt("--robustness/--no-robustness", help="corruption sweep")] = True,
    robustness_images: Annotated[Optional[int], Opt(min=1, help="images corrupted [1000]")] = None,
    json_path: Annotated[Optional[str], Opt("--json", help="also write the audit JSON here")] = None,
    device: Annotated[Optional[str], Opt()] = None,
) -> None:
    """Calibration, subgroups, unknown-class rejection, corruptions and attacks on a test set;
    saved as audit.json in the run folder (the report reads it) and printed as tables."""
    from clarivis.evaluate.audit import AUDIT_NAME, run_folder_of, save_audit
    from clarivis.evaluate.audit import audit as audit_api

    columns = [c.strip() for c in groups.split(",") if c.strip()] if groups else None
    with err.status("auditing") as status:
        result = audit_api(model, data, groups=columns, adversarial=adversarial,
                           adversarial_images=adversarial_images, robustness=robustness,
                           robustness_images=robustness_images, device=device,
                           on_stage=lambda name: status.update(f"audit: {name}"))
    written = [save_audit(result, json_path)] if json_path else []
    run = run_folder_of(_bundle_folder(model))
    if run is not None:
        written.append(save_audit(result, run / AUDIT_NAME))
    _print_audit(result.to_dict())
    if written:
        err.print("wrote " + " and ".join(map(str, written)) +
                  (f"; `clarivis report {run}` adds it to the report" if run else ""))


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="run folder (runs/NAME)")],
    out_file: Annotated[Optional[str], Opt("--out", help="HTML file [RUN/report.html]")] = None,
    gallery: Annotated[int, Opt(min=0, help="top-loss images with Grad-CAM")] = 8,
    device: Annotated[Optional[str], Opt()] = None,
) -> None:
    """One self-contained HTML report (opens offline) from what the run folder holds."""
    from clarivis.report.html import write_report

    path = write_report(run, out=out_file, gallery=gallery, device=device)
    out.print(f"wrote {path}", soft_wrap=True, highlight=False)


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="ModelBundle folder (runs/NAME/model)")],
    int8: Annotated[bool, Opt("--int8", help="also write model.int8.onnx (static int8, calibrated)")] = False,
    calibration_data: Annotated[Optional[str], Opt(help="images calibrating --int8 "
                                                     "[the run's val split]")] = None,
    check_data: Annotated[Optional[str], Opt(help="held-out images for the PyTorch agreement check "
                                               "[the run's test split, else val]")] = None,
    device: Annotated[Optional[str], Opt(help="device of the PyTorch reference")] = None,
) -> None:
    """model.onnx (and model.int8.onnx) in the bundle, checked against PyTorch on held-out images
    and timed on the CPU; results recorded in config.json."""
    from clarivis.export import export_bundle

    with err.status("exporting, checking and timing"):
        result = export_bundle(model, int8=int8, calibration_data=calibration_data,
                               check_data=check_data, device=device)
    for line in result.lines():
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    if not result.passed:
        raise typer.Exit(1)


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="ModelBundle folder (runs/NAME/model)")],
    host: Annotated[str, Opt(help="address to listen on; 0.0.0.0 exposes it (set --api-key)")] = "127.0.0.1",
    port: Annotated[int, Opt(min=0, max=65535)] = 8000,
    api_key: Annotated[Optional[str], Opt(envvar="CLARIVIS_API_KEY",
                                          help="require X-API-Key on /v1/* [$CLARIVIS_API_KEY]")] = None,
    backend: Annotated[str, Opt(help="torch | onnx (needs clarivis export)")] = "torch",
    db: Annotated[Optional[str], Opt(help="prediction log URL [$CLARIVIS_DB_URL, else "
                                         "sqlite:///RUN/predictions.db]")] = None,
    store_images: Annotated[bool, Opt("--store-images", help="keep uploaded images in the log")] = False,
    max_upload_mb: Annotated[float, Opt(min=0.001, help="request body limit, MB")] = 32.0,
    max_pixels: Annotated[int, Opt(min=1, help="image size limit, pixels")] = 64_000_000,
    timeout: Annotated[float, Opt(min=0.001, help="request time limit, s")] = 30.0,
    max_batch: Annotated[int, Opt(min=1, help="images per model call")] = 32,
    max_wait_ms: Annotated[float, Opt(min=0, help="wait for a fuller batch, ms (GPU: 2-5)")] = 0.0,
    device: Annotated[Optional[str], Opt(help="torch backend device [cuda if available]")] = None,
) -> None:
    """HTTP API (/v1/predict, /v1/explain, /v1/model, /v1/monitor, /metrics, /docs) and a web page
    at /, with every prediction logged."""
    from clarivis.serve.app import serve as serve_app

    err.print(f"serving {model} on http://{host}:{port} (docs at /docs, Ctrl-C stops)")
    serve_app(model, host=host, port=port, api_key=api_key, backend=backend, db_url=db,
              store_images=store_images, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
              timeout_s=timeout, max_batch=max_batch, max_wait_ms=max_wait_ms, device=device)


@app.command()
def monitor(
    model: Annotated[str, typer.Argument(help="ModelBundle folder (runs/NAME/model)")],
    db: Annotated[Optional[str], Opt(help="prediction log URL [$CLARIVIS_DB_URL, else "
                                         "sqlite:///RUN/predictions.db]")] = None,
    since: Annotated[Optional[str], Opt(help="24h, 7d, 30m or ISO date/time [whole log]")] = None,
    json_path: Annotated[Optional[str], Opt("--json", help="write the full report as JSON")] = None,
    review_csv: Annotated[Optional[str], Opt("--review-csv",
                                             help="lowest-confidence predictions as CSV")] = None,
    review_limit: Annotated[int, Opt(min=1, help="rows in the review queue")] = 100,
) -> None:
    """Traffic, latency, confidence and class drift of a served model, from its prediction log."""
    from pathlib import Path

    from clarivis.serve.monitor import monitor_report, write_review_csv

    report = monitor_report(model, db, since, review_limit=review_limit)
    if json_path:  # files before printing: a closed pipe (`| head`) must not cost them
        Path(json_path).write_text(json.dumps(report, indent=2))
    if review_csv:
        write_review_csv(report, review_csv)
    _print_monitor(report)
    for path in (json_path, review_csv):
        if path:
            err.print(f"wrote {path}")


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
    from clarivis.embeddings import embed as embed_api

    source = images[0] if len(images) == 1 else images
    result = embed_api(source, model=model, weights=weights, img_size=img_size,
                       batch_size=batch_size, device=device, out=out_file)
    labeled = " with labels" if result.labels else ""
    out.print(f"{len(result.paths)} embeddings of {result.dim} dims{labeled}: {out_file}")
    if result.skipped:
        for s in result.skipped[:5]:
            err.print(f"[yellow]skipped {s['path']}: {s['reason']}")
        err.print(f"[yellow]{len(result.skipped)} input(s) could not be read")
        raise typer.Exit(1)


@app.command()
def zeroshot(
    images: Annotated[Optional[list[str]], typer.Argument(help="image files, folders or globs")] = None,
    labels: Annotated[str, Opt(help="'a cat,a dog,a pizza' or a text file with one label a line")] = "",
    clip: Annotated[str, Opt(help="open_clip model name or model-config JSON file")] = "ViT-B-32",
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
    save_bundle: Annotated[Optional[str], Opt(help="also write the classifier as a ModelBundle "
                                                   "folder (predict, evaluate, export take it)")] = None,
) -> None:
    """Classify images into labels written as words, by CLIP image-text similarity: no training
    images. Unreadable files become error rows (exit code 1)."""
    from clarivis.models.bundle import save_bundle as write_bundle
    from clarivis.zeroshot.classify import zeroshot_classifier

    if fmt not in ("table", "json", "csv"):
        raise ClarivisError(f"--format {fmt} is not supported; use table, json or csv")
    if not images and not save_bundle:
        raise ClarivisError("nothing to do: give images to classify and/or --save-bundle DIR")
    with err.status("loading CLIP and embedding the labels"):
        clf = zeroshot_classifier(labels, clip=clip, clip_weights=clip_weights,
                                  pretrained=pretrained, templates=templates, device=device)
    if save_bundle:
        err.print(f"wrote the zero-shot model to {write_bundle(save_bundle, clf.model, clf.config)}")
    if not images:
        return
    rows = clf.iter_predict(images, top_k=top_k, batch_size=batch_size)
    failed = {"table": _print_table, "json": _print_json, "csv": _print_csv}[fmt](rows)
    if failed:
        err.print(f"[yellow]{failed} input(s) could not be read (see the error column)")
        raise typer.Exit(1)


@app.command()
def pretrain(
    data: Annotated[str, typer.Argument(help="unlabeled images: a folder (flat or subfolders) or CSV")],
    model: Annotated[Optional[str], Opt(help="timm model name [as train picks it]")] = None,
    method: Annotated[Optional[str], Opt(help="simclr | byol | dino [simclr]")] = None,
    epochs: Annotated[Optional[int], Opt(help="[100]; bound the time with --time-limit")] = None,
    batch_size: Annotated[Optional[int], Opt(help="[256 for small images; less for tiny data]")] = None,
    lr: Annotated[Optional[float], Opt(help="peak AdamW learning rate [as train picks it]")] = None,
    img_size: Annotated[Optional[int], Opt(help="input size in px [typical data size]")] = None,
    time_limit: Annotated[Optional[float], Opt(help="stop after this many minutes")] = None,
    out_dir: Annotated[Optional[str], Opt("--out", help="run folder [runs/<data>-<method>-<time>]")] = None,
    resume: Annotated[Optional[str], Opt(help="continue the run in this folder")] = None,
    config: Annotated[Optional[str], Opt(help="YAML file of settings (flags override it)")] = None,
    weights: Annotated[Optional[str], Opt(help="start from these local weights")] = None,
    model_kwargs: Annotated[Optional[str], Opt(help="timm kwargs, e.g. patch_size=4")] = None,
    device: Annotated[Optional[str], Opt(help="cpu | cuda | mps [best available]")] = None,
    seed: Annotated[Optional[int], Opt(help="[0]")] = None,
    workers: Annotated[Optional[int], Opt(help="DataLoader workers [by cores]")] = None,
) -> None:
    """Self-supervised pretraining (no labels) of a backbone for `train --weights`."""
    from clarivis.config import parse_kwargs
    from clarivis.ssl.run import pretrain as pretrain_api

    given = {"model": model, "method": method, "epochs": epochs, "batch_size": batch_size, "lr": lr,
             "img_size": img_size, "time_limit": time_limit, "weights": weights, "device": device,
             "seed": seed, "workers": workers, "model_kwargs": parse_kwargs(model_kwargs) or None}
    settings = {k: v for k, v in given.items() if v is not None}  # flags not given: defaults
    result = pretrain_api(data, out=out_dir, resume=resume, config=config, console=err, **settings)
    why = " (time limit)" if result.stopped_early else ""
    err.print(f"[bold green]done[/]: {result.epochs_run} epochs{why}")
    out.print(f"backbone: {result.backbone_path}\nrun:      {result.run_dir}\n"
              f"next:     {result.next_command}", highlight=False, soft_wrap=True)


@app.command()
def suggest(
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
    from clarivis.active.suggest import suggest as suggest_api

    source = unlabeled[0] if len(unlabeled) == 1 else unlabeled
    result = suggest_api(source, model=model, budget=budget, strategy=strategy, labeled=labeled,
                         out=out_dir, batch_size=batch_size, device=device, console=err)
    table = Table("rank", "predicted", "conf.", "runner-up", "margin", "entropy",
                  title=f"labeling queue: {len(result.rows)} of {result.pool} images ({strategy})")
    table.add_column("image", overflow="fold")
    for r in result.rows[:top]:
        table.add_row(str(r.rank), r.predicted, f"{r.confidence:.3f}", r.runner_up, f"{r.margin:.3f}",
                      f"{r.entropy:.3f}", r.path)
    if top:
        out.print(table)
    for note in result.notes:
        err.print(f"note: {note}", highlight=False)
    out.print(f"queue: {result.csv_path} (fill in the label column)\npage:  {result.html_path}",
              highlight=False, soft_wrap=True)
    if result.skipped:
        for s in result.skipped[:5]:
            err.print(f"[yellow]skipped {s['path']}: {s['reason']}", highlight=False)
        err.print(f"[yellow]{len(result.skipped)} input(s) could not be read (listed in "
                  f"{result.out_dir / 'skipped.txt'})")
        raise typer.Exit(1)


@datasets_app.command("make")
def datasets_make(
    name: Annotated[str, typer.Argument(help="shapes | digits")],
    directory: Annotated[str, typer.Argument(help="new folder to write the images into")],
    seed: Annotated[int, Opt()] = 0,
    per_class: Annotated[Optional[int], Opt(min=1, help="images per class (shapes)")] = None,
    model_kwargs: Annotated[Optional[str], Opt(help="timm kwargs, e.g. patch_size=8")] = None,
    img_size: Annotated[Optional[int], Opt(min=8, help="image side in px")] = None,
) -> None:
    """Write a built-in dataset as train/val/test class folders plus manifest CSVs."""
    from clarivis.data.builtin import BUILTIN_DATASETS

    if name not in BUILTIN_DATASETS:
        raise ClarivisError(f"unknown dataset '{name}'; choose one of {', '.join(BUILTIN_DATASETS)}")
    kwargs = {"seed": seed}
    if img_size:
        kwargs["img_size"] = img_size
    if per_class:
        if name != "shapes":
            raise ClarivisError("--per-class applies to shapes only; digits has a fixed size")
        kwargs["per_class"] = per_class
    path = BUILTIN_DATASETS[name](directory, **kwargs)
    out.print(f"wrote {name} to {path} (train/, val/, test/, manifest.csv)")


# ----------------------------------------------------------------------------- printing


def _print_evaluation(result) -> None:
    summary = Table(title=f"evaluation on {result.num_samples} images", show_header=False)
    rows = [("accuracy", result.accuracy), ("top-5 accuracy", result.top5_accuracy),
            ("balanced accuracy", result.balanced_accuracy),
            ("precision / recall / F1 (macro)",
             f"{result.precision_macro:.4f} / {result.recall_macro:.4f} / {result.f1_macro:.4f}"),
            ("precision / recall / F1 (weighted)",
             f"{result.precision_weighted:.4f} / {result.recall_weighted:.4f} / "
             f"{result.f1_weighted:.4f}"),
            ("expected calibration error", result.ece)]
    for name, value in rows:
        if value is not None:
            summary.add_row(name, f"{value:.4f}" if isinstance(value, float) else value)
    out.print(summary)
    per_class = Table("class", "precision", "recall", "f1", "support")
    for row in result.per_class:
        per_class.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                          f"{row['f1']:.3f}", str(row["support"]))
    out.print(per_class)
    if result.skipped:
        err.print(f"[yellow]skipped {len(result.skipped)} unreadable file(s)")


def _bundle_folder(model: str):
    from clarivis.models.bundle import resolve_bundle_path

    return resolve_bundle_path(model)


def _print_audit(a: dict) -> None:
    m, cal = a["metrics"], a["calibration"]
    summary = Table(title=f"audit on {a['num_images']} images", show_header=False)
    summary.add_row("accuracy (known classes)", f"{m['accuracy']:.4f}")
    summary.add_row("ECE before / after temperature",
                    f"{cal['ece_before']:.4f} / {cal['ece_after']:.4f} (T = {cal['temperature']:.2f})")
    if a["open_set"]:
        o = a["open_set"]
        rate = o["rejection_rate_unknown"]
        summary.add_row("known images rejected", f"{o['false_rejection_rate']:.3f}")
        if rate is not None:
            summary.add_row("unknown-class images rejected", f"{rate:.3f}")
        for name, auc in o["auroc"].items():
            summary.add_row(f"open-set AUROC ({name})", f"{auc:.4f}")
    if a["robustness"]:
        r = a["robustness"]
        summary.add_row("mean corruption accuracy",
                        f"{r['mean_corruption_accuracy']:.4f} (clean {r['clean_accuracy']:.4f}, "
                        f"drop {100 * r['relative_drop']:.1f}%)")
    if a["adversarial"]:
        for attack, row in a["adversarial"]["attacks"].items():
            summary.add_row(f"{attack.upper()} accuracy",
                            ", ".join(f"{eps}: {acc:.3f}" for eps, acc in row.items()))
    summary.add_row("time", f"{a['seconds'].get('total', 0):.1f} s")
    out.print(summary)
    for f in a["subgroups"].get("flagged", []):
        err.print(f"[yellow]flagged[/]: {f['column']} = {f['group']}: accuracy {f['accuracy']:.3f} "
                  f"vs {f['overall_accuracy']:.3f} overall ({f['count']} images)")
    for note in a["notes"]:
        err.print(f"note: {note}", highlight=False)
    if a["skipped"]:
        err.print(f"[yellow]skipped {len(a['skipped'])} unreadable file(s)")


def _print_monitor(r: dict) -> None:
    summary = Table(title=f"{r['total_predictions']} predictions, model {r['model_version']}",
                    show_header=False)
    start, end = (t[:16].replace("T", " ") if t else "first" for t in r["window"].values())
    summary.add_row("window (UTC)", f"{start} to {end}")
    summary.add_row("prediction log", r["db"])
    if r["total_predictions"]:
        buckets = [b["count"] for b in r["volume"]["buckets"]]
        summary.add_row(f"predictions per {r['volume']['bucket']}",
                        f"{sum(buckets) / len(buckets):.1f} mean, {max(buckets)} max, "
                        f"{buckets.count(0)} empty")
        lat = r["latency_ms"]
        summary.add_row("latency p50 / p95 / p99",
                        f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} ms")
        if r["confidence"]:
            summary.add_row("mean confidence", f"{r['confidence']['mean']:.3f}")
        summary.add_row("answered 'unknown'", f"{100 * r['unknown_rate']:.1f}%")
    drift = r["drift"]
    if drift:
        summary.add_row("class drift PSI", f"{drift['psi']:.3f} (noise ~{drift['psi_noise_floor']:.3f})")
        summary.add_row("chi-square p", f"{drift['chi_square']['p_value']:.3g}")
        if drift["ks"]:
            summary.add_row("confidence KS D / p",
                            f"{drift['ks']['statistic']:.3f} / {drift['ks']['p_value']:.3g}")
    summary.add_row("review queue", f"{len(r['review_queue'])} lowest-confidence predictions")
    out.print(summary)
    if drift:
        shares = Table("class", "live share", "validation share")
        for name, live, base in zip(drift["classes"], drift["live_shares"], drift["baseline_shares"],
                                    strict=True):
            shares.add_row(name, f"{live:.3f}", f"{base:.3f}")
        out.print(shares)
    for flag in r["flags"]:
        color = "red" if flag["level"] == "significant" else "yellow"
        err.print(f"[{color}]flagged[/]: {flag['message']}", highlight=False)
    for note in r["notes"]:
        err.print(f"note: {note}", highlight=False)


def _print_table(rows) -> int:
    table = Table("label", "confidence", "top-k")
    table.add_column("image", overflow="fold")  # full paths, wrapped rather than cut
    failed = 0
    for p in rows:
        if p.error:
            failed += 1
            table.add_row("[red]error[/]", "", p.error, p.source)
        else:
            top = ", ".join(f"{lbl} {prob:.2f}" for lbl, prob in p.top_k)
            table.add_row(p.label, f"{p.confidence:.3f}", top, p.source)
    out.print(table)
    return failed


def _print_json(rows) -> int:
    items = [p.to_dict() for p in rows]
    print(json.dumps(items, indent=2))
    return sum(1 for p in items if p["error"])


def _print_csv(rows) -> int:
    writer = csv.writer(sys.stdout)
    writer.writerow(["source", "label", "confidence", "top_k", "error"])
    failed = 0
    for p in rows:
        failed += bool(p.error)
        top = ";".join(f"{lbl}:{prob:.6f}" for lbl, prob in p.top_k)
        conf = f"{p.confidence:.6f}" if p.confidence is not None else ""
        writer.writerow([p.source, p.label or "", conf, top, p.error or ""])
    sys.stdout.flush()
    return failed


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except ClarivisError as e:
        # escaped: messages hold brackets (pip install "clarivis[serve]") that are not styles
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:  # unwritable --out, disk full, files vanishing mid-run
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        err.print(f"[bold red]error:[/] {e.strerror or e}{where}; check the path, its permissions "
                  "and free disk space", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; a training run continues with --resume RUN_FOLDER")
        sys.exit(130)


if __name__ == "__main__":
    main()
