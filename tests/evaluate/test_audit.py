"""The audit on a real trained model: subgroup flags, open-set rates, errors a user can cause."""

from __future__ import annotations

import json

import pytest
from tests.tiny import write_image

from clarivis.classifier import Classifier
from clarivis.errors import DataError
from clarivis.evaluate.audit import audit


def test_dark_group_is_flagged_for_a_model_trained_on_bright_images(lighting_run):
    result, manifest = lighting_run
    report = audit(result.bundle_dir, manifest, groups=["lighting"], robustness=False)
    lighting = report.subgroups["lighting"]
    assert set(lighting) == {"bright", "normal", "dark"}
    assert lighting["dark"]["accuracy"] < lighting["bright"]["accuracy"] - 0.1
    flagged = [(f["column"], f["group"]) for f in report.subgroups["flagged"]]
    assert ("lighting", "dark") in flagged and ("lighting", "bright") not in flagged
    assert report.subgroups["summary"]["lighting"]["worst_group"] == "dark"
    assert report.metrics["num_samples"] == sum(g["count"] for g in lighting.values())
    assert report.adversarial is None and report.robustness is None


def test_a_runs_bundle_is_audited_into_its_run_folder(lighting_run):
    """Where `clarivis report` reads it, from Python as from the CLI; not for a loaded Classifier."""
    result, manifest = lighting_run
    report = audit(result.bundle_dir, manifest, groups=["lighting"], robustness=False)
    assert report.run_file == result.bundle_dir.parent / "audit.json"
    assert json.loads(report.run_file.read_text()) == json.loads(json.dumps(report.to_dict()))
    assert "run_file" not in report.to_dict()
    loaded = audit(Classifier.load(result.bundle_dir), manifest, groups=["lighting"], robustness=False)
    assert loaded.run_file is None


def test_every_manifest_column_is_audited_by_default(lighting_run):
    result, manifest = lighting_run
    report = audit(result.bundle_dir, manifest, robustness=False)
    assert set(report.subgroups["summary"]) == {"lighting", "background", "color", "size"}
    cal = report.calibration
    assert cal["temperature"] != 1.0 and 0 <= cal["ece_after"] <= 1
    assert sum(cal["reliability_after"]["count"]) == report.metrics["num_samples"]


def test_images_of_other_classes_measure_open_set_rejection(lighting_run, tmp_path):
    result, manifest = lighting_run
    data = tmp_path / "test"
    for i in range(30):  # flat noise of no shape at all, in a class the model never saw
        write_image(data / "noise" / f"n{i}.png", (128, 128, 128), size=(32, 32))
    for cls in ("circle", "square"):
        for i, src in enumerate(sorted((manifest.parent / "test" / cls).glob("*.png"))[:30]):
            (data / cls).mkdir(parents=True, exist_ok=True)
            (data / cls / f"{i}.png").write_bytes(src.read_bytes())
    report = audit(result.bundle_dir, data, robustness=False)
    o = report.open_set
    assert o["num_known"] == 60 and o["num_unknown"] == 30
    assert set(o["auroc"]) == {"energy", "max_logit", "msp"}
    assert all(0.0 <= v <= 1.0 for v in o["auroc"].values())
    assert 0.0 <= o["rejection_rate_unknown"] <= 1.0
    assert report.metrics["num_samples"] == 60  # metrics count the known classes only


def test_unknown_group_column_names_the_available_ones(lighting_run):
    result, manifest = lighting_run
    with pytest.raises(DataError, match="lighting"):
        audit(result.bundle_dir, manifest, groups=["site"], robustness=False)


def test_folder_without_known_classes_is_refused(lighting_run, tmp_path):
    result, _ = lighting_run
    for i in range(3):
        write_image(tmp_path / "cats" / f"{i}.png")
        write_image(tmp_path / "dogs" / f"{i}.png")
    with pytest.raises(DataError, match="belongs to the model's classes"):
        audit(result.bundle_dir, tmp_path, robustness=False)
