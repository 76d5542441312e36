"""Per-group metrics with bootstrap confidence intervals (fairlearn's MetricFrame): does the
model fail for some lighting, site, scanner or skin tone that the overall accuracy hides?"""

from __future__ import annotations

import math

import numpy as np

from clarivis.extras import needs

# A group this far (absolute accuracy) below the overall accuracy is flagged: 5 points is the
# gap a reviewer would ask about, and small enough to catch a group the data under-represents.
DEFAULT_MAX_GAP = 0.05
# MetricFrame recomputes every group per resample (about 5 ms each on a CPU core): 200 resamples
# keep a column to about a second, with 95% interval ends stable to about ±0.01.
DEFAULT_BOOTSTRAP = 200
CI_QUANTILES = (0.025, 0.975)
# Groups this small are reported but never flagged: their accuracy is mostly noise.
MIN_GROUP_SIZE = 10


def _metrics(num_classes: int) -> dict:
    """Accuracy and macro recall/F1 over the classes present in the group, from one bincount:
    sklearn's scorers give the same numbers but cost 1 ms a call, times every resample."""

    def per_class(t, p):
        cm = np.bincount(np.asarray(t) * num_classes + np.asarray(p), minlength=num_classes ** 2)
        cm = cm.reshape(num_classes, num_classes)  # rows: true class, columns: predicted
        tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
        recall = np.divide(tp, support, out=np.zeros(num_classes), where=support > 0)
        precision = np.divide(tp, predicted, out=np.zeros(num_classes), where=predicted > 0)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes),
                       where=precision + recall > 0)
        present = support > 0
        return recall[present], f1[present]

    return {
        "accuracy": lambda t, p: float(np.mean(np.asarray(t) == np.asarray(p))),
        "recall": lambda t, p: float(per_class(t, p)[0].mean()),
        "f1": lambda t, p: float(per_class(t, p)[1].mean()),
    }


def subgroup_report(y_true: np.ndarray, y_pred: np.ndarray, attributes: dict[str, list[str]], *,
                    num_classes: int, max_gap: float = DEFAULT_MAX_GAP,
                    n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """{column: {group: {accuracy, recall, f1, count, *_ci}}, "flagged": [...], "summary": {...}}
    for each attribute column (values aligned with y_true)."""
    # Here, not at the top: fairlearn is the 'trust' extra (and brings pandas and scipy.stats,
    # 2 s on 2 cores); every audit imports this module, only group columns need it.
    with needs("trust", "clarivis audit with group columns"):
        from fairlearn.metrics import MetricFrame

    report: dict = {"flagged": [], "summary": {}}
    for column, values in attributes.items():
        frame = MetricFrame(metrics=_metrics(num_classes), y_true=y_true, y_pred=y_pred,
                            sensitive_features=np.asarray(values, dtype=object), n_boot=n_boot,
                            ci_quantiles=list(CI_QUANTILES), random_state=seed)
        by_group = frame.by_group
        low, high = frame.by_group_ci  # frames at the two quantiles
        counts = {str(g): int(n) for g, n in zip(*np.unique(np.asarray(values, dtype=str),
                                                            return_counts=True), strict=True)}
        overall = float(frame.overall["accuracy"])
        groups = {}
        for group in by_group.index:
            row = {name: float(by_group.loc[group, name]) for name in by_group.columns}
            for name in by_group.columns:
                row[f"{name}_ci"] = [float(low.loc[group, name]), float(high.loc[group, name])]
            row["count"] = counts[str(group)]
            row["gap"] = overall - row["accuracy"]
            groups[str(group)] = row
            if row["gap"] >= max_gap and row["count"] >= MIN_GROUP_SIZE:
                report["flagged"].append({
                    "column": column, "group": str(group), "accuracy": row["accuracy"],
                    "overall_accuracy": overall, "gap": row["gap"], "count": row["count"],
                    # The gap holds beyond resampling noise when the group's upper bound
                    # stays under the overall accuracy.
                    "significant": row["accuracy_ci"][1] < overall,
                })
        report[column] = groups
        ratio = frame.ratio()["accuracy"]
        report["summary"][column] = {
            "overall_accuracy": overall,
            "largest_gap": float(frame.difference()["accuracy"]),
            "smallest_ratio": float(ratio) if math.isfinite(ratio) else None,
            "worst_group": str(by_group["accuracy"].idxmin()),
        }
    return report
