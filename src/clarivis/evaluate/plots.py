"""Figures for metrics files and the HTML report (PNG, matplotlib without a display).

matplotlib is imported on the first figure, not with this module (a run that draws nothing
never pays for it)."""

from __future__ import annotations

import io
import json
from functools import cache
from pathlib import Path

import numpy as np

from clarivis.metrics import EvaluationResult
from clarivis.runs import confusion_png


@cache
def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display on servers and CI), set
    once per process."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """Render and close a figure: PNG bytes to embed in a self-contained HTML file."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    return buffer.getvalue()


def save_evaluation(result: EvaluationResult, json_path: str | Path) -> tuple[Path, Path]:
    """Write the metrics JSON and a confusion-matrix PNG beside it (runs.confusion_png); a
    multi-label evaluation (it has no confusion matrix) gets its per-class figure instead
    (per_class_png)."""
    if getattr(result, "task", None) == "multilabel":
        json_path = save_multilabel_evaluation(result, json_path)
        png = per_class_png(json_path)
        png.write_bytes(png_bytes(per_class_figure(result.per_class)))
        return json_path, png
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result.to_dict(), indent=2))
    png = save_confusion_matrix(result.confusion_matrix, result.class_names, confusion_png(json_path))
    return json_path, png


def save_multilabel_evaluation(result, json_path: str | Path) -> Path:
    """A multi-label evaluation (multilabel_metrics.MultilabelEvaluation) as JSON; it has no
    confusion matrix: its per-class table holds AP, F1, precision, recall and threshold."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result.to_dict(), indent=2))
    return json_path


def per_class_png(metrics_json: str | Path) -> Path:
    """The per-class figure written beside a multi-label metrics JSON (NAME.json ->
    NAME_per_class.png)."""
    path = Path(metrics_json)
    return path.with_name(path.stem + "_per_class.png")


def per_class_figure(per_class: list[dict]):
    """Multi-label: AP, F1, precision and recall a class as bars, with each class's decision
    threshold and support written beside its name (multilabel_metrics' per_class rows)."""
    metrics = (("ap", "AP", "tab:blue"), ("f1", "F1", "tab:orange"),
               ("precision", "precision", "tab:green"), ("recall", "recall", "tab:red"))
    n = len(per_class)
    fig, ax = _pyplot().subplots(figsize=(7.5, min(1.5 + 0.5 * n, 40.0)))
    height = 0.8 / len(metrics)
    y = np.arange(n)
    for k, (key, label, color) in enumerate(metrics):
        values = [np.nan if row[key] is None else row[key] for row in per_class]  # AP: no positive
        ax.barh(y + (k - 1.5) * height, values, height=height, color=color, label=label)
    names = [f"{row['class']}  (t {row['threshold']:.2f}, n {row['support']})" for row in per_class]
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()  # the first class on top, as in the table
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (t: decision threshold, n: images with the label)")
    ax.set_title("per-class metrics at the fitted thresholds", pad=22)  # room for the legend
    ax.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.grid(alpha=0.3, axis="x")
    return fig


def save_confusion_matrix(matrix: list[list[int]], class_names: list[str], path: Path) -> Path:
    Path(path).write_bytes(png_bytes(confusion_figure(matrix, class_names)))
    return path


def confusion_figure(matrix: list[list[int]], class_names: list[str]):
    """Row-normalised confusion matrix (recall per true class) with counts annotated."""
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(class_names)
    side = min(2.0 + 0.45 * n, 20.0)
    fig, ax = _pyplot().subplots(figsize=(side + 1.5, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:  # beyond that the numbers are unreadable
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                            color=color)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    ax.set_title("confusion matrix")
    return fig


def training_curves_figure(history: list[dict]):
    """Loss and accuracy per epoch, train and validation (rows of metrics.jsonl)."""
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, acc_ax) = _pyplot().subplots(1, 2, figsize=(9, 3.4))
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for split, style in (("train", "-"), ("val", "--")):
            values = [row.get(f"{split}_{metric}") for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, marker=".",
                        label=split)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right" if metric == "loss" else "lower right")  # "best" is slow
    return fig


def reliability_figure(calibration: dict):
    """Reliability diagram: accuracy against confidence per bin, before and after scaling.
    Multi-label calibration (per-class temperatures): every (image, class) pair pooled, the
    share of pairs whose label is present against the probability."""
    multilabel = "temperatures" in calibration
    fig, ax = _pyplot().subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, label="perfect calibration")
    for name, color in (("before", "tab:red"), ("after", "tab:blue")):
        bins = calibration[f"reliability_{name}"]
        points = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"], strict=True)
                  if c is not None]
        if points:
            conf, acc = zip(*points, strict=True)
            if multilabel:
                t = "raw" if name == "before" else "T and b per class"
            else:
                t = f"T = {1.0 if name == 'before' else calibration['temperature']:.2f}"
            ece = "class-wise ECE" if multilabel else "ECE"
            ax.plot(conf, acc, marker="o", color=color,
                    label=f"{t}, {ece} {calibration[f'ece_{name}']:.3f}")
    ax.set_xlabel("probability" if multilabel else "confidence")
    ax.set_ylabel("share with the label" if multilabel else "accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def robustness_figure(robustness: dict):
    """Accuracy (multi-label: mAP) against severity (0 = clean) for every corruption."""
    metric = robustness.get("metric", "accuracy")  # single-label results predate the key
    fig, ax = _pyplot().subplots(figsize=(8, 4))
    clean = robustness[f"clean_{metric}"]
    for name, row in robustness["corruptions"].items():
        values = row[metric]
        ax.plot(range(len(values) + 1), [clean, *values], marker=".", label=name)
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("mAP" if metric == "map" else metric)
    ax.set_ylim(0, 1)
    ax.set_title(f"corruption robustness (mean {robustness[f'mean_corruption_{metric}']:.3f}, "
                 f"clean {clean:.3f})")
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.grid(alpha=0.3)
    return fig
