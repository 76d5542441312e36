"""Find the labeled images of a dataset: class folders, train/val/test folders or a CSV manifest."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clarivis.data.io import is_image_file, is_image_path
from clarivis.errors import DataError
from clarivis.prediction import LABEL_SEP

SPLIT_NAMES = ("train", "val", "test")
Layout = Literal["folder", "splits", "manifest"]
Task = Literal["multiclass", "multilabel"]

LAYOUT_HELP = (
    "expected DIR/<class>/<image>, DIR/{train,val,test}/<class>/<image> "
    "or a CSV manifest with columns path,label (path,labels for multi-label)"
)


@dataclass
class Sample:
    """One labeled image. `groups` holds a manifest's extra columns (e.g. lighting, site).
    A multi-label image has its set in `labels` (sorted, maybe empty) and `label` joins it
    with LABEL_SEP: a stable text for fingerprints, listings and split files."""

    path: str
    label: str
    groups: dict[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None  # multi-label datasets only

    @classmethod
    def from_record(cls, row: dict) -> Sample:
        """A row of a run's split.json back to a Sample."""
        labels = row.get("labels")
        return cls(row["path"], row["label"], labels=tuple(labels) if labels is not None else None)

    @property
    def label_set(self) -> tuple[str, ...]:
        """The image's labels: its set, or its one label."""
        return self.labels if self.labels is not None else (self.label,)


def multilabel_sample(path: str, labels, groups: dict[str, str] | None = None) -> Sample:
    names = tuple(sorted(set(labels)))
    return Sample(path, LABEL_SEP.join(names), groups or {}, names)


@dataclass
class DatasetIndex:
    root: Path
    layout: Layout
    splits: dict[str, list[Sample]]  # keys among train/val/test
    class_names: list[str]  # sorted, defines the label indices
    task: Task = "multiclass"  # multilabel: every Sample has `labels`

    @property
    def all_samples(self) -> list[Sample]:
        return [s for split in self.splits.values() for s in split]


def index_dataset(path: str | Path, *, task: str = "auto", label_sep: str = LABEL_SEP) -> DatasetIndex:
    """Index a dataset given as a class folder tree, a split folder tree or a CSV manifest.
    `task` auto: multi-label when the manifest has a `labels` column (names joined by
    `label_sep`); "multilabel" also reads a `label` column as sets; folders are single-label."""
    root = Path(path).expanduser()
    if task not in ("auto", "multiclass", "multilabel"):
        raise DataError(f"unknown task '{task}'; choose auto, multiclass or multilabel")
    if not root.exists():
        raise DataError(f"{root} does not exist; {LAYOUT_HELP}")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"{root} is a file but not a .csv manifest; {LAYOUT_HELP}")
        index = _index_manifest(root, task, label_sep)
    elif task == "multilabel":
        raise DataError(f"multi-label data needs a CSV manifest with columns path,labels ({root} "
                        f"is a folder); list each image's labels joined by '{label_sep}'")
    elif any((root / name).is_dir() for name in SPLIT_NAMES) and (root / "train").is_dir():
        index = DatasetIndex(root, "splits", {}, [])
        for name in SPLIT_NAMES:
            if (root / name).is_dir():
                index.splits[name] = index_class_folders(root / name)
    else:
        index = DatasetIndex(root, "folder", {"train": index_class_folders(root)}, [])
    index.class_names = _check_classes(index)
    return index


def index_class_folders(root: Path) -> list[Sample]:
    """All images under root/<class>/ (recursively), labeled by the class folder name; DICOM
    files without an extension (IM0001) count too (is_image_file)."""
    samples: list[Sample] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p)):
        for file in _walk_files(class_dir):
            if is_image_file(file):
                samples.append(Sample(str(file), class_dir.name))
    if not samples:
        loose = [p for p in root.iterdir() if p.is_file() and is_image_path(p)]
        hint = " (images lie directly in it: put them in one subfolder per class)" if loose else ""
        raise DataError(f"{root} has no images in class subfolders{hint}; {LAYOUT_HELP}")
    return samples


def read_csv_rows(csv_path: Path, *, required: tuple[str, ...], what: str = "manifest") -> list[dict]:
    """Rows of a UTF-8 CSV (a BOM, as Excel writes, is fine) whose header names `required`;
    `what` names the file in messages (manifest, --labeled)."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read {what} {csv_path}: {err}; save it as UTF-8 CSV") from None
    columns = list(rows[0].keys()) if rows else []
    if any(c not in columns for c in required):
        names = " and ".join(f"'{c}'" for c in required)
        raise DataError(f"{what} {csv_path} needs a header with {names} column"
                        f"{'s' if len(required) > 1 else ''} and one row per image")
    return rows


def _index_manifest(csv_path: Path, task: str, label_sep: str) -> DatasetIndex:
    """A CSV with path,label[,split][,attributes...] (path,labels[,...] for multi-label);
    paths relative to the CSV's folder."""
    rows = read_csv_rows(csv_path, required=())
    columns = list(rows[0].keys()) if rows else []
    label_column = "labels" if "labels" in columns else "label"
    if "path" not in columns or label_column not in columns:
        raise DataError(f"manifest {csv_path} needs a header with 'path' and 'label' columns "
                        "(or 'labels', names joined by ';', for multi-label) and one row per image")
    multilabel = task == "multilabel" or (task == "auto" and label_column == "labels")
    if multilabel and not label_sep:
        raise DataError("--label-sep must not be empty; the default is ';'")
    group_columns = [c for c in columns if c not in ("path", "label", "labels", "split") and c]
    splits: dict[str, list[Sample]] = {}
    for row in rows:
        rel, label = (row.get("path") or "").strip(), (row.get(label_column) or "").strip()
        if not rel or (not label and not multilabel):
            continue  # blank lines or unlabeled rows cannot train a single-label model
        split = (row.get("split") or "train").strip().lower()
        if split not in SPLIT_NAMES:
            raise DataError(f"manifest {csv_path}: split '{split}' must be one of train, val, test")
        file = Path(rel) if Path(rel).is_absolute() else csv_path.parent / rel
        groups = {c: (row.get(c) or "").strip() for c in group_columns}
        if multilabel:  # an empty cell is an image with none of the labels: a real negative
            names = [n.strip() for n in label.split(label_sep) if n.strip()]
            splits.setdefault(split, []).append(multilabel_sample(str(file), names, groups))
        else:
            splits.setdefault(split, []).append(Sample(str(file), label, groups))
    if not splits:
        raise DataError(f"manifest {csv_path} lists no labeled images; add rows 'path,label'")
    return DatasetIndex(csv_path, "manifest", splits, [],
                        task="multilabel" if multilabel else "multiclass")


def _check_classes(index: DatasetIndex) -> list[str]:
    names = sorted({name for s in index.all_samples for name in s.label_set})
    if index.task == "multilabel":
        if not names:
            raise DataError(f"{index.root} gives no image a label; fill the 'labels' column "
                            "(names joined by ';')")
        return names  # one label is a valid multi-label task: present or not
    if len(names) < 2:
        only = f"'{names[0]}'" if names else "none"
        raise DataError(
            f"{index.root} has only one class ({only}); a classifier needs at least 2 classes"
        )
    return names


def evaluation_samples(index: DatasetIndex) -> list[Sample]:
    """The samples to evaluate on: the test split if there is one, else everything."""
    if "test" in index.splits:
        return index.splits["test"]
    return index.all_samples


def fingerprint(samples: list[Sample], root: Path) -> str:
    """Identity of a dataset: relative paths, labels and file sizes (not mtimes: copies keep it)."""
    digest = hashlib.sha256()
    base = root if root.is_dir() else root.parent
    for s in sorted(samples, key=lambda s: s.path):
        try:
            size = os.path.getsize(s.path)
        except OSError:
            size = -1
        rel = os.path.relpath(s.path, base)
        digest.update(f"{rel}\0{s.label}\0{size}\n".encode())
    return digest.hexdigest()[:16]


def _walk_files(folder: Path):
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name.startswith("__")
