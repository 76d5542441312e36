"""--group-by: a manifest column (patient_id) whose groups never straddle train and validation,
in `clarivis train`'s held-out split and in `clarivis check`'s label-check folds."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.tiny import CNN, TINY_TRAIN, write_image

import clarivis
from clarivis.data.sources import index_dataset
from clarivis.data.splits import resolve_splits
from clarivis.datacheck.label_issues import _assign_folds
from clarivis.errors import DataError

COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200)}


def write_patients(root: Path, patients: int = 12, per_patient: int = 4,
                   split_of=None) -> Path:
    """A manifest of `patients` patients with `per_patient` tiny images each, half red and half
    blue patients; split_of(patient number) -> the split column's value (None: no column)."""
    rows = []
    for p in range(patients):
        label = "red" if p % 2 == 0 else "blue"
        for i in range(per_patient):
            path = write_image(root / "img" / f"p{p}_{i}.png",
                               color=tuple(min(255, c + 3 * i + p) for c in COLOURS[label]),
                               size=(8, 8))
            row = {"path": str(path.relative_to(root)), "label": label, "patient_id": f"P{p:03d}"}
            if split_of is not None:
                row["split"] = split_of(p, i)
            rows.append(row)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def patient_of(manifest: Path) -> dict[str, str]:
    """Absolute image path -> patient id."""
    with manifest.open(newline="") as f:
        return {str(manifest.parent / r["path"]): r["patient_id"] for r in csv.DictReader(f)}


def test_held_out_split_keeps_patients_whole(tmp_path):
    manifest = write_patients(tmp_path)
    index = index_dataset(manifest)
    for seed in range(5):
        splits = resolve_splits(index, 0.25, seed, group_by="patient_id")
        train = {s.groups["patient_id"] for s in splits["train"]}
        val = {s.groups["patient_id"] for s in splits["val"]}
        assert len(train & val) == 0
        assert len(splits["train"]) + len(splits["val"]) == 48
        assert 1 <= len(val) <= 6  # about a quarter of the 12 patients
        # every held-out patient brings all 4 of its images
        assert set(Counter(s.groups["patient_id"] for s in splits["val"]).values()) == {4}
    # without --group-by images are split one by one: some patient lands on both sides
    plain = resolve_splits(index, 0.25, 0)
    both = ({s.groups["patient_id"] for s in plain["train"]}
            & {s.groups["patient_id"] for s in plain["val"]})
    assert len(both) > 0


def test_group_split_is_seeded_and_keeps_classes(tmp_path):
    index = index_dataset(write_patients(tmp_path))
    first = resolve_splits(index, 0.25, 3, group_by="patient_id")
    again = resolve_splits(index, 0.25, 3, group_by="patient_id")
    assert [s.path for s in first["val"]] == [s.path for s in again["val"]]
    assert {s.label for s in first["train"]} == {"red", "blue"}


def test_unknown_column_names_the_manifest_columns(tmp_path):
    index = index_dataset(write_patients(tmp_path))
    with pytest.raises(DataError) as err:
        resolve_splits(index, 0.2, 0, group_by="subject")
    message = str(err.value)
    assert "\n" not in message
    assert "no column 'subject'" in message
    assert "path, label, patient_id" in message


def test_empty_group_cells_are_counted(tmp_path):
    manifest = write_patients(tmp_path, patients=4, per_patient=2)
    lines = manifest.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ","  # two rows lose their patient id
    lines[3] = lines[3].rsplit(",", 1)[0] + ","
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        resolve_splits(index_dataset(manifest), 0.2, 0, group_by="patient_id")
    message = str(err.value)
    assert "\n" not in message
    assert "2 of 8 rows have an empty 'patient_id'" in message
    assert "fill them" in message


def test_folder_dataset_cannot_group(tiny_folder):
    with pytest.raises(DataError, match="needs a CSV manifest"):
        resolve_splits(index_dataset(tiny_folder), 0.2, 0, group_by="patient_id")


def test_check_folds_keep_patients_whole(tmp_path):
    index = index_dataset(write_patients(tmp_path, patients=15))
    samples = index.all_samples
    labels = np.array([int(s.label == "red") for s in samples])
    groups = [s.groups["patient_id"] for s in samples]
    fold_of = _assign_folds(labels, 5, 0, groups)
    folds_per_patient = Counter(len({int(fold_of[i]) for i, g in enumerate(groups) if g == p})
                                for p in set(groups))
    assert folds_per_patient == {1: 15}
    assert len(set(fold_of.tolist())) == 5
    # by image, patients are spread over folds
    plain = _assign_folds(labels, 5, 0)
    assert any(len({int(plain[i]) for i, g in enumerate(groups) if g == p}) > 1
               for p in set(groups))


@pytest.mark.slow
def test_train_group_by_resolved_config_and_split(tmp_path):
    manifest = write_patients(tmp_path)
    result = clarivis.train(manifest, out=tmp_path / "run", model=CNN, group_by="patient_id",
                            val_fraction=0.25, **TINY_TRAIN)
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["group_by"] == "patient_id"
    split = json.loads((result.run_dir / "split.json").read_text())
    owner = patient_of(manifest)
    train = {owner[r["path"]] for r in split["train"]}
    val = {owner[r["path"]] for r in split["val"]}
    assert val and len(train & val) == 0


def test_group_split_keeps_every_class_in_train(tmp_path):
    """A class held by a single patient never goes wholly to validation."""
    manifest = write_patients(tmp_path, patients=8)
    lines = manifest.read_text().splitlines()
    # patient P001 (blue) becomes the only green patient
    lines = [line.replace(",blue,P001", ",green,P001") for line in lines]
    manifest.write_text("\n".join(lines) + "\n")
    index = index_dataset(manifest)
    for seed in range(10):
        splits = resolve_splits(index, 0.5, seed, group_by="patient_id")
        assert {s.label for s in splits["train"]} == {"red", "blue", "green"}
        assert not ({s.groups["patient_id"] for s in splits["train"]}
                    & {s.groups["patient_id"] for s in splits["val"]})
