"""A persistent vector index over a photo collection: search by example and, with a CLIP
encoder, by words. `index_images` builds or updates one (build.py), `search` queries it
(query.py); the folder's files are described in store.py, the vector backends in ann.py."""

from clarivis.index.build import IndexSummary, index_images
from clarivis.index.query import Hit, QueryResult, Searcher, search

__all__ = ["Hit", "IndexSummary", "QueryResult", "Searcher", "index_images", "search"]
