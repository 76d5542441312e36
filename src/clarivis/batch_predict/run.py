"""predict_to_file: stream predictions for any number of images into a CSV, JSONL or Parquet
file, resumable, split over the processes of a torchrun job."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from clarivis.api import Classifier
from clarivis.batch_predict.outputs import (
    done_paths,
    finalize,
    open_writer,
    output_format,
    prepare_target,
    refuse_existing,
    working_path,
)
from clarivis.batch_predict.stream import iter_sources, predict_batch, shard, skip_done
from clarivis.batch_predict.writers import chunked
from clarivis.distributed import (
    World,
    barrier,
    process_group,
    rank_device,
    sum_across,
    world_from_env,
)
from clarivis.errors import ClarivisError


@dataclass
class PredictSummary:
    """Rows written by this run (all processes together) and where they went."""

    out: Path
    predicted: int = 0  # rows with a label
    errors: int = 0  # error rows (unreadable or missing inputs)
    skipped: int = 0  # inputs already in the output (--resume)
    processes: int = 1
    is_main: bool = True  # rank 0: the process that merged the output and reports it

    def line(self) -> str:
        text = f"{self.predicted:,} predicted, {self.errors:,} error{'' if self.errors == 1 else 's'}"
        if self.skipped:
            text += f", {self.skipped:,} already done"
        if self.processes > 1:
            text += f" ({self.processes} processes)"
        return text + f"; wrote {self.out}"


ProgressCallback = Callable[[PredictSummary], None]


def predict_to_file(
    model: str | Path | Classifier,
    inputs: str | Path | Iterable[str | Path],
    out: str | Path,
    *,
    resume: bool = False,
    top_k: int = 5,
    batch_size: int = 64,
    device: str | None = None,
    reject: bool = True,
    on_progress: ProgressCallback | None = None,
) -> PredictSummary:
    """Predict every image under `inputs` (files, folders, globs) into `out`, whose suffix
    (.csv, .jsonl, .parquet) picks the format. Memory holds one batch of images, whatever the
    number of files. `resume=True` skips paths already in `out`; without it an existing `out`
    is an error. Under torchrun each process predicts every WORLD_SIZE-th file into a part
    file and rank 0 merges the parts. `on_progress` is called after each batch on rank 0."""
    if top_k < 1:
        raise ClarivisError(f"--top-k must be at least 1 (got {top_k})")
    if batch_size < 1:
        raise ClarivisError(f"--batch-size must be at least 1 (got {batch_size})")
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)  # the arguments only
    target = Path(out).expanduser()
    fmt = output_format(target)
    prepare_target(target)
    world = world_from_env()
    # Every check happens before any process writes (the barrier below), so all processes see
    # the same files and fail or go on together.
    if not resume:
        refuse_existing(target, fmt)
    done = done_paths(target, fmt) if resume else set()
    clf = model if isinstance(model, Classifier) else Classifier.load(
        model, device=rank_device(device, world), reject=reject)
    summary = PredictSummary(out=target, processes=world.size, is_main=world.is_main)
    with process_group(world):
        barrier(world)
        _predict_share(clf, inputs, working_path(target, fmt, world.rank, world.size), fmt, world,
                       done, top_k, batch_size, summary, on_progress if world.is_main else None)
        barrier(world)  # every part is complete before rank 0 merges them
        if world.is_main:
            finalize(target, fmt)
        # Also keeps the other ranks alive until rank 0 has merged (torchrun stops all
        # processes once one of them exits with an error).
        counts = [int(c) for c in sum_across(world, [summary.predicted, summary.errors, summary.skipped])]
    summary.predicted, summary.errors, summary.skipped = counts
    return summary


def _predict_share(clf: Classifier, inputs: list[str | Path], working: Path, fmt: str, world: World,
                   done: set[str], top_k: int, batch_size: int, summary: PredictSummary,
                   on_progress: ProgressCallback | None) -> None:
    """This process's share of the inputs, appended to its working file batch by batch."""
    def count_skip() -> None:
        summary.skipped += 1

    sources = skip_done(shard(iter_sources(inputs), world.rank, world.size), done, count_skip)
    with closing(open_writer(working, fmt)) as writer:
        for batch in chunked(sources, batch_size):
            rows = predict_batch(clf, batch, top_k)
            writer.write(rows)
            failed = sum(1 for row in rows if row.error)
            summary.errors += failed
            summary.predicted += len(rows) - failed
            if on_progress is not None:
                on_progress(summary)
