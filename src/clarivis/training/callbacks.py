"""What a run reports while it trains: a rich progress bar, metrics.jsonl and TensorBoard."""

from __future__ import annotations

import json
import time
from functools import cache
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from clarivis import runs
from clarivis.extras import install_hint

LOG_EVERY_S = 30.0  # seconds between plain progress lines when stderr is not a terminal


class RunLogger:
    """Appends one JSON object per epoch to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True):
        self.jsonl = run_dir / runs.METRICS_LOG
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # the optional 'tensorboard' extra

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # the 'tensorboard' extra; never fail a run over logs
                _note_no_tensorboard()

    def log_epoch(self, record: dict[str, Any]) -> None:
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(key.replace("_", "/", 1), value, record["epoch"])
            self.writer.flush()

    def truncate_after(self, epoch: int) -> None:
        """On resume, drop records of the epoch that was interrupted (written after the ckpt)."""
        if not self.jsonl.exists():
            return
        keep = [line for line in self.jsonl.read_text().splitlines()
                if line.strip() and json.loads(line).get("epoch", 0) <= epoch]
        self.jsonl.write_text("".join(line + "\n" for line in keep))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@cache  # once per process: label checks and sweeps train many runs
def _note_no_tensorboard() -> None:
    Console(stderr=True, soft_wrap=True).print(
        "note: no TensorBoard events without the 'tensorboard' extra (metrics.jsonl has every epoch): "
        f"{install_hint('tensorboard')}", markup=False, highlight=False)


REFRESH_S = 0.5


class EpochProgress:
    """A progress bar for one epoch with running loss, accuracy, images/s and ETA."""

    def __init__(self, console: Console, epoch: int, epochs: int, steps: int):
        self.progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f} "
                       "{task.fields[ips]:.0f} img/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,  # logs and CI get one line per epoch instead
        )
        self.task = self.progress.add_task("train", total=steps, loss=0.0, acc=0.0, ips=0.0)
        self.console, self.epoch, self.steps = console, epoch, steps
        self.start = self.last_line = self.last_refresh = time.perf_counter()
        self.images = self.step = 0

    def __enter__(self) -> EpochProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def wants_update(self) -> bool:
        """Refresh the shown loss about twice a second: reading it from a GPU costs a sync."""
        return time.perf_counter() - self.last_refresh >= REFRESH_S or self.step + 1 >= self.steps

    def advance(self, *, images: int) -> None:
        self.images += images
        self.step += 1
        self.progress.update(self.task, advance=1)

    def update(self, *, images: int, loss: float, acc: float) -> None:
        self.last_refresh = time.perf_counter()
        self.images += images
        ips = self.images / max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.task, advance=1, loss=loss, acc=acc, ips=ips)
        self.step += 1
        now = time.perf_counter()
        if not self.console.is_terminal and now - self.last_line >= LOG_EVERY_S:
            # Logs and CI have no live bar: a plain line now and then shows the run is alive.
            eta = (self.steps - self.step) * (now - self.start) / self.step
            self.console.print(f"  epoch {self.epoch} step {self.step}/{self.steps} loss "
                               f"{loss:.3f} acc {acc:.3f} {ips:.0f} img/s eta {eta:.0f}s")
            self.last_line = now
