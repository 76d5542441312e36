"""DICOM end to end (issue 15): train (--window, extension-less files, MONOCHROME1), predict,
check and audit a folder of DICOM files the test writes; --group-by keeps patients whole, and a
manifest's own val split that shares patients with train is reported (counts only)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom")
from tests.dicom_files import PATIENT, PATIENT_ID, WINDOW, write_ct_classes  # noqa: E402
from tests.e2e.test_cli import FAST, run_cli  # noqa: E402

from clarivis.data.io import load_image  # noqa: E402

TINY = [*FAST, "--img-size", "32", "--device", "cpu", "--no-report", "--seed", "0"]


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("ct")
    return root, write_ct_classes(root / "data", per_class=12)


def _manifest(path: Path, rows, split=None) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id", *(["split"] if split else [])])
        for n, (file, label, patient) in enumerate(rows):
            writer.writerow([file.relative_to(path.parent), label, patient, *([split(n)] if split else [])])
    return path


def _private(text: str) -> bool:
    return "Doe" in text or PATIENT in text or PATIENT_ID in text


def test_train_predict_check_and_audit_a_dicom_folder(scans, capsys):
    root, rows = scans
    data = root / "data"
    # without a window each file is stretched over its own min..max: the classes look alike
    bright, dark = (np.asarray(load_image(next(p for p, lab, _ in rows if lab == c))).mean()
                    for c in ("bright", "dark"))
    assert abs(bright - dark) < 10
    code, out, err = run_cli(["train", data, "--out", root / "run", "--window", "0,1200",
                              *TINY, "--epochs", "8", "--batch-size", "4", "--lr", "0.002",
                              "--val-fraction", "0.25"], capsys)
    assert code == 0, err
    split = json.loads((root / "run" / "split.json").read_text())
    names = [Path(s["path"]).name for part in split.values() for s in part]
    assert len(names) == 24 and names.count("IM0007") == 2  # extension-less files train too
    config = json.loads((root / "run" / "model" / "config.json").read_text())
    assert config["window"] == list(WINDOW)
    code, out, err = run_cli(["predict", root / "run" / "model", data, "--format", "json"], capsys)
    predictions = json.loads(out)
    assert code == 0 and len(predictions) == 24 and not any(p.get("error") for p in predictions)
    truth = {str(p): label for p, label, _ in rows}
    correct = sum(p["label"] == truth[p["source"]] for p in predictions)
    assert correct >= 22, predictions  # the window makes the classes separable
    code, out, err = run_cli(["check", data, "--no-labels", "--json", root / "check.json"], capsys)
    report = json.loads((root / "check.json").read_text())
    assert report["summary"]["readable"] == 24 and report["summary"]["odd_modes"] == 0, report["summary"]
    assert not _private(out + err + (root / "check.json").read_text())
    code, out, err = run_cli(["audit", root / "run" / "model", data, "--no-robustness",
                              "--json", root / "audit.json"], capsys)
    assert code == 0, err
    assert json.loads((root / "audit.json").read_text())
    assert not _private(out + err)


def test_group_by_keeps_patients_whole_and_given_splits_are_checked(scans, capsys):
    root, rows = scans
    manifest = _manifest(root / "data" / "manifest.csv", rows)
    patient = {str(p): pid for p, _, pid in rows}
    code, out, err = run_cli(["train", manifest, "--out", root / "grouped", "--group-by", "patient_id",
                              "--window", "0,1200", *TINY, "--epochs", "1", "--val-fraction", "0.3"],
                             capsys)
    assert code == 0, err
    split = json.loads((root / "grouped" / "split.json").read_text())
    train, val = ({patient[s["path"]] for s in split[name]} for name in ("train", "val"))
    assert val and not train & val  # no patient on both sides
    report = json.loads((root / "grouped" / "data_report.json").read_text())
    assert report["groups"] == {"column": "patient_id", "train": len(train), "val": len(val)}
    assert report["group_leaks"] == 0 and "warning" not in err
    # the manifest's own split: every 5th image in val, so all 6 patients sit on both sides
    given = _manifest(root / "data" / "given.csv", rows, split=lambda n: "val" if n % 5 == 0 else "train")
    code, out, err = run_cli(["train", given, "--out", root / "given", "--group-by", "patient_id",
                              "--window", "0,1200", *TINY, "--epochs", "1"], capsys)
    assert code == 0, err
    report = json.loads((root / "given" / "data_report.json").read_text())
    assert report["group_leaks"] == 5
    warning = " ".join(err.split())
    assert "warning: 5 'patient_id' group(s) have images in more than one of the manifest's splits" in warning
    assert "P0" not in err and "P1" not in err  # counts only, never the ids
