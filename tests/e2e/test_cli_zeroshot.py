"""`clarivis zeroshot` and `clarivis train --init-from-text` as a user runs them."""

from __future__ import annotations

import csv
import io
import json

import pytest
from tests.e2e.test_cli import assert_one_line_error, run_cli


@pytest.fixture
def clip_flags(tiny_clip) -> list[str]:
    return ["--clip", tiny_clip.config, "--clip-weights", tiny_clip.weights]


def test_table_json_and_csv(capsys, clip_flags, colour_data, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a red square\na green circle\na blue triangle\n")
    code, out, err = run_cli(["zeroshot", colour_data / "red_square", "--labels", labels, *clip_flags,
                              "--format", "json", "--top-k", "2"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 10 and all(len(r["top_k"]) == 2 and r["error"] is None for r in rows)
    code, out, _ = run_cli(["zeroshot", colour_data / "red_square" / "0.png", "--labels",
                            "cat,dog", *clip_flags, "--format", "csv"], capsys)
    assert code == 0 and list(csv.reader(io.StringIO(out)))[1][1] in ("cat", "dog")
    code, out, _ = run_cli(["zeroshot", colour_data / "red_square" / "0.png", "--labels", "cat,dog",
                            *clip_flags], capsys)
    # The table folds long paths (xdist's tmp folders) at the terminal width: check a label.
    assert code == 0 and ("cat" in out or "dog" in out)


def test_unreadable_input_is_an_error_row_and_exit_1(capsys, clip_flags, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    code, out, err = run_cli(["zeroshot", tmp_path / "bad.png", "--labels", "cat,dog", *clip_flags,
                              "--format", "json"], capsys)
    assert code == 1 and json.loads(out)[0]["error"] and "could not be read" in err


@pytest.mark.parametrize("args, fragment", [
    (["--labels", ""], "no labels given"),
    (["--labels", "cat,cat"], "given twice"),
    (["--labels", "cat,dog", "--clip", "ViT-B-99"], "unknown open_clip model"),
    (["--labels", "cat,dog", "--clip", "ViT-B-32", "--clip-weights", "missing.safetensors"], "not found"),
    (["--labels", "cat,dog", "--format", "xml"], "--format xml"),
])
def test_one_line_errors(capsys, args, fragment, colour_data):
    code, _, err = run_cli(["zeroshot", colour_data / "red_square" / "0.png", *args], capsys)
    assert_one_line_error(code, err, fragment)


def test_save_bundle_then_predict(capsys, clip_flags, colour_data, tmp_path):
    code, _, err = run_cli(["zeroshot", "--labels", "red_square,green_circle,blue_triangle",
                            *clip_flags, "--save-bundle", tmp_path / "zs"], capsys)
    assert code == 0 and "wrote the zero-shot model" in err
    code, out, _ = run_cli(["predict", tmp_path / "zs", colour_data / "green_circle" / "1.png",
                            "--format", "json"], capsys)
    assert code == 0 and json.loads(out)[0]["label"] in ("red_square", "green_circle", "blue_triangle")
    code, out, _ = run_cli(["evaluate", tmp_path / "zs", colour_data], capsys)
    assert code == 0 and "accuracy" in out


def test_train_init_from_text_flag(capsys, tiny_clip, colour_data, tmp_path):
    code, out, err = run_cli(["train", colour_data, "--out", tmp_path / "run", "--model",
                              f"open_clip:{tiny_clip.config}", "--weights", tiny_clip.weights,
                              "--init-from-text", "--epochs", "1", "--workers", "0", "--no-report"],
                             capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    code, _, err = run_cli(["train", colour_data, "--model", "test_resnet", "--init-from-text"], capsys)
    assert_one_line_error(code, err, "needs an open_clip model")
