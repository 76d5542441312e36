"""Search quality on real photos: precision@10 of same-class neighbours for held-out query images,
with exact search and with each approximate-nearest-neighbour library of `ann_libraries.py`, and
recall@10 of each library against exact search (issue 16's target: >= 0.95).

The images are embedded once with clarivis's own embedding code (`load_encoder` + `embed_images`:
predict's decode, resize and normalisation; pre-logit features) and cached as .npz, so that the
index comparison can be rerun without re-embedding. Embedding is the slow part on a CPU (about
25-40 images/s for efficientnet_lite0 at 224 px on 2 cores); its rate is recorded.

    python benchmarks/search_quality.py --data DATA --weights efficientnet_lite0.in1k.safetensors \\
        --index-images 12000 --queries 1000
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

import ann_libraries
import common

K = 10


def pick_images(root: Path, n_index: int, n_queries: int, seed: int) -> tuple[list, list]:
    """(index rows, query rows) of (path, label): a stratified subset of n_index + n_queries
    images, shuffled with a fixed seed, the first n_queries held out as queries."""
    rows = common.stratified_first(common.class_folder_images(root), n_index + n_queries)
    random.Random(seed).shuffle(rows)
    return rows[n_queries:], rows[:n_queries]


def embed_rows(rows: list, model: str, weights: str | None, batch_size: int) -> np.ndarray:
    from clarivis.embeddings import embed_images, load_encoder

    clf = load_encoder(model, weights=weights, device="cpu")
    result = embed_images(clf, [str(p) for p, _ in rows], batch_size=batch_size)
    if len(result.paths) != len(rows):
        raise SystemExit(f"error: {len(rows) - len(result.paths)} images unreadable: "
                         f"{result.skipped[:3]}")
    return result.vectors


def embeddings(args: argparse.Namespace) -> dict:
    """The cached embeddings of the index and query images, computing them on a cache miss."""
    cache = Path(args.cache)
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        return {k: data[k] for k in data.files}
    index_rows, query_rows = pick_images(common.dataset_root(args.data), args.index_images,
                                         args.queries, args.seed)
    start = time.perf_counter()
    vectors = embed_rows(index_rows + query_rows, args.model, args.weights, args.batch_size)
    seconds = time.perf_counter() - start
    n = len(index_rows)
    data = {"index": vectors[:n], "queries": vectors[n:],
            "index_labels": np.array([lbl for _, lbl in index_rows]),
            "query_labels": np.array([lbl for _, lbl in query_rows]),
            "embed_seconds": np.array(seconds)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **data)
    return data


class ClarivisStore(ann_libraries.Backend):
    """clarivis's own vector store (clarivis.index.ann, what `clarivis index` writes), fed the
    cached embeddings: its settings on real features without embedding the images again."""

    name = "clarivis-index"

    def begin(self, vectors, tmp):
        from clarivis.index.ann import open_store
        self.store = open_store("usearch", self.dim, tmp)

    def add(self, keys, vectors):
        self.store.add(keys, vectors)

    def search(self, query, k):
        return self.store.search(query[None, :], k)[0][0].astype(np.int64)


def backend(name: str, dim: int, n: int) -> ann_libraries.Backend:
    return ClarivisStore(dim, n) if name == "clarivis-index" else \
        ann_libraries.make_backend(name, dim, n)


def through_cli(args: argparse.Namespace, tmp: Path) -> dict:
    """precision@10 end to end: `clarivis index` over a manifest of the index images (label as
    metadata), then `clarivis search --format json` with a folder of the query images."""
    import csv
    import subprocess
    import sys

    index_rows, query_rows = pick_images(common.dataset_root(args.data), args.index_images,
                                         args.queries, args.seed)
    manifest, queries = tmp / "index.csv", tmp / "queries"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *[(str(p), lbl) for p, lbl in index_rows]])
    queries.mkdir()
    for i, (p, lbl) in enumerate(query_rows):
        (queries / f"{lbl}__{i:05d}{p.suffix}").symlink_to(p.resolve())
    cli = [sys.executable, "-m", "clarivis"]
    weights = ["--weights", args.weights] if args.weights else []
    start = time.perf_counter()
    subprocess.run([*cli, "index", str(manifest), "--out", str(tmp / "index"), "--model",
                    args.model, *weights], check=True, stdout=subprocess.DEVNULL)
    index_s = time.perf_counter() - start
    start = time.perf_counter()
    out = subprocess.run([*cli, "search", str(tmp / "index"), "--image", str(queries), "--format",
                          "json", "-k", str(K)], check=True, capture_output=True, text=True).stdout
    search_s = time.perf_counter() - start
    answers = json.loads(out)  # a list: one object per query
    hits = [r["metadata"]["label"] == Path(a["query"]).name.split("__")[0]
            for a in answers for r in a["results"]]
    return {"library": "clarivis index + search (CLI)", "precision_at_10": round(float(np.mean(hits)), 4),
            "index_s": round(index_s, 1), "search_s": round(search_s, 1),
            "index_images": len(index_rows), "queries": len(answers)}


def precision_at_k(ids: np.ndarray, index_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Share of the k neighbours of each query that have the query's class, averaged."""
    return float((index_labels[ids] == query_labels[:, None]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="class-folder dataset (DIR/<class>/*.jpg)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None, help="local timm weights (.safetensors)")
    parser.add_argument("--index-images", type=int, default=12000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=str(common.RESULTS_DIR / "search_quality-embeddings.npz"),
                        help="embeddings cache (.npz), reused when present")
    parser.add_argument("--libraries",
                        default=",".join(("clarivis-index", *ann_libraries.QUALITY_LIBRARIES)))
    parser.add_argument("--cli", action="store_true",
                        help="also run `clarivis index` and `clarivis search` end to end (embeds the "
                             "images again)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    data = embeddings(args)
    index = ann_libraries.normalize(data["index"].astype(np.float32))
    queries = ann_libraries.normalize(data["queries"].astype(np.float32))
    n_all = len(index) + len(queries)
    print(f"embeddings: {len(index)} index + {len(queries)} queries, dim {index.shape[1]}, "
          f"{float(data['embed_seconds']):.0f} s ({n_all / float(data['embed_seconds']):.1f} img/s)")
    exact = ann_libraries.exact_topk(index, queries, K)
    rows = []
    for name in [lib for lib in args.libraries.split(",") if lib]:
        lib = backend(name, index.shape[1], len(index))
        with ann_libraries.scratch() as tmp:
            build_s = lib.build(index, tmp)
            ids = np.stack([lib.search(q, K) for q in queries])
        row = {"library": name, "build_s": round(build_s, 2),
               "precision_at_10": round(precision_at_k(ids, data["index_labels"],
                                                       data["query_labels"]), 4),
               "recall_at_10_vs_exact": round(ann_libraries.recall(ids, exact), 4)}
        rows.append(row)
        print(f"{name:>16}: precision@10 {row['precision_at_10']:.4f}  "
              f"recall@10 vs exact {row['recall_at_10_vs_exact']:.4f}  build {build_s:.1f} s")
    result = {"benchmark": "search_quality", "model": args.model,
              "weights": Path(args.weights).name if args.weights else None,
              "index_images": len(index), "queries": len(queries), "dim": int(index.shape[1]),
              "embed_seconds": round(float(data["embed_seconds"]), 1),
              "embed_images_per_s": round(n_all / float(data["embed_seconds"]), 1),
              "exact_precision_at_10": round(precision_at_k(exact, data["index_labels"],
                                                            data["query_labels"]), 4),
              "libraries": rows, "machine": common.describe_machine("cpu")}
    print(f"exact: precision@10 {result['exact_precision_at_10']:.4f}")
    if args.cli:
        with ann_libraries.scratch() as tmp:
            result["cli"] = through_cli(args, tmp)
        print(f"clarivis index + search: {result['cli']}")
    path = common.write_result(result, args.json, "search_quality", "cpu")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
