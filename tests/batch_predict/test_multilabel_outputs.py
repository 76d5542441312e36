"""A multi-label bundle's prediction rows in files (predict --out) and on stdout (predict
--format): the label set, and one probability column a class (issue 15)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests.e2e.test_cli import run_cli
from tests.tiny import ML_CLASSES, multilabel_bundle, write_multilabel

from clarivis.api import Classifier
from clarivis.batch_predict import OutputError, predict_to_file

PROBS = [f"prob_{name}" for name in ML_CLASSES]  # blue, green, red
# An untrained model with thresholds that fix part of the answer: blue always (0), green never
# (above any probability), red when its sigmoid reaches 0.5.
THRESHOLDS = [0.0, 1.01, 0.5]


@pytest.fixture(scope="module")
def ml_bundle(tmp_path_factory) -> Path:
    return multilabel_bundle(tmp_path_factory.mktemp("ml-bundle"), thresholds=THRESHOLDS)


@pytest.fixture(scope="module")
def none_bundle(tmp_path_factory) -> Path:
    """No class can reach its threshold: every answer is the empty set."""
    return multilabel_bundle(tmp_path_factory.mktemp("ml-none"), thresholds=[1.01] * 3)


@pytest.fixture
def ml_images(tmp_path) -> Path:
    """8 images and a file that is not a readable image."""
    folder = write_multilabel(tmp_path / "data", 8).parent / "images"
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def _expected(bundle: Path, folder: Path) -> dict[str, object]:
    """path -> Classifier's row with every class's probability."""
    return {p.source: p for p in Classifier.load(bundle, device="cpu").predict(folder, top_k=3)}


def _file_rows(path: Path) -> list[dict]:
    """Rows as dicts, labels as lists and probabilities as floats, whatever the format."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    for row in rows:
        row["labels"] = row["labels"].split(";") if row["labels"] else ([] if not row["error"] else None)
        for col in PROBS:
            row[col] = float(row[col]) if row[col] else None
    return rows


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_files_hold_the_set_and_a_probability_a_class(ml_bundle, ml_images, tmp_path, suffix):
    out = tmp_path / f"preds{suffix}"
    summary = predict_to_file(ml_bundle, ml_images, out, top_k=2, batch_size=3, device="cpu")
    assert (summary.predicted, summary.errors) == (8, 1)
    rows = _file_rows(out)
    assert list(rows[0]) == ["path", "labels", "confidence", "top_k", "error", *PROBS]
    expected = _expected(ml_bundle, ml_images)
    for row in rows:
        if row["path"].endswith("broken.png"):
            assert row["error"] and row["labels"] is None and all(row[c] is None for c in PROBS)
            continue
        p = expected[row["path"]]
        assert row["labels"] == [name for name, _ in p.labels]
        assert "blue" in row["labels"] and "green" not in row["labels"]
        assert [row[c] for c in PROBS] == pytest.approx([dict(p.top_k)[c] for c in ML_CLASSES], abs=1e-6)
        assert len(row["top_k"]) == 2 if suffix != ".csv" else row["top_k"].count(";") == 1
        assert ("red" in row["labels"]) == (row["prob_red"] >= 0.5)


def test_a_resumed_file_must_have_the_models_columns(ml_bundle, tiny_bundle, ml_images, tmp_path):
    out = tmp_path / "preds.csv"
    predict_to_file(tiny_bundle, ml_images, out, device="cpu")  # single-label columns
    with pytest.raises(OutputError, match="columns clarivis writes for this model"):
        predict_to_file(ml_bundle, ml_images, out, resume=True, device="cpu")
    ml_out = tmp_path / "ml.csv"
    predict_to_file(ml_bundle, ml_images / "img000.png", ml_out, device="cpu")
    summary = predict_to_file(ml_bundle, ml_images, ml_out, resume=True, device="cpu")
    assert (summary.skipped, summary.predicted) == (1, 7)
    assert len(_file_rows(ml_out)) == 9


def test_cli_json_and_csv_give_the_set_and_every_probability(ml_bundle, ml_images, capsys):
    code, out, _ = run_cli(["predict", ml_bundle, ml_images, "--format", "json", "--top-k", "1",
                            "--device", "cpu"], capsys)
    assert code == 1  # the broken file
    items = {Path(i["source"]).name: i for i in json.loads(out)}
    item = items["img000.png"]
    assert "blue" in [entry["label"] for entry in item["labels"]] and len(item["top_k"]) == 1
    assert item["label"] == ";".join(entry["label"] for entry in item["labels"])
    assert sorted(item["probabilities"]) == ML_CLASSES
    assert item["confidence"] == max(item["probabilities"].values())
    assert items["broken.png"]["error"] and items["broken.png"]["probabilities"] is None

    code, out, _ = run_cli(["predict", ml_bundle, ml_images, "--format", "csv", "--device", "cpu"], capsys)
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["source", "labels", "confidence", "top_k", "error", *PROBS]
    first = next(dict(zip(rows[0], row, strict=True)) for row in rows[1:] if row[0].endswith("img000.png"))
    assert "blue" in first["labels"].split(";") and "green" not in first["labels"]
    assert float(first["prob_blue"]) > 0 and len(rows) == 10


def test_cli_an_image_with_no_label_is_an_empty_set(none_bundle, ml_images, capsys):
    image = ml_images / "img001.png"
    code, out, err = run_cli(["predict", none_bundle, image, "--device", "cpu"], capsys)
    assert code == 0, err
    assert "(none)" in out and "labels" in out
    code, out, _ = run_cli(["predict", none_bundle, image, "--format", "json", "--device", "cpu"], capsys)
    item = json.loads(out)[0]
    assert (code, item["labels"], item["label"], item["error"]) == (0, [], "", None)
    code, out, _ = run_cli(["predict", none_bundle, image, "--format", "csv", "--device", "cpu"], capsys)
    row = next(csv.DictReader(io.StringIO(out)))
    assert (code, row["labels"], row["error"]) == (0, "", "") and float(row["prob_red"]) < 1.01


def test_the_csv_reads_back_as_a_multilabel_manifest(ml_bundle, ml_images, tmp_path):
    from clarivis.data.sources import index_dataset

    out = tmp_path / "preds.csv"
    predict_to_file(ml_bundle, ml_images, out, device="cpu")
    index = index_dataset(out)
    expected = _expected(ml_bundle, ml_images)
    assert index.task == "multilabel"
    got = {s.path: set(s.labels) for s in index.all_samples if not s.path.endswith("broken.png")}
    assert got == {path: {name for name, _ in p.labels} for path, p in expected.items() if not p.error}
