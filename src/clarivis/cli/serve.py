"""A model in service (the 'serve' extra): `serve` and `monitor` (its prediction log)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

import clarivis
from clarivis.cli.output import stderr, stdout
from clarivis.serve.settings import HOST, PORT, Settings

app = typer.Typer(rich_markup_mode=None)  # plain help: "[$CLARIVIS_API_KEY]" is not a style
Opt = typer.Option


@app.command()
def serve(  # one parameter a flag: Typer reads the option list from this signature
    model: Annotated[str, typer.Argument(help="ModelBundle folder (runs/NAME/model)")],
    host: Annotated[str, Opt(help="address to listen on; 0.0.0.0 exposes it (set --api-key)")] = HOST,
    port: Annotated[int, Opt(min=0, max=65535)] = PORT,
    api_key: Annotated[Optional[str], Opt(envvar="CLARIVIS_API_KEY",
                                          help="require this key on every endpoint but /healthz "
                                               "[$CLARIVIS_API_KEY]")] = None,
    workers: Annotated[int, Opt(min=1, max=64, help="server processes, each with the model "
                                                    "(CPU: about one per 2-4 cores)")] = 1,
    threads: Annotated[Optional[int], Opt(min=1, help="model threads per process [all cores; "
                                                      "cores / workers]")] = None,
    model_name: Annotated[Optional[str], Opt(help="name clients use (/v2/models/NAME) "
                                                  "[the run folder's name]")] = None,
    allowed_hosts: Annotated[Optional[str], Opt(help="comma-separated Host names to answer besides "
                                                     "the bind address ('*': any)")] = None,
    public_metrics: Annotated[bool, Opt("--public-metrics",
                                        help="serve /metrics without the key (for a scraper)")] = False,
    expose_recent: Annotated[bool, Opt("--expose-recent", help="serve /v1/recent and the review "
                                                               "queue (every client's traffic)")] = False,
    backend: Annotated[str, Opt(help="torch | onnx (needs clarivis export)")] = Settings.backend,
    db: Annotated[Optional[str], Opt(help="prediction log URL [$CLARIVIS_DB_URL, else "
                                         "sqlite:///RUN/predictions.db]")] = None,
    store_images: Annotated[bool, Opt("--store-images", help="keep uploaded images in the log")] = False,
    max_upload_mb: Annotated[float, Opt(min=0.001, help="request body limit, MB")] = Settings.max_upload_mb,
    max_pixels: Annotated[int, Opt(min=1, help="image size limit, pixels")] = Settings.max_pixels,
    max_request_pixels: Annotated[int, Opt(min=1, help="pixels decoded for one request, all its images "
                                                       "together")] = Settings.max_request_pixels,
    timeout: Annotated[float, Opt(min=0.001, help="request time limit, s")] = Settings.timeout_s,
    max_batch: Annotated[int, Opt(min=1, help="images per model call")] = Settings.max_batch,
    max_wait_ms: Annotated[float, Opt(
        min=0, help="wait for a fuller batch, ms (GPU: 2-5)")] = Settings.max_wait_ms,
    max_queue: Annotated[int, Opt(min=1, help="images waiting for the model before requests get "
                                              "429")] = Settings.max_queue,
    device: Annotated[Optional[str], Opt(help="torch backend device [cuda if available]")] = None,
    index: Annotated[Optional[str], Opt(help="a clarivis index folder to answer /v1/search and the "
                                             "page's search from")] = None,
) -> None:
    """HTTP API (/v1/predict, /v1/explain, /v1/model, /v1/monitor, the Open Inference Protocol under
    /v2, /metrics, /docs) and a web page at /, with every prediction logged."""
    serve_model = clarivis.serve_model  # imports the service first: without the extra, only the error line
    stderr.print(f"serving {model} on http://{host}:{port} (docs at /docs, Ctrl-C stops)")
    hosts = tuple(h.strip() for h in (allowed_hosts or "").split(",") if h.strip())
    serve_model(model, host=host, port=port, workers=workers, api_key=api_key, backend=backend, db_url=db,
                model_name=model_name, allowed_hosts=hosts, public_metrics=public_metrics,
                expose_recent=expose_recent,
                store_images=store_images, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                max_request_pixels=max_request_pixels, timeout_s=timeout, max_batch=max_batch,
                max_wait_ms=max_wait_ms, max_queue=max_queue, device=device, model_threads=threads,
                index=index)


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
    report = clarivis.monitor_report(model, db, since, review_limit=review_limit)
    if json_path:  # files before printing: a closed pipe (`| head`) must not cost them
        Path(json_path).write_text(json.dumps(report, indent=2))
    if review_csv:
        clarivis.write_review_csv(report, review_csv)
    print_monitor(report)
    for path in (json_path, review_csv):
        if path:
            stderr.print(f"wrote {path}")


def _label_rates_table(drift: dict) -> Table:
    """A multi-label model's labels: share of images holding each, live and on validation."""
    table = Table("label", "live rate", "validation rate", "p")
    for t in drift["label_tests"]:
        table.add_row(t["label"], f"{t['live_rate']:.3f}", f"{t['baseline_rate']:.3f}", f"{t['p_value']:.3g}")
    return table


def print_monitor(r: dict) -> None:
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
        if r["unknown_rate"] is not None:  # None: a multi-label model, which never answers it
            summary.add_row("answered 'unknown'", f"{100 * r['unknown_rate']:.1f}%")
    drift = r["drift"]
    if drift:
        if drift["psi"] is not None:
            summary.add_row("class drift PSI", f"{drift['psi']:.3f} (noise ~{drift['psi_noise_floor']:.3f})")
        if drift["chi_square"]:
            summary.add_row("chi-square p", f"{drift['chi_square']['p_value']:.3g}")
        if drift.get("no_label_rate") is not None:
            summary.add_row("images with no label", f"{100 * drift['no_label_rate']:.1f}%")
        if drift["ks"]:
            summary.add_row("confidence KS D / p",
                            f"{drift['ks']['statistic']:.3f} / {drift['ks']['p_value']:.3g}")
    summary.add_row("review queue", f"{len(r['review_queue'])} lowest-confidence predictions")
    stdout.print(summary)
    if drift and drift.get("task") == "multilabel":
        stdout.print(_label_rates_table(drift))
    elif drift:
        shares = Table("class", "live share", "validation share")
        for name, live, base in zip(drift["classes"], drift["live_shares"], drift["baseline_shares"],
                                    strict=True):
            shares.add_row(name, f"{live:.3f}", f"{base:.3f}")
        stdout.print(shares)
    for flag in r["flags"]:
        color = "red" if flag["level"] == "significant" else "yellow"
        stderr.print(f"[{color}]flagged[/]: {flag['message']}", highlight=False)
    for note in r["notes"]:
        stderr.print(f"note: {note}", highlight=False)
