"""Where rows go: the --out file, its per-rank part files, the Parquet journals, and merging
them into the --out file at the end.

Files beside a target `preds.SUFFIX` (SUFFIX .csv, .jsonl or .parquet):
    preds.part-R-of-W.SUFFIX              rank R of W processes (.csv/.jsonl)
    .preds.parquet.journal.jsonl          rows journaled by a single process (.parquet)
    .preds.part-R-of-W.parquet.journal.jsonl   the same per rank (.parquet)
Leftovers of any earlier run (another process count included) are read on resume and merged."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TypeVar

from clarivis.batch_predict.parquet import read_parquet_paths, write_parquet
from clarivis.batch_predict.writers import (
    SINGLE_LABEL,
    CsvWriter,
    JsonlWriter,
    OutputError,
    RowLayout,
    RowWriter,
    chunked,
    read_csv_rows,
    read_records,
)

T = TypeVar("T")

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
_JOURNAL = ".journal.jsonl"


def output_format(target: Path) -> str:
    if target.is_dir():
        raise OutputError(f"--out {target} is a folder; give a file name such as preds.csv")
    fmt = FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise OutputError(f"--out {target.name}: unknown format '{target.suffix}'; name the file "
                          "with .csv, .jsonl or .parquet")
    return fmt


def prepare_target(target: Path) -> None:
    """Create the target's folder."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder of --out {target} ({exc.strerror or exc}); "
                          "check the path or choose another --out") from None


def part_path(target: Path, rank: int, world_size: int) -> Path:
    if world_size == 1:
        return target
    return target.with_name(f"{target.stem}.part-{rank}-of-{world_size}{target.suffix}")


def working_path(target: Path, fmt: str, rank: int, world_size: int) -> Path:
    """The file this process appends its rows to."""
    part = part_path(target, rank, world_size)
    return part.with_name(f".{part.name}{_JOURNAL}") if fmt == "parquet" else part


def leftovers(target: Path, fmt: str) -> list[Path]:
    """Part files and journals of `target` from this or earlier runs, in (W, R) order."""
    return [path for _, path in _leftovers(target, fmt)]


def _leftovers(target: Path, fmt: str) -> list[tuple[tuple[int, int], Path]]:
    stem, suffix = re.escape(target.stem), re.escape(target.suffix)
    part = rf"{stem}\.part-(\d+)-of-(\d+){suffix}"
    if fmt == "parquet":
        pattern = re.compile(rf"\.(?:{re.escape(target.name)}|{part}){re.escape(_JOURNAL)}")
    else:
        pattern = re.compile(part)
    found = []
    if target.parent.is_dir():
        for path in target.parent.iterdir():
            match = pattern.fullmatch(path.name)
            if match and path.is_file():
                rank, world = match.groups()
                key = (int(world), int(rank)) if world else (1, 0)
                found.append((key, path))
    return sorted(found)


def refuse_existing(target: Path, fmt: str) -> None:
    """Never overwrite: an existing output (or parts of one) needs --resume."""
    if target.exists():
        raise OutputError(f"{target} already exists; pass --resume to continue it or choose "
                          "another --out")
    parts = leftovers(target, fmt)
    if parts:
        raise OutputError(f"{parts[0].name} beside {target.name} is left from an unfinished run; "
                          "pass --resume to finish it or choose another --out")


def read_paths(path: Path, fmt: str, layout: RowLayout = SINGLE_LABEL) -> Iterator[str]:
    """The paths in one output, part or journal file (a torn last line is ignored)."""
    if fmt == "parquet" and not path.name.endswith(_JOURNAL):
        yield from read_parquet_paths(path, layout)
    elif fmt == "csv":
        yield from (row[0] for row in read_csv_rows(path, layout))
    else:
        yield from (record["path"] for record in read_records(path))


def done_paths(target: Path, fmt: str, layout: RowLayout = SINGLE_LABEL) -> set[str]:
    """Every path already in the target or any of its leftovers (what --resume skips)."""
    done: set[str] = set()  # the one O(files) structure: about 100 bytes a path
    for path in ([target] if target.exists() else []) + leftovers(target, fmt):
        done.update(read_paths(path, fmt, layout))
    return done


def open_writer(path: Path, fmt: str, layout: RowLayout = SINGLE_LABEL) -> RowWriter:
    return CsvWriter(path, layout) if fmt == "csv" else JsonlWriter(path, layout)


def finalize(target: Path, fmt: str, layout: RowLayout = SINGLE_LABEL) -> None:
    """Merge all leftovers into the target and delete them; repeats of a path are dropped, so
    a merge that was interrupted can simply run again."""
    found = _leftovers(target, fmt)
    parts = [path for _, path in found]
    if fmt == "parquet":
        # Rewriting a large Parquet file for empty journals (nothing new on resume) is waste.
        if not target.exists() or any(part.stat().st_size for part in parts):
            write_parquet(target, _merged(found, read_records), layout)
    elif fmt == "csv" and parts:
        seen = set(read_paths(target, fmt, layout)) if target.exists() else set()
        rows = (row for row in _merged(found, lambda path: read_csv_rows(path, layout))
                if _first_time(row[0], seen))
        with closing(CsvWriter(target, layout)) as csv_writer:
            for chunk in chunked(rows, 1000):
                csv_writer.write_fields(chunk)
    elif parts:
        seen = set(read_paths(target, fmt, layout)) if target.exists() else set()
        records = (r for r in _merged(found, read_records) if _first_time(r["path"], seen))
        with closing(JsonlWriter(target, layout)) as jsonl_writer:
            for chunk in chunked(records, 1000):
                jsonl_writer.write_records(chunk)
    for part in parts:
        part.unlink()


def _merged(found: list[tuple[tuple[int, int], Path]], read: Callable[[Path], Iterator[T]]
            ) -> Iterator[T]:
    """The rows of all parts; the parts of one run are interleaved (one row of rank 0, one of
    rank 1, ...), which restores the single-process order: rank R holds inputs R, R+W, ..."""
    for _, group in itertools.groupby(found, key=lambda item: item[0][0]):
        yield from _round_robin([read(path) for _, path in group])


def _round_robin(iterators: list[Iterator[T]]) -> Iterator[T]:
    while iterators:
        alive = []
        for iterator in iterators:
            for item in itertools.islice(iterator, 1):
                yield item
                alive.append(iterator)
        iterators = alive


def _first_time(path: str, seen: set[str]) -> bool:
    if path in seen:
        return False
    seen.add(path)
    return True
