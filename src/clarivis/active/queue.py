"""The labeling queue on disk: queue.csv (one row per image to label, with an empty `label`
column for the labeler; filled in, it is a clarivis CSV manifest and a --labeled input) and
queue.html (a self-contained thumbnail grid: images as data URIs, no script, no network)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from clarivis.data.thumbnails import data_uri, thumbnail
from clarivis.spec import VERSION as __version__

CSV_NAME = "queue.csv"
HTML_NAME = "queue.html"
CSV_COLUMNS = ("rank", "path", "predicted", "confidence", "runner_up", "margin", "entropy",
               "score", "reason", "label")
THUMBNAIL_SIZE = 128  # px, longest side: enough to name the class of a photo at a glance
MAX_THUMBNAILS = 200  # shown in the HTML (~5 kB each as JPEG); queue.csv lists every image


@dataclass
class QueueRow:
    rank: int  # 1 = label first
    path: str  # as given (resolved to an absolute path in queue.csv)
    predicted: str  # the model's most probable class
    confidence: float  # its calibrated probability
    runner_up: str  # the second most probable class
    margin: float  # confidence - the runner-up's probability
    entropy: float  # normalized to 0..1 (1: every class equally likely)
    score: float | None  # the strategy's ranking value, larger = asked earlier; None: random
    reason: str  # why the image is in the queue

    def to_dict(self) -> dict:
        return {c: getattr(self, c) for c in CSV_COLUMNS if c != "label"}


def write_csv(rows: list[QueueRow], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            score = "" if r.score is None else f"{r.score:.6f}"
            writer.writerow([r.rank, str(Path(r.path).resolve()), r.predicted, f"{r.confidence:.6f}",
                             r.runner_up, f"{r.margin:.6f}", f"{r.entropy:.6f}", score, r.reason, ""])
    return path


def write_html(rows: list[QueueRow], path: Path, *, summary: dict) -> Path:
    """The first MAX_THUMBNAILS rows as a grid; `summary` fills the header (see the template)."""
    env = Environment(loader=PackageLoader("clarivis.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True,
                      lstrip_blocks=True)
    items = [{"row": r, "name": Path(r.path).name, "src": thumbnail_uri(r.path)}
             for r in rows[:MAX_THUMBNAILS]]
    html = env.get_template("queue.html.j2").render(
        items=items, total=len(rows), summary=summary, version=__version__,
        written=datetime.now().strftime("%Y-%m-%d %H:%M"))
    path.write_text(html, encoding="utf-8")
    return path


def thumbnail_uri(path: str, size: int = THUMBNAIL_SIZE) -> str | None:
    """A JPEG data URI of the image, longest side `size` px (JPEG: a fifth of PNG's bytes for
    photos); None when the file can no longer be read."""
    jpeg = thumbnail(path, size, "JPEG")
    return data_uri(jpeg, "image/jpeg") if jpeg is not None else None
