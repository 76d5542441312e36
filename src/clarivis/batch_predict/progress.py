"""A live progress line on stderr for predict_to_file (the total is unknown while streaming)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from clarivis.batch_predict.run import PredictSummary

LOG_EVERY_S = 30.0  # seconds between plain progress lines when stderr is not a terminal


class PredictProgress:
    """Call it with the running summary after each batch; use it as a context manager."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,  # logs and CI get a plain line now and then
        )
        self.task = None
        self.start = self.last_line = time.perf_counter()

    def __enter__(self) -> PredictProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def __call__(self, summary: PredictSummary) -> None:
        rows = summary.predicted + summary.errors
        now = time.perf_counter()
        text = (f"predicting: {rows:,} images ({summary.errors:,} errors, {summary.skipped:,} "
                f"already done) {rows / max(now - self.start, 1e-9):.0f} img/s")
        if self.task is None:
            # Started on the first batch only: processes that never report show nothing.
            self.progress.start()
            self.task = self.progress.add_task(text, total=None)
        self.progress.update(self.task, description=text)
        if not self.console.is_terminal and now - self.last_line >= LOG_EVERY_S:
            self.console.print(f"  {text}")
            self.last_line = now
