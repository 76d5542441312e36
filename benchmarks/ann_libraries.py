"""Which approximate-nearest-neighbour library should clarivis's vector index use? FAISS (HNSW and
IVF-Flat), USearch (HNSW over f32, f16 or i8 vectors) and LanceDB (IVF_HNSW_SQ table), against exact
numpy search, on clustered synthetic embeddings: build time, single-query latency p50/p99 with 1 and
2 threads, recall@10 against exact search, memory (anonymous RSS growth and index file size), and
which of clarivis's needs each one meets (removal by key, incremental add, one-file persistence,
metadata filtering), checked by calling them.

Each (library, size) runs in its own child process (`--worker`), one at a time, so that its memory
figure is its own. A build that passes --build-cap-s stops adding; the queries then run against
what was built (recall against exact search over the same vectors) and the full build time is
extrapolated linearly (a lower bound for HNSW, whose insert cost grows with log n).

    python benchmarks/ann_libraries.py --sizes 10000,100000 --libraries exact,usearch-f32,faiss-hnsw
    python benchmarks/ann_libraries.py --sizes 1000000 --libraries exact,usearch-i8,faiss-ivf

Needs `pip install faiss-cpu usearch lancedb` (not clarivis dependencies).

Synthetic data: real image embeddings have a low intrinsic dimension and form clusters, which is
what makes graph and inverted-file indexes work; uniform random vectors would make every library
look bad. Each vector is a point of a 2,000-centre Gaussian mixture in a 64-dimensional latent
space, mapped to DIM dimensions by a fixed random linear map, plus small isotropic noise, then
L2-normalised (inner product = cosine). Queries come from the same mixture, never indexed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import common

LIBRARIES = ("exact", "usearch-f32", "usearch-f16", "usearch-i8", "faiss-hnsw", "faiss-ivf",
             "lancedb-hnsw-sq")
QUALITY_LIBRARIES = ("usearch-f32", "usearch-f16", "usearch-i8", "faiss-hnsw", "faiss-ivf",
                     "lancedb-hnsw-sq")
K = 10
LATENT, CENTRES = 64, 2000
HNSW_M = 16  # graph degree (USearch connectivity, FAISS M)
EF_ADD, EF_SEARCH = 128, 64  # candidate lists while building and searching


# ----------------------------------------------------------------------------- data


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def clustered(n: int, dim: int, seed: int, chunk: int = 50_000) -> Iterator[np.ndarray]:
    """n unit vectors of the mixture described in the module docstring, in chunks. The mixture
    (centres, map) depends on nothing but dim; `seed` picks the points."""
    mix = np.random.default_rng(12345)
    centres = mix.standard_normal((CENTRES, LATENT)).astype(np.float32)
    spread = mix.uniform(0.3, 0.8, CENTRES).astype(np.float32)  # clusters differ in tightness
    proj = (mix.standard_normal((LATENT, dim)) / np.sqrt(LATENT)).astype(np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        which = rng.integers(0, CENTRES, m)
        z = centres[which] + spread[which, None] * rng.standard_normal((m, LATENT), np.float32)
        x = z @ proj + 0.15 * rng.standard_normal((m, dim), np.float32)
        yield normalize(x).astype(np.float32)


def dataset(folder: Path, n: int, dim: int) -> tuple[Path, Path]:
    """Raw float32 files of n base vectors and 1,000 queries (generated once; smaller sizes read
    a prefix of a larger file)."""
    folder.mkdir(parents=True, exist_ok=True)
    queries = folder / f"queries-{dim}.f32"
    if not queries.exists():
        queries.write_bytes(next(clustered(1000, dim, seed=2)).tobytes())
    for existing in sorted(folder.glob(f"base-{dim}-*.f32"), key=lambda p: int(p.stem.split("-")[2])):
        if int(existing.stem.split("-")[2]) >= n:
            return existing, queries
    base = folder / f"base-{dim}-{n}.f32"
    tmp = base.with_suffix(".part")
    with open(tmp, "wb") as f:
        for part in clustered(n, dim, seed=1):
            f.write(part.tobytes())
    tmp.rename(base)
    return base, queries


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 100_000) -> np.ndarray:
    """Ids of the k largest inner products of every query, in order (numpy, chunked over base)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(base), chunk):
        s = queries @ np.asarray(base[start:start + chunk]).T
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        best_i = np.concatenate([best_i, top + start], 1)
        keep = np.argsort(-best_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """recall@k: share of the exact k neighbours that the index returned."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ann-") as tmp:
        yield Path(tmp)


def rss_anon_bytes() -> int:
    """Anonymous resident memory of this process (heap; not the memory-mapped data file)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() \
        else path.stat().st_size


# ----------------------------------------------------------------------------- backends


class Backend:
    """One library behind the calls the benchmark makes. build() adds vectors in chunks (keys =
    row numbers) and returns seconds; `built` says how many went in before a time cap."""

    name = "?"
    one_file = False
    built = 0

    def __init__(self, dim: int, n: int) -> None:
        self.dim, self.n = dim, n

    def build(self, vectors: np.ndarray, tmp: Path, cap_s: float = float("inf"),
              chunk: int = 10_000) -> float:
        start = time.perf_counter()
        self.begin(vectors, tmp)
        for lo in range(0, len(vectors), chunk):
            self.add(np.arange(lo, min(lo + chunk, len(vectors))),
                     np.ascontiguousarray(vectors[lo:lo + chunk]))
            self.built = min(lo + chunk, len(vectors))
            if time.perf_counter() - start > cap_s:
                break
        self.finish()
        return time.perf_counter() - start

    def begin(self, vectors: np.ndarray, tmp: Path) -> None:
        pass

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def threads(self, n: int) -> None:
        pass

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def remove(self, keys: np.ndarray) -> None:
        raise NotImplementedError

    def save(self, tmp: Path) -> Path:
        raise NotImplementedError

    def load(self, path: Path) -> None:
        raise NotImplementedError

    def filtered(self, query: np.ndarray, k: int, allowed: np.ndarray) -> np.ndarray | None:
        """Top k among `allowed` keys by the library's own filter, None when it has none."""
        return None


class Exact(Backend):
    name = "exact"
    one_file = True

    def begin(self, vectors, tmp):
        self.base = np.zeros((len(vectors), self.dim), np.float32)

    def add(self, keys, vectors):
        if keys.max() >= len(self.base):  # keys are row numbers
            grow = np.zeros((keys.max() + 1 - len(self.base), self.dim), np.float32)
            self.base = np.concatenate([self.base, grow])
        self.base[keys] = vectors

    def finish(self):
        self.base = self.base[:self.built]
        from threadpoolctl import threadpool_limits
        self.limit = threadpool_limits

    def threads(self, n):
        self.limit(n)

    def search(self, query, k):
        s = self.base @ query
        top = np.argpartition(-s, k)[:k]
        return top[np.argsort(-s[top])]

    def remove(self, keys):
        self.base[keys] = 0  # a real store would compact; exact search supports removal trivially

    def save(self, tmp):
        np.save(tmp / "exact.npy", self.base)
        return tmp / "exact.npy"

    def load(self, path):
        self.base = np.load(path)

    def filtered(self, query, k, allowed):
        s = self.base[allowed] @ query
        return allowed[np.argsort(-s)[:k]]


class USearch(Backend):
    one_file = True

    def __init__(self, dim, n, dtype):
        super().__init__(dim, n)
        self.dtype, self.name = dtype, f"usearch-{dtype}"

    def begin(self, vectors, tmp):
        from usearch.index import Index
        self.index = Index(ndim=self.dim, metric="ip", dtype=self.dtype, connectivity=HNSW_M,
                           expansion_add=EF_ADD, expansion_search=EF_SEARCH)
        self.n_threads = 1

    def add(self, keys, vectors):
        self.index.add(keys, vectors, threads=2)

    def threads(self, n):
        self.n_threads = n

    def search(self, query, k):
        return np.asarray(self.index.search(query, k, threads=self.n_threads).keys, np.int64)

    def remove(self, keys):
        self.index.remove(keys)

    def save(self, tmp):
        path = tmp / "index.usearch"
        self.index.save(str(path))
        return path

    def load(self, path):
        from usearch.index import Index
        self.index = Index.restore(str(path))


class FaissBackend(Backend):
    one_file = True

    def threads(self, n):
        import faiss
        faiss.omp_set_num_threads(n)

    def add(self, keys, vectors):
        self.index.add_with_ids(vectors, np.asarray(keys, np.int64))

    def search(self, query, k):
        _, ids = self.index.search(query[None, :], k)
        return ids[0]

    def save(self, tmp):
        import faiss
        path = tmp / "index.faiss"
        faiss.write_index(self.index, str(path))
        return path

    def load(self, path):
        import faiss
        self.index = faiss.read_index(str(path))
        self.configure()

    def configure(self):
        pass

    def remove(self, keys):
        self.index.remove_ids(np.asarray(keys, np.int64))

    def filtered(self, query, k, allowed):
        import faiss
        params = self.search_params(faiss.IDSelectorBatch(np.asarray(allowed, np.int64)))
        _, ids = self.index.search(query[None, :], k, params=params)
        return ids[0]


class FaissHNSW(FaissBackend):
    name = "faiss-hnsw"

    def begin(self, vectors, tmp):
        import faiss
        faiss.omp_set_num_threads(2)
        hnsw = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = EF_ADD
        self.index = faiss.IndexIDMap(hnsw)  # own keys; HNSW alone numbers rows 0, 1, ...
        self.configure()

    def configure(self):
        import faiss
        faiss.downcast_index(self.index.index).hnsw.efSearch = EF_SEARCH

    def search_params(self, selector):
        import faiss
        return faiss.SearchParametersHNSW(sel=selector, efSearch=EF_SEARCH)


class FaissIVF(FaissBackend):
    name = "faiss-ivf"

    def begin(self, vectors, tmp):
        import faiss
        faiss.omp_set_num_threads(2)
        # sqrt(n)-ish lists, capped and trained briefly: k-means is the slow part on 2 cores
        self.nlist = int(min(2048, max(64, 4 * np.sqrt(len(vectors)))))
        quantizer = faiss.IndexFlatIP(self.dim)
        self.index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.cp.niter = 10
        sample = np.ascontiguousarray(vectors[:min(len(vectors), 30 * self.nlist)])
        self.index.train(sample)  # k-means on a prefix: part of the build time
        self.configure()

    def configure(self):
        self.index.nprobe = max(32, self.index.nlist // 32)

    def search_params(self, selector):
        import faiss
        return faiss.SearchParametersIVF(sel=selector, nprobe=self.index.nprobe)


class LanceHNSW(Backend):
    name = "lancedb-hnsw-sq"

    def begin(self, vectors, tmp):
        import lancedb
        self.db = lancedb.connect(str(tmp / "lance"))
        self.table = None
        self.tmp = tmp

    def _batch(self, keys, vectors):
        import pyarrow as pa
        flat = pa.array(vectors.reshape(-1), pa.float32())
        return pa.table({"id": pa.array(keys, pa.int64()),
                         "group": pa.array(keys % 10, pa.int64()),
                         "vector": pa.FixedSizeListArray.from_arrays(flat, self.dim)})

    def add(self, keys, vectors):
        batch = self._batch(keys, vectors)
        if self.table is None:
            self.table = self.db.create_table("images", batch)
        else:
            self.table.add(batch)

    def finish(self):
        self.table.create_index(metric="dot", index_type="IVF_HNSW_SQ", m=HNSW_M,
                                ef_construction=EF_ADD,
                                num_partitions=max(1, self.table.count_rows() // 250_000))
        self.table.optimize()

    def search(self, query, k):
        rows = self.table.search(query).metric("dot").limit(k).ef(EF_SEARCH).select(["id", "_distance"]) \
            .to_arrow()
        return np.asarray(rows["id"].to_numpy(), np.int64)

    def remove(self, keys):
        self.table.delete(f"id IN ({','.join(str(int(k)) for k in keys)})")

    def save(self, tmp):
        return tmp / "lance"  # a directory of fragments and index files, written as it goes

    def load(self, path):
        import lancedb
        self.table = lancedb.connect(str(path)).open_table("images")

    def filtered(self, query, k, allowed):
        rows = self.table.search(query).metric("dot").where(
            f"id IN ({','.join(str(int(a)) for a in allowed)})", prefilter=True) \
            .limit(k).select(["id", "_distance"]).to_arrow()
        return np.asarray(rows["id"].to_numpy(), np.int64)


def make_backend(name: str, dim: int, n: int) -> Backend:
    if name.startswith("usearch-"):
        return USearch(dim, n, name.split("-", 1)[1])
    classes = {"exact": Exact, "faiss-hnsw": FaissHNSW, "faiss-ivf": FaissIVF,
               "lancedb-hnsw-sq": LanceHNSW}
    if name not in classes:
        raise SystemExit(f"error: unknown library {name!r}; choose from {', '.join(LIBRARIES)}")
    return classes[name](dim, n)


# ----------------------------------------------------------------------------- measuring


def latency_ms(backend: Backend, queries: np.ndarray, threads: int) -> tuple[dict, np.ndarray]:
    backend.threads(threads)
    for q in queries[:10]:  # warm-up
        backend.search(q, K)
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        found.append(backend.search(q, K))
        times.append((time.perf_counter() - start) * 1000)
    t = np.array(times)
    return ({"p50_ms": round(float(np.percentile(t, 50)), 3),
             "p99_ms": round(float(np.percentile(t, 99)), 3),
             "mean_ms": round(float(t.mean()), 3)}, np.stack(found))


def check_features(backend: Backend, queries: np.ndarray, tmp: Path) -> dict:
    """Call what clarivis needs and record what works: removal by key (a removed image never comes
    back), incremental add after a save/load round trip, one-file persistence, filtering."""
    out: dict = {}
    q = queries[0]
    first = backend.search(q, K)
    try:
        backend.remove(first[:1])
        out["remove_by_key"] = bool(first[0] not in backend.search(q, K))
    except (NotImplementedError, RuntimeError, AttributeError) as exc:
        out["remove_by_key"] = f"no ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
    try:
        path = backend.save(tmp)
        out["one_file"] = backend.one_file and path.is_file()
        backend.load(path)
        new_key = backend.built + 5
        backend.add(np.array([new_key]), q[None, :].astype(np.float32))
        out["add_after_load"] = bool(backend.search(q, K)[0] == new_key)
    except (NotImplementedError, RuntimeError) as exc:
        out["add_after_load"] = f"no ({type(exc).__name__})"
    allowed = np.arange(0, backend.built, 7)
    try:
        ids = backend.filtered(q, K, allowed)
        out["filter"] = "no (post-filter only)" if ids is None else bool(
            len(ids) and set(ids.tolist()) <= set(allowed.tolist()))
    except (RuntimeError, ValueError) as exc:
        out["filter"] = f"no ({type(exc).__name__})"
    return out


def worker(spec: dict) -> dict:
    dim, n = spec["dim"], spec["n"]
    base = np.memmap(spec["base"], np.float32, "r", shape=(n, dim)) if n >= 1_000_000 else \
        np.fromfile(spec["base"], np.float32, count=n * dim).reshape(n, dim)
    queries = np.fromfile(spec["queries"], np.float32).reshape(-1, dim)[:spec["n_queries"]]
    backend = make_backend(spec["library"], dim, n)
    with scratch() as tmp:
        rss0 = rss_anon_bytes()
        build_s = backend.build(base, tmp, spec["build_cap_s"],
                                chunk=50_000 if n >= 1_000_000 else 10_000)
        rss1 = rss_anon_bytes()
        built = backend.built
        truth = exact_topk(base[:built], queries, K)
        row = {"library": backend.name, "n": n, "built": built, "dim": dim,
               "build_s": round(build_s, 2),
               "build_s_extrapolated": None if built == n else round(build_s * n / built, 1),
               "index_rss_mib": round((rss1 - rss0) / common.MIB, 1)}
        for threads in (1, 2):
            lat, found = latency_ms(backend, queries, threads)
            row[f"threads{threads}"] = lat
        row["recall_at_10"] = round(recall(found, truth), 4)
        path = backend.save(tmp)
        row["file_mib"] = round(dir_bytes(path) / common.MIB, 1)
        if spec["features"]:
            row["features"] = check_features(backend, queries, tmp)
    return row


def summary(row: dict) -> str:
    t1, t2 = row["threads1"], row["threads2"]
    capped = "" if row["built"] == row["n"] else \
        f" (capped at {row['built']:,}; full build ~{row['build_s_extrapolated']:.0f} s)"
    return (f"{row['library']:>16} n={row['n']:>9,}: build {row['build_s']:7.1f} s{capped}, "
            f"p50/p99 {t1['p50_ms']:.2f}/{t1['p99_ms']:.2f} ms (1 thread) "
            f"{t2['p50_ms']:.2f}/{t2['p99_ms']:.2f} ms (2), recall@10 {row['recall_at_10']:.3f}, "
            f"RSS +{row['index_rss_mib']:.0f} MiB, file {row['file_mib']:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--dim", type=int, default=1280, help="efficientnet_lite0 pre-logits")
    parser.add_argument("--queries", type=int, default=300, help="single queries timed per run")
    parser.add_argument("--build-cap-s", type=float, default=600)
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "clarivis-ann"),
                        help="where the synthetic vectors are written (5 GiB at 1M x 1280)")
    parser.add_argument("--json", default=None, help="results file [results/ann_libraries-cpu.json]")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    path = Path(args.json) if args.json else common.RESULTS_DIR / "ann_libraries-cpu.json"
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    runs = []
    base, queries = dataset(Path(args.data_dir), max(sizes), args.dim)
    for n in sizes:
        for lib in args.libraries.split(","):
            spec = {"library": lib, "n": n, "dim": args.dim, "base": str(base),
                    "queries": str(queries), "n_queries": args.queries,
                    "build_cap_s": args.build_cap_s, "features": n == min(sizes) <= 100_000}
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                                  capture_output=True, text=True)
            if proc.returncode:
                print(f"{lib} n={n}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            runs.append(row)
            print(summary(row), flush=True)
    keep = [r for r in old if (r["library"], r["n"]) not in {(r2["library"], r2["n"]) for r2 in runs}]
    result = {"benchmark": "ann_libraries", "k": K, "hnsw_m": HNSW_M, "ef_add": EF_ADD,
              "ef_search": EF_SEARCH, "data": f"{CENTRES}-centre mixture, {LATENT}-d latent",
              "runs": keep + runs, "machine": common.describe_machine("cpu")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
