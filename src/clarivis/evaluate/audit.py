"""`clarivis audit`: everything a reviewer asks of a model before it ships, measured on a test
set in one pass: metrics, calibration, subgroups, open-set rejection, corruption robustness and
(on request) adversarial robustness. The result is one JSON document that the report renders."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from clarivis import runs
from clarivis.classifier import Classifier
from clarivis.data.sources import evaluation_samples, index_dataset
from clarivis.errors import DataError
from clarivis.evaluate.adversarial import adversarial_robustness
from clarivis.evaluate.calibration import calibration_report
from clarivis.evaluate.inputs import LabeledPixels, load_labeled_pixels
from clarivis.evaluate.ood import rejection_report
from clarivis.evaluate.robustness import corruption_robustness
from clarivis.evaluate.subgroups import subgroup_report
from clarivis.fileio import atomic_write
from clarivis.metrics import compute_metrics

AUDIT_NAME = runs.AUDIT  # in the run folder, where `clarivis report` finds it


@dataclass
class AuditResult:
    """The audit JSON; every section is a plain dict (None: not run, with the reason in notes)."""

    model: str
    data: str
    num_images: int  # readable test images, known and unknown classes
    metrics: dict  # EvaluationResult on the images of known classes, calibrated
    calibration: dict  # ECE/NLL and reliability bins before and after the temperature
    subgroups: dict  # {column: {group: {accuracy, ...}}, "flagged": [...], "summary": {...}}
    open_set: dict | None  # AUROC and rejection rates; needs images of classes the model lacks
    robustness: dict | None  # corruption accuracy per severity, mean and relative drop
    adversarial: dict | None  # FGSM/PGD accuracy per eps (with --adversarial)
    skipped: list[dict] = field(default_factory=list)  # unreadable test files
    notes: list[str] = field(default_factory=list)  # why a section is empty
    seconds: dict = field(default_factory=dict)  # wall time per stage

    def to_dict(self) -> dict:
        return asdict(self)


def audit(
    model,
    data: str | Path,
    *,
    groups: list[str] | None = None,
    robustness: bool = True,
    robustness_images: int | None = None,
    adversarial: bool = False,
    adversarial_images: int = 256,
    device: str | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> AuditResult:
    """Audit `model` (bundle path or Classifier) on labeled `data` (folder, split folder or CSV
    manifest whose extra columns are group attributes). Images of classes the model was not
    trained on are kept as the open-set test."""
    clf = model if isinstance(model, Classifier) else Classifier.load(model, device=device)
    stage = on_stage or (lambda _: None)
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    stage("loading test images")
    samples = evaluation_samples(index_dataset(data))
    columns = _group_columns(samples, groups, data)
    test = load_labeled_pixels(clf, samples)
    if not bool(test.known.any()):
        raise DataError(f"no image in {data} belongs to the model's classes "
                        f"({', '.join(clf.class_names[:10])}); audit needs labeled test images")
    logits = clf.pixel_logits(test.pixels)
    seconds["inference"] = time.perf_counter() - started
    notes: list[str] = []

    known = test.known
    t = clf.config.temperature
    probs = torch.softmax(logits[known] / t, dim=1)
    metrics = compute_metrics(probs, test.targets[known], clf.class_names).to_dict()
    calibration = calibration_report(logits[known], test.targets[known], t)
    if t == 1.0:
        notes.append("the bundle has no fitted temperature (T = 1): " +
                     clf.config.calibration.get("note", "retrain with a validation split to fit one"))

    stage("subgroups")
    subgroups = _timed(seconds, "subgroups", _subgroups, test, probs.argmax(dim=1), columns,
                       len(clf.class_names), notes)

    open_set = None
    if clf.config.ood is None:
        notes.append("open-set: the bundle has no rejection threshold (fitted on val in training)")
    else:
        open_set = rejection_report(logits, known, t, clf.config.ood)
        if not open_set["auroc"]:
            notes.append("open-set AUROC needs test images of classes the model was not trained "
                         "on (add a folder of other classes to the test data)")

    name = clf.config.architecture if isinstance(model, Classifier) else str(model)
    result = AuditResult(name, str(data), len(test.samples), metrics,
                         calibration, subgroups, open_set, None, None, test.skipped, notes, seconds)
    # Both stages keep the images of known classes themselves (robustness.known_images).
    if robustness:
        stage("corruption robustness")
        result.robustness = _timed(seconds, "robustness", _robustness, clf, test,
                                   robustness_images)
    if adversarial:
        stage("adversarial attacks")
        result.adversarial = _timed(seconds, "adversarial", _adversarial, clf, test,
                                    adversarial_images)
    seconds["total"] = time.perf_counter() - started
    return result


def _robustness(clf, data: LabeledPixels, max_images: int | None) -> dict:
    kwargs = {} if max_images is None else {"max_images": max_images}
    return corruption_robustness(clf, data, **kwargs).to_dict()


def _adversarial(clf, data: LabeledPixels, max_images: int) -> dict:
    return adversarial_robustness(clf, data, max_images=max_images).to_dict()


def _timed(seconds: dict, name: str, fn, *args):
    start = time.perf_counter()
    try:
        return fn(*args)
    finally:
        seconds[name] = time.perf_counter() - start


def _group_columns(samples, groups: list[str] | None, data) -> list[str]:
    """The attribute columns to split by: the ones asked for, else every manifest column."""
    available = sorted({c for s in samples for c in s.groups})
    if groups is None:
        return available
    missing = [g for g in groups if g not in available]
    if missing:
        have = f"its columns are {', '.join(available)}" if available else (
            "group attributes come from the extra columns of a CSV manifest (path,label,COLUMN,...)")
        raise DataError(f"{data} has no group column {', '.join(missing)}; {have}")
    return groups


def _subgroups(test: LabeledPixels, predicted: torch.Tensor, columns: list[str], num_classes: int,
               notes: list[str]) -> dict:
    if not columns:
        notes.append("subgroups: no group attributes (pass a CSV manifest with extra columns)")
        return {"flagged": [], "summary": {}}
    # Here, not at the top: fairlearn brings scikit-learn, scipy.stats and pandas (2 s on 2 cores),
    # which the report, reading only AUDIT_NAME, must not pay at the end of every training run.
    known = [s for s, k in zip(test.samples, test.known.tolist(), strict=True) if k]
    attributes = {c: [s.groups.get(c, "") or "(blank)" for s in known] for c in columns}
    return subgroup_report(test.targets[test.known].numpy(), predicted.numpy(), attributes,
                           num_classes=num_classes)


def save_audit(result: AuditResult, json_path: str | Path) -> Path:
    """Write the audit JSON (atomically: an interrupted write never leaves half a file)."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result.to_dict(), indent=2)
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))
    return json_path


def run_folder_of(bundle_dir: str | Path) -> Path | None:
    """The run folder holding this bundle as model/ (where the report lives), if it is one."""
    parent = Path(bundle_dir).parent  # not resolved: messages keep the path the user typed
    return parent if (parent / runs.SPLIT).is_file() or (parent / runs.METRICS_LOG).is_file() else None
