"""`clarivis check`, `explain`, `audit` and `report` as a user runs them: JSON interface, files,
exit codes and one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image
from tests.check_data_gen import flip_labels, make_colors
from tests.e2e.test_cli import assert_one_line_error, run_cli
from tests.tiny import CNN


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    """Colour classes with 4 flipped training labels and a train image leaked into test."""
    root = make_colors(tmp_path_factory.mktemp("colors") / "data", per_class=30)
    flipped = flip_labels(root, 4)
    leaked = sorted((root / "train" / "red").glob("*.png"))[0]
    shutil.copy(leaked, root / "test" / "red" / "leaked.png")
    return root, flipped


def test_check_json_interface_and_exit_code(colors, tmp_path, capsys):
    root, flipped = colors
    # --no-cached: per-fold training even where hub weights of efficientnet_lite0 are cached
    code, out, err = run_cli(["check", root, "--json", tmp_path / "check.json", "--folds", "3",
                              "--no-cached"], capsys)
    assert code == 1, err  # the leak is an error finding
    assert "leak" in out and "wrote" in err
    report = json.loads((tmp_path / "check.json").read_text())
    for issue in report["label_issues"]:
        assert set(issue) >= {"path", "given_label", "suggested_label", "score"}
        assert issue["given_label"] != issue["suggested_label"]
    found = {i["path"] for i in report["label_issues"]}
    assert len(found & set(flipped)) >= 2  # recall over the planted flips, see tests/test_check.py
    leaks = [d for d in report["duplicates"] if d["leak"]]
    assert any(p.endswith("leaked.png") for d in leaks for p in d["paths"])


def test_check_without_label_check_on_a_missing_folder(tmp_path, capsys):
    code, _, err = run_cli(["check", tmp_path / "nope", "--no-labels"], capsys)
    assert_one_line_error(code, err, "does not exist")


@pytest.fixture(scope="module")
def colour_model(colors, tmp_path_factory):
    import clarivis

    root, _ = colors
    return clarivis.train(root, out=tmp_path_factory.mktemp("run") / "run", model=CNN, epochs=3,
                          workers=0, img_size=32, report=False).bundle_dir


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "ig"])
def test_explain_writes_overlays(colors, colour_model, tmp_path, capsys, method):
    root, _ = colors
    (tmp_path / "broken.png").write_bytes(b"not a png")
    code, out, err = run_cli(["explain", colour_model, root / "test" / "blue", tmp_path / "broken.png",
                              "--method", method, "--out", tmp_path / "x"], capsys)
    pngs = sorted((tmp_path / "x").glob(f"*_{method}.png"))
    assert code == 1 and "1 input(s)" in err  # the broken file is an error row, not a crash
    assert len(pngs) == len(list((root / "test" / "blue").glob("*.png")))
    with Image.open(pngs[0]) as overlay:
        assert overlay.width > 2 * overlay.height * 0.8  # original and heat map side by side


def test_explain_unknown_method(colour_model, colors, capsys):
    root, _ = colors
    code, _, err = run_cli(["explain", colour_model, root / "test", "--method", "lime"], capsys)
    assert_one_line_error(code, err, "gradcam")


def test_audit_folder_data_has_no_groups(colour_model, colors, capsys):
    root, _ = colors
    code, _, err = run_cli(["audit", colour_model, root, "--groups", "site", "--no-robustness"], capsys)
    assert_one_line_error(code, err, "CSV manifest")
