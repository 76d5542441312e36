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
from clarivis.evaluate.plots import save_evaluation, save_multilabel_evaluation
from clarivis.evaluate.thresholds import calibrate_multilabel_bundle
from clarivis.metrics import EvaluationResult, compute_metrics
from clarivis.multilabel_metrics import MultilabelEvaluation, compute_multilabel_metrics
from clarivis.spec import CONFIG_NAME


@dataclass
class RunValidation:
    evaluation: EvaluationResult | MultilabelEvaluation  # the calibrated model's metrics on val
    scored: ScoredValidation  # the split through the model, for the report


def validate_run(run_dir: Path, bundle_dir: Path, device: str | None = None, *,
                 threshold_precision: float | None = None) -> RunValidation | None:
    """Calibrate the run's bundle on its val split and write the val files; None when the run
    has no val split or no bundle. Multi-label bundles get a temperature and a threshold a
    class (`threshold_precision`: see fit_thresholds)."""
    split = json.loads((run_dir / runs.SPLIT).read_text())
    if not split["val"] or not (bundle_dir / CONFIG_NAME).exists():
        return None
    clf = Classifier.load(bundle_dir, device=device)
    scored = score_samples(clf, [Sample.from_record(v) for v in split["val"]])
    if clf.config.multilabel:
        return _validate_multilabel(run_dir, bundle_dir, scored, threshold_precision)
    val, logits = scored.val, scored.logits
    clf.config = calibrate_bundle(bundle_dir, logits, val.targets)
    probs = torch.softmax(logits / clf.config.temperature, dim=1)
    evaluation = compute_metrics(probs, val.targets, clf.class_names)
    evaluation.skipped = val.skipped
    save_evaluation(evaluation, run_dir / runs.VAL_METRICS)
    reliability = calibration_report(logits, val.targets, clf.config.temperature)
    (run_dir / runs.VAL_CALIBRATION).write_text(json.dumps(reliability, indent=2))
    return RunValidation(evaluation, scored)


def _validate_multilabel(run_dir: Path, bundle_dir: Path, scored: ScoredValidation,
                         threshold_precision: float | None) -> RunValidation:
    clf, val, logits = scored.clf, scored.val, scored.logits
    clf.config = calibrate_multilabel_bundle(bundle_dir, logits, val.targets,
                                             precision_target=threshold_precision)
    probs = clf.probabilities(logits)
    evaluation = compute_multilabel_metrics(probs, val.targets, clf.class_names,
                                            clf.config.label_thresholds())
    evaluation.skipped = val.skipped
    save_multilabel_evaluation(evaluation, run_dir / runs.VAL_METRICS)
    return RunValidation(evaluation, scored)


def calibration_summary(evaluation, calibration: dict) -> str:
    """'ECE 0.081 -> 0.034 (temperature 1.42)', or the plain ECE when no temperature was fitted;
    multi-label: the mean BCE before and after the per-class temperatures."""
    if "bce_after" in calibration:
        return (f"BCE {calibration['bce_before']:.3f} -> {calibration['bce_after']:.3f} "
                "(a temperature and a bias a class)")
    if getattr(evaluation, "task", "") == "multilabel":
        return "thresholds 0.5 (too few validation images to fit them)"
    if "ece_after" in calibration:
        return (f"ECE {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f} "
                f"(temperature {calibration['temperature']:.2f})")
    return f"ECE {evaluation.ece:.3f}"
