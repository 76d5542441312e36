"""How good is a trained model: `evaluate`, `audit`, `explain` and `report`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

import clarivis
from clarivis.cli.output import stderr, stdout

app = typer.Typer(rich_markup_mode=None)  # plain help: "[1000]" is a default, not a style
Opt = typer.Option


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="ModelBundle folder (runs/NAME/model)")],
    data: Annotated[str, typer.Argument(help="labeled images: folder, split folder or CSV")],
    json_path: Annotated[Optional[str], Opt("--json", help="write metrics JSON (+ PNG)")] = None,
    batch_size: Annotated[int, Opt(help="images per forward pass")] = 64,
    device: Annotated[Optional[str], Opt()] = None,
) -> None:
    """Accuracy, top-5, balanced accuracy, precision/recall/F1, confusion matrix, ECE.

    A multi-label model (data: a CSV manifest path,labels) gets mAP, F1 at its fitted thresholds,
    subset accuracy, Hamming loss and a per-class table; --json also writes a per-class figure."""
    result = clarivis.Classifier.load(model, device=device).evaluate(data, batch_size=batch_size)
    written = clarivis.save_evaluation(result, json_path) if json_path else None  # before printing: a
    if getattr(result, "task", None) == "multilabel":  # closed pipe (`| head`) must not cost the file
        print_multilabel_evaluation(result)
    else:
        print_evaluation(result)
    if written:
        stderr.print(f"wrote {written[0]} and {written[1]}")


@app.command()
def explain(
    model: Annotated[str, typer.Argument(help="ModelBundle folder (runs/NAME/model)")],
    images: Annotated[list[str], typer.Argument(help="image files, folders or globs")],
    method: Annotated[str, Opt(help="gradcam | gradcam++ | ig")] = "gradcam",
    out_dir: Annotated[str, Opt("--out", help="folder for the PNG overlays")] = "explanations",
    target: Annotated[Optional[str], Opt(help="class to explain [the predicted one]")] = None,
    device: Annotated[Optional[str], Opt()] = None,
) -> None:
    """Heat maps of what the model looked at (Grad-CAM, Grad-CAM++, Integrated Gradients), as PNG
    overlays next to the original with the predicted label and confidence."""
    table = Table("label", "confidence", "overlay")
    table.add_column("image", overflow="fold")
    failed = 0
    for e in clarivis.explain_images(model, images, method=method, out=out_dir, target=target, device=device):
        if e.error:
            failed += 1
            table.add_row("[red]error[/]", "", e.error, e.source)
        else:
            # a multi-label map of a class not predicted (none was, or --target): say which class
            label = e.label if e.label or e.labels is None else f"(not predicted) {e.target}"
            table.add_row(label, f"{e.confidence:.3f}", e.png, e.source)
    stdout.print(table)
    if failed:
        stderr.print(f"[yellow]{failed} input(s) could not be read (see the error rows)")
        raise typer.Exit(1)


@app.command()
def audit(  # one parameter a flag: Typer reads the option list from this signature
    model: Annotated[str, typer.Argument(help="ModelBundle folder (runs/NAME/model)")],
    data: Annotated[str, typer.Argument(help="labeled test images: folder, split folder or CSV "
                                             "(extra CSV columns are group attributes)")],
    groups: Annotated[Optional[str], Opt(help="group columns to audit, e.g. lighting,site [all]")] = None,
    adversarial: Annotated[bool, Opt("--adversarial", help="FGSM/PGD attacks (slow on CPU)")] = False,
    adversarial_images: Annotated[int, Opt(min=1, help="images attacked")] = 256,
    robustness: Annotated[bool, Opt("--robustness/--no-robustness", help="corruption sweep")] = True,
    robustness_images: Annotated[Optional[int], Opt(min=1, help="images corrupted [1000]")] = None,
    json_path: Annotated[Optional[str], Opt("--json", help="also write the audit JSON here")] = None,
    device: Annotated[Optional[str], Opt()] = None,
) -> None:
    """Calibration, subgroups, unknown-class rejection, corruptions and attacks on a test set;
    saved as audit.json in the run folder (the report reads it) and printed as tables."""
    columns = [c.strip() for c in groups.split(",") if c.strip()] if groups else None
    with stderr.status("auditing") as status:
        result = clarivis.audit(model, data, groups=columns, adversarial=adversarial,
                                adversarial_images=adversarial_images, robustness=robustness,
                                robustness_images=robustness_images, device=device,
                                on_stage=lambda name: status.update(f"audit: {name}"))
    written = [clarivis.save_audit(result, json_path)] if json_path else []
    run = result.run_file.parent if result.run_file else None  # audit() saved it there
    if result.run_file:
        written.append(result.run_file)
    print_audit(result.to_dict())
    if written:
        stderr.print("wrote " + " and ".join(map(str, written)) +
                     (f"; `clarivis report {run}` adds it to the report" if run else ""))


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="run folder (runs/NAME)")],
    out_file: Annotated[Optional[str], Opt("--out", help="HTML file [RUN/report.html]")] = None,
    gallery: Annotated[int, Opt(min=0, help="top-loss images with Grad-CAM")] = 8,
    device: Annotated[Optional[str], Opt()] = None,
) -> None:
    """One self-contained HTML report (opens offline) from what the run folder holds."""
    path = clarivis.write_report(run, out=out_file, gallery=gallery, device=device)
    stdout.print(f"wrote {path}", soft_wrap=True, highlight=False)


def print_evaluation(result: clarivis.EvaluationResult) -> None:
    summary = Table(title=f"evaluation on {result.num_samples} images", show_header=False)
    rows = [("accuracy", result.accuracy), ("top-5 accuracy", result.top5_accuracy),
            ("balanced accuracy", result.balanced_accuracy),
            ("precision / recall / F1 (macro)",
             f"{result.precision_macro:.4f} / {result.recall_macro:.4f} / {result.f1_macro:.4f}"),
            ("precision / recall / F1 (weighted)",
             f"{result.precision_weighted:.4f} / {result.recall_weighted:.4f} / "
             f"{result.f1_weighted:.4f}"),
            ("expected calibration error", result.ece)]
    for name, value in rows:
        if value is not None:
            summary.add_row(name, f"{value:.4f}" if isinstance(value, float) else value)
    stdout.print(summary)
    per_class = Table("class", "precision", "recall", "f1", "support")
    for row in result.per_class:
        per_class.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                          f"{row['f1']:.3f}", str(row["support"]))
    stdout.print(per_class)
    if result.skipped:
        stderr.print(f"[yellow]skipped {len(result.skipped)} unreadable file(s)")


def print_multilabel_evaluation(result) -> None:
    """A multilabel_metrics.MultilabelEvaluation: the summary, then one row a class."""
    summary = Table(title=f"evaluation on {result.num_samples} images (multi-label)", show_header=False)
    for name, value in (("mAP (macro)", result.map_macro), ("mAP (micro)", result.map_micro),
                        ("F1 at the thresholds (macro)", result.f1_macro),
                        ("F1 at the thresholds (micro)", result.f1_micro),
                        ("precision / recall (macro)",
                         f"{result.precision_macro:.4f} / {result.recall_macro:.4f}"),
                        ("subset accuracy (exact set)", result.subset_accuracy),
                        ("Hamming loss", result.hamming_loss)):
        summary.add_row(name, f"{value:.4f}" if isinstance(value, float) else value)
    stdout.print(summary)
    per_class = Table("class", "AP", "F1", "precision", "recall", "threshold", "support")
    for row in result.per_class:
        ap = "-" if row["ap"] is None else f"{row['ap']:.3f}"  # no positive image: no AP
        per_class.add_row(row["class"], ap, f"{row['f1']:.3f}", f"{row['precision']:.3f}",
                          f"{row['recall']:.3f}", f"{row['threshold']:.3f}", str(row["support"]))
    stdout.print(per_class)
    if result.skipped:
        stderr.print(f"[yellow]skipped {len(result.skipped)} unreadable file(s)")


def print_audit(a: dict) -> None:
    if a.get("task") == "multilabel":
        return print_multilabel_audit(a)
    m, cal = a["metrics"], a["calibration"]
    summary = Table(title=f"audit on {a['num_images']} images", show_header=False)
    summary.add_row("accuracy (known classes)", f"{m['accuracy']:.4f}")
    summary.add_row("ECE before / after temperature",
                    f"{cal['ece_before']:.4f} / {cal['ece_after']:.4f} (T = {cal['temperature']:.2f})")
    if a["open_set"]:
        o = a["open_set"]
        rate = o["rejection_rate_unknown"]
        summary.add_row("known images rejected", f"{o['false_rejection_rate']:.3f}")
        if rate is not None:
            summary.add_row("unknown-class images rejected", f"{rate:.3f}")
        for name, auc in o["auroc"].items():
            summary.add_row(f"open-set AUROC ({name})", f"{auc:.4f}")
    if a["robustness"]:
        r = a["robustness"]
        summary.add_row("mean corruption accuracy",
                        f"{r['mean_corruption_accuracy']:.4f} (clean {r['clean_accuracy']:.4f}, "
                        f"drop {100 * r['relative_drop']:.1f}%)")
    if a["adversarial"]:
        for attack, row in a["adversarial"]["attacks"].items():
            summary.add_row(f"{attack.upper()} accuracy",
                            ", ".join(f"{eps}: {acc:.3f}" for eps, acc in row.items()))
    summary.add_row("time", f"{a['seconds'].get('total', 0):.1f} s")
    stdout.print(summary)
    for f in a["subgroups"].get("flagged", []):
        stderr.print(f"[yellow]flagged[/]: {f['column']} = {f['group']}: accuracy {f['accuracy']:.3f} "
                     f"vs {f['overall_accuracy']:.3f} overall ({f['count']} images)")
    _print_notes(a)


def print_multilabel_audit(a: dict) -> None:
    """The audit of a multi-label model: mAP where a single-label audit has accuracy."""
    m, cal = a["metrics"], a["calibration"]
    summary = Table(title=f"audit on {a['num_images']} images (multi-label)", show_header=False)
    summary.add_row("mAP macro / micro", f"{m['map_macro']:.4f} / {m['map_micro']:.4f}")
    summary.add_row("F1 at the thresholds (macro)", f"{m['f1_macro']:.4f}")
    summary.add_row("subset accuracy / Hamming loss", f"{m['subset_accuracy']:.4f} / {m['hamming_loss']:.4f}")
    summary.add_row("class-wise ECE before / after temperatures",
                    f"{cal['ece_before']:.4f} / {cal['ece_after']:.4f}")
    summary.add_row("BCE before / after calibration", f"{cal['bce_before']:.4f} / {cal['bce_after']:.4f}")
    if a["robustness"]:
        r = a["robustness"]
        summary.add_row("mean corruption mAP", f"{r['mean_corruption_map']:.4f} (clean {r['clean_map']:.4f}, "
                                               f"drop {100 * r['relative_drop']:.1f}%)")
    if a["adversarial"]:
        adv = a["adversarial"]
        for attack, row in adv["attacks"].items():
            summary.add_row(f"{attack.upper()} mAP (clean {adv['clean_map']:.3f})",
                            ", ".join(f"{eps}: {value:.3f}" for eps, value in row.items()))
    summary.add_row("time", f"{a['seconds'].get('total', 0):.1f} s")
    stdout.print(summary)
    sub = a["subgroups"]
    for column in sub.get("summary", {}):
        groups = Table(f"{column}", "images", "mAP", "mAP 95% CI", "F1", "subset accuracy")
        for group, row in sub[column].items():
            low, high = row["map_ci"]
            groups.add_row(group, str(row["count"]), _num(row["map"]),
                           f"{_num(low)} - {_num(high)}", _num(row["f1"]), _num(row["subset_accuracy"]))
        stdout.print(groups)
    for f in sub.get("flagged", []):
        stderr.print(f"[yellow]flagged[/]: {f['column']} = {f['group']}: mAP {f['map']:.3f} "
                     f"vs {f['reference_map']:.3f}, the groups' weighted mean ({f['count']} images)")
    _print_notes(a)


def _print_notes(a: dict) -> None:
    """An audit's notes and its count of unreadable files, on stderr."""
    for note in a["notes"]:
        stderr.print(f"note: {note}", highlight=False)
    if a["skipped"]:
        stderr.print(f"[yellow]skipped {len(a['skipped'])} unreadable file(s)")


def _num(value: float | None) -> str:
    """A metric cell; '-' where there is none (a group with no positive label has no mAP)."""
    return "-" if value is None else f"{value:.3f}"
