"""`clarivis check DIR --model NAME --weights FILE` as a user runs it: the label check on a
backbone's features with no bundle trained first, and its one-line errors. The Python side is
tests/datacheck/."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageOps
from tests.check_data_gen import flip_labels, make_colors
from tests.e2e.test_cli import assert_one_line_error, run_cli
from tests.tiny import CNN, VIT, random_weights

from clarivis.datacheck import label_issues
from clarivis.datacheck.label_issues import LOGREG_C_GRID


@pytest.mark.parametrize("name", [CNN, VIT])
def test_check_command_on_backbone_features(tmp_path, capsys, name):
    """`clarivis check DIR --model NAME --weights FILE --img-size 32`: no bundle trained first.
    Random tiny weights rank 7-8 of 8 flipped labels into the first 16 suspects over 5 seeds
    (tests/datacheck/test_label_issues.py); here the check runs end to end through the CLI."""
    weights = tmp_path / "w.safetensors"
    random_weights(weights, name)
    root = make_colors(tmp_path / "colors", per_class=30)
    flipped = set(flip_labels(root, 8))
    out = tmp_path / "check.json"
    code, _, err = run_cli(["check", root, "--model", name, "--weights", weights, "--img-size", "32",
                            "--json", out, "--device", "cpu"], capsys)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["label_check"]["method"] == "embeddings+logreg"
    assert report["label_check"]["reg_c"] in LOGREG_C_GRID
    first = {i["path"] for i in report["label_issues"][:16]}
    assert len(first & flipped) >= 6, (first, flipped)


def test_check_command_feature_errors_are_one_line(tmp_path, capsys, tiny_folder):
    weights = tmp_path / "w.safetensors"
    random_weights(weights, CNN)
    cases = [
        (["--model", "no_such_net", "--weights", weights], "unknown model"),
        (["--model", CNN], "needs --weights FILE or --pretrained"),
        (["--weights", tmp_path / "missing.pt"], "not found"),
        (["--weights", weights, "--pretrained"], "not both"),
    ]
    for extra, fragment in cases:  # refused before the file checks: the error is all there is
        code, _, err = run_cli(["check", tiny_folder, "--no-cached", *extra], capsys)
        assert_one_line_error(code, err, fragment)
    # Weights of another architecture show when the backbone is built, after the file checks.
    code, _, err = run_cli(["check", tiny_folder, "--model", VIT, "--weights", weights,
                            "--img-size", "32"], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "do not fit 'test_vit'" in errors[0], err
    assert err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err
    code, _, err = run_cli(["check", tiny_folder, "--weights"], capsys)  # no file after it
    assert code == 2 and "requires an argument" in err and "Traceback" not in err


def test_a_mirrored_copy_in_test_is_a_look_alike_leak(tmp_path, capsys, monkeypatch):
    """The features are planted (a mirror image's own, from a real ImageNet backbone, are
    measured by benchmarks/similar_images.py): here the way from features to a leak warning,
    the JSON, the exit code and --similar-cosine 1 turning it off."""
    weights = tmp_path / "w.safetensors"
    random_weights(weights, CNN)
    root = make_colors(tmp_path / "colors", per_class=12)
    source = root / "train" / "red" / "red_003.png"
    copy = root / "test" / "red" / "mirrored.png"
    ImageOps.mirror(Image.open(source)).save(copy)

    def planted_features(source_, samples, device=None):
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(len(samples), 256)).astype(np.float32)  # cosines ~0 +- 0.06
        paths = [s.path for s in samples]
        vectors[paths.index(str(copy))] = vectors[paths.index(str(source))] + 0.2 * vectors[0]
        return vectors

    monkeypatch.setattr(label_issues, "backbone_features", planted_features)
    out = tmp_path / "check.json"
    args = ["check", root, "--model", CNN, "--weights", weights, "--img-size", "32", "--json", out]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err  # a look-alike is a warning to look at, not an error
    report = json.loads(out.read_text())
    (group,) = [g for g in report["duplicates"] if g["kind"] == "similar"]
    assert sorted(group["paths"]) == sorted([str(copy), str(source)]) and group["leak"]
    assert report["summary"]["similar_groups"] == 1 and group["similarity"] > 0.95
    (finding,) = [f for f in report["findings"] if "look-alike" in f["message"]]
    assert finding["severity"] == "warning" and finding["kind"] == "leak"
    assert "1 groups of look-alikes" in err

    code, _, err = run_cli(args + ["--similar-cosine", "1"], capsys)
    assert code == 0 and not [g for g in json.loads(out.read_text())["duplicates"] if g["kind"] == "similar"]
