"""A searchable photo collection: `index` (build or update a vector index) and `search` (by
example images or, on a CLIP index, by words)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

import clarivis
from clarivis.cli.output import exit_if_skipped, stderr, stdout
from clarivis.errors import ClarivisError

app = typer.Typer(rich_markup_mode=None)
Opt = typer.Option
FORMATS = ("table", "json", "html")


@app.command()
def index(  # one parameter a flag: Typer reads the option list from this signature
    images: Annotated[list[str], typer.Argument(help="image files, folders, globs or CSV manifests "
                                                     "(a 'path' column; the others become metadata)")],
    out_dir: Annotated[str, Opt("--out", help="index folder: created, or updated in place")],
    model: Annotated[Optional[str], Opt(help="ModelBundle folder, timm name (with --weights or "
                                             "--pretrained), or open_clip:NAME with CLIP weights "
                                             "(text search) [an existing index: its own]")] = None,
    weights: Annotated[Optional[str], Opt(help="local weights for a timm or open_clip name")] = None,
    pretrained: Annotated[bool, Opt("--pretrained", help="the name's hub weights")] = False,
    img_size: Annotated[Optional[int], Opt(help="input size for a name [its pretrained size]")] = None,
    resume: Annotated[bool, Opt("--resume", help="continue an interrupted run (re-running does "
                                                 "the same; this flag insists the index exists)")] = False,
    keep_missing: Annotated[bool, Opt("--keep-missing", help="keep indexed files that are gone from "
                                                             "the folders given [delete them]")] = False,
    backend: Annotated[str, Opt(help="usearch (HNSW) | exact (brute force, small collections)")] = "usearch",
    batch_size: Annotated[int, Opt(help="images per forward pass (and per checkpoint)")] = 64,
    device: Annotated[Optional[str], Opt()] = None,
) -> None:
    """Build or update a searchable index of image embeddings; moved files keep their vectors,
    changed files are embedded again, files gone from the folders given are deleted. Exit code
    1 when some files could not be read (they are listed and kept in the index's skipped table)."""
    summary = clarivis.index_images(images, out=out_dir, model=model, weights=weights,
                                    pretrained=pretrained, img_size=img_size, batch_size=batch_size,
                                    device=device, backend=backend, prune=not keep_missing,
                                    resume=resume, progress=_progress())
    stdout.print(f"{escape(str(summary.index))}: {summary.total} images ({summary.added} added, "
                 f"{summary.changed} re-embedded, {summary.moved} moved, {summary.removed} deleted, "
                 f"{summary.unchanged} unchanged) with {escape(summary.encoder)}", soft_wrap=True)
    exit_if_skipped(summary.skipped)


@app.command()
def search(
    index_dir: Annotated[str, typer.Argument(metavar="INDEX", help="index folder (clarivis index)")],
    more: Annotated[Optional[list[str]], typer.Argument(metavar="[Q]...", help="more query images "
                                                        "after --image Q")] = None,
    image: Annotated[Optional[list[str]], Opt(help="query images: files, folders or globs; one "
                                                   "result list each (repeat, or list after it)")] = None,
    text: Annotated[Optional[str], Opt(help="query words (an index built with a CLIP model)")] = None,
    k: Annotated[int, Opt("-k", "--top-k", min=1, help="results per query")] = 10,
    where: Annotated[Optional[list[str]], Opt(help="COLUMN=VALUE: only images whose metadata "
                                                   "matches (repeat: all must match)")] = None,
    fmt: Annotated[str, Opt("--format", help="table | json | html")] = "table",
    out_file: Annotated[Optional[str], Opt("--out", help="HTML page [search.html]")] = None,
    batch_size: Annotated[int, Opt(help="query images per forward pass")] = 64,
    device: Annotated[Optional[str], Opt()] = None,
) -> None:
    """The indexed images nearest to query images or words, with cosine scores, as a table,
    JSON (one object per query) or a self-contained HTML page of thumbnails."""
    from clarivis.index.query import parse_where  # cheap; kept here so --help stays torch-free

    if fmt not in FORMATS:
        raise ClarivisError(f"--format must be one of {', '.join(FORMATS)} (got {fmt})")
    if more and image is None:
        raise ClarivisError(f"unexpected argument {more[0]!r}: query images follow --image")
    queries = [*(image or []), *(more or [])]
    results = clarivis.search(index_dir, image=queries or None, text=text, k=k, where=parse_where(where),
                              batch_size=batch_size, device=device)
    if fmt == "json":
        from clarivis.index.render import results_json

        print(results_json(results))
    elif fmt == "html":
        from clarivis.index.render import write_html

        page = write_html(results, out_file or "search.html", index=index_dir, text=text is not None)
        stderr.print(f"wrote {escape(str(page))}")
    else:
        _print_table(results)
    failed = [r for r in results if r.error]
    if failed:
        stderr.print(f"[yellow]{len(failed)} query image(s) could not be read")
        raise typer.Exit(1)


def _print_table(results) -> None:
    for r in results:
        table = Table(title=escape(r.query if not r.error else f"{r.query}: {r.error}"), title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("score", justify="right")
        table.add_column("path")
        table.add_column("metadata")
        for rank, hit in enumerate(r.results, 1):
            meta = ", ".join(f"{c}={v}" for c, v in hit.metadata.items())
            table.add_row(str(rank), f"{hit.score:.3f}", escape(hit.path), escape(meta))
        stdout.print(table)


def _progress():
    last = [0.0]

    def report(done: int, total: int) -> None:
        import time

        now = time.monotonic()
        if done == total or now - last[0] > 5:  # a line every few seconds on big collections
            last[0] = now
            stderr.print(f"embedded {done}/{total}")

    return report
