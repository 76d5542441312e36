"""predict_to_file: every format round-trips, resume after a crash, errors never fatal."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clarivis.api import Classifier
from clarivis.batch_predict import OutputError, predict_to_file
from clarivis.batch_predict.writers import read_csv_rows


def _rows(path: Path) -> list[dict]:
    """The rows of an output as dicts (path, label, confidence, top_k, error)."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    rows = []
    for path_, label, conf, top, error in read_csv_rows(path):
        top_k = [{"label": t.rsplit(":", 1)[0], "probability": float(t.rsplit(":", 1)[1])}
                 for t in top.split(";") if t]
        rows.append({"path": path_, "label": label or None,
                     "confidence": float(conf) if conf else None, "top_k": top_k,
                     "error": error or None})
    return rows


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_each_format_round_trips(tiny_bundle, images, tmp_path, suffix):
    out = tmp_path / "out" / f"preds{suffix}"
    summary = predict_to_file(tiny_bundle, images, out, top_k=2, batch_size=4, device="cpu")
    assert (summary.predicted, summary.errors, summary.skipped) == (13, 0, 0)
    assert summary.line().endswith(f"wrote {out}")
    expected = Classifier.load(tiny_bundle, device="cpu").predict(images, top_k=2)
    rows = _rows(out)
    assert [r["path"] for r in rows] == [p.source for p in expected]
    assert [r["label"] for r in rows] == [p.label for p in expected]
    for row, p in zip(rows, expected, strict=True):
        assert [t["label"] for t in row["top_k"]] == [lbl for lbl, _ in p.top_k]
        assert [t["probability"] for t in row["top_k"]] == pytest.approx(
            [prob for _, prob in p.top_k], abs=1e-6)
        assert row["error"] is None
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no journal left


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_resume_after_a_crash_predicts_only_the_rest(tiny_bundle, images, tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    predict_to_file(tiny_bundle, images, full, batch_size=4, device="cpu")
    # What a run killed after 5 rows leaves: complete lines and one torn line. For Parquet
    # the rows are in the hidden JSONL journal beside the (not yet written) target.
    out = tmp_path / f"preds{suffix}"
    journal = out.with_name(f".{out.name}.journal.jsonl") if suffix == ".parquet" else out
    lines = (full.read_text() if suffix != ".parquet" else "".join(
        json.dumps(r) + "\n" for r in pq.read_table(full).to_pylist())).splitlines(keepends=True)
    header = 1 if suffix == ".csv" else 0
    journal.write_text("".join(lines[:header + 5]) + lines[header + 5][:17])
    with pytest.raises(OutputError, match="--resume"):
        predict_to_file(tiny_bundle, images, out, device="cpu")
    summary = predict_to_file(tiny_bundle, images, out, resume=True, batch_size=4, device="cpu")
    assert (summary.predicted, summary.skipped) == (8, 5)
    assert [r["path"] for r in _rows(out)] == [r["path"] for r in _rows(full)]  # each once
    assert not journal.exists() or journal == out
    # Resuming a finished file predicts nothing and changes nothing.
    before = out.read_bytes()
    summary = predict_to_file(tiny_bundle, images, out, resume=True, device="cpu")
    assert (summary.predicted, summary.skipped) == (0, 13) and out.read_bytes() == before


def test_unreadable_and_missing_inputs_are_error_rows(tiny_bundle, images, tmp_path):
    (images / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (images / "red" / "empty.png").write_bytes(b"")
    out = tmp_path / "preds.jsonl"
    summary = predict_to_file(tiny_bundle, [images, tmp_path / "missing.png"], out, device="cpu")
    assert (summary.predicted, summary.errors) == (13, 3)
    errors = {Path(r["path"]).name: r["error"] for r in _rows(out) if r["error"]}
    assert errors["missing.png"] == "file not found"
    assert "empty file" in errors["empty.png"] and "broken.jpg" in errors


def test_user_errors_are_clarivis_errors(tiny_bundle, images, tmp_path):
    with pytest.raises(OutputError, match="unknown format"):
        predict_to_file(tiny_bundle, images, tmp_path / "preds.xlsx")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="choose another --out"):
        predict_to_file(tiny_bundle, images, tmp_path / "file" / "preds.csv")
    with pytest.raises(OutputError, match="is a folder"):
        predict_to_file(tiny_bundle, images, tmp_path)
