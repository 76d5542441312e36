"""predict_to_file: stream predictions for any number of images into a CSV, JSONL or Parquet
file, resumable, split over the processes of a torchrun job."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clarivis.batch_predict.outputs import (
    done_paths,
    finalize,
    open_writer,
    output_format,
    prepare_target,
    refuse_existing,
    working_path,
)
from clarivis.batch_predict.stream import Source, iter_sources, predict_batch, shard, skip_done
from clarivis.batch_predict.writers import RowLayout, RowWriter, chunked
from clarivis.classifier import Classifier
from clarivis.data.expand import SkippedFiles
from clarivis.distributed import (
    World,
    barrier,
    process_group,
    rank_device,
    sum_across,
    world_from_env,
)
from clarivis.errors import ClarivisError
from clarivis.spec import read_bundle_config


@dataclass
class PredictSummary:
    """Rows written by this run (all processes together) and where they went."""

    out: Path
    predicted: int = 0  # rows with a label
    errors: int = 0  # error rows (unreadable or missing inputs)
    skipped: int = 0  # inputs already in the output (--resume)
    processes: int = 1
    is_main: bool = True  # rank 0: the process that merged the output and reports it
    # Files the folder walk left out (not images; hidden and system files): no row in the
    # output. Every process walks all the inputs, so each one's count is already the total.
    left_out: SkippedFiles = field(default_factory=SkippedFiles)

    def line(self) -> str:
        text = f"{self.predicted:,} predicted, {self.errors:,} error{'' if self.errors == 1 else 's'}"
        if self.left_out.not_images:
            n = self.left_out.not_images
            text += f", {n:,} non-image{'' if n == 1 else 's'} skipped"
        if self.skipped:
            text += f", {self.skipped:,} already done"
        if self.processes > 1:
            text += f" ({self.processes} processes)"
        return text + f"; wrote {self.out}"


ProgressCallback = Callable[[PredictSummary], None]


@dataclass(frozen=True)
class PredictOptions:
    """How predict_to_file predicts: one typed object (predict_to_file also takes its fields
    by keyword, as the CLI and the README call it)."""

    resume: bool = False  # skip paths already in `out`; without it an existing `out` is an error
    top_k: int = 5  # labels per image
    batch_size: int = 64  # images per forward pass (memory holds one batch)
    device: str | None = None  # None: the best available (each torchrun rank its own GPU)
    reject: bool = True  # answer "unknown" below the bundle's open-set threshold

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ClarivisError(f"--top-k must be at least 1 (got {self.top_k})")
        if self.batch_size < 1:
            raise ClarivisError(f"--batch-size must be at least 1 (got {self.batch_size})")


def predict_to_file(
    model: str | Path | Classifier,
    inputs: str | Path | Iterable[str | Path],
    out: str | Path,
    options: PredictOptions | None = None,
    *,
    on_progress: ProgressCallback | None = None,
    **fields: Any,
) -> PredictSummary:
    """Predict every image under `inputs` (files, folders, globs) into `out`, whose suffix
    (.csv, .jsonl, .parquet) picks the format. Memory holds one batch of images, whatever the
    number of files. `fields`: PredictOptions' fields by keyword (resume, top_k, batch_size,
    device, reject), over `options`. `resume=True` skips paths already in `out`; without it an
    existing `out` is an error. Under torchrun each process predicts every WORLD_SIZE-th file
    into a part file and rank 0 merges the parts. `on_progress` is called after each batch on
    rank 0. Files in a folder that are not images get no row: the summary counts them and
    `summary.left_out` names the first few (clarivis.data.expand says which files those are)."""
    opts = replace(options or PredictOptions(), **fields)
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)  # the arguments only
    target = Path(out).expanduser()
    fmt = output_format(target)
    prepare_target(target)
    world = world_from_env()
    # Every check happens before any process writes (the barrier below), so all processes see
    # the same files and fail or go on together.
    if not opts.resume:
        refuse_existing(target, fmt)
    # The model's columns (a multi-label model's differ), known before a resumed file is read.
    config = model.config if isinstance(model, Classifier) else read_bundle_config(model)
    layout = RowLayout.for_model(config, opts.top_k)
    done = done_paths(target, fmt, layout) if opts.resume else set()
    clf = model if isinstance(model, Classifier) else Classifier.load(
        model, device=rank_device(opts.device, world), reject=opts.reject)
    summary = PredictSummary(out=target, processes=world.size, is_main=world.is_main)
    with process_group(world):
        barrier(world)
        sources = _share(inputs, world, done, summary)
        with closing(open_writer(working_path(target, fmt, world.rank, world.size), fmt, layout)) as writer:
            _write_predictions(clf, sources, writer, layout.predict_k, opts.batch_size, summary,
                               on_progress if world.is_main else None)
        barrier(world)  # every part is complete before rank 0 merges them
        if world.is_main:
            finalize(target, fmt, layout)
        # Also keeps the other ranks alive until rank 0 has merged (torchrun stops all
        # processes once one of them exits with an error).
        counts = [int(c) for c in sum_across(world, [summary.predicted, summary.errors, summary.skipped])]
    summary.predicted, summary.errors, summary.skipped = counts
    return summary


def _share(inputs: list[str | Path], world: World, done: set[str],
           summary: PredictSummary) -> Iterator[Source]:
    """This process's share of the inputs, without those already done (counted as skipped)."""
    def count_skip() -> None:
        summary.skipped += 1

    return skip_done(shard(iter_sources(inputs, summary.left_out), world.rank, world.size), done,
                     count_skip)


def _write_predictions(clf: Classifier, sources: Iterable[Source], writer: RowWriter, top_k: int,
                       batch_size: int, summary: PredictSummary,
                       on_progress: ProgressCallback | None) -> None:
    """Predict the sources batch by batch, appending each batch's rows to the writer."""
    for batch in chunked(sources, batch_size):
        rows = predict_batch(clf, batch, top_k)
        writer.write(rows)
        failed = sum(1 for row in rows if row.error)
        summary.errors += failed
        summary.predicted += len(rows) - failed
        if on_progress is not None:
            on_progress(summary)
