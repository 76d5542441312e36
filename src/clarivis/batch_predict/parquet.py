"""Parquet output. A Parquet file cannot be appended to after a crash (its footer is written
last), so rows are journaled to a JSONL file beside it while predicting and converted in
row-group chunks at the end."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clarivis.batch_predict.writers import SINGLE_LABEL, OutputError, RowLayout, chunked, prob_columns

ROW_GROUP = 10_000  # rows per Parquet row group: the conversion's memory bound

_TOP_K = pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float64())]))
SCHEMA = pa.schema([
    ("path", pa.string()),
    ("label", pa.string()),
    ("confidence", pa.float64()),
    ("top_k", _TOP_K),
    ("error", pa.string()),
])


def schema(layout: RowLayout = SINGLE_LABEL) -> pa.Schema:
    """SCHEMA, or a multi-label model's columns (RowLayout): the set as a list of names (which
    DuckDB's list_contains or Spark's explode query directly) and a float column a class."""
    if not layout.multilabel:
        return SCHEMA
    return pa.schema([("path", pa.string()), ("labels", pa.list_(pa.string())),
                      ("confidence", pa.float64()), ("top_k", _TOP_K), ("error", pa.string())]
                     + [(name, pa.float64()) for name in prob_columns(layout.classes)])


def _open(path: Path, layout: RowLayout = SINGLE_LABEL) -> pq.ParquetFile:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise OutputError(f"{path} is not a readable Parquet file ({exc}); "
                          "choose another --out") from None
    expected = schema(layout)
    if not parquet.schema_arrow.equals(expected):
        raise OutputError(f"{path} does not have the columns clarivis writes for this model "
                          f"({', '.join(expected.names)}); choose another --out")
    return parquet


def read_parquet_paths(path: Path, layout: RowLayout = SINGLE_LABEL) -> Iterator[str]:
    """The `path` column, one row group at a time."""
    parquet = _open(path, layout)
    for group in range(parquet.num_row_groups):
        yield from parquet.read_row_group(group, columns=["path"]).column("path").to_pylist()


def write_parquet(target: Path, records: Iterable[dict[str, Any]], layout: RowLayout = SINGLE_LABEL) -> int:
    """Replace `target` (atomically) by its own rows followed by `records`, streaming; a path
    already written is not written again. Returns the number of rows."""
    seen: set[str] = set()
    rows = 0
    # A plain file beside the target (not tempfile's, which is private to the owner) so the
    # result gets the usual permissions; a crash leaves it to be overwritten next time.
    tmp = target.with_name(f".{target.name}.tmp")
    columns = schema(layout)
    try:
        with pq.ParquetWriter(tmp, columns) as writer:
            if target.exists():
                for batch in _open(target, layout).iter_batches(batch_size=ROW_GROUP):
                    seen.update(batch.column("path").to_pylist())
                    writer.write_batch(batch)
                    rows += batch.num_rows
            for chunk in chunked(_unseen(records, seen), ROW_GROUP):
                writer.write_table(pa.Table.from_pylist(chunk, schema=columns))
                rows += len(chunk)
        os.replace(tmp, target)  # readers see the old file or the new one, never half
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def _unseen(records: Iterable[dict[str, Any]], seen: set[str]) -> Iterator[dict[str, Any]]:
    # Dropping repeats makes a conversion that crashed after replacing the target, but before
    # deleting the journals, harmless to run again.
    for record in records:
        if record["path"] not in seen:
            seen.add(record["path"])
            yield record
