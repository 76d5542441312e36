"""`clarivis report RUN`: one self-contained HTML file (every image embedded as a data URI, no
script, no network) from what the run folder holds: training log, validation metrics, the audit
and the data check. Sections whose input is missing say which command fills them.

A multi-label run (the bundle's task) reports mAP, F1 at the fitted thresholds, subset accuracy
and Hamming loss, a per-class table of AP / F1 / precision / recall with each class's threshold
and temperature, and no confusion matrix (there is no one true class to confuse)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from clarivis import runs
from clarivis.data.thumbnails import FINDING_THUMBNAIL, data_uri, thumbnail
from clarivis.evaluate import plots
from clarivis.report.card import model_card
from clarivis.report.gallery import ScoredValidation, top_losses
from clarivis.spec import VERSION as __version__
from clarivis.spec import BundleConfig, read_bundle_config, resolve_bundle_path

MAX_FINDINGS = 40  # rows of the data-check table; the JSON file has them all
FINDING_THUMBNAILS = 2  # images shown per finding; a duplicate group lists the rest by path
WEAK = 0.5  # a per-class recall (or AP) below this is shown in red
SINGLE_LABEL_ONLY = ("applies to single-label models (one softmax answer an image); not run on this "
                     "multi-label model")


@dataclass
class Section:
    id: str
    title: str
    html: Markup | str = ""  # rendered section body; empty: not available
    missing: str = ""  # what to run to fill it


def _env() -> Environment:
    return Environment(loader=PackageLoader("clarivis.report", "templates"),
                       autoescape=select_autoescape(["html", "j2"]), trim_blocks=True,
                       lstrip_blocks=True)


def write_report(run: str | Path, *, out: str | Path | None = None, gallery: int = 8,
                 device: str | None = None, scored: ScoredValidation | None = None) -> Path:
    """Write RUN/report.html (or `out`) from the run folder's files; returns its path. `scored`:
    the validation split already through the bundle's model (the end of training passes it), so
    the gallery needs no second decode and forward pass."""
    run_dir = runs.find_run_dir(run)
    bundle_dir = resolve_bundle_path(run_dir / runs.BUNDLE_DIR)
    bundle = read_bundle_config(bundle_dir)
    inputs = _read_inputs(run_dir)
    macros = _env().get_template("sections.html.j2").module
    sections = _sections(_Run(run_dir, bundle_dir, bundle, inputs, macros, gallery, device, scored))
    html = _env().get_template("report.html.j2").render(
        title=f"{run_dir.name}: {bundle.architecture} on {Path(inputs['config'].get('data', '?')).name}",
        version=__version__, written=datetime.now().strftime("%Y-%m-%d %H:%M"), bundle=bundle,
        sections=sections)
    target = Path(out) if out else run_dir / runs.REPORT
    target.write_text(html, encoding="utf-8")
    return target


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_inputs(run_dir: Path) -> dict:
    history = []
    if (run_dir / runs.METRICS_LOG).is_file():
        for line in (run_dir / runs.METRICS_LOG).read_text().splitlines():
            try:
                history.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of an interrupted run
    config_text = (run_dir / runs.RUN_CONFIG).read_text() if (run_dir / runs.RUN_CONFIG).is_file() else ""
    return {
        "history": history, "config_text": config_text,
        "config": yaml.safe_load(config_text) or {} if config_text else {},
        "val": _read_json(run_dir / runs.VAL_METRICS),
        "val_calibration": _read_json(run_dir / runs.VAL_CALIBRATION),
        "audit": _read_json(run_dir / runs.AUDIT),
        "check": _read_json(run_dir / runs.DATA_CHECK),
        "split": _read_json(run_dir / runs.SPLIT),
    }


@dataclass
class _Run:
    """What every section builder reads: the run folder, its bundle and files, the template
    macros, and the gallery settings."""

    run_dir: Path
    bundle_dir: Path
    bundle: BundleConfig
    inputs: dict  # _read_inputs
    m: Any  # the macros of sections.html.j2
    gallery: int  # top-loss images (0: none)
    device: str | None
    scored: ScoredValidation | None

    @property
    def multilabel(self) -> bool:
        return self.bundle.multilabel

    @property
    def audit(self) -> dict | None:
        return self.inputs["audit"]

    @property
    def audit_hint(self) -> str:
        return f"run `clarivis audit {self.run_dir / 'model'} TEST_DATA` to fill this section"

    @property
    def test_metrics(self) -> dict | None:
        return self.audit["metrics"] if self.audit else None

    @property
    def main_metrics(self) -> tuple[dict | None, str]:
        """(metrics, split) the per-class table and the confusion matrix show: test if audited."""
        test = self.test_metrics
        return (test, "test") if test else (self.inputs["val"], "validation")


def _sections(run: _Run) -> list[Section]:
    """The page's sections; a builder returns None for one that does not apply to this run."""
    return [s for s in (builder(run) for builder in _SECTION_BUILDERS) if s is not None]


def _summary_section(r: _Run) -> Section:
    return Section("summary", "Run summary", Markup(r.m.summary(_summary(r.run_dir, r.bundle, r.inputs))))


def _training_section(r: _Run) -> Section:
    s = Section("training", "Training curves", missing="no training log (metrics.jsonl) in this run")
    history = r.inputs["history"]
    probe = history[0] if history and history[0].get("linear_probe") else None
    if probe:  # one fit, no epochs: what was fitted instead of a one-point curve
        s.title = "Linear probe"
        s.html = Markup(r.m.linear_probe(probe))
    elif history:
        training = r.bundle.training
        key, metric = ("best_val_map", "mAP") if r.multilabel else ("best_val_accuracy", "accuracy")
        s.html = Markup(r.m.training({"curves": data_uri(plots.png_bytes(_training_curves(history))),
                                      "epochs": len(history), "metric": metric,
                                      "best_val": training.get(key), "best_epoch": training.get("epoch")}))
    return s


def _training_curves(history: list[dict]):
    """plots' loss and accuracy curves, with the validation mAP of a multi-label run (its
    epochs are ranked by it) drawn on the accuracy panel, whose accuracy is then per label."""
    fig = plots.training_curves_figure(history)
    maps = [row.get("val_map") for row in history]
    if any(v is not None for v in maps):
        ax = fig.axes[-1]
        ax.plot([row["epoch"] for row in history], [math.nan if v is None else v for v in maps], ":",
                marker=".", label="val mAP")
        ax.set_title("accuracy (per label) and mAP")
        ax.legend(loc="lower right")
    return fig


def _metrics_section(r: _Run) -> Section:
    s = Section("metrics", "Metrics", missing="no validation or test metrics in this run")
    splits = [(n, x) for n, x in (("validation", r.inputs["val"]), ("test", r.test_metrics)) if x]
    main_metrics, main_split = r.main_metrics
    if splits and r.multilabel:
        s.html = Markup(r.m.multilabel_metrics(_multilabel_tables(r.bundle, splits, main_metrics,
                                                                  main_split)))
    elif splits:
        s.html = Markup(r.m.metrics({"splits": splits, "per_class": main_metrics["per_class"],
                                  "per_class_split": main_split, "weak_recall": WEAK}))
    return s


def _multilabel_tables(bundle: BundleConfig, splits: list[tuple[str, dict]], main: dict,
                       main_split: str) -> dict:
    """The multi-label metrics macro's input: the splits' summary metrics and the main split's
    per-class rows with each class's fitted temperature."""
    temperatures = dict(zip(bundle.class_names, bundle.label_temperatures(), strict=True))
    rows = [{**row, "temperature": temperatures.get(row["class"])} for row in main["per_class"]]
    return {"splits": splits, "per_class": rows, "per_class_split": main_split, "weak": WEAK,
            "fitted": "bce_after" in bundle.calibration}


def _confusion_section(r: _Run) -> Section | None:
    if r.multilabel:  # no one true class a image: the per-class table stands in for it
        return None
    s = Section("confusion", "Confusion matrix", missing="no metrics to draw it from")
    main_metrics, main_split = r.main_metrics
    if main_metrics:
        png = _saved_val_confusion(r.run_dir) if main_split == "validation" else None
        png = png or plots.png_bytes(plots.confusion_figure(main_metrics["confusion_matrix"],
                                                            main_metrics["class_names"]))
        s.html = Markup(r.m.confusion({"split": main_split, "png": data_uri(png)}))
    return s


def _calibration_section(r: _Run) -> Section:
    calibration, cal_split = ((r.audit["calibration"], "test") if r.audit
                              else (r.inputs["val_calibration"], "validation"))
    s = Section("calibration", "Calibration", missing="no calibration measured (needs a validation split)")
    if r.multilabel:
        s.html = Markup(r.m.multilabel_calibration(_multilabel_calibration(r.bundle, r.audit)))
    elif calibration:
        png = data_uri(plots.png_bytes(plots.reliability_figure(calibration)))
        s.html = Markup(r.m.calibration({**calibration, "split": cal_split, "png": png}))
    return s


def _multilabel_calibration(bundle: BundleConfig, audit: dict | None) -> dict:
    """What the multi-label calibration macro shows: the fit on validation (bundle) and, after an
    audit, class-wise ECE / BCE on test, with the pooled reliability diagram when plots draws it."""
    test = audit["calibration"] if audit else None
    png = None
    if test and "reliability_after" in test:  # pooled over every (image, class) pair
        png = data_uri(plots.png_bytes(plots.reliability_figure(test)))
    return {"fit": bundle.calibration, "fitted": "bce_after" in bundle.calibration, "test": test, "png": png}


def _open_set_section(r: _Run) -> Section:
    s = Section("open-set", "Unknown images (open-set rejection)",
                missing="no rejection threshold in the bundle (it is fitted on the validation split)")
    if r.multilabel:
        s.missing = f"open-set rejection {SINGLE_LABEL_ONLY}"
    elif r.bundle.ood:
        report = r.audit.get("open_set") if r.audit else None
        hint = None if report and report["auroc"] else (
            "AUROC needs test images of classes the model was not trained on: audit a folder "
            "that also holds other classes" if r.audit else r.audit_hint)
        s.html = Markup(r.m.open_set({**r.bundle.ood, "report": report, "hint": hint}))
    return s


def _top_losses_section(r: _Run) -> Section:
    s = Section("top-losses", "Top losses with heat maps", missing="no validation images to rank")
    items = (top_losses(r.bundle_dir, r.inputs["split"], count=r.gallery, device=r.device, scored=r.scored)
             if r.gallery else [])
    if items:
        s.html = Markup(r.m.top_losses({"images": items, "split": "validation",
                                        "multilabel": r.multilabel}))
    return s


def _data_check_section(r: _Run) -> Section:
    check_file = r.run_dir / runs.DATA_CHECK
    s = Section("data-check", "Data check",
                missing=f"run `clarivis check DATA --json {check_file}` to fill this section")
    if r.inputs["check"]:
        s.html = Markup(r.m.data_check(_data_check(r.inputs["check"], r.run_dir / runs.DATA_CHECK)))
    return s


def _subgroups_section(r: _Run) -> Section:
    s = Section("subgroups", "Subgroups", missing=r.audit_hint)
    if r.audit and r.audit["subgroups"].get("summary"):
        s.html = Markup(r.m.subgroups(_subgroups(r.audit["subgroups"], r.multilabel)))
    elif r.audit:
        s.missing = "the test data has no group attributes: audit a CSV manifest with extra columns"
    return s


def _robustness_section(r: _Run) -> Section:
    s = Section("robustness", "Robustness to corruptions", missing=r.audit_hint if not r.audit else
                "the audit ran with --no-robustness; audit again without it to fill this section")
    if r.audit and r.audit.get("robustness"):
        rob = r.audit["robustness"]
        if rob.get("metric") == "map":  # multi-label: the sweep in mAP; the table says it all
            s.html = Markup(r.m.robustness(_multilabel_robustness(rob)))
        else:
            png = plots.png_bytes(plots.robustness_figure(rob))
            s.html = Markup(r.m.robustness({**rob, "png": data_uri(png), "metric": "accuracy"}))
    return s


def _multilabel_robustness(rob: dict) -> dict:
    """The multi-label sweep (mAP) in the robustness macro's keys."""
    rows = {name: {**row, "accuracy": row["map"]} for name, row in rob["corruptions"].items()}
    return {**rob, "metric": "mAP", "clean_accuracy": rob["clean_map"],
            "mean_corruption_accuracy": rob["mean_corruption_map"], "corruptions": rows, "png": None}


def _adversarial_section(r: _Run) -> Section:
    s = Section("adversarial", "Adversarial robustness", missing=r.audit_hint.replace(
        "TEST_DATA", "TEST_DATA --adversarial"))
    if r.audit and r.audit.get("adversarial"):  # multi-label too: mAP under attacks on the label set
        adv = r.audit["adversarial"]
        eps = list(next(iter(adv["attacks"].values())).keys())
        s.html = Markup(r.m.adversarial({**adv, "eps": eps}))
    return s


def _model_card_section(r: _Run) -> Section:
    return Section("model-card", "Model card", Markup(r.m.model_card(model_card(r.bundle, r.inputs))))


# The report's sections, in page order.
_SECTION_BUILDERS = (_summary_section, _training_section, _metrics_section, _confusion_section,
                     _calibration_section, _open_set_section, _top_losses_section, _data_check_section,
                     _subgroups_section, _robustness_section, _adversarial_section, _model_card_section)


def _saved_val_confusion(run_dir: Path) -> bytes | None:
    """The confusion PNG training saved beside val_metrics.json (the same figure of the same
    matrix: drawing it again costs 0.35 s of CPU for 10 classes), when it is no older than the
    metrics."""
    png, metrics = run_dir / runs.VAL_CONFUSION, run_dir / runs.VAL_METRICS
    try:
        return png.read_bytes() if png.stat().st_mtime >= metrics.stat().st_mtime else None
    except OSError:
        return None


def _summary(run_dir: Path, bundle, inputs: dict) -> dict:
    training, val, audit = bundle.training, inputs["val"], inputs["audit"]
    cards = [("labels" if bundle.multilabel else "classes", bundle.num_classes),
             ("train images", training.get("train_images", "–"))]
    for split, metrics in (("val", val), ("test", audit["metrics"] if audit else None)):
        if metrics:
            cards += _score_cards(split, metrics)
    if not bundle.multilabel:  # multi-label: a temperature a class, in the per-class table
        cards.append(("temperature", f"{bundle.temperature:.2f}"))
    facts = [("run folder", run_dir.name), ("data", training.get("data", "–")),
             ("dataset fingerprint", training.get("dataset_fingerprint", "–")),
             ("classes", ", ".join(bundle.class_names)),
             *([("task", "multi-label: any set of the labels an image, a sigmoid and a decision "
                         "threshold a label")] if bundle.multilabel else []),
             ("input", f"{bundle.input_size[1]} px, resize mode {bundle.resize_mode}"),
             ("trained", f"{_how_trained(training)}, at {training.get('trained_at', '–')}")]
    if audit:
        facts.append(("audited on", f"{audit['data']} ({audit['num_images']} images, "
                                    f"{audit['seconds'].get('total', 0):.0f} s)"))
    return {"cards": cards, "facts": facts, "config": inputs["config_text"]}


def _score_cards(split: str, metrics: dict) -> list[tuple[str, str]]:
    """The summary's headline numbers for one split: accuracy, or mAP and macro F1 (multi-label)."""
    if metrics.get("task") == "multilabel":
        return [(f"{split} mAP", f"{100 * metrics['map_macro']:.1f}%"),
                (f"{split} F1 (macro)", f"{100 * metrics['f1_macro']:.1f}%")]
    return [(f"{split} accuracy", f"{100 * metrics['accuracy']:.1f}%")]


def _how_trained(training: dict) -> str:
    if training.get("method") == "linear_probe":
        return f"linear probe on frozen {training.get('backbone_weights', '–')} features"
    return f"{training.get('epoch', '–')} epochs"


def _subgroups(subgroups: dict, multilabel: bool = False) -> dict:
    """Columns of groups, worst first by accuracy (multi-label: mAP; a group with no positive
    label has none and goes last)."""
    key = "map" if multilabel else "accuracy"
    flagged = {(f["column"], f["group"]) for f in subgroups["flagged"]}
    columns = []
    for column, summary in subgroups["summary"].items():
        groups = sorted(subgroups[column].items(), key=lambda kv: (kv[1][key] is None, kv[1][key] or 0.0))
        rows = [(g, {**r, "flagged": (column, g) in flagged}) for g, r in groups]
        columns.append((column, {"summary": summary, "groups": rows}))
    return {"columns": columns, "multilabel": multilabel}


def _data_check(check: dict, file: Path) -> dict:
    findings = check.get("findings", [])
    counts = [(k.replace("_", " "), round(v, 2)) for k, v in check.get("summary", {}).items()
              if isinstance(v, int | float) and v]
    rows = []
    for f in findings[:MAX_FINDINGS]:
        # Two images for a pair finding (a leak, a duplicate, a look-alike): the reader compares
        # them side by side instead of opening both files.
        pngs = (thumbnail(path, FINDING_THUMBNAIL) for path in f["paths"][:FINDING_THUMBNAILS])
        rows.append({**f, "thumbs": [data_uri(png) for png in pngs if png]})
    return {"counts": counts, "findings": rows, "more": max(0, len(findings) - MAX_FINDINGS),
            "file": file.name}
