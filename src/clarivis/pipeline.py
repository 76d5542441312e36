"""`clarivis train` as a whole job: train (or fit a linear probe), then calibrate and score the
best model on the validation split, then write the report. A workflow: it composes the
training, evaluate and report stages and owns nothing else."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import Console

from clarivis.config import build_config
from clarivis.evaluate.thresholds import always_yes_labels
from clarivis.evaluate.validation import calibration_summary, validate_run
from clarivis.report.html import write_report
from clarivis.training.dispatch import TrainResult, run_training


def train(
    data: str | Path,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    config: str | Path | None = None,
    console: Console | None = None,
    **settings: Any,
) -> TrainResult:
    """Train a classifier on `data`; settings are TrainConfig fields (model=, epochs=, ...)."""
    if out is not None:
        settings["out"] = str(out)
    resolved = build_config(config, data=str(data), **settings)
    result = run_training(resolved, resume=resume, console=console)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 alone writes files
        return result
    console = console or Console(stderr=True, soft_wrap=True)
    checked = validate_run(result.run_dir, result.bundle_dir, resolved.device,
                           threshold_precision=resolved.threshold_precision)
    if checked is not None and getattr(checked.evaluation, "task", "") == "multilabel":
        config = checked.scored.clf.config
        fit = calibration_summary(checked.evaluation, config.calibration)
        console.print(f"best model (epoch {result.best_epoch}): val {checked.evaluation.headline} "
                      f"at the fitted thresholds; {fit}")
        weak = always_yes_labels(config.calibration, config.class_names)
        if weak:
            console.print(f"[yellow]the best-F1 threshold of {', '.join(weak[:5])} says yes on nearly "
                          "every validation image: the model barely tells them apart yet; train longer "
                          "or fit precision thresholds (--threshold-precision 0.8)")
    elif checked is not None:
        ev = checked.evaluation
        console.print(
            f"best model (epoch {result.best_epoch}): val accuracy {ev.accuracy:.3f}, "
            f"balanced {ev.balanced_accuracy:.3f}, "
            f"{calibration_summary(ev, checked.scored.clf.config.calibration)}"
        )
    if resolved.report:
        path = write_report(result.run_dir, device=resolved.device,
                            scored=checked.scored if checked else None)
        console.print(f"report: {path}")
    return result
