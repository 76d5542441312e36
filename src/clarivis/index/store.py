"""The index folder: index.json (what built it), meta.sqlite (one row per image, the files left
out) and the vector file of the backend (ann.py).

    INDEX/index.json     format version, encoder, dim, metric, backend
    INDEX/meta.sqlite    images(key, path, sha256, size, mtime_ns, source, metadata JSON, added_at)
                         skipped(path, reason, seen_at)
    INDEX/vectors.usearch | vectors.npz
    INDEX/.lock          held (flock) by the one `clarivis index` run updating the folder

A row's `key` is the vector's key in the store: a moved file keeps its key (only `path`
changes), a changed file gets a new one. SQLite commits and the vector file's atomic save
happen together at each checkpoint (build.py); `reconcile` mends what a kill between the two
left behind."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clarivis.errors import ClarivisError
from clarivis.fileio import atomic_write

FORMAT_VERSION = 1
INFO_FILE, META_FILE = "index.json", "meta.sqlite"
METRIC = "cosine"  # on L2-normalised vectors: the inner product

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    key INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    source TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    added_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_sha ON images(sha256);
CREATE TABLE IF NOT EXISTS skipped (
    path TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    seen_at TEXT NOT NULL
);
"""


@dataclass
class IndexInfo:
    """index.json: enough to embed new images and queries exactly as the indexed ones were."""

    encoder: dict  # model (bundle path or timm/open_clip name), weights, weights_sha256, pretrained, img_size
    dim: int
    backend: str
    metric: str = METRIC
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def is_clip(self) -> bool:
        return bool(self.encoder.get("clip"))

    def to_dict(self) -> dict:
        return {"format_version": self.format_version, "encoder": self.encoder, "dim": self.dim,
                "metric": self.metric, "backend": self.backend, **self.extra}


def read_info(folder: Path) -> IndexInfo:
    path = folder / INFO_FILE
    if not path.is_file():
        raise ClarivisError(f"{folder} is not a clarivis index (no {INFO_FILE}); build one with "
                            "`clarivis index PHOTOS --model M --out INDEX`")
    try:
        data = json.loads(path.read_text())
        known = {"format_version", "encoder", "dim", "metric", "backend"}
        info = IndexInfo(encoder=data["encoder"], dim=int(data["dim"]), backend=data["backend"],
                         metric=data.get("metric", METRIC), format_version=int(data["format_version"]),
                         extra={k: v for k, v in data.items() if k not in known})
    except (ValueError, KeyError, TypeError) as err:
        raise ClarivisError(f"{path} is damaged ({err}); rebuild the index") from None
    if info.format_version > FORMAT_VERSION:
        raise ClarivisError(f"{folder} was written by a newer clarivis (index format "
                            f"{info.format_version}); upgrade clarivis")
    return info


def write_info(folder: Path, info: IndexInfo) -> None:
    text = json.dumps(info.to_dict(), indent=2) + "\n"
    atomic_write(folder / INFO_FILE, lambda tmp: Path(tmp).write_text(text))


@dataclass
class ImageRow:
    key: int
    path: str
    sha256: str
    size: int
    mtime_ns: int
    source: str
    metadata: dict


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class MetaDB:
    """meta.sqlite. Writes stay in one open transaction until `commit` (a checkpoint)."""

    def __init__(self, folder: Path) -> None:
        self.conn = sqlite3.connect(folder / META_FILE)
        self.conn.executescript(_SCHEMA)
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    # ------------------------------------------------------------------ images

    def rows(self) -> list[ImageRow]:
        cur = self.conn.execute("SELECT key, path, sha256, size, mtime_ns, source, metadata FROM images")
        return [_row(r) for r in cur]

    def by_keys(self, keys) -> dict[int, ImageRow]:
        out: dict[int, ImageRow] = {}
        keys = [int(k) for k in keys]
        for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            cur = self.conn.execute("SELECT key, path, sha256, size, mtime_ns, source, metadata "
                                    f"FROM images WHERE key IN ({marks})", chunk)
            out.update((r[0], _row(r)) for r in cur)
        return out

    def next_key(self) -> int:
        top = self.conn.execute("SELECT MAX(key) FROM images").fetchone()[0]
        return 0 if top is None else int(top) + 1

    def insert(self, row: ImageRow) -> None:
        self.conn.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (row.key, row.path, row.sha256, row.size, row.mtime_ns, row.source,
                           json.dumps(row.metadata), now()))
        self.conn.execute("DELETE FROM skipped WHERE path = ?", (row.path,))

    def update(self, key: int, *, path: str, size: int, mtime_ns: int, source: str, metadata: dict) -> None:
        self.conn.execute("UPDATE images SET path = ?, size = ?, mtime_ns = ?, source = ?, metadata = ? "
                          "WHERE key = ?", (path, size, mtime_ns, source, json.dumps(metadata), key))

    def delete(self, keys) -> None:
        self.conn.executemany("DELETE FROM images WHERE key = ?", [(int(k),) for k in keys])

    def metadata_columns(self) -> set[str]:
        """The metadata columns of the index (SQLite's JSON1 reads them without loading rows)."""
        cur = self.conn.execute("SELECT DISTINCT j.key FROM images, json_each(images.metadata) AS j")
        return {r[0] for r in cur}

    def matching(self, where: dict[str, str]) -> list[int]:
        """Keys of the rows whose metadata has every column of `where` at its value."""
        clause = " AND ".join("CAST(json_extract(metadata, ?) AS TEXT) = ?" for _ in where)
        params = [p for col, value in where.items() for p in (f'$."{col}"', str(value))]
        cur = self.conn.execute(f"SELECT key FROM images WHERE {clause} ORDER BY key", params)
        return [int(r[0]) for r in cur]

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def common_folder(self) -> str:
        """The deepest folder holding every indexed image ('' for none), from two rows: the
        paths sharing their first k components sort together, so the lexicographically first
        and last path share exactly the components that all do (1M rows: one scan, no list)."""
        first, last = self.conn.execute("SELECT MIN(path), MAX(path) FROM images").fetchone()
        if first is None:
            return ""
        common = os.path.commonpath([first, last])
        return os.path.dirname(common) if common in (first, last) else common  # one image: its folder

    # ------------------------------------------------------------------ skipped files

    def skip(self, path: str, reason: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?)", (path, reason, now()))

    def skipped(self) -> list[dict]:
        cur = self.conn.execute("SELECT path, reason FROM skipped ORDER BY path")
        return [{"path": p, "reason": r} for p, r in cur]

    def unskip(self, paths) -> None:
        self.conn.executemany("DELETE FROM skipped WHERE path = ?", [(p,) for p in paths])


def _row(r) -> ImageRow:
    return ImageRow(int(r[0]), r[1], r[2], int(r[3]), int(r[4]), r[5], json.loads(r[6] or "{}"))


def reconcile(db: MetaDB, store) -> tuple[int, int]:
    """Make rows and vectors agree after a kill between a checkpoint's two writes: vectors
    with no row are removed, rows with no vector are dropped (their files are embedded again).
    Returns (vectors removed, rows dropped)."""
    in_store = set(store.keys().tolist())
    in_db = {r.key for r in db.rows()}
    orphans = np.array(sorted(in_store - in_db), np.uint64)
    missing = sorted(in_db - in_store)
    store.remove(orphans)
    db.delete(missing)
    db.commit()
    return len(orphans), len(missing)
