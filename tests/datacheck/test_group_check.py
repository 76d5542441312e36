"""`clarivis check --group-by patient_id`: a patient in two given splits is a leak finding,
reported by counts and paths, never by the patient's id."""

from __future__ import annotations

import json

import pytest
from tests.data.test_group_split import write_patients
from tests.tiny import CNN, random_weights
from typer.testing import CliRunner

from clarivis.cli.check import app
from clarivis.datacheck import check_data
from clarivis.errors import DataError


def _split(patient: int, image: int) -> str:
    """Patients 0-7 train, 8-9 val, 10-11 test; patient 0's last image and patient 8's first
    two images were put in test by mistake: 2 patients leak."""
    if patient == 0 and image == 3:
        return "test"
    if patient == 8 and image < 2:
        return "test"
    return "train" if patient < 8 else "val" if patient < 10 else "test"


def test_patient_in_two_splits_is_a_leak(tmp_path):
    manifest = write_patients(tmp_path, split_of=_split)
    result = check_data(manifest, label_issues=False, group_by="patient_id")
    leaks = [f for f in result.findings if f.kind == "leak"]
    assert len(leaks) == 2
    assert all(f.severity == "error" for f in leaks)
    assert sorted(len(f.paths) for f in leaks) == [4, 4]  # every image of each leaking patient
    messages = {f.message for f in leaks}
    assert "4 images of one patient_id in test, train: evaluation sees a patient_id training saw" \
        in messages
    assert "4 images of one patient_id in test, val: evaluation sees a patient_id training saw" \
        in messages
    report = json.dumps(result.to_dict())
    assert result.to_dict()["summary"]["group_leaks"] == 2
    assert "P000" not in report and "P008" not in report  # ids may be personal data


def test_no_leak_without_shared_patients(tmp_path):
    manifest = write_patients(tmp_path, split_of=lambda p, i: "train" if p < 8 else "test")
    result = check_data(manifest, label_issues=False, group_by="patient_id")
    assert result.to_dict()["summary"]["group_leaks"] == 0
    assert not [f for f in result.findings if f.kind == "leak"]


def test_check_group_by_errors(tmp_path):
    manifest = write_patients(tmp_path, patients=4, per_patient=2)
    with pytest.raises(DataError, match="no column 'site'; its columns are path, label, patient_id"):
        check_data(manifest, label_issues=False, group_by="site")


def test_cli_group_by_exit_code_and_json(tmp_path):
    manifest = write_patients(tmp_path, split_of=_split)
    out = tmp_path / "check.json"
    run = CliRunner().invoke(app, [str(manifest), "--group-by", "patient_id", "--no-labels",
                                   "--json", str(out)])
    assert run.exit_code == 1, run.output  # leaks are errors
    assert json.loads(out.read_text())["summary"]["group_leaks"] == 2


def test_label_check_runs_on_group_folds(tmp_path):
    """The label check with --group-by: fewer patients than folds reduce the folds (noted by
    count), and every readable image is scored."""
    manifest = write_patients(tmp_path, patients=4, per_patient=3)
    weights = random_weights(tmp_path / "w.safetensors", CNN)
    result = check_data(manifest, model=CNN, weights=weights, img_size=32, device="cpu",
                        group_by="patient_id")
    assert result.labels is not None
    assert result.labels.folds == 4 and result.labels.checked == 12
    assert "4 folds instead of 5: there are 4 groups" in result.labels.notes
    assert not any("P00" in note for note in result.labels.notes)
