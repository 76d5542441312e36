"""`check_data`: planted problems in generated data are all found; JSON and findings shape."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from tests.check_data_gen import colour_image, flip_labels, make_colors
from tests.tiny import CNN

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
