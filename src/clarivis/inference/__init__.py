"""Streaming, resumable, multi-process prediction into CSV, JSONL or Parquet files."""

from clarivis.inference.progress import PredictProgress
from clarivis.inference.run import PredictSummary, predict_to_file
from clarivis.inference.stream import Source, iter_sources
from clarivis.inference.writers import OutputError

__all__ = ["OutputError", "PredictProgress", "PredictSummary", "Source", "iter_sources",
           "predict_to_file"]
