"""Output files: names of parts and journals, refusing to overwrite, merging."""

from __future__ import annotations

from pathlib import Path

import pytest

from clarivis.api import Prediction
from clarivis.batch_predict.outputs import (
    done_paths,
    finalize,
    leftovers,
    open_writer,
    output_format,
    prepare_target,
    refuse_existing,
    working_path,
)
from clarivis.batch_predict.parquet import read_parquet_paths
from clarivis.batch_predict.writers import OutputError, read_csv_rows, read_records


def _write(path: Path, fmt: str, names: list[str]) -> None:
    writer = open_writer(path, fmt)
    writer.write([Prediction(n, "cat", 0.9, [("cat", 0.9)]) for n in names])
    writer.close()


def _paths(target: Path, fmt: str) -> list[str]:
    if fmt == "csv":
        return [row[0] for row in read_csv_rows(target)]
    if fmt == "jsonl":
        return [record["path"] for record in read_records(target)]
    return list(read_parquet_paths(target))


def test_format_by_suffix_and_working_files(tmp_path):
    target = tmp_path / "preds.csv"
    assert output_format(target) == "csv" and output_format(tmp_path / "p.PARQUET") == "parquet"
    with pytest.raises(OutputError, match=r"\.csv, \.jsonl or \.parquet"):
        output_format(tmp_path / "preds.txt")
    assert working_path(target, "csv", 0, 1) == target
    assert working_path(target, "csv", 1, 2).name == "preds.part-1-of-2.csv"
    parquet = tmp_path / "preds.parquet"
    assert working_path(parquet, "parquet", 0, 1).name == ".preds.parquet.journal.jsonl"
    assert working_path(parquet, "parquet", 0, 2).name == ".preds.part-0-of-2.parquet.journal.jsonl"


def test_prepare_target_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="choose another --out"):
        prepare_target(tmp_path / "file" / "preds.csv")
    with pytest.raises(OutputError, match="is a folder"):
        output_format(tmp_path)
    prepare_target(tmp_path / "new" / "deeper" / "preds.csv")
    assert (tmp_path / "new" / "deeper").is_dir()


def test_existing_output_or_parts_need_resume(tmp_path):
    target = tmp_path / "preds.jsonl"
    refuse_existing(target, "jsonl")
    _write(working_path(target, "jsonl", 1, 2), "jsonl", ["a.png"])
    with pytest.raises(OutputError, match="pass --resume"):
        refuse_existing(target, "jsonl")
    target.write_text("")
    with pytest.raises(OutputError, match="already exists; pass --resume"):
        refuse_existing(target, "jsonl")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_finalize_interleaves_parts_and_drops_repeats(tmp_path, fmt):
    target = tmp_path / f"preds.{fmt}"
    # Rank R of 2 held inputs R, R+2, ...; a 3-process run before it left a part too, and
    # "0.png" is in two parts (a merge that was interrupted and runs again).
    _write(working_path(target, fmt, 0, 2), fmt, ["0.png", "2.png", "4.png"])
    _write(working_path(target, fmt, 1, 2), fmt, ["1.png", "3.png"])
    _write(working_path(target, fmt, 2, 3), fmt, ["0.png", "9.png"])
    assert len(leftovers(target, fmt)) == 3
    assert done_paths(target, fmt) == {"0.png", "1.png", "2.png", "3.png", "4.png", "9.png"}
    finalize(target, fmt)
    assert _paths(target, fmt) == ["0.png", "1.png", "2.png", "3.png", "4.png", "9.png"]
    assert leftovers(target, fmt) == []
    # A later resumed run appends behind the rows already there.
    _write(working_path(target, fmt, 0, 2), fmt, ["7.png", "4.png"])
    finalize(target, fmt)
    assert _paths(target, fmt)[-2:] == ["9.png", "7.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
