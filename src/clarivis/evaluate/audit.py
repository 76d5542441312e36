"""`clarivis audit`: everything a reviewer asks of a model before it ships, measured on a test
set in one pass: metrics, calibration, subgroups, open-set rejection, corruption robustness and
(on request) adversarial robustness. The result is one JSON document that the report renders;
auditing a run's bundle saves it in the run folder, where `clarivis report` finds it.

A multi-label model (task "multilabel") is audited on what its outputs mean: metrics are
mAP / F1 at its thresholds / subset accuracy (multilabel_metrics), calibration is class-wise
(ECE and BCE per sigmoid), subgroups, corruptions and attacks (on the whole label set) are
measured in mAP; open-set rejection, which needs one softmax answer, is not run and a note
says so."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from clarivis import runs
from clarivis.classifier import Classifier
from clarivis.data.sources import evaluation_samples, index_dataset
from clarivis.errors import DataError
from clarivis.evaluate.adversarial import adversarial_robustness, multilabel_adversarial_robustness
from clarivis.evaluate.calibration import calibration_report, multilabel_calibration_report
from clarivis.evaluate.inputs import LabeledPixels, load_labeled_pixels
from clarivis.evaluate.ood import rejection_report
from clarivis.evaluate.robustness import corruption_robustness, multilabel_corruption_robustness
from clarivis.evaluate.subgroups import multilabel_subgroup_report, subgroup_report
from clarivis.fileio import atomic_write
from clarivis.metrics import compute_metrics
from clarivis.spec import resolve_bundle_path

AUDIT_NAME = runs.AUDIT  # in the run folder, where `clarivis report` finds it
SINGLE_LABEL_ONLY = ("{}: applies to single-label models (one softmax answer an image); "
                     "not run on this multi-label model")


@dataclass
class AuditResult:
    """The audit JSON; every section is a plain dict (None: not run, with the reason in notes)."""

    model: str
    data: str
    num_images: int  # readable test images, known and unknown classes
    # EvaluationResult on the images of known classes, calibrated (multi-label:
    # MultilabelEvaluation on every image: map_macro, f1_macro, per_class, ...)
    metrics: dict
    # ECE/NLL and reliability bins before and after the temperature (multi-label: class-wise
    # ECE, BCE, pooled reliability bins and per_class rows, before and after each class's T)
    calibration: dict
    # {column: {group: {accuracy, ...}}, "flagged": [...], "summary": {...}} (multi-label:
    # {group: {map, f1, subset_accuracy, ...}}, flagged on map, "metric": "map")
    subgroups: dict
    open_set: dict | None  # AUROC and rejection rates; needs images of classes the model lacks
    # corruption accuracy per severity, mean and relative drop (multi-label: clean_map,
    # mean_corruption_map, corruptions[name]["map"], relative_drop, "metric": "map")
    robustness: dict | None
    # FGSM/PGD accuracy per eps (with --adversarial; multi-label: clean_map and mAP per eps)
    adversarial: dict | None
    skipped: list[dict] = field(default_factory=list)  # unreadable test files
    notes: list[str] = field(default_factory=list)  # why a section is empty
    seconds: dict = field(default_factory=dict)  # wall time per stage
    task: str = "multiclass"  # the model's: multiclass or multilabel (how to read the sections)
    # Where audit() saved this JSON in the model's run folder (RUN/audit.json); None when the
    # model is not the bundle of a run. Not part of the JSON.
    run_file: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["run_file"]
        return data


@dataclass(frozen=True)
class AuditOptions:
    """What audit measures beyond metrics and calibration: one typed object (audit also takes
    its fields by keyword, as the CLI calls it)."""

    groups: list[str] | None = None  # manifest columns to split by [every extra column]
    robustness: bool = True  # the corruption sweep
    robustness_images: int | None = None  # images corrupted [corruption_robustness's default]
    adversarial: bool = False  # FGSM/PGD attacks (slow on CPU)
    adversarial_images: int = 256  # images attacked
    device: str | None = None  # for a bundle path; None: the best available


def audit(model, data: str | Path, options: AuditOptions | None = None, *,
          on_stage: Callable[[str], None] | None = None, **fields: Any) -> AuditResult:
    """Audit `model` (bundle path or Classifier) on labeled `data` (folder, split folder or CSV
    manifest whose extra columns are group attributes). Images of classes the model was not
    trained on are kept as the open-set test. `fields`: AuditOptions' fields by keyword, over
    `options`; `on_stage` is called with each stage's name as it starts. When `model` is the
    path of a run's bundle, the result is also saved as RUN/audit.json (result.run_file)."""
    opts = replace(options or AuditOptions(), **fields)
    clf = model if isinstance(model, Classifier) else Classifier.load(model, device=opts.device)
    stage = on_stage or (lambda _: None)
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    stage("loading test images")
    test, columns = _load_test(clf, data, opts.groups)
    logits = clf.pixel_logits(test.pixels)
    seconds["inference"] = time.perf_counter() - started
    notes: list[str] = []
    multilabel = clf.config.multilabel
    if multilabel:
        probs, metrics, calibration = _multilabel_metrics(clf, test, logits, notes)
    else:
        probs, metrics, calibration = _known_class_metrics(clf, test, logits, notes)

    stage("subgroups")
    if multilabel:
        subgroups = _timed(seconds, "subgroups", _multilabel_subgroups, clf, test, probs, columns, notes)
        open_set = None
        notes.append(SINGLE_LABEL_ONLY.format("open-set rejection"))
    else:
        subgroups = _timed(seconds, "subgroups", _subgroups, test, probs.argmax(dim=1), columns,
                           len(clf.class_names), notes)
        open_set = _open_set(clf, logits, test.known, notes)

    name = clf.config.architecture if isinstance(model, Classifier) else str(model)
    result = AuditResult(name, str(data), len(test.samples), metrics, calibration, subgroups,
                         open_set, None, None, test.skipped, notes, seconds, task=clf.config.task)
    # Both stages keep the images of known classes themselves (robustness.known_images).
    if opts.robustness:
        stage("corruption robustness")
        result.robustness = _timed(seconds, "robustness", _robustness, clf, test,
                                   opts.robustness_images)
    if opts.adversarial:
        stage("adversarial attacks")
        result.adversarial = _timed(seconds, "adversarial", _adversarial, clf, test,
                                    opts.adversarial_images)
    seconds["total"] = time.perf_counter() - started
    result.run_file = _save_in_run(result, model)
    return result


def _save_in_run(result: AuditResult, model) -> Path | None:
    """RUN/audit.json when `model` is the path of a run's bundle (or of the run), else None."""
    if isinstance(model, Classifier):
        return None
    run = run_folder_of(resolve_bundle_path(model))
    return save_audit(result, run / AUDIT_NAME) if run is not None else None


def _load_test(clf: Classifier, data: str | Path,
               groups: list[str] | None) -> tuple[LabeledPixels, list[str]]:
    """The decoded test images and the group columns to split them by."""
    # As Classifier.evaluate reads data: a multi-label model reads a manifest's cells as sets.
    index = index_dataset(data, task="multilabel" if clf.config.multilabel else "auto")
    if index.task == "multilabel" and not clf.config.multilabel:
        raise DataError(f"{data} is multi-label (a 'labels' column) but the model is "
                        "single-label; audit a model trained on multi-label data")
    samples = evaluation_samples(index)
    columns = _group_columns(samples, groups, data)
    test = load_labeled_pixels(clf, samples)
    if clf.config.multilabel and not bool(test.targets.any()):
        raise DataError(f"no image in {data} has any of the model's labels "
                        f"({', '.join(clf.class_names[:10])}); audit needs labeled test images")
    if not bool(test.known.any()):
        raise DataError(f"no image in {data} belongs to the model's classes "
                        f"({', '.join(clf.class_names[:10])}); audit needs labeled test images")
    return test, columns


def _known_class_metrics(clf: Classifier, test: LabeledPixels, logits: torch.Tensor,
                         notes: list[str]) -> tuple[torch.Tensor, dict, dict]:
    """(calibrated probabilities (K, C), metrics, calibration) on the K images of known classes."""
    known, t = test.known, clf.config.temperature
    probs = torch.softmax(logits[known] / t, dim=1)
    metrics = compute_metrics(probs, test.targets[known], clf.class_names).to_dict()
    calibration = calibration_report(logits[known], test.targets[known], t)
    if t == 1.0:
        notes.append("the bundle has no fitted temperature (T = 1): " +
                     clf.config.calibration.get("note", "retrain with a validation split to fit one"))
    return probs, metrics, calibration


def _multilabel_metrics(clf: Classifier, test: LabeledPixels, logits: torch.Tensor,
                        notes: list[str]) -> tuple[torch.Tensor, dict, dict]:
    """(calibrated probabilities (N, C), MultilabelEvaluation dict, class-wise calibration) on
    every test image; labels the model lacks are left out of the targets, and a note names them."""
    from clarivis.multilabel_metrics import compute_multilabel_metrics  # torchmetrics: this path only

    probs = clf.probabilities(logits)
    config = clf.config
    metrics = compute_multilabel_metrics(probs, test.targets, clf.class_names,
                                         config.label_thresholds()).to_dict()
    calibration = multilabel_calibration_report(logits, test.targets, config.label_temperatures(),
                                                clf.class_names, config.label_biases())
    unknown = sorted({n for s in test.samples for n in s.label_set} - set(clf.class_names))
    if unknown:
        notes.append(f"labels the model was not trained on are left out: {', '.join(unknown[:10])}")
    if config.temperatures is None or "note" in config.calibration:
        notes.append("the bundle has no fitted temperatures and thresholds: " +
                     config.calibration.get("note", "retrain with a validation split to fit them"))
    return probs, metrics, calibration


def _multilabel_subgroups(clf: Classifier, test: LabeledPixels, probs: torch.Tensor,
                          columns: list[str], notes: list[str]) -> dict:
    if not columns:
        notes.append("subgroups: no group attributes (pass a CSV manifest with extra columns)")
        return {"metric": "map", "flagged": [], "summary": {}}
    attributes = {c: [s.groups.get(c, "") or "(blank)" for s in test.samples] for c in columns}
    return multilabel_subgroup_report(probs.numpy(), test.targets.numpy(),
                                      clf.config.label_thresholds(), attributes)


def _open_set(clf: Classifier, logits: torch.Tensor, known: torch.Tensor,
              notes: list[str]) -> dict | None:
    """Rejection of the images of unknown classes at the bundle's threshold (None: no threshold)."""
    if clf.config.ood is None:
        notes.append("open-set: the bundle has no rejection threshold (fitted on val in training)")
        return None
    open_set = rejection_report(logits, known, clf.config.temperature, clf.config.ood)
    if not open_set["auroc"]:
        notes.append("open-set AUROC needs test images of classes the model was not trained "
                     "on (add a folder of other classes to the test data)")
    return open_set


def _robustness(clf, data: LabeledPixels, max_images: int | None) -> dict:
    kwargs = {} if max_images is None else {"max_images": max_images}
    sweep = multilabel_corruption_robustness if clf.config.multilabel else corruption_robustness
    return sweep(clf, data, **kwargs).to_dict()


def _adversarial(clf, data: LabeledPixels, max_images: int) -> dict:
    attacks = multilabel_adversarial_robustness if clf.config.multilabel else adversarial_robustness
    return attacks(clf, data, max_images=max_images).to_dict()


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
