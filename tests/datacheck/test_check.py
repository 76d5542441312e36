"""`check_data`: planted problems in generated data are all found; JSON and findings shape."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from tests.check_data_gen import colour_image, flip_labels, make_colors
from tests.tiny import CNN, VIT

from clarivis.datacheck import check_data, finding_thumbnails, save_check

N_FLIPPED = 8
# 12 epochs of the fast recipe on 4 of 5 folds: tiny test_resnet learns the colours (out-of-fold
# accuracy 0.95 = every clean image right) in about 6 s on one core.
TRAIN = {"model": CNN, "img_size": 32, "workers": 0, "epochs": 12}


def _plant(root):
    """Every kind of problem once, on top of N_FLIPPED flipped labels; returns their names."""
    train = root / "train"
    flipped = flip_labels(root, N_FLIPPED)
    shutil.copy(train / "red" / "red_002.png", train / "red" / "red_copy.png")
    brighter = ImageEnhance.Brightness(Image.open(train / "green" / "green_003.png")).enhance(1.05)
    brighter.save(train / "green" / "green_edit.png")
    shutil.copy(train / "blue" / "blue_004.png", root / "test" / "blue" / "leaked.png")
    (train / "yellow" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rng = np.random.default_rng(1)
    colour_image("yellow", 32, rng).convert("CMYK").save(train / "yellow" / "cmyk.jpg")
    colour_image("blue", 32, rng).convert("L").save(train / "blue" / "gray.png")
    colour_image("red", 256, rng).save(train / "red" / "huge.png")
    return flipped


def _names(paths):
    return {p.rsplit("/", 1)[-1] for p in paths}


@pytest.mark.slow
def test_planted_problems_are_found(tmp_path):
    root = make_colors(tmp_path / "colors", per_class=40)
    flipped = set(_plant(root))
    result = check_data(root, device="cpu", train_settings=TRAIN)
    report = result.to_dict()

    groups = {frozenset(_names(g["paths"])): g for g in report["duplicates"]}
    assert groups[frozenset({"red_002.png", "red_copy.png"})]["kind"] == "exact"
    assert groups[frozenset({"green_003.png", "green_edit.png"})]["kind"] == "near"
    leak = groups[frozenset({"blue_004.png", "leaked.png"})]
    assert leak["leak"] and sorted(leak["splits"]) == ["test", "train"]
    assert _names(c["path"] for c in report["corrupt"]) == {"broken.png"}
    assert {(o["path"].rsplit("/", 1)[-1], o["kind"]) for o in report["odd_modes"]} == {
        ("cmyk.jpg", "cmyk"), ("gray.png", "gray")}
    assert _names(o["path"] for o in report["size_outliers"]) == {"huge.png"}

    issues = report["label_issues"]
    found = {i["path"] for i in issues}
    recall = len(found & flipped) / len(flipped)
    precision = len(found & flipped) / max(1, len(found))
    print(f"label issues: recall {recall:.2f}, precision {precision:.2f} "
          f"({len(found)} flagged, {len(flipped)} flipped)")
    assert recall >= 0.7
    assert precision >= 0.5
    scores = [i["score"] for i in issues]
    assert scores == sorted(scores)  # most suspect first
    assert all(set(i) >= {"path", "given_label", "suggested_label", "score"} for i in issues)
    for i in issues:
        if i["path"] in flipped:  # the suggestion is the colour the image really shows
            assert i["suggested_label"] != i["given_label"]
            assert i["suggested_label"] in _names([i["path"]]).pop()

    findings = result.findings
    severities = [f.severity for f in findings]
    assert severities == sorted(severities, key=["error", "warning", "info"].index)
    assert {f.kind for f in findings if f.severity == "error"} == {"corrupt", "leak"}
    summary = report["summary"]
    assert summary["corrupt"] == 1 and summary["leaking_groups"] == 1
    assert summary["label_issues"] == len(issues)

    saved = json.loads(save_check(result, tmp_path / "out" / "check.json").read_text())
    assert saved["label_issues"] == issues and isinstance(saved["duplicates"], list)

    thumbs = finding_thumbnails(result, top=10)
    assert thumbs and all(max(Image.open(io.BytesIO(b)).size) <= 64 for b in thumbs.values())
    assert not any(p.endswith("broken.png") for p in thumbs)


def test_file_checks_alone(tmp_path, tiny_folder):
    shutil.copy(tiny_folder / "red" / "r0.png", tiny_folder / "blue" / "r0_as_blue.png")
    result = check_data(tiny_folder, label_issues=False)
    report = result.to_dict()
    assert report["label_issues"] == [] and report["label_check"] == {"skipped": "turned off"}
    assert report["layout"] == "folder" and report["class_names"] == ["blue", "red"]
    (group,) = report["duplicates"]
    assert group["conflicting_labels"] and not group["leak"]
    assert [f.kind for f in result.findings] == ["conflicting_labels"]  # 13:12 is balanced enough
    assert set(report) >= {"label_issues", "duplicates", "corrupt", "imbalance", "size_outliers",
                           "odd_modes", "summary", "findings"}


@pytest.mark.parametrize("name", [CNN, VIT])
def test_check_command_on_backbone_features(tmp_path, capsys, name):
    """`clarivis check DIR --model NAME --weights FILE --img-size 32`: no bundle trained first.
    Random tiny weights rank 7-8 of 8 flipped labels into the first 16 suspects over 5 seeds
    (tests/evaluate/test_label_issues.py); here the check runs end to end through the CLI."""
    from tests.e2e.test_cli import run_cli

    from clarivis.datacheck.label_issues import LOGREG_C_GRID

    weights = tmp_path / "w.safetensors"
    _save_tiny_weights(weights, name)
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
    from tests.e2e.test_cli import assert_one_line_error, run_cli

    weights = tmp_path / "w.safetensors"
    _save_tiny_weights(weights, CNN)
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


def _save_tiny_weights(path, name):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=10, **({"img_size": 32} if name == VIT else {}))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
