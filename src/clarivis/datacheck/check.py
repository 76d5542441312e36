"""`clarivis check`: data quality findings and suspected label errors of a dataset, ranked.

File checks (data.quality) run first and never need a model; the label check
(datacheck.label_issues) runs on the readable images afterwards."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from clarivis.data.quality import (
    IMBALANCE_RATIO_WARNING,
    NEAR_DUPLICATE_DISTANCE,
    DuplicateGroup,
    QualityReport,
    check_quality,
    class_imbalance,
    sort_groups,
)
from clarivis.data.sources import LABEL_SEP, DatasetIndex, Sample, index_dataset, multilabel_sample
from clarivis.data.splits import check_group_column
from clarivis.data.thumbnails import FINDING_THUMBNAIL, thumbnail
from clarivis.datacheck.label_features import FeatureSource, choose_features
from clarivis.datacheck.label_issues import (
    DEFAULT_FOLDS,
    LabelIssue,
    LabelIssueResult,
    find_label_issues,
)
from clarivis.datacheck.multilabel_issues import MultilabelIssue, find_multilabel_issues
from clarivis.datacheck.similar_images import SIMILAR_COSINE, similar_groups

SEVERITIES = ("error", "warning", "info")
# Within a severity: what breaks training or evaluation first, then what misleads it.
_KIND_ORDER = ("corrupt", "leak", "conflicting_labels", "label_issue", "missing_class",
               "duplicate", "imbalance", "odd_mode", "size_outlier", "near_duplicate")
# Colour kinds whose conversion changes what the model sees, beyond dropping a channel.
_LOSSY_MODE_KINDS = frozenset({"cmyk", "high-depth", "alpha"})
THUMBNAIL_SIZE = FINDING_THUMBNAIL  # px, longest side (data/thumbnails.py)
_THUMBNAIL_PATHS = 4  # images shown per finding (a duplicate group can be large)


@dataclass
class Finding:
    severity: str  # "error" (breaks training/evaluation), "warning" (likely harms), "info"
    kind: str  # one of _KIND_ORDER
    paths: list[str]
    message: str

    def to_dict(self) -> dict:
        return {"severity": self.severity, "kind": self.kind, "paths": self.paths,
                "message": self.message}


@dataclass
class GroupLeak:
    """One group of the --group-by column (e.g. a patient) with images in two or more given
    splits. The group's value is not kept: ids may be personal data, reports give counts."""

    column: str
    paths: list[str]
    splits: list[str]  # the splits it is in, sorted


@dataclass
class DataCheckResult:
    data: str
    layout: str
    class_names: list[str]
    quality: QualityReport
    labels: LabelIssueResult | None  # None when the label check was off or impossible
    label_check_note: str = ""  # why there is no label check, when there is none
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage
    group_leaks: list[GroupLeak] = field(default_factory=list)  # with --group-by
    task: str = "multiclass"  # "multilabel": a label set an image (DatasetIndex.task)
    similar_note: str = ""  # why look-alikes were skipped or left out, if they were

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    @property
    def findings(self) -> list[Finding]:
        return ranked_findings(self)

    def to_dict(self) -> dict[str, Any]:
        q = self.quality
        issues = self.labels.issues if self.labels else []
        duplicates = [g.to_dict() for g in q.duplicates]
        findings = self.findings
        return {
            "data": self.data,
            "layout": self.layout,
            **({"task": self.task} if self.multilabel else {}),  # single-label JSON as before
            "class_names": self.class_names,
            "summary": {
                "images": len(q.files),
                "readable": len(q.readable),
                "corrupt": len(q.corrupt),
                "exact_duplicate_groups": sum(g["kind"] == "exact" for g in duplicates),
                "near_duplicate_groups": sum(g["kind"] == "near" for g in duplicates),
                "similar_groups": sum(g["kind"] == "similar" for g in duplicates),
                "leaking_groups": sum(g["leak"] for g in duplicates),
                "group_leaks": len(self.group_leaks),  # --group-by groups in two splits
                "conflicting_label_groups": sum(g["conflicting_labels"] for g in duplicates),
                "label_issues": len(issues),
                "size_outliers": len(q.size_outliers),
                "odd_modes": len(q.odd_modes),
                "imbalance_ratio": q.imbalance.get("ratio"),
                "findings": {s: sum(f.severity == s for f in findings) for s in SEVERITIES},
            },
            "label_issues": [_issue_dict(i) for i in issues],
            "label_check": ({k: v for k, v in self.labels.to_dict().items() if k != "issues"}
                            if self.labels else {"skipped": self.label_check_note}),
            "duplicates": duplicates,
            **({"similar_note": self.similar_note} if self.similar_note else {}),
            "corrupt": q.corrupt,
            "imbalance": q.imbalance,
            "size_outliers": q.size_outliers,
            "odd_modes": q.odd_modes,
            "findings": [f.to_dict() for f in findings],
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class CheckOptions:
    """How check_data checks: one typed object (check_data also takes its fields by keyword,
    as the CLI calls it)."""

    model: str | Path | None = None  # features: a ModelBundle or a timm name
    weights: str | Path | None = None  # local weights for `model` (or naming the architecture)
    pretrained: bool = False  # hub weights for a timm `model`
    img_size: int | None = None  # feature input size [the weights' pretrained size]
    cached: bool = True  # with nothing given, efficientnet_lite0's hub weights if already cached
    label_issues: bool = True  # False: file checks only
    folds: int = DEFAULT_FOLDS  # cross-validation folds of the label check
    device: str | None = None  # None: the best available
    near_distance: int = NEAR_DUPLICATE_DISTANCE  # hash bits apart for a near duplicate (data/quality.py)
    # Feature cosine from which two images are edited copies (similar_images.py); needs the
    # label check's features; 1 turns it off.
    similar_cosine: float = SIMILAR_COSINE
    train_settings: dict[str, Any] | None = None  # per-fold training instead of features
    # A manifest column (e.g. patient_id): a group in two given splits is a leak, and the label
    # check's folds keep each group whole. None: images are independent.
    group_by: str | None = None
    workers: int | None = None  # file-check workers [CPU count, at most 16]
    task: str = "auto"  # auto: multi-label when the manifest has a `labels` column
    label_sep: str = LABEL_SEP  # separator of a multi-label manifest cell


def check_data(data: str | Path, options: CheckOptions | None = None, *,
               console: Console | None = None, **fields: Any) -> DataCheckResult:
    """Check a dataset (folder, split folders or CSV): file findings, then suspected label
    errors by features + logistic regression or, without features, a small model trained per
    fold. `fields`: CheckOptions' fields by keyword, over `options`. Features: `model` a
    ModelBundle, or a timm name with local `weights` or hub weights (`pretrained`) at
    `img_size` [its pretrained size]; weights without `model` use the architecture the file
    names, else efficientnet_lite0; with nothing given, efficientnet_lite0's hub weights when
    they are already in the local cache (`cached`; never downloaded)."""
    opts = replace(options or CheckOptions(), **fields)
    console = console or Console(stderr=True, quiet=True)
    # Resolved first: a wrong name or weights file fails before minutes of file checks.
    source = choose_features(opts.model, weights=opts.weights, pretrained=opts.pretrained,
                             img_size=opts.img_size, cached=opts.cached and opts.train_settings is None,
                             ) if opts.label_issues else None
    index = index_dataset(data, task=opts.task, label_sep=opts.label_sep)
    if opts.group_by is not None:
        check_group_column(index, opts.group_by)  # before minutes of file checks
    started = time.perf_counter()
    quality = check_quality(index, near_distance=opts.near_distance, workers=opts.workers)
    if index.task == "multilabel":
        quality.imbalance = class_imbalance(per_label(index))
    seconds = {"files": round(time.perf_counter() - started, 3)}
    console.print(f"checked {len(quality.files)} files in {seconds['files']:.1f} s")
    result = DataCheckResult(str(data), index.layout, index.class_names, quality, None,
                             seconds=seconds, task=index.task)
    group_of: dict[str, str] = {}
    if opts.group_by is not None:
        group_of = {s.path: s.groups[opts.group_by] for s in index.all_samples}
        result.group_leaks = find_group_leaks(index, opts.group_by)
        console.print(f"{len(set(group_of.values()))} groups of {opts.group_by}, "
                      f"{len(result.group_leaks)} in more than one split")
    if not opts.label_issues:
        result.label_check_note = "turned off"
        return result
    readable = quality.readable
    started = time.perf_counter()
    if result.multilabel:  # FileInfo.label is the set joined: take the set from the index
        label_set = {s.path: s.label_set for s in index.all_samples}
        samples = [multilabel_sample(f.path, label_set[f.path]) for f in readable]
        find = find_multilabel_issues
    else:
        samples, find = [Sample(f.path, f.label) for f in readable], find_label_issues
    result.labels = find(
        samples, [f.split for f in readable], model=source, cached=False, folds=opts.folds,
        device=opts.device, train_settings=opts.train_settings,
        groups=[group_of[f.path] for f in readable] if opts.group_by is not None else None,
        console=console,
    )
    seconds["labels"] = round(time.perf_counter() - started, 3)
    if result.labels.vectors is not None and opts.similar_cosine < 1:
        result.similar_note = _add_similar_images(result, source, opts.similar_cosine, console)
    return result


def _add_similar_images(result: DataCheckResult, source: FeatureSource, threshold: float,
                        console: Console) -> str:
    """Look-alike groups (edited copies) from the label check's features join the duplicate
    groups; returns a note on what was left out ('' for nothing)."""
    if source.is_bundle:  # trained features are alike for a whole class (neural collapse)
        note = ("look-alike search skipped: it needs a pretrained backbone's features "
                "(--model NAME --weights FILE), a trained ModelBundle's are alike for a whole class")
        console.print(note)
        return note
    started = time.perf_counter()
    quality, labels = result.quality, result.labels
    info = {f.path: f for f in quality.readable}
    found = similar_groups(labels.vectors, [info[p] for p in labels.vector_paths],
                           quality.duplicates, threshold=threshold)
    quality.duplicates = sort_groups(quality.duplicates + found.groups)
    result.seconds["similar"] = round(time.perf_counter() - started, 3)
    console.print(f"{len(found.groups)} groups of look-alikes (feature cosine >= {threshold:g}), "
                  f"{sum(g.leak for g in found.groups)} across splits")
    if not found.too_large:
        return ""
    note = (f"{len(found.too_large)} linked sets of {found.too_large[0]}+ images left out of the "
            f"look-alikes: these features cannot tell them apart (raise --similar-cosine)")
    console.print(note)
    return note


def per_label(index: DatasetIndex) -> DatasetIndex:
    """A multi-label index as one single-label row per (image, label): what the class counts of
    data.quality count (images per label; an image with no label counts for none)."""
    splits = {split: [Sample(s.path, name) for s in samples for name in s.label_set]
              for split, samples in index.splits.items()}
    return replace(index, splits=splits, task="multiclass")


def find_group_leaks(index: DatasetIndex, column: str) -> list[GroupLeak]:
    """Groups of `column` whose images lie in two or more of the given splits, largest first."""
    by_group: dict[str, list[tuple[str, str]]] = {}
    for split, samples in index.splits.items():
        for s in samples:
            by_group.setdefault(s.groups[column], []).append((split, s.path))
    leaks = [GroupLeak(column, [p for _, p in members], sorted({sp for sp, _ in members}))
             for members in by_group.values() if len({sp for sp, _ in members}) > 1]
    return sorted(leaks, key=lambda g: -len(g.paths))


def _issue_dict(issue: LabelIssue) -> dict:
    found = {"path": issue.path, "split": issue.split, "given_label": issue.given_label,
             "suggested_label": issue.suggested_label, "score": issue.score}
    if isinstance(issue, MultilabelIssue):  # the sets as lists, and what changes between them
        found |= {"given_labels": issue.given_labels, "suggested_labels": issue.suggested_labels,
                  "likely_missing": issue.likely_missing, "likely_wrong": issue.likely_wrong}
    return found


def save_check(result: DataCheckResult, json_path: str | Path) -> Path:
    """Write the check's JSON (see DataCheckResult.to_dict)."""
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2))
    return path


def ranked_findings(result: DataCheckResult) -> list[Finding]:
    """Every finding as one row, errors first; within a severity by kind, then by strength."""
    q = result.quality
    found = [Finding("error", "corrupt", [c["path"]], f"unreadable: {c['reason']}")
             for c in q.corrupt]
    shown = _label_set_text if result.multilabel else str
    for g in q.duplicates:
        what = _duplicate_text(g)
        labels = ", ".join(shown(label) for label in sorted(set(g.labels)))
        # Feature similarity is evidence, not proof (two photos of one scene): a warning to look
        # at, where a hash match is an error.
        severity = "warning" if g.kind == "similar" else "error"
        if g.leak:
            splits = ", ".join(sorted(set(g.splits)))
            extra = f" and labeled {labels}" if g.conflicting_labels else ""
            found.append(Finding(severity, "leak", g.paths, f"{len(g.paths)} {what} images in "
                                 f"{splits}{extra}: evaluation sees training images"))
        elif g.conflicting_labels:
            found.append(Finding(severity, "conflicting_labels", g.paths,
                                 f"{len(g.paths)} {what} images labeled {labels}"))
        else:
            kind = "duplicate" if g.kind == "exact" else "near_duplicate"
            where = (f"{g.splits[0]}, labeled {shown(g.labels[0])}" if result.multilabel
                     else f"{g.splits[0]}/{g.labels[0]}")
            found.append(Finding("warning" if g.kind == "exact" else "info", kind, g.paths,
                                 f"{len(g.paths)} {what} images in {where}"))
    found += [Finding("error", "leak", g.paths, f"{len(g.paths)} images of one {g.column} in "
                      f"{', '.join(g.splits)}: evaluation sees a {g.column} training saw")
              for g in result.group_leaks]
    if result.labels:
        found += [Finding("warning", "label_issue", [i.path], _issue_message(i))
                  for i in result.labels.issues]
    found += _class_findings(q.imbalance, result.multilabel)
    found += [Finding("warning" if o["kind"] in _LOSSY_MODE_KINDS else "info", "odd_mode",
                      [o["path"]], o["message"]) for o in q.odd_modes]
    found += [Finding("info", "size_outlier", [o["path"]],
                      f"{o['width']}x{o['height']} px, {o['area_ratio']:.3g}x the median area "
                      f"(median side {o['median_size']:g} px)") for o in q.size_outliers]
    # sorted() is stable: each kind keeps the order its check ranked it in.
    return sorted(found, key=lambda f: (SEVERITIES.index(f.severity), _KIND_ORDER.index(f.kind)))


def _duplicate_text(group: DuplicateGroup) -> str:
    if group.kind == "exact":
        return "identical"
    if group.kind == "near":
        return f"near-identical ({group.distance} bits of 64 apart)"
    return f"look-alike (feature cosine >= {group.similarity:.2f}: a flip, crop or edit of one photo?)"


def _issue_message(issue: LabelIssue) -> str:
    if not isinstance(issue, MultilabelIssue):
        return (f"labeled {issue.given_label}, looks like {issue.suggested_label} "
                f"(label quality {issue.score:.3f})")
    changes = [f"{what} {', '.join(names)}" for what, names in
               (("likely missing:", issue.likely_missing), ("likely wrong:", issue.likely_wrong))
               if names]
    return (f"labeled {_label_set_text(issue.given_label)}, looks like "
            f"{_label_set_text(issue.suggested_label)} ({'; '.join(changes)}; label quality "
            f"{issue.score:.3f})")


def _label_set_text(joined: str) -> str:
    """A multi-label set as text: '{blue, red}', '{}' for an image with no label."""
    return "{" + ", ".join(n for n in joined.split(LABEL_SEP) if n) + "}"


def _class_findings(imbalance: dict, multilabel: bool = False) -> list[Finding]:
    found = [Finding("warning", "missing_class", [], f"{split} has no images of {', '.join(names)}")
             for split, names in imbalance.get("missing", {}).items()]
    if imbalance.get("imbalanced"):
        ratio = imbalance["ratio"]
        counts = imbalance["counts"]
        found.append(Finding(
            "warning" if ratio >= IMBALANCE_RATIO_WARNING else "info", "imbalance", [],
            f"{'label' if multilabel else 'class'} imbalance {ratio:.1f}:1 ({imbalance['largest']} "
            f"{counts[imbalance['largest']]} images, {imbalance['smallest']} "
            f"{counts[imbalance['smallest']]}); training "
            + ("weighs rare labels' positives up (at most 10x), more images of them help more"
               if multilabel else "samples classes evenly, more images of the small classes help more")))
    return found


def finding_thumbnails(
    result: DataCheckResult, *, top: int = 50, size: int = THUMBNAIL_SIZE
) -> dict[str, bytes]:
    """PNG thumbnails (longest side `size` px) of the images of the `top` ranked findings, by
    path, for the report; unreadable files have none."""
    paths = dict.fromkeys(p for f in result.findings[:top] for p in f.paths[:_THUMBNAIL_PATHS])
    thumbs = {path: thumbnail_png(path, size) for path in paths}
    return {path: png for path, png in thumbs.items() if png is not None}


def thumbnail_png(path: str, size: int = THUMBNAIL_SIZE) -> bytes | None:
    """A PNG of the image at `path`, longest side `size` px; None when it cannot be read."""
    return thumbnail(path, size, "PNG")
