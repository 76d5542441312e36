"""Append-only CSV and JSONL row files: written and flushed batch by batch, read back
tolerating the torn last line a crash leaves behind."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from clarivis.errors import ClarivisError
from clarivis.prediction import Prediction
from clarivis.spec import BundleConfig

# The same columns and top-k encoding as `clarivis predict --format csv|json` on stdout.
COLUMNS = ["path", "label", "confidence", "top_k", "error"]
PROB_PREFIX = "prob_"  # multi-label files: one column of probabilities a class, prob_<class>


class OutputError(ClarivisError):
    """The --out file cannot be written, continued or read back."""


def to_record(p: Prediction) -> dict[str, Any]:
    """A row as JSONL (and Parquet) hold it."""
    top = [{"label": label, "probability": prob} for label, prob in p.top_k]
    return {"path": p.source, "label": p.label, "confidence": p.confidence, "top_k": top,
            "error": p.error}


def to_csv_fields(p: Prediction) -> list[str]:
    top = ";".join(f"{label}:{prob:.6f}" for label, prob in p.top_k)
    conf = f"{p.confidence:.6f}" if p.confidence is not None else ""
    return [p.source, p.label or "", conf, top, p.error or ""]


@dataclass(frozen=True)
class RowLayout:
    """The columns of a prediction file. A single-label model's (`classes` None) are COLUMNS.

    A multi-label model's: path, labels, confidence, top_k, error, then prob_<class> for every
    class (output order). `labels` is the set: its names joined by ';' in CSV, a list of names in
    JSONL and Parquet; `label` is left out (the same set again). Every format thus reads into the
    same dataframe of per-class scores, and the CSV is a training manifest again (path,labels).
    Such rows are predicted with every class in top_k (`predict_k`), so each probability is
    known; the files keep the first `top_k` of them in the top_k column."""

    classes: tuple[str, ...] | None = None  # a multi-label model's class names; None: single-label
    top_k: int = 5

    def __post_init__(self) -> None:
        if self.top_k < 1:  # checked here too: a multi-label model is asked for every class
            raise ClarivisError(f"--top-k must be at least 1 (got {self.top_k})")

    @classmethod
    def for_model(cls, config: BundleConfig, top_k: int) -> RowLayout:
        return cls(tuple(config.class_names) if config.multilabel else None, top_k)

    @property
    def multilabel(self) -> bool:
        return self.classes is not None

    @property
    def predict_k(self) -> int:
        """The top_k to ask the model for."""
        return len(self.classes) if self.classes is not None else self.top_k

    @property
    def columns(self) -> list[str]:
        if self.classes is None:
            return COLUMNS
        return ["path", "labels", "confidence", "top_k", "error"] + prob_columns(self.classes)

    def trimmed(self, p: Prediction) -> Prediction:
        """The row with the top_k the user asked for (multi-label rows hold every class)."""
        return replace(p, top_k=p.top_k[:self.top_k]) if self.multilabel else p

    def probabilities(self, p: Prediction) -> list[float | None]:
        """Each class's probability (class order); None each for an error row."""
        probs = dict(p.top_k)
        return [probs.get(name) if not p.error else None for name in self.classes or ()]

    def record(self, p: Prediction) -> dict[str, Any]:
        if not self.multilabel:
            return to_record(p)
        record = to_record(self.trimmed(p))
        del record["label"]
        names = [name for name, _ in p.labels] if p.labels is not None else None
        return ({"path": record.pop("path"), "labels": names} | record
                | dict(zip(prob_columns(self.classes), self.probabilities(p), strict=True)))

    def csv_fields(self, p: Prediction) -> list[str]:
        if not self.multilabel:
            return to_csv_fields(p)
        fields = to_csv_fields(self.trimmed(p))  # path, label (the set, joined), confidence, ...
        return fields + [f"{prob:.6f}" if prob is not None else "" for prob in self.probabilities(p)]


SINGLE_LABEL = RowLayout()


def prob_columns(classes: Sequence[str]) -> list[str]:
    return [f"{PROB_PREFIX}{name}" for name in classes]


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of `size` items (the last one shorter): itertools.batched before Python 3.12."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class RowWriter(Protocol):
    def write(self, rows: list[Prediction]) -> None: ...

    def close(self) -> None: ...


class _AppendWriter:
    """Appends text to a file, one write and one flush per batch, so a killed process leaves
    every earlier batch complete and at most one torn line at the end."""

    def __init__(self, path: Path, header: str = ""):
        drop_torn_tail(path)
        try:
            # surrogateescape: a file name that is not valid UTF-8 is written back as its raw bytes
            self.file = path.open("a", encoding="utf-8", errors="surrogateescape", newline="")
        except OSError as exc:
            raise OutputError(f"cannot write {path} ({exc.strerror or exc}); check the folder "
                              "and its permissions, or choose another --out") from None
        if header and self.file.tell() == 0:
            self.file.write(header)
            self.file.flush()

    def _append(self, text: str) -> None:
        self.file.write(text)
        # flush hands the rows to the OS, which keeps them if this process dies; an fsync per
        # batch would only add protection against power loss at the cost of disk syncs.
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class CsvWriter(_AppendWriter):
    def __init__(self, path: Path, layout: RowLayout = SINGLE_LABEL):
        check_csv_header(path, layout)
        self.layout = layout
        super().__init__(path, header=_csv_text([layout.columns]))

    def write(self, rows: list[Prediction]) -> None:
        self._append(_csv_text([self.layout.csv_fields(p) for p in rows]))

    def write_fields(self, rows: list[list[str]]) -> None:
        self._append(_csv_text(rows))


class JsonlWriter(_AppendWriter):
    def __init__(self, path: Path, layout: RowLayout = SINGLE_LABEL):
        self.layout = layout
        super().__init__(path)

    def write(self, rows: list[Prediction]) -> None:
        self.write_records([self.layout.record(p) for p in rows])

    def write_records(self, records: list[dict[str, Any]]) -> None:
        self._append("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def drop_torn_tail(path: Path, chunk: int = 1 << 16) -> None:
    """Cut a file after its last newline: a line a crash left half-written is dropped."""
    try:
        handle = path.open("rb+")
    except FileNotFoundError:
        return
    with handle:
        end = handle.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:  # read backwards in chunks: the file may be far larger than memory
            start = max(0, pos - chunk)
            handle.seek(start)
            data = handle.read(pos - start)
            newline = data.rfind(b"\n")
            if newline >= 0:
                pos = start + newline + 1
                break
            pos = start
        if pos != end:
            handle.truncate(pos)


def complete_lines(path: Path) -> Iterator[str]:
    """The newline-terminated lines of a file; a torn last line (being written, or left by a
    crash) is left out. Read-only: another process may be appending to the file."""
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
        for line in handle:
            if line.endswith("\n"):
                yield line


def check_csv_header(path: Path, layout: RowLayout = SINGLE_LABEL) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    first = next(csv.reader(complete_lines(path)), None)
    if first is not None and first != layout.columns:
        raise OutputError(f"{path} does not have the columns clarivis writes for this model "
                          f"({','.join(layout.columns)}); choose another --out")


def read_csv_rows(path: Path, layout: RowLayout = SINGLE_LABEL) -> Iterator[list[str]]:
    """The data rows of a CSV written by CsvWriter (header checked and skipped)."""
    check_csv_header(path, layout)
    width = len(layout.columns)
    rows = csv.reader(complete_lines(path))
    next(rows, None)
    for row in rows:
        if len(row) != width:
            raise OutputError(f"{path} has a row with {len(row)} fields instead of {width} "
                              f"({row[:1]}); fix or remove it, or choose another --out")
        yield row


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a JSONL file written by JsonlWriter."""
    for number, line in enumerate(complete_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            raise OutputError(f"{path} line {number} is not a clarivis prediction row; "
                              "fix or remove it, or choose another --out")
        yield record
