"""What a training run returns (the epoch loop and the linear probe both give one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainResult:
    run_dir: Path
    bundle_dir: Path
    best_epoch: int
    best_val_accuracy: float | None  # None when trained without a validation split
    epochs_run: int
    stopped_early: bool
    images_per_second: float  # training throughput, last epoch
    history: list[dict] = field(default_factory=list)
    best_val_map: float | None = None  # multi-label runs: the best epoch's val mAP (macro)
