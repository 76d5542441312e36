"""The end of a training run: the saved (best) model on the run's validation split. Fits the
temperature and the open-set threshold into the bundle, writes val_metrics.json (with its
confusion PNG) and val_calibration.json, and hands the scored split on to the report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from clarivis import runs
from clarivis.classifier import Classifier
from clarivis.data.sources import Sample
from clarivis.evaluate.calibration import calibrate_bundle, calibration_report
from clarivis.evaluate.inputs import ScoredValidation, score_samples
from clarivis.evaluate.plots import save_evaluation
from clarivis.metrics import EvaluationResult, compute_metrics
from clarivis.spec import CONFIG_NAME


@dataclass
class RunValidation:
    evaluation: EvaluationResult  # the calibrated model's metrics on val
    scored: ScoredValidation  # the split through the model, for the report


def validate_run(run_dir: Path, bundle_dir: Path, device: str | None = None) -> RunValidation | None:
    """Calibrate the run's bundle on its val split and write the val files; None when the run
    has no val split or no bundle."""
    split = json.loads((run_dir / runs.SPLIT).read_text())
    if not split["val"] or not (bundle_dir / CONFIG_NAME).exists():
        return None
    clf = Classifier.load(bundle_dir, device=device)
    scored = score_samples(clf, [Sample(v["path"], v["label"]) for v in split["val"]])
    val, logits = scored.val, scored.logits
    clf.config = calibrate_bundle(bundle_dir, logits, val.targets)
    probs = torch.softmax(logits / clf.config.temperature, dim=1)
    evaluation = compute_metrics(probs, val.targets, clf.class_names)
    evaluation.skipped = val.skipped
    save_evaluation(evaluation, run_dir / runs.VAL_METRICS)
    reliability = calibration_report(logits, val.targets, clf.config.temperature)
    (run_dir / runs.VAL_CALIBRATION).write_text(json.dumps(reliability, indent=2))
    return RunValidation(evaluation, scored)


def calibration_summary(evaluation: EvaluationResult, calibration: dict) -> str:
    """'ECE 0.081 -> 0.034 (temperature 1.42)', or the plain ECE when no temperature was fitted."""
    if "ece_after" in calibration:
        return (f"ECE {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f} "
                f"(temperature {calibration['temperature']:.2f})")
    return f"ECE {evaluation.ece:.3f}"
