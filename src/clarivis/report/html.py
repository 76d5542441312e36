"""`clarivis report RUN`: one self-contained HTML file (every image embedded as a data URI, no
script, no network) from what the run folder holds: training log, validation metrics, the audit
and the data check. Sections whose input is missing say which command fills them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from clarivis.data.thumbnails import FINDING_THUMBNAIL, data_uri, thumbnail
from clarivis.errors import ClarivisError
from clarivis.evaluate import plots
from clarivis.evaluate.audit import AUDIT_NAME
from clarivis.models.bundle import load_bundle_config, resolve_bundle_path
from clarivis.report.card import model_card
from clarivis.report.gallery import ScoredValidation, top_losses
from clarivis.spec import VERSION as __version__

REPORT_NAME = "report.html"
CHECK_NAME = "data_check.json"  # written by `clarivis check DATA --json RUN/data_check.json`
VAL_CALIBRATION_NAME = "val_calibration.json"  # reliability bins on val, written by training
VAL_METRICS_NAME = "val_metrics.json"  # written by training, with its confusion PNG beside it
VAL_CONFUSION_NAME = "val_metrics_confusion.png"  # api.save_evaluation's name for that PNG
MAX_FINDINGS = 40  # rows of the data-check table; the JSON file has them all


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
    run_dir = _run_dir(run)
    bundle_dir = resolve_bundle_path(run_dir / "model")
    bundle = load_bundle_config(bundle_dir)
    inputs = _read_inputs(run_dir)
    macros = _env().get_template("sections.html.j2").module
    sections = _sections(run_dir, bundle_dir, bundle, inputs, macros, gallery, device, scored)
    html = _env().get_template("report.html.j2").render(
        title=f"{run_dir.name}: {bundle.architecture} on {Path(inputs['config'].get('data', '?')).name}",
        version=__version__, written=datetime.now().strftime("%Y-%m-%d %H:%M"), bundle=bundle,
        sections=sections)
    target = Path(out) if out else run_dir / REPORT_NAME
    target.write_text(html, encoding="utf-8")
    return target


def _run_dir(run: str | Path) -> Path:
    path = Path(run).expanduser()
    if (path / "config.json").is_file() and (path.parent / "metrics.jsonl").is_file():
        path = path.parent  # given the model/ folder of a run
    if not path.is_dir() or not (path / "model").is_dir():
        raise ClarivisError(f"{path} is not a run folder (no model/ inside); pass runs/NAME, "
                            "the --out folder of `clarivis train`")
    return path


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_inputs(run_dir: Path) -> dict:
    import yaml

    history = []
    if (run_dir / "metrics.jsonl").is_file():
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            try:
                history.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of an interrupted run
    config_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    return {
        "history": history, "config_text": config_text,
        "config": yaml.safe_load(config_text) or {} if config_text else {},
        "val": _read_json(run_dir / VAL_METRICS_NAME),
        "val_calibration": _read_json(run_dir / VAL_CALIBRATION_NAME),
        "audit": _read_json(run_dir / AUDIT_NAME),
        "check": _read_json(run_dir / CHECK_NAME),
        "split": _read_json(run_dir / "split.json"),
    }


def _sections(run_dir, bundle_dir, bundle, inputs, m, gallery, device, scored) -> list[Section]:
    audit, val = inputs["audit"], inputs["val"]
    audit_hint = f"run `clarivis audit {run_dir / 'model'} TEST_DATA` to fill this section"
    test_metrics = audit["metrics"] if audit else None
    main_metrics, main_split = (test_metrics, "test") if test_metrics else (val, "validation")
    sections = [Section("summary", "Run summary", Markup(m.summary(_summary(run_dir, bundle, inputs))))]

    s = Section("training", "Training curves", missing="no training log (metrics.jsonl) in this run")
    probe = inputs["history"][0] if inputs["history"] and inputs["history"][0].get("linear_probe") else None
    if probe:  # one fit, no epochs: what was fitted instead of a one-point curve
        s.title = "Linear probe"
        s.html = Markup(m.linear_probe(probe))
    elif inputs["history"]:
        training = bundle.training
        s.html = Markup(m.training({"curves": data_uri(plots.png_bytes(
            plots.training_curves_figure(inputs["history"]))), "epochs": len(inputs["history"]),
            "best_val": training.get("best_val_accuracy"), "best_epoch": training.get("epoch")}))
    sections.append(s)

    s = Section("metrics", "Metrics", missing="no validation or test metrics in this run")
    splits = [(n, x) for n, x in (("validation", val), ("test", test_metrics)) if x]
    if splits:
        s.html = Markup(m.metrics({"splits": splits, "per_class": main_metrics["per_class"],
                                "per_class_split": main_split, "weak_recall": 0.5}))
    sections.append(s)

    s = Section("confusion", "Confusion matrix", missing="no metrics to draw it from")
    if main_metrics:
        png = _saved_val_confusion(run_dir) if main_split == "validation" else None
        png = png or plots.png_bytes(plots.confusion_figure(main_metrics["confusion_matrix"],
                                                            main_metrics["class_names"]))
        s.html = Markup(m.confusion({"split": main_split, "png": data_uri(png)}))
    sections.append(s)

    calibration, cal_split = ((audit["calibration"], "test") if audit
                              else (inputs["val_calibration"], "validation"))
    s = Section("calibration", "Calibration", missing="no calibration measured (needs a validation split)")
    if calibration:
        png = data_uri(plots.png_bytes(plots.reliability_figure(calibration)))
        s.html = Markup(m.calibration({**calibration, "split": cal_split, "png": png}))
    sections.append(s)

    s = Section("open-set", "Unknown images (open-set rejection)",
                missing="no rejection threshold in the bundle (it is fitted on the validation split)")
    if bundle.ood:
        report = audit.get("open_set") if audit else None
        hint = None if report and report["auroc"] else (
            "AUROC needs test images of classes the model was not trained on: audit a folder "
            "that also holds other classes" if audit else audit_hint)
        s.html = Markup(m.open_set({**bundle.ood, "report": report, "hint": hint}))
    sections.append(s)

    s = Section("top-losses", "Top losses with heat maps", missing="no validation images to rank")
    items = (top_losses(bundle_dir, inputs["split"], count=gallery, device=device, scored=scored)
             if gallery else [])
    if items:
        s.html = Markup(m.top_losses({"images": items, "split": "validation"}))
    sections.append(s)

    s = Section("data-check", "Data check",
                missing=f"run `clarivis check DATA --json {run_dir / CHECK_NAME}` to fill this section")
    if inputs["check"]:
        s.html = Markup(m.data_check(_data_check(inputs["check"], run_dir / CHECK_NAME)))
    sections.append(s)

    s = Section("subgroups", "Subgroups", missing=audit_hint)
    if audit and audit["subgroups"].get("summary"):
        s.html = Markup(m.subgroups(_subgroups(audit["subgroups"])))
    elif audit:
        s.missing = "the test data has no group attributes: audit a CSV manifest with extra columns"
    sections.append(s)

    s = Section("robustness", "Robustness to corruptions", missing=audit_hint if not audit else
                "the audit ran with --no-robustness; audit again without it to fill this section")
    if audit and audit.get("robustness"):
        rob = audit["robustness"]
        png = plots.png_bytes(plots.robustness_figure(rob))
        s.html = Markup(m.robustness({**rob, "png": data_uri(png)}))
    sections.append(s)

    s = Section("adversarial", "Adversarial robustness", missing=audit_hint.replace(
        "TEST_DATA", "TEST_DATA --adversarial"))
    if audit and audit.get("adversarial"):
        adv = audit["adversarial"]
        eps = list(next(iter(adv["attacks"].values())).keys())
        s.html = Markup(m.adversarial({**adv, "eps": eps}))
    sections.append(s)

    sections.append(Section("model-card", "Model card", Markup(m.model_card(model_card(bundle, inputs)))))
    return sections


def _saved_val_confusion(run_dir: Path) -> bytes | None:
    """The confusion PNG training saved beside val_metrics.json (the same figure of the same
    matrix: drawing it again costs 0.35 s of CPU for 10 classes), when it is no older than the
    metrics."""
    png, metrics = run_dir / VAL_CONFUSION_NAME, run_dir / VAL_METRICS_NAME
    try:
        return png.read_bytes() if png.stat().st_mtime >= metrics.stat().st_mtime else None
    except OSError:
        return None


def _summary(run_dir: Path, bundle, inputs: dict) -> dict:
    training, val, audit = bundle.training, inputs["val"], inputs["audit"]
    cards = [("classes", bundle.num_classes), ("train images", training.get("train_images", "–"))]
    if val:
        cards.append(("val accuracy", f"{100 * val['accuracy']:.1f}%"))
    if audit:
        cards.append(("test accuracy", f"{100 * audit['metrics']['accuracy']:.1f}%"))
    cards.append(("temperature", f"{bundle.temperature:.2f}"))
    facts = [("run folder", run_dir.name), ("data", training.get("data", "–")),
             ("dataset fingerprint", training.get("dataset_fingerprint", "–")),
             ("classes", ", ".join(bundle.class_names)),
             ("input", f"{bundle.input_size[1]} px, resize mode {bundle.resize_mode}"),
             ("trained", f"{_how_trained(training)}, at {training.get('trained_at', '–')}")]
    if audit:
        facts.append(("audited on", f"{audit['data']} ({audit['num_images']} images, "
                                    f"{audit['seconds'].get('total', 0):.0f} s)"))
    return {"cards": cards, "facts": facts, "config": inputs["config_text"]}


def _how_trained(training: dict) -> str:
    if training.get("method") == "linear_probe":
        return f"linear probe on frozen {training.get('backbone_weights', '–')} features"
    return f"{training.get('epoch', '–')} epochs"


def _subgroups(subgroups: dict) -> dict:
    flagged = {(f["column"], f["group"]) for f in subgroups["flagged"]}
    columns = []
    for column, summary in subgroups["summary"].items():
        groups = sorted(subgroups[column].items(), key=lambda kv: kv[1]["accuracy"])
        rows = [(g, {**r, "flagged": (column, g) in flagged}) for g, r in groups]
        columns.append((column, {"summary": summary, "groups": rows}))
    return {"columns": columns}


def _data_check(check: dict, file: Path) -> dict:
    findings = check.get("findings", [])
    counts = [(k.replace("_", " "), round(v, 2)) for k, v in check.get("summary", {}).items()
              if isinstance(v, int | float) and v]
    rows = []
    for f in findings[:MAX_FINDINGS]:
        png = thumbnail(f["paths"][0], FINDING_THUMBNAIL) if f["paths"] else None
        rows.append({**f, "thumb": data_uri(png) if png else None})
    return {"counts": counts, "findings": rows, "more": max(0, len(findings) - MAX_FINDINGS),
            "file": file.name}
