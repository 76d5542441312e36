"""The images a user has already labeled (a folder, or a CSV such as a filled-in queue.csv),
known by resolved path and by content hash: a copy of a labeled image under another name is
labeled too, and never asked again."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from clarivis.data.expand import expand_inputs
from clarivis.data.sources import read_csv_rows
from clarivis.errors import DataError

_READ_BLOCK = 1 << 20  # bytes hashed per read: 1 MiB keeps memory flat for huge files


@dataclass
class LabeledSet:
    source: str  # the folder or CSV given
    paths: list[str]  # labeled image files, resolved
    digests: set[str] = field(default_factory=set)  # BLAKE2b of each readable file's bytes

    def __post_init__(self) -> None:
        self._resolved = set(self.paths)

    def holds(self, path: str) -> bool:
        """Whether the image at `path` is labeled: the same file, or the same bytes."""
        if str(Path(path).resolve()) in self._resolved:
            return True
        digest = file_digest(path)
        return digest is not None and digest in self.digests


def file_digest(path: str | Path) -> str | None:
    """Hex BLAKE2b-128 of the file's bytes (fast, and collisions are out of reach); None when
    it cannot be read (the decode step then reports the file)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while block := f.read(_READ_BLOCK):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def read_labeled(source: str | Path) -> LabeledSet:
    """The labeled images of a folder (every image inside, recursively) or of a CSV's `path`
    column (relative to the CSV's folder; when it has a `label` column, rows with a label)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"--labeled {source} does not exist; pass the folder or CSV of the images "
                        "you have labeled")
    files = _csv_paths(path) if path.suffix.lower() == ".csv" else _folder_paths(path)
    if not files:
        raise DataError(f"--labeled {source} lists no images; pass the folder or CSV of the images "
                        "you have labeled")
    resolved = [str(Path(p).resolve()) for p in files]
    digests = {d for d in map(file_digest, resolved) if d is not None}
    return LabeledSet(str(source), resolved, digests)


def _folder_paths(path: Path) -> list[str]:
    if not path.is_dir():
        raise DataError(f"--labeled {path} is neither a folder nor a .csv file")
    return [p for p, err in expand_inputs(path) if err is None]


def _csv_paths(path: Path) -> list[str]:
    rows = read_csv_rows(path, required=("path",), what="--labeled")
    has_label = "label" in rows[0]
    picked = [r["path"].strip() for r in rows
              if (r.get("path") or "").strip() and (not has_label or (r.get("label") or "").strip())]
    return [p if Path(p).is_absolute() else str(path.parent / p) for p in picked]
