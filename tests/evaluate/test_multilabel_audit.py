"""`clarivis evaluate` and `clarivis audit` on a multi-label model: mAP where a single-label model
has accuracy, subgroups and corruptions in mAP, class-wise calibration, one-line refusals."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.e2e.test_cli import assert_one_line_error, run_cli
from tests.tiny import ML_CLASSES, trained_multilabel, write_multilabel

from clarivis.classifier import Classifier
from clarivis.data.sources import index_dataset
from clarivis.evaluate.adversarial import attack, multilabel_adversarial_robustness
from clarivis.evaluate.audit import audit
from clarivis.evaluate.inputs import load_labeled_pixels
from clarivis.evaluate.plots import per_class_figure, png_bytes, reliability_figure, robustness_figure
from clarivis.evaluate.robustness import multilabel_corruption_robustness
from clarivis.evaluate.subgroups import average_precisions, multilabel_subgroup_report
from clarivis.multilabel_metrics import average_precision
from clarivis.report.html import write_report

N = 40
DARK = [i for i in range(N) if i % 10 < 3]  # 12 images, darkened to a quarter of their brightness


@pytest.fixture(scope="module")
def ml(tmp_path_factory):
    """(trained multi-label bundle, test manifest of 40 other images with lighting and site
    columns; the 'dark' lighting group really is dark, so the model finds its labels worse).
    The bundle sits in a copy of the session's run folder: an audit writes RUN/audit.json."""
    root = tmp_path_factory.mktemp("ml_test")
    bundle = Path(shutil.copytree(trained_multilabel(root / "train").parent, root / "run")) / "model"
    lighting = ["dark" if i in DARK else "normal" for i in range(N)]
    csv = write_multilabel(root, N, seed=1, extra_columns={"lighting": lighting,
                                                           "site": ["a", "b"] * (N // 2)})
    for i in DARK:
        path = root / "images" / f"img{i:03d}.png"
        Image.fromarray((np.asarray(Image.open(path)) * 0.25).astype(np.uint8)).save(path)
    return bundle, csv


def test_evaluate_prints_map_and_a_per_class_table(ml, tmp_path, capsys):
    bundle, csv = ml
    code, out, err = run_cli(["evaluate", bundle, csv, "--json", tmp_path / "m.json"], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["task"] == "multilabel" and metrics["num_samples"] == N
    for key in ("map_macro", "map_micro", "f1_macro", "f1_micro", "subset_accuracy", "hamming_loss"):
        assert 0.0 <= metrics[key] <= 1.0
    assert [r["class"] for r in metrics["per_class"]] == ML_CLASSES
    assert {"ap", "f1", "precision", "recall", "threshold", "support"} <= set(metrics["per_class"][0])
    assert f"{metrics['map_macro']:.4f}" in out and f"{metrics['hamming_loss']:.4f}" in out
    for row in metrics["per_class"]:  # one table row a class: name, AP, ..., threshold, support
        line = next(x for x in out.splitlines() if f" {row['class']} " in x)
        assert f"{row['threshold']:.3f}" in line and f" {row['support']} " in line
    assert (tmp_path / "m_per_class.png").stat().st_size > 0  # the figure, not a confusion matrix
    assert not (tmp_path / "m_confusion.png").exists()


def test_audit_cli_writes_subgroup_map_per_group_value(ml, tmp_path, capsys):
    bundle, csv = ml
    code, out, err = run_cli(["audit", bundle, csv, "--groups", "site", "--no-robustness",
                              "--adversarial", "--adversarial-images", "4", "--json", tmp_path / "a.json"],
                             capsys)
    assert code == 0, err
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["task"] == "multilabel" and a["metrics"]["task"] == "multilabel"
    assert set(a["subgroups"]["site"]) == {"a", "b"}
    assert all(0.0 <= g["map"] <= 1.0 and g["count"] == N // 2 for g in a["subgroups"]["site"].values())
    assert a["open_set"] is None and a["robustness"] is None
    assert [n for n in a["notes"] if "applies to single-label models" in n] == [
        "open-set rejection: applies to single-label models (one softmax answer an image); "
        "not run on this multi-label model"]
    adv = a["adversarial"]
    assert adv["metric"] == "map" and adv["num_images"] == 4 and set(adv["attacks"]) == {"fgsm", "pgd"}
    assert "mAP macro / micro" in out and "PGD mAP" in out and "site" in out
    assert json.loads((bundle.parent / "audit.json").read_text()) == a  # in the run, for the report
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", write_report(bundle.parent, gallery=0).read_text()))
    assert f"the cells are mAP (clean mAP {adv['clean_map']:.3f})" in text


def test_audit_measures_subgroups_and_calibration_in_map(ml):
    bundle, csv = ml
    report = audit(bundle, csv, groups=["lighting"], robustness=False)
    lighting = report.subgroups["lighting"]
    assert set(lighting) == {"dark", "normal"}
    assert lighting["dark"]["count"] == len(DARK)
    assert lighting["dark"]["map"] < lighting["normal"]["map"] - 0.1  # 0.86 against 1.0
    flagged = [(f["column"], f["group"]) for f in report.subgroups["flagged"]]
    assert flagged == [("lighting", "dark")]
    summary = report.subgroups["summary"]["lighting"]
    assert summary["worst_group"] == "dark"
    # the subgroup module's numpy AP is the metrics' torchmetrics AP
    assert summary["overall_map"] == pytest.approx(report.metrics["map_macro"], abs=1e-6)
    cal = report.calibration
    assert len(cal["temperatures"]) == len(cal["per_class"]) == 3
    assert 0 <= cal["ece_after"] <= 1 and cal["bce_after"] > 0
    assert cal["ece_after"] == pytest.approx(np.mean([r["ece_after"] for r in cal["per_class"]]))
    assert sum(cal["reliability_after"]["count"]) == N * 3  # every (image, class) pair
    json.dumps(report.to_dict(), allow_nan=False)  # strict JSON: no NaN anywhere
    for fig in (reliability_figure(cal), per_class_figure(report.metrics["per_class"])):
        assert png_bytes(fig)[:4] == b"\x89PNG"


def test_robustness_is_the_map_drop_under_corruption(ml):
    bundle, csv = ml
    clf = Classifier.load(bundle, device="cpu")
    normal = [s for s in index_dataset(csv, task="multilabel").all_samples
              if s.groups["lighting"] == "normal"]
    data = load_labeled_pixels(clf, normal)
    result = multilabel_corruption_robustness(clf, data, corruptions=["brightness_down"], severities=5)
    row = result.corruptions["brightness_down"]
    assert result.clean_map > 0.9 and len(row["map"]) == 5
    assert row["map"][-1] < result.clean_map - 0.1  # a fifth of the light hides the patches
    assert result.relative_drop == pytest.approx(1 - row["mean"] / result.clean_map)
    again = multilabel_corruption_robustness(clf, data, corruptions=["brightness_down"], severities=5)
    assert again.to_dict() == result.to_dict()  # seeded
    assert png_bytes(robustness_figure(result.to_dict()))[:4] == b"\x89PNG"


def test_average_precisions_are_torchmetrics_with_ties_and_empty_classes():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((60, 4)), 1)  # rounded: many tied scores
    targets = (rng.random((60, 4)) < 0.4).astype(int)
    targets[:, 3] = 0  # no positive: no AP
    ours = average_precisions(scores, targets)
    with warnings.catch_warnings():  # torchmetrics warns about the empty class
        warnings.simplefilter("ignore")
        theirs, _ = average_precision(torch.tensor(scores), torch.tensor(targets))
    assert np.isnan(ours[3]) and theirs[3] is None
    assert ours[:3] == pytest.approx(theirs[:3], abs=1e-6)


@pytest.mark.parametrize("command", ["evaluate", "audit"])
def test_a_multilabel_manifest_is_refused_by_a_single_label_model(tiny_bundle, ml, command, capsys):
    _, csv = ml
    code, _, err = run_cli([command, tiny_bundle, csv], capsys)
    assert_one_line_error(code, err, "is multi-label")


def test_attacks_on_the_label_set_lower_map_within_eps(ml):
    bundle, csv = ml
    clf = Classifier.load(bundle, device="cpu")
    normal = [s for s in index_dataset(csv, task="multilabel").all_samples
              if s.groups["lighting"] == "normal"][:12]
    data = load_labeled_pixels(clf, normal)
    images = data.pixels.float() / 255
    adv = attack(clf, images, data.targets, method="pgd", eps=8 / 255)
    assert (adv - images).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    result = multilabel_adversarial_robustness(clf, data, eps=(2 / 255, 8 / 255))
    assert result.num_images == 12 and result.clean_map > 0.9
    assert result.attacks["pgd"]["8/255"] < result.clean_map - 0.2  # undefended: fooled
    assert result.attacks["pgd"]["8/255"] <= result.attacks["fgsm"]["8/255"] + 0.05


def test_a_group_with_no_label_present_has_no_map_and_is_not_flagged():
    rng = np.random.default_rng(0)
    targets = (rng.random((30, 3)) < 0.5).astype(int)
    targets[:8] = 0  # the 'empty' group: no image holds any label
    report = multilabel_subgroup_report(rng.random((30, 3)), targets, [0.5] * 3,
                                        {"g": ["empty"] * 8 + ["x"] * 22}, n_boot=20)
    empty = report["g"]["empty"]
    assert empty["map"] is None and empty["gap"] is None and empty["map_ci"] == [None, None]
    assert empty["subset_accuracy"] is not None and empty["count"] == 8
    assert report["flagged"] == [] and report["summary"]["g"]["worst_group"] == "x"
    json.dumps(report, allow_nan=False)
