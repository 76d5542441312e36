"""Where the commands write: results (tables, JSON, CSV) to stdout, progress and messages to
stderr; and the prediction rows that `predict` and `zeroshot` print as a table, JSON or CSV."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from clarivis.errors import ClarivisError
from clarivis.prediction import Prediction

if TYPE_CHECKING:  # batch_predict loads torch; only its torch-free RowLayout is used, as given
    from clarivis.batch_predict.writers import RowLayout

stdout = Console()  # results: tables, JSON, CSV
stderr = Console(stderr=True, soft_wrap=True)  # progress and messages; logs keep one line each

ROW_FORMATS = ("table", "json", "csv")


def check_row_format(fmt: str) -> None:
    """--format of the commands that print prediction rows."""
    if fmt not in ROW_FORMATS:
        raise ClarivisError(f"--format {fmt} is not supported; use table, json or csv")


def print_rows(rows: Iterable[Prediction], fmt: str, layout: RowLayout | None = None) -> int:
    """Print prediction rows (clarivis or runtime ones: the same fields) in `fmt`; returns how
    many were error rows (unreadable inputs). `layout`: a multi-label model's RowLayout
    (clarivis.batch_predict.writers), whose rows are label sets with every class's probability."""
    if layout is not None and layout.multilabel:
        printers = {"table": _print_sets_table, "json": _print_sets_json, "csv": _print_sets_csv}
        return printers[fmt](rows, layout)
    return {"table": _print_table, "json": _print_json, "csv": _print_csv}[fmt](rows)


def exit_if_skipped(skipped: list[dict]) -> None:
    """After a command that read files (embed, index): name the first unreadable ones
    ({path, reason}) and their count on stderr, and exit with code 1."""
    if skipped:
        for s in skipped[:5]:
            stderr.print(f"[yellow]skipped {escape(s['path'])}: {escape(s['reason'])}")
        stderr.print(f"[yellow]{len(skipped)} input(s) could not be read")
        raise typer.Exit(1)


def exit_if_unreadable(failed: int) -> None:
    """After printing rows: name the error rows on stderr and exit with code 1."""
    if failed:
        stderr.print(f"[yellow]{failed} input(s) could not be read (see the error column)")
        raise typer.Exit(1)


def _print_table(rows: Iterable[Prediction]) -> int:
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
    stdout.print(table)
    return failed


def _print_json(rows: Iterable[Prediction]) -> int:
    items = [p.to_dict() for p in rows]
    print(json.dumps(items, indent=2))
    return sum(1 for p in items if p["error"])


def _print_csv(rows: Iterable[Prediction]) -> int:
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


# Multi-label rows: the set, then what a single-label row has; JSON and CSV add every class's
# probability (JSON "probabilities", CSV prob_<class> columns as in predict --out files).

def _print_sets_table(rows: Iterable[Prediction], layout: RowLayout) -> int:
    table = Table("labels", "confidence", "top-k")
    table.add_column("image", overflow="fold")
    failed = 0
    for p in rows:
        if p.error:
            failed += 1
            table.add_row("[red]error[/]", "", p.error, p.source)
            continue
        chosen = ", ".join(f"{lbl} {prob:.2f}" for lbl, prob in p.labels) or "[dim](none)[/]"
        top = ", ".join(f"{lbl} {prob:.2f}" for lbl, prob in layout.trimmed(p).top_k)
        table.add_row(chosen, f"{p.confidence:.3f}", top, p.source)
    stdout.print(table)
    return failed


def _print_sets_json(rows: Iterable[Prediction], layout: RowLayout) -> int:
    items = []
    for p in rows:
        item = layout.trimmed(p).to_dict()
        item["probabilities"] = None if p.error else dict(zip(layout.classes, layout.probabilities(p),
                                                              strict=True))
        items.append(item)
    print(json.dumps(items, indent=2))
    return sum(1 for p in items if p["error"])


def _print_sets_csv(rows: Iterable[Prediction], layout: RowLayout) -> int:
    writer = csv.writer(sys.stdout)
    writer.writerow(["source", *layout.columns[1:]])
    failed = 0
    for p in rows:
        failed += bool(p.error)
        writer.writerow(layout.csv_fields(p))
    sys.stdout.flush()
    return failed
