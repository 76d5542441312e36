"""Streaming, resumable, multi-process prediction into CSV, JSONL or Parquet files."""

from clarivis.batch_predict.progress import PredictProgress
from clarivis.batch_predict.run import PredictOptions, PredictSummary, predict_to_file
from clarivis.batch_predict.stream import Source, iter_sources
from clarivis.batch_predict.writers import OutputError

__all__ = ["OutputError", "PredictOptions", "PredictProgress", "PredictSummary", "Source", "iter_sources",
           "predict_to_file"]
