"""`clarivis search`: the nearest indexed images to query images (by example) or to words
(CLIP indexes), optionally only among images whose metadata matches `where`.

Filtering runs on candidates: the ANN returns k * OVERSAMPLE neighbours, those that pass the
filter are kept; when fewer than k pass, or the filter keeps under EXACT_SHARE of the index
(a very selective filter, which an oversampled ANN answer would mostly miss), the filtered
images are searched exactly instead (their vectors fetched from the store)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from clarivis.classifier import Unusable
from clarivis.data.dataset import pil_to_uint8
from clarivis.data.io import to_rgb
from clarivis.errors import ClarivisError
from clarivis.index import encoder as enc
from clarivis.index.ann import exact_search, open_store
from clarivis.index.store import MetaDB, read_info

OVERSAMPLE = 10  # ANN candidates per result wanted when a filter applies
EXACT_SHARE = 0.05  # a filter keeping fewer than this share of the index is searched exactly
EXACT_ROWS = 20_000  # ...as is any filtered subset this small: one matrix product, milliseconds


@dataclass
class Hit:
    path: str
    score: float  # cosine similarity in [-1, 1]; 1 = the same vector
    metadata: dict
    key: int

    def to_dict(self) -> dict:
        return {"path": self.path, "score": round(self.score, 6), "metadata": self.metadata}


@dataclass
class QueryResult:
    query: str  # the query image's path, or the text
    results: list[Hit] = field(default_factory=list)
    error: str | None = None  # why an image query could not be read

    def to_dict(self) -> dict:
        out: dict = {"query": self.query, "results": [h.to_dict() for h in self.results]}
        if self.error is not None:
            out["error"] = self.error
        return out


def search(index: str | Path, *, image: str | Path | Iterable[str | Path] | None = None,
           text: str | Sequence[str] | None = None, k: int = 10, where: dict[str, str] | None = None,
           batch_size: int = 64, device: str | None = None) -> list[QueryResult]:
    """Top-k indexed images for each query: every image of `image` (files, folders, globs) or
    each string of `text` (a CLIP index). `where`: metadata column -> value, all must match."""
    folder = Path(index).expanduser()
    if (image is None) == (text is None):
        raise ClarivisError("give query images (--image) or words (--text), not both")
    _check_k(k)
    info = read_info(folder)
    texts = [text] if isinstance(text, str) else list(text or [])
    if text is not None and not info.is_clip:
        enc.text_vectors(info.encoder, texts)  # raises the one-line "needs a CLIP index" error
    db = MetaDB(folder)
    try:
        store = open_store(info.backend, info.dim, folder, view=True)
        allowed = _filter(db, where)
        if text is not None:
            vectors = enc.text_vectors(info.encoder, texts, device)
            return [_answer(q, v, store, db, allowed, k) for q, v in zip(texts, vectors, strict=True)]
        return _image_queries(image, info, store, db, allowed, k, batch_size, device)
    finally:
        db.close()


class Searcher:
    """An index held open for many queries (the service's /v1/search): the image encoder, the
    vector file (memory-mapped) and, on the first text query, the CLIP text tower load once.
    meta.sqlite is opened per query, so queries may come from any thread. An index updated
    while it is open is seen after a reopen (restart the service)."""

    def __init__(self, index: str | Path, device: str | None = None):
        self.folder = Path(index).expanduser()
        self.info = read_info(self.folder)
        self.store = open_store(self.info.backend, self.info.dim, self.folder, view=True)
        self.encoder = enc.load(self.info.encoder, device)
        self.device = device
        db = MetaDB(self.folder)
        try:  # the collection's root: answers name images relative to it (no server paths)
            self.root = db.common_folder()
        finally:
            db.close()
        self._text = None
        self._lock = threading.Lock()  # one forward pass at a time: torch already uses the cores

    def __len__(self) -> int:
        return len(self.store)

    def images(self, images: Sequence, names: Sequence[str], *, k: int = 10,
               where: dict[str, str] | None = None) -> list[QueryResult]:
        """Decoded images (PIL, as the service's uploads are) named `names`: one result list each."""
        _check_k(k)
        with self._lock:
            pixels = torch.stack([self.encoder.resize(pil_to_uint8(to_rgb(im))) for im in images])
            vectors = enc.unit(self.encoder.pixel_embeddings(pixels))
        return self._answers(list(names), vectors, k, where)

    def text(self, texts: Sequence[str], *, k: int = 10, where: dict[str, str] | None = None
             ) -> list[QueryResult]:
        _check_k(k)
        with self._lock:
            if self._text is None:
                self._text = enc.text_encoder(self.info.encoder, self.device)
            vectors = self._text(list(texts))
        return self._answers(list(texts), vectors, k, where)

    def relative(self, path: str) -> str:
        """`path` relative to the collection's root, '/'-separated."""
        return Path(os.path.relpath(path, self.root)).as_posix() if self.root else path

    def image_path(self, key: int) -> str | None:
        """The file of indexed image `key` (for thumbnails), or None."""
        db = MetaDB(self.folder)
        try:
            row = db.by_keys([key]).get(key)
        finally:
            db.close()
        return row.path if row is not None else None

    def _answers(self, queries: list[str], vectors: np.ndarray, k: int, where) -> list[QueryResult]:
        db = MetaDB(self.folder)
        try:
            allowed = _filter(db, where)
            return [_answer(q, v, self.store, db, allowed, k) for q, v in zip(queries, vectors, strict=True)]
        finally:
            db.close()


def _check_k(k: int) -> None:
    if k < 1:
        raise ClarivisError(f"-k must be at least 1 (got {k})")


def _image_queries(image, info, store, db, allowed, k, batch_size, device) -> list[QueryResult]:
    clf = enc.load(info.encoder, device)
    queries = [str(image)] if isinstance(image, (str, Path)) else [str(i) for i in image]
    out = []
    for item in enc.embed_batches(clf, queries, batch_size=batch_size):
        if isinstance(item, Unusable):
            out.append(QueryResult(item.source, error=item.reason))
            continue
        out += [_answer(p, v, store, db, allowed, k) for p, v in zip(item.paths, item.vectors, strict=True)]
    return out


def _filter(db: MetaDB, where: dict[str, str] | None) -> np.ndarray | None:
    """Keys of the rows whose metadata matches every column of `where` (None: no filter)."""
    if not where:
        return None
    columns = db.metadata_columns()
    unknown = [c for c in where if c not in columns]
    if unknown:
        have = ", ".join(sorted(columns)) or "none (index a CSV manifest to add some)"
        raise ClarivisError(f"--where: no metadata column {unknown[0]!r}; the index has: {have}")
    return np.array(db.matching(where), np.uint64)


def _answer(query: str, vector: np.ndarray, store, db: MetaDB, allowed: np.ndarray | None,
            k: int) -> QueryResult:
    q = vector[None, :].astype(np.float32)
    if allowed is None:
        keys, dists = store.search(q, k)
    elif len(allowed) <= EXACT_ROWS or len(allowed) < EXACT_SHARE * len(store):
        keys, dists = exact_search(allowed, store.get(allowed), q, k)
    else:
        keys, dists = store.search(q, k * OVERSAMPLE)
        keep = np.isin(keys[0], allowed)
        if keep.sum() < min(k, len(allowed)):  # the filter ate the candidates: answer exactly
            keys, dists = exact_search(allowed, store.get(allowed), q, k)
        else:
            keys, dists = keys[:, keep][:, :k], dists[:, keep][:, :k]
    rows = db.by_keys(keys[0].tolist())  # only the hits' rows: a query reads k rows, not the index
    hits = [Hit(rows[key].path, float(1.0 - d), rows[key].metadata, key)
            for key, d in zip(keys[0].tolist(), dists[0].tolist(), strict=True) if key in rows]
    return QueryResult(query, hits[:k])


def parse_where(pairs: Sequence[str] | None) -> dict[str, str]:
    """["col=value", ...] -> {col: value}."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        col, sep, value = pair.partition("=")
        if not sep or not col.strip():
            raise ClarivisError(f"--where takes COLUMN=VALUE (got {pair!r})")
        out[col.strip()] = value.strip()
    return out
