"""Per-group metrics with bootstrap confidence intervals (fairlearn's MetricFrame): does the
model fail for some lighting, site, scanner or skin tone that the overall accuracy hides?"""

from __future__ import annotations

import math
import warnings

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


def _group_rows(frame, values, number) -> dict[str, dict]:
    """{group: {metric: value, metric_ci: [low, high], count}} of a fairlearn MetricFrame built
    with bootstrap intervals over the sensitive feature `values`; `number` turns each cell into
    the JSON value (float, or None for NaN where a metric can be undefined)."""
    by_group = frame.by_group
    low, high = frame.by_group_ci  # frames at the two quantiles
    counts = {str(g): int(n) for g, n in zip(*np.unique(np.asarray(values, dtype=str),
                                                        return_counts=True), strict=True)}
    groups = {}
    for group in by_group.index:
        row = {name: number(by_group.loc[group, name]) for name in by_group.columns}
        for name in by_group.columns:
            row[f"{name}_ci"] = [number(low.loc[group, name]), number(high.loc[group, name])]
        row["count"] = counts[str(group)]
        groups[str(group)] = row
    return groups


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
        overall = float(frame.overall["accuracy"])
        groups = _group_rows(frame, values, float)
        for group, row in groups.items():
            row["gap"] = overall - row["accuracy"]
            if row["gap"] >= max_gap and row["count"] >= MIN_GROUP_SIZE:
                report["flagged"].append({
                    "column": column, "group": group, "accuracy": row["accuracy"],
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


# ----------------------------------------------------------------------------- multi-label
# A multi-label model is judged per group on mAP (threshold-free ranking: does the model still
# find each label in this group), with F1 at the bundle's thresholds and subset accuracy beside
# it; a group this far below the overall mAP is flagged, as accuracy is for single-label models.


def average_precisions(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N, C) scores and 0/1 targets -> (C,) AP a class, NaN for a class with no positive.
    sklearn's step-wise AP (precision at each distinct score, weighted by the recall it adds,
    ties counted together: torchmetrics' numbers) in numpy: the bootstrap calls it thousands of
    times, and sklearn's scorer costs about 1 ms a call."""
    n, c = scores.shape
    aps = np.full(c, np.nan)
    for k in range(c):
        y = targets[:, k] > 0.5
        positives = int(y.sum())
        if positives == 0:
            continue
        order = np.argsort(-scores[:, k], kind="mergesort")
        s, hits = scores[order, k], y[order]
        last = np.r_[np.flatnonzero(np.diff(s)), n - 1]  # the end of each run of equal scores
        tp = np.cumsum(hits)[last]
        precision = tp / (last + 1)
        recall = tp / positives
        aps[k] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return aps


def _multilabel_metrics(probs: np.ndarray, targets: np.ndarray, predicted: np.ndarray) -> dict:
    """mAP, macro F1 (classes with a positive in the group) and subset accuracy of the rows the
    MetricFrame hands over: it sees row indices (y_true = y_pred = 0..N-1), so its bootstrap
    resamples whole images, every label of an image together."""

    def rows(t) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i = np.asarray(t, dtype=np.int64)
        return probs[i], targets[i], predicted[i]

    def mean_ap(t, p) -> float:
        aps = average_precisions(*rows(t)[:2])
        return float(np.nanmean(aps)) if np.isfinite(aps).any() else math.nan

    def f1(t, p) -> float:
        _, y, pred = rows(t)
        tp, support, chosen = (y * pred).sum(0), y.sum(0), pred.sum(0)
        present = support > 0
        if not present.any():
            return math.nan
        return float((2 * tp[present] / (support[present] + chosen[present])).mean())

    def subset_accuracy(t, p) -> float:
        _, y, pred = rows(t)
        return float((y == pred).all(axis=1).mean())

    return {"map": mean_ap, "f1": f1, "subset_accuracy": subset_accuracy}


def _finite(value) -> float | None:
    """A JSON-safe number: None for NaN (a group with no positive label has no mAP)."""
    value = float(value)
    return value if math.isfinite(value) else None


def multilabel_subgroup_report(probs: np.ndarray, targets: np.ndarray, thresholds: list[float],
                               attributes: dict[str, list[str]], *, max_gap: float = DEFAULT_MAX_GAP,
                               n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """{column: {group: {map, f1, subset_accuracy, count, gap, *_ci}}, "flagged": [...],
    "summary": {...}, "metric": "map"} for (N, C) calibrated probabilities and 0/1 targets;
    F1 and subset accuracy at the per-class `thresholds`. None where a group has no positive."""
    with needs("trust", "clarivis audit with group columns"):
        from fairlearn.metrics import MetricFrame

    targets = (np.asarray(targets) > 0.5).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    predicted = (probs >= np.asarray(thresholds, dtype=np.float64)).astype(np.int64)
    metrics = _multilabel_metrics(probs, targets, predicted)
    index = np.arange(len(targets))
    report: dict = {"metric": "map", "flagged": [], "summary": {}}
    for column, values in attributes.items():
        with warnings.catch_warnings():  # a group with no positive label: NaN mAP, All-NaN quantiles
            warnings.simplefilter("ignore", RuntimeWarning)
            frame = MetricFrame(metrics=metrics, y_true=index, y_pred=index,
                                sensitive_features=np.asarray(values, dtype=object), n_boot=n_boot,
                                ci_quantiles=list(CI_QUANTILES), random_state=seed)
        overall = _finite(frame.overall["map"])
        groups = _group_rows(frame, values, _finite)
        # Gaps are taken from the count-weighted mean of the groups' mAPs, not the pooled mAP:
        # AP ranks images against each other, so when a group's scores sit lower (dark images:
        # every probability smaller) the pooled ranking mixes the groups and the pooled mAP can
        # fall below every group's own (seen: 0.79 pooled, groups 0.86 and 1.00), and no gap
        # would ever show. The weighted mean is what accuracy's overall value is for accuracy.
        scored_rows = [r for r in groups.values() if r["map"] is not None]
        weight = sum(r["count"] for r in scored_rows)
        reference = sum(r["map"] * r["count"] for r in scored_rows) / weight if weight else None
        for group, row in groups.items():
            known = reference is not None and row["map"] is not None
            row["gap"] = reference - row["map"] if known else None
            if row["gap"] is not None and row["gap"] >= max_gap and row["count"] >= MIN_GROUP_SIZE:
                high_end = row["map_ci"][1]
                report["flagged"].append({
                    "column": column, "group": group, "map": row["map"], "overall_map": overall,
                    "reference_map": reference, "gap": row["gap"], "count": row["count"],
                    "significant": high_end is not None and high_end < reference,
                })
        report[column] = groups
        scored = {g: r["map"] for g, r in groups.items() if r["map"] is not None}
        report["summary"][column] = {
            "overall_map": overall,
            "reference_map": reference,  # what gaps are measured from (see above)
            "largest_gap": _finite(frame.difference()["map"]),
            "smallest_ratio": _finite(frame.ratio()["map"]),
            "worst_group": min(scored, key=scored.get) if scored else None,
        }
    return report
