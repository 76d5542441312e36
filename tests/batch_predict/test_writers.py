"""Append-only row files: flushed per batch, torn last lines tolerated."""

from __future__ import annotations

import json

import pytest

from clarivis.api import Prediction
from clarivis.batch_predict.writers import (
    COLUMNS,
    CsvWriter,
    JsonlWriter,
    OutputError,
    chunked,
    complete_lines,
    drop_torn_tail,
    read_csv_rows,
    read_records,
)

ROWS = [Prediction("a.png", "cat", 0.75, [("cat", 0.75), ("dog", 0.25)]),
        Prediction("b,\"odd\".png", error="not an image file")]


def test_csv_rows_are_on_disk_after_each_write(tmp_path):
    path = tmp_path / "p.csv"
    writer = CsvWriter(path)
    writer.write(ROWS[:1])
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)  # readable before close
    assert [r[0] for r in read_csv_rows(path)] == ["a.png"]
    writer.write(ROWS[1:])
    writer.close()
    rows = list(read_csv_rows(path))
    assert rows[0] == ["a.png", "cat", "0.750000", "cat:0.750000;dog:0.250000", ""]
    assert rows[1] == ['b,"odd".png', "", "", "", "not an image file"]


def test_reopening_appends_without_a_second_header(tmp_path):
    path = tmp_path / "p.csv"
    for row in ROWS:
        writer = CsvWriter(path)
        writer.write([row])
        writer.close()
    assert len(list(read_csv_rows(path))) == 2
    assert path.read_text().count("path,label") == 1


def test_torn_last_line_is_ignored_then_cut(tmp_path):
    path = tmp_path / "p.jsonl"
    writer = JsonlWriter(path)
    writer.write(ROWS)
    writer.close()
    with path.open("a") as f:
        f.write('{"path": "c.png", "lab')  # what a kill in the middle of a write leaves
    assert [r["path"] for r in read_records(path)] == ["a.png", ROWS[1].source]
    drop_torn_tail(path, chunk=7)  # small chunks: the backwards search crosses chunk borders
    assert path.read_text().endswith("}\n")
    writer = JsonlWriter(path)
    writer.write([Prediction("c.png", "cat", 1.0, [("cat", 1.0)])])
    writer.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["path"] for r in records] == ["a.png", ROWS[1].source, "c.png"]
    assert records[0]["top_k"] == [{"label": "cat", "probability": 0.75},
                                   {"label": "dog", "probability": 0.25}]


def test_drop_torn_tail_without_any_newline_empties_the_file(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("path,lab")
    drop_torn_tail(path)
    assert path.read_text() == ""
    drop_torn_tail(tmp_path / "missing.csv")  # nothing to do
    assert list(complete_lines(path)) == []


def test_foreign_files_are_refused(tmp_path):
    csv_path = tmp_path / "other.csv"
    csv_path.write_text("source,label\nx.png,cat\n")
    with pytest.raises(OutputError, match="choose another --out"):
        CsvWriter(csv_path)
    jsonl = tmp_path / "other.jsonl"
    jsonl.write_text('{"path": "a.png"}\nnot json\n{"path": "b.png"}\n')
    with pytest.raises(OutputError, match="line 2"):
        list(read_records(jsonl))


def test_chunked():
    assert list(chunked(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(chunked([], 3)) == []
