"""Find the labeled images of a dataset: class folders, train/val/test folders or a CSV manifest."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clarivis.data.io import is_image_path
from clarivis.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
Layout = Literal["folder", "splits", "manifest"]

LAYOUT_HELP = (
    "expected DIR/<class>/<image>, DIR/{train,val,test}/<class>/<image> "
    "or a CSV manifest with columns path,label"
)


@dataclass
class Sample:
    """One labeled image. `groups` holds a manifest's extra columns (e.g. lighting, site)."""

    path: str
    label: str
    groups: dict[str, str] = field(default_factory=dict)


@dataclass
class DatasetIndex:
    root: Path
    layout: Layout
    splits: dict[str, list[Sample]]  # keys among train/val/test
    class_names: list[str]  # sorted, defines the label indices

    @property
    def all_samples(self) -> list[Sample]:
        return [s for split in self.splits.values() for s in split]


def index_dataset(path: str | Path) -> DatasetIndex:
    """Index a dataset given as a class folder tree, a split folder tree or a CSV manifest."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{root} does not exist; {LAYOUT_HELP}")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"{root} is a file but not a .csv manifest; {LAYOUT_HELP}")
        index = _index_manifest(root)
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
    """All images under root/<class>/ (recursively), labeled by the class folder name."""
    samples: list[Sample] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p)):
        for file in _walk_files(class_dir):
            if is_image_path(file):
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


def _index_manifest(csv_path: Path) -> DatasetIndex:
    """A CSV with path,label[,split][,attributes...]; paths relative to the CSV's folder."""
    rows = read_csv_rows(csv_path, required=("path", "label"))
    columns = list(rows[0].keys())
    group_columns = [c for c in columns if c not in ("path", "label", "split") and c]
    splits: dict[str, list[Sample]] = {}
    for row in rows:
        rel, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not rel or not label:
            continue  # blank lines or unlabeled rows cannot train anything
        split = (row.get("split") or "train").strip().lower()
        if split not in SPLIT_NAMES:
            raise DataError(f"manifest {csv_path}: split '{split}' must be one of train, val, test")
        file = Path(rel) if Path(rel).is_absolute() else csv_path.parent / rel
        groups = {c: (row.get(c) or "").strip() for c in group_columns}
        splits.setdefault(split, []).append(Sample(str(file), label, groups))
    if not splits:
        raise DataError(f"manifest {csv_path} lists no labeled images; add rows 'path,label'")
    return DatasetIndex(csv_path, "manifest", splits, [])


def _check_classes(index: DatasetIndex) -> list[str]:
    names = sorted({s.label for s in index.all_samples})
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
