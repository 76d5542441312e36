"""The vector store behind an image index: one small interface, two backends.

- `usearch` (default): USearch's HNSW graph in one file (vectors.usearch), with native add and
  remove by integer key. Chosen for single-file persistence, removal without a rebuild and
  its size (one wheel, no BLAS); benchmarks/ compares it with FAISS and LanceDB.
- `exact`: numpy brute force over all vectors (vectors.npz). The reference in tests and the
  choice for small collections, where a full scan takes well under a millisecond a query.

Vectors are L2-normalised before they arrive here, so cosine similarity is the inner product;
both backends report a distance of 1 - cosine. Swapping the ANN library touches this module only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from clarivis.errors import ClarivisError
from clarivis.extras import needs
from clarivis.fileio import atomic_write

BACKENDS = ("usearch", "exact")
FILES = {"usearch": "vectors.usearch", "exact": "vectors.npz"}


class VectorStore(Protocol):
    dim: int

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, keys: np.ndarray) -> None: ...
    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def get(self, keys: np.ndarray) -> np.ndarray: ...
    def keys(self) -> np.ndarray: ...
    def save(self, path: Path) -> None: ...
    def __len__(self) -> int: ...


def open_store(backend: str, dim: int, folder: Path, *, view: bool = False) -> VectorStore:
    """The store of `backend` for `dim`-d vectors, loaded from `folder` when its file exists.
    `view`: memory-map the file read-only (queries: no full read of a large index)."""
    if backend not in BACKENDS:
        raise ClarivisError(f"unknown index backend '{backend}'; use one of {', '.join(BACKENDS)}")
    path = folder / FILES[backend]
    store: VectorStore = UsearchStore(dim) if backend == "usearch" else ExactStore(dim)
    if path.exists():
        store.load(path, view=view)  # type: ignore[attr-defined]
    return store


def exact_search(keys: np.ndarray, matrix: np.ndarray, queries: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k') keys and 1 - cosine distances of the k nearest rows of `matrix` (N, D), best
    first; k' = min(k, N). The exact answer: the reference for the ANN and the filtered path."""
    if len(keys) == 0 or k <= 0:
        return np.zeros((len(queries), 0), np.uint64), np.zeros((len(queries), 0), np.float32)
    sims = queries.astype(np.float32) @ matrix.T  # (Q, N) cosine of unit vectors
    k = min(k, len(keys))
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, 1)
    return keys[top], (1.0 - np.take_along_axis(sims, top, 1)).astype(np.float32)


class ExactStore:
    """All vectors in memory, searched by one matrix product."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._keys = np.zeros(0, np.uint64)
        self._vectors = np.zeros((0, dim), np.float32)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self._keys = np.concatenate([self._keys, np.asarray(keys, np.uint64)])
        self._vectors = np.concatenate([self._vectors, np.asarray(vectors, np.float32)])

    def remove(self, keys: np.ndarray) -> None:
        keep = ~np.isin(self._keys, np.asarray(keys, np.uint64))
        self._keys, self._vectors = self._keys[keep], self._vectors[keep]

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(self._keys, self._vectors, vectors, k)

    def get(self, keys: np.ndarray) -> np.ndarray:
        row = {int(key): i for i, key in enumerate(self._keys)}
        return self._vectors[[row[int(key)] for key in keys]]

    def keys(self) -> np.ndarray:
        return self._keys.copy()

    def save(self, path: Path) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
                np.savez(f, keys=self._keys, vectors=self._vectors)

        atomic_write(path, write)

    def load(self, path: Path, view: bool = False) -> None:
        with np.load(path) as data:
            self._keys, self._vectors = data["keys"].astype(np.uint64), data["vectors"].astype(np.float32)

    def __len__(self) -> int:
        return len(self._keys)


class UsearchStore:
    """USearch HNSW, cosine metric, float32 vectors (bf16, its default, would cost recall)."""

    def __init__(self, dim: int) -> None:
        with needs("search", "clarivis index (USearch)"):
            from usearch.index import Index  # optional dependency: the 'search' extra
        self.dim = dim
        self._index = Index(ndim=dim, metric="cos", dtype="f32")

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if len(keys):
            self._index.add(np.asarray(keys, np.uint64), np.ascontiguousarray(vectors, np.float32))

    def remove(self, keys: np.ndarray) -> None:
        if len(keys):
            self._index.remove(np.asarray(keys, np.uint64))

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(vectors), np.float32)
        if len(self) == 0 or k <= 0:
            return np.zeros((len(q), 0), np.uint64), np.zeros((len(q), 0), np.float32)
        k = min(k, len(self))
        found = self._index.search(q, k)
        keys, dists = np.atleast_2d(found.keys), np.atleast_2d(found.distances)
        # one query gives Matches (no counts), several BatchMatches; rows shorter than k (a
        # sparse graph) are cut to the shortest
        counts = np.atleast_1d(getattr(found, "counts", len(keys[0])))
        width = int(counts.min())
        return keys[:, :width].astype(np.uint64), dists[:, :width].astype(np.float32)

    def get(self, keys: np.ndarray) -> np.ndarray:
        if len(keys) == 0:
            return np.zeros((0, self.dim), np.float32)
        found = self._index.get(np.asarray(keys, np.uint64), dtype=np.float32)  # a tuple of rows
        return np.stack([np.asarray(v, np.float32) for v in found])

    def keys(self) -> np.ndarray:
        return np.asarray(self._index.keys, np.uint64)

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: self._index.save(os.fspath(tmp)))

    def load(self, path: Path, view: bool = False) -> None:
        (self._index.view if view else self._index.load)(os.fspath(path))
        if self._index.ndim != self.dim:
            raise ClarivisError(f"{path.name} holds {self._index.ndim}-d vectors, index.json says "
                                f"{self.dim}; rebuild the index")

    def __len__(self) -> int:
        return len(self._index)
