"""`clarivis index`: build an image index, or bring an existing one up to date in place.

What a run does with each image file of the inputs (files, folders, globs, CSV manifests):
- a path already indexed with the same size and mtime: nothing (no read, no embedding);
- a path already indexed whose content hash changed: re-embedded under a new key (the old
  vector is removed);
- content already indexed under a path that no longer exists: a move, the row's path is
  updated and its vector kept (no embedding);
- anything else: embedded and added.
Then, unless `prune=False` (`--keep-missing`), indexed files that are gone from the inputs
given are deleted: rows under a folder given, or that came from an input given (a manifest, a
glob), whose file was not found this time. Rows from other inputs are never touched, and an
input that does not exist (an unmounted drive) deletes nothing.

Unreadable files are stored in the `skipped` table with their reason and reported; they never
stop a run. Crash safety: the vector file is saved atomically and SQLite committed together at
each checkpoint: after every batch while a save takes under CHEAP_SAVE_S, then as often as
keeps saving to about SAVE_SHARE of the run (a large index's file takes seconds to write). A
kill loses at most the batches since the last checkpoint, and running the same command again
(`--resume`) continues without embedding what was saved. One writer at a time (`.lock`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from clarivis.classifier import Classifier, Unusable
from clarivis.data.expand import expand_path
from clarivis.data.sources import read_csv_rows
from clarivis.errors import ClarivisError
from clarivis.fileio import sha256_hex
from clarivis.index import encoder as enc
from clarivis.index.ann import BACKENDS, FILES, open_store
from clarivis.index.store import ImageRow, IndexInfo, MetaDB, read_info, reconcile, write_info

SAVE_SHARE = 0.1  # at most this share of a run goes to checkpoints (saving the vector file)
CHEAP_SAVE_S = 0.05  # a checkpoint this quick follows every batch (~10k vectors and fewer)


@dataclass
class Candidate:
    path: str  # absolute
    source: str  # the input it came from: a folder, a manifest, a glob or the file itself
    metadata: dict
    replaces: bool = False  # its path is indexed with other content: counted as changed, not added


@dataclass
class IndexSummary:
    """What one run did (counts of images) and the state it left."""

    index: Path
    added: int = 0
    moved: int = 0
    changed: int = 0  # re-embedded: same path, new content
    removed: int = 0  # gone from the inputs given
    unchanged: int = 0
    total: int = 0  # images in the index after the run
    skipped: list[dict] = field(default_factory=list)  # {path, reason} of this run's unreadable inputs
    encoder: str = ""


Progress = Callable[[int, int], None]  # (images embedded so far, images to embed)


def index_images(images: str | Path | Iterable[str | Path], *, out: str | Path,
                 model: str | Path | None = None, weights: str | Path | None = None,
                 pretrained: bool = False, img_size: int | None = None, batch_size: int = 64,
                 device: str | None = None, backend: str = "usearch", prune: bool = True,
                 resume: bool = False, progress: Progress | None = None) -> IndexSummary:
    """Index `images` into the folder `out` (created, or updated in place: module docstring).
    A new index needs `model` (a ModelBundle, a timm name with `weights`/`pretrained`, or
    "open_clip:NAME" with CLIP weights for text queries); an existing one uses its own encoder
    and refuses another. `resume`: the index must already exist (a re-run resumes anyway)."""
    folder = Path(out).expanduser()
    inputs = [str(images)] if isinstance(images, (str, Path)) else [str(i) for i in images]
    if not inputs:
        raise ClarivisError("give the images to index: files, folders, globs or a CSV manifest")
    info, clf = _open_or_create(folder, model=model, weights=weights, pretrained=pretrained,
                                img_size=img_size, device=device, backend=backend, resume=resume)
    with _writer_lock(folder):
        return _update(folder, inputs, info, clf, batch_size=batch_size, device=device, prune=prune,
                       progress=progress)


def _update(folder: Path, inputs: list[str], info: IndexInfo, clf: Classifier | None, *, batch_size: int,
            device: str | None, prune: bool, progress: Progress | None) -> IndexSummary:
    db = MetaDB(folder)
    try:
        store = open_store(info.backend, info.dim, folder)
        reconcile(db, store)
        summary = IndexSummary(folder, encoder=enc.describe(info.encoder))
        candidates, roots, sources = _gather(inputs, summary.skipped)
        todo, stale = _plan(db, candidates, roots, sources, prune, summary)
        store.remove(np.array(stale, np.uint64))
        db.delete(stale)
        for item in summary.skipped:
            db.skip(item["path"], item["reason"])
        db.unskip([s["path"] for s in db.skipped() if not os.path.exists(s["path"])])  # gone since
        _checkpoint(store, db, folder, info)
        if todo:
            clf = clf or enc.load(info.encoder, device)
            _embed_all(clf, todo, store, db, folder, info, summary, batch_size, progress)
        summary.total = db.count()
        return summary
    finally:
        db.close()


# ----------------------------------------------------------------------------- open


@contextmanager
def _writer_lock(folder: Path) -> Iterator[None]:
    """One writer at a time: a second `clarivis index` on the same folder stops with one line
    (flock: released by the OS when a killed run's process ends, so no stale lock remains)."""
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl  # POSIX; elsewhere the lock is skipped
        except ImportError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ClarivisError(f"another clarivis index is updating {folder}; wait for it to "
                                "finish") from None
        yield
    finally:
        os.close(fd)


def _open_or_create(folder: Path, *, model, weights, pretrained, img_size, device, backend,
                    resume) -> tuple[IndexInfo, Classifier | None]:
    if (folder / "index.json").exists():
        info = read_info(folder)
        if model is not None:
            asked = enc.encoder_spec(model, weights=weights, pretrained=pretrained, img_size=img_size)
            if not enc.same_encoder(info.encoder, asked):
                raise ClarivisError(f"{folder} was built with {enc.describe(info.encoder)}, not "
                                    f"{enc.describe(asked)}; leave out --model to update it, or "
                                    "build a new index with --out")
        enc.check_unchanged(info.encoder)
        return info, None
    if resume:
        raise ClarivisError(f"--resume: {folder} holds no index to resume; leave out --resume")
    if model is None:
        raise ClarivisError("a new index needs --model (a ModelBundle, or a timm name with --weights "
                            "or --pretrained, or open_clip:NAME with CLIP weights for text search)")
    if backend not in BACKENDS:
        raise ClarivisError(f"unknown --backend '{backend}'; use one of {', '.join(BACKENDS)}")
    if folder.exists() and any(folder.iterdir()):
        raise ClarivisError(f"{folder} is not empty and holds no index; choose a new --out folder")
    spec = enc.encoder_spec(model, weights=weights, pretrained=pretrained, img_size=img_size)
    clf = enc.load(spec, device)
    spec["img_size"] = clf.config.preprocess.img_size  # what the vectors were made at
    size = spec["img_size"]
    probe = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    dim = int(clf.pixel_embeddings(probe).shape[1])
    info = IndexInfo(encoder=spec, dim=dim, backend=backend)
    folder.mkdir(parents=True, exist_ok=True)
    open_store(backend, dim, folder)  # a missing extra fails before index.json is written
    write_info(folder, info)
    return info, clf


# ----------------------------------------------------------------------------- inputs


def _gather(inputs: list[str], skipped: list[dict]) -> tuple[list[Candidate], list[str], set[str]]:
    """(image files with their source and metadata, folders given, sources given). Inputs
    that yield no image (missing, empty, unreadable formats) go to `skipped`."""
    candidates: list[Candidate] = []
    roots: list[str] = []
    sources: set[str] = set()
    seen: set[str] = set()
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file() and path.suffix.lower() == ".csv":
            found = _manifest(path.resolve(), skipped)
            sources.add(str(path.resolve()))
        else:
            source = str(path.resolve()) if path.exists() else item
            if path.is_dir():
                roots.append(source)
            if path.exists() or "*" in item or "?" in item or "[" in item:
                sources.add(source)
            found = []
            for file, error in expand_path(item):
                if error is not None:
                    skipped.append({"path": file, "reason": error})
                else:
                    found.append(Candidate(str(Path(file).resolve()), source, {}))
        for cand in found:
            if cand.path not in seen:  # a file given twice is indexed once
                seen.add(cand.path)
                candidates.append(cand)
    return candidates, roots, sources


def _manifest(csv_path: Path, skipped: list[dict]) -> list[Candidate]:
    """Rows of a CSV with a `path` column (relative to the CSV's folder); the other columns
    become each image's metadata."""
    rows = read_csv_rows(csv_path, required=("path",))
    out = []
    for row in rows:
        rel = (row.get("path") or "").strip()
        if not rel:
            continue
        file = Path(rel).expanduser()
        file = file if file.is_absolute() else csv_path.parent / file
        if not file.is_file():
            skipped.append({"path": str(file), "reason": "file not found"})
            continue
        meta = {k: (v or "").strip() for k, v in row.items() if k and k != "path"}
        out.append(Candidate(str(file.resolve()), str(csv_path), meta))
    return out


# ----------------------------------------------------------------------------- plan


def _plan(db: MetaDB, candidates: list[Candidate], roots: list[str], sources: set[str], prune: bool,
          summary: IndexSummary) -> tuple[list[tuple[Candidate, str, os.stat_result]], list[int]]:
    """(files to embed with their hash and stat, keys to remove); moves and metadata changes
    are written to `db` here."""
    rows = db.rows()
    by_path = {r.path: r for r in rows}
    by_sha: dict[str, list[ImageRow]] = {}
    for r in rows:
        by_sha.setdefault(r.sha256, []).append(r)
    listed = {c.path for c in candidates}
    kept: set[int] = set()  # keys whose row stays (unchanged or moved)
    stale: list[int] = []
    todo = []
    for cand in candidates:
        try:
            st = os.stat(cand.path)
        except OSError as err:
            summary.skipped.append({"path": cand.path, "reason": f"cannot read ({err.strerror})"})
            continue
        row = by_path.get(cand.path)
        if row is not None and (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns):
            _keep(db, row, cand, st, kept)
            summary.unchanged += 1
            continue
        try:
            sha = sha256_hex(cand.path)
        except OSError as err:
            summary.skipped.append({"path": cand.path, "reason": f"cannot read ({err.strerror})"})
            continue
        if row is not None and row.sha256 == sha:  # touched, not changed
            _keep(db, row, cand, st, kept)
            summary.unchanged += 1
        elif row is not None:
            stale.append(row.key)
            cand.replaces = True
            kept.add(row.key)  # removed as changed, not counted as gone
            summary.changed += 1
            todo.append((cand, sha, st))
        elif (moved := _moved_from(by_sha.get(sha, []), listed, kept)) is not None:
            _keep(db, moved, cand, st, kept)
            summary.moved += 1
        else:
            todo.append((cand, sha, st))
    if prune:
        gone = [r.key for r in rows if r.key not in kept and r.path not in listed
                and _in_scope(r, roots, sources)]
        stale += gone
        summary.removed = len(gone)
    return todo, stale


def _keep(db: MetaDB, row: ImageRow, cand: Candidate, st: os.stat_result, kept: set[int]) -> None:
    db.update(row.key, path=cand.path, size=st.st_size, mtime_ns=st.st_mtime_ns, source=cand.source,
              metadata=cand.metadata or row.metadata)
    kept.add(row.key)


def _moved_from(same_content: list[ImageRow], listed: set[str], kept: set[int]) -> ImageRow | None:
    """An indexed row with this content whose file is gone: the image moved (else it was copied)."""
    for row in same_content:
        if row.key not in kept and row.path not in listed and not os.path.exists(row.path):
            return row
    return None


def _in_scope(row: ImageRow, roots: list[str], sources: set[str]) -> bool:
    return row.source in sources or any(row.path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


# ----------------------------------------------------------------------------- embed


def _embed_all(clf: Classifier, todo, store, db: MetaDB, folder: Path, info: IndexInfo,
               summary: IndexSummary, batch_size: int, progress: Progress | None) -> None:
    plan = {cand.path: (cand, sha, st) for cand, sha, st in todo}
    next_key = max(db.next_key(), int(store.keys().max()) + 1 if len(store) else 0)
    done, last_save, save_cost = 0, time.monotonic(), 0.0
    for item in enc.embed_batches(clf, list(plan), batch_size=batch_size):
        if isinstance(item, Unusable):
            db.skip(item.source, item.reason)
            summary.skipped.append({"path": item.source, "reason": item.reason})
            continue
        keys = np.arange(next_key, next_key + len(item.paths), dtype=np.uint64)
        next_key += len(item.paths)
        store.add(keys, item.vectors)
        for key, path in zip(keys.tolist(), item.paths, strict=True):
            cand, sha, st = plan[path]
            db.insert(ImageRow(key, path, sha, st.st_size, st.st_mtime_ns, cand.source, cand.metadata))
        summary.added += sum(not plan[p][0].replaces for p in item.paths)
        done += len(item.paths)
        if progress is not None:
            progress(done, len(plan))
        if save_cost <= CHEAP_SAVE_S or time.monotonic() - last_save >= save_cost / SAVE_SHARE:
            save_cost = _checkpoint(store, db, folder, info)
            last_save = time.monotonic()
    _checkpoint(store, db, folder, info)


def _checkpoint(store, db: MetaDB, folder: Path, info: IndexInfo) -> float:
    """Save the vectors atomically, then commit the rows; returns the seconds it took. A kill
    between the two leaves vectors without rows, which `reconcile` removes on the next run."""
    start = time.monotonic()
    store.save(folder / FILES[info.backend])
    db.commit()
    return time.monotonic() - start
