"""The report of a multi-label run: mAP, F1, subset accuracy and Hamming loss, a per-label table
with each label's threshold and temperature, mAP in the training curves, a gallery ranked by
binary cross-entropy with label sets in the captions, and no confusion matrix."""

from __future__ import annotations

import io
import json
import re
import shutil
from contextlib import redirect_stderr

import pytest
import torch
from rich.console import Console
from tests.e2e.test_cli import run_cli
from tests.tiny import ML_CLASSES, trained_multilabel, write_multilabel

import clarivis
from clarivis.data.sources import Sample
from clarivis.evaluate.inputs import score_samples
from clarivis.report.gallery import top_losses
from clarivis.report.html import write_report
from clarivis.spec import read_bundle_config


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory):
    bundle = trained_multilabel(tmp_path_factory.mktemp("ml-report"))
    return bundle.parent, bundle  # trained_multilabel keeps the run folder next to the bundle


def _text(html: str) -> str:
    """The page's visible text, one space between words."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"data:[^\"]+", "", html)))


def test_the_report_shows_the_multilabel_metrics_and_thresholds(ml_run, tmp_path):
    run, bundle = ml_run
    html = write_report(run, out=tmp_path / "r.html", gallery=0).read_text()
    text = _text(html)
    val = json.loads((run / "val_metrics.json").read_text())
    assert val["task"] == "multilabel"
    for label, key in (("mAP (macro)", "map_macro"), ("F1 (macro)", "f1_macro"),
                       ("subset accuracy", "subset_accuracy"), ("Hamming loss", "hamming_loss")):
        assert f"{label} {val[key]:.4f}" in text
    assert f"val mAP {100 * val['map_macro']:.1f}%" in text  # the summary card
    config = read_bundle_config(bundle)
    table = html.split('class="thresholds"')[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>(\w+)</td>(.*?)</tr>", table, flags=re.S)
    assert [name for name, _ in rows] == ML_CLASSES
    for (_, cells), row, threshold, temperature in zip(rows, val["per_class"], config.label_thresholds(),
                                                       config.label_temperatures(), strict=True):
        numbers = re.findall(r'class="num[^"]*">([^<]*)<', cells)
        assert numbers == [f"{row['ap']:.3f}", f"{row['f1']:.3f}", f"{row['precision']:.3f}",
                           f"{row['recall']:.3f}", f"{threshold:.3f}", f"{temperature:.2f}",
                           str(row["support"]), str(row["predicted"])]
    assert 'id="confusion"' not in html and "Confusion matrix" not in html
    assert "best validation mAP" in text and "3 labels" in text
    assert "applies to single-label models" in text  # open-set and attacks say why they are empty
    assert "Tags each image with any set of 3 labels" in text  # the model card
    assert not re.search(r'src="(?!data:)', html)


def test_the_gallery_ranks_by_binary_cross_entropy_and_shows_label_sets(ml_run):
    run, bundle = ml_run
    split = json.loads((run / "split.json").read_text())
    items = top_losses(bundle, split, count=4)
    assert len(items) == 4 and [it["method"] for it in items] == ["gradcam"] * 4
    losses = [it["loss"] for it in items]
    assert losses == sorted(losses, reverse=True)
    truth = {v["path"]: ";".join(v["labels"]) or "none" for v in split["val"]}
    clf = clarivis.Classifier.load(bundle, device="cpu")
    # the gallery lists sets in class order, so true and predicted read side by side
    predicted = {p.source: ";".join(sorted(n for n, _ in p.labels)) or "none"
                 for p in clf.predict([it["path"] for it in items])}
    for it in items:
        assert it["true"] == truth[it["path"]] and it["predicted"] == predicted[it["path"]]
        assert it["target"] in ML_CLASSES and 0.0 <= it["confidence"] <= 1.0
    # each loss is the image's mean binary cross-entropy at the bundle's temperatures
    records = {v["path"]: v for v in split["val"]}
    scored = score_samples(clf, [Sample.from_record(records[it["path"]]) for it in items])
    temperatures = torch.tensor(clf.config.label_temperatures())
    bce = torch.nn.functional.binary_cross_entropy_with_logits(scored.logits / temperatures,
                                                               scored.val.targets, reduction="none")
    assert losses == pytest.approx(bce.mean(dim=1).tolist(), rel=1e-4, abs=1e-6)


def test_training_with_the_report_on_writes_it(tmp_path):
    data = write_multilabel(tmp_path / "data", 24)
    with redirect_stderr(io.StringIO()):
        result = clarivis.train(data, out=tmp_path / "run", model="test_resnet", epochs=1, batch_size=16,
                                workers=0, img_size=32, device="cpu", val_fraction=0.3,
                                console=Console(file=io.StringIO()))
    html = (result.run_dir / "report.html").read_text()
    assert "mAP (macro)" in html and 'class="thresholds"' in html and "predicted <b>" in html
    assert "No thresholds or temperatures were fitted" in html  # 7 val images are too few to fit them


def test_the_report_command_on_a_multilabel_run(ml_run, tmp_path, capsys):
    run, _ = ml_run
    code, out, err = run_cli(["report", run, "--out", tmp_path / "r.html", "--gallery", "0"], capsys)
    assert code == 0 and "r.html" in out and "mAP (macro)" in (tmp_path / "r.html").read_text()


def _multilabel_audit(val: dict) -> dict:
    """An audit.json of a multi-label model, in the shape clarivis audit writes (task
    "multilabel": metrics, class-wise calibration, subgroups and corruptions in mAP)."""
    group = {"map": 0.6, "f1": 0.5, "subset_accuracy": 0.4, "map_ci": [0.5, 0.7], "count": 12, "gap": 0.3}
    bins = {"edges": [0.0, 0.5, 1.0], "confidence": [0.2, 0.8], "accuracy": [0.3, 0.7], "count": [5, 5]}
    return {
        "model": "model", "data": "test.csv", "num_images": 40, "task": "multilabel",
        "metrics": {**val, "map_macro": 0.812, "f1_macro": 0.701},
        "calibration": {"temperatures": [1.0] * 3, "num_images": 40, "ece_before": 0.2, "ece_after": 0.09,
                        "bce_before": 0.5, "bce_after": 0.4, "reliability_before": bins,
                        "reliability_after": bins,
                        "per_class": [{"class": c, "temperature": 1.0, "ece_before": 0.2, "ece_after": 0.09,
                                       "bce_before": 0.5, "bce_after": 0.4} for c in ML_CLASSES]},
        "subgroups": {"metric": "map", "site": {"a": {**group, "map": 0.9, "gap": 0.0}, "b": group},
                      "flagged": [{"column": "site", "group": "b", "map": 0.6, "overall_map": 0.9, "gap": 0.3,
                                   "count": 12, "significant": True}],
                      "summary": {"site": {"overall_map": 0.9, "largest_gap": 0.3, "smallest_ratio": 0.667,
                                           "worst_group": "b"}}},
        "open_set": None, "adversarial": None,
        "robustness": {"metric": "map", "clean_map": 0.8, "mean_corruption_map": 0.5, "relative_drop": 0.375,
                       "num_images": 40, "families": {"noise": 0.5},
                       "corruptions": {"gaussian_noise": {"family": "noise", "map": [0.7, 0.6, 0.5, 0.4, 0.3],
                                                          "mean": 0.5}}},
        "skipped": [], "notes": [], "seconds": {"total": 3.0},
    }


def test_an_audit_of_a_multilabel_model_fills_the_report_in_map(ml_run, tmp_path):
    run = shutil.copytree(ml_run[0], tmp_path / "run")
    val = json.loads((run / "val_metrics.json").read_text())
    (run / "audit.json").write_text(json.dumps(_multilabel_audit(val)))
    html = write_report(run, gallery=0).read_text()
    assert 'alt="reliability diagram"' in html  # pooled over (image, class) pairs
    text = _text(html)
    assert "test mAP 81.2%" in text and "per label (test)" in text
    assert "class-wise ECE 0.2000 before, 0.0900 after" in text
    assert "Largest mAP gap 30.0%" in text and "b 12 0.600 0.500 – 0.700 0.500 0.400 flagged" in text
    assert "Mean corruption mAP 0.500 against 0.800 clean" in text
    assert "site = b: mAP 0.600 against 0.900 overall (12 images)" in text  # the model card
    assert "corruptions cut mAP by 38% on average" in text and "weakest under: gaussian_noise" in text
