"""Suspected label errors of a multi-label dataset (each image a set of labels, maybe empty).

The same out-of-fold idea as label_issues, one label at a time: every image is scored by
binary classifiers (one a label) that never saw its labels, from (a) features + one-vs-rest
logistic regression, or (b) a small multi-label model trained per fold. cleanlab's multi-label
filter then flags, per image and per label, a given label the model is confidently against
(likely wrong) or a missing label it confidently sees (likely missing)."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from rich.console import Console
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold, PredefinedSplit, cross_val_predict
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clarivis.data.sources import LABEL_SEP, Sample, multilabel_sample
from clarivis.datacheck.label_features import backbone_features, choose_features
from clarivis.datacheck.label_issues import (
    LOGREG_C_GRID,
    LabelCheckOptions,
    LabelIssue,
    LabelIssueResult,
    _assign_folds,
    trained_oof_probabilities,
)
from clarivis.errors import DataError
from clarivis.extras import needs

# A label needs this many images with it and without it to be checked: one-vs-rest has to see
# both sides in every training fold, and cleanlab's per-label threshold needs both.
MIN_EACH_SIDE = 2
# Newton steps with the exact (D, D) Hessian for binary logistic regression up to this many
# features: the same probabilities as lbfgs (log loss equal to 4 digits) 10-20x faster on
# test_resnet's 96 features of 120 images (0.1 s a C instead of 0.6-2.6 s), where lbfgs crawls
# to max_iter on nearly separable labels; beyond it the D^3 solve would cost more than lbfgs.
NEWTON_MAX_FEATURES = 2048
_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps]: cleanlab and log loss divide by them


@dataclass
class MultilabelIssue(LabelIssue):
    """LabelIssue's fields hold the sets joined by ';' ('' = no label); score is cleanlab's
    multi-label quality (per-label self-confidence, worst labels weighted most), LOWER = MORE
    SUSPECT."""

    given_labels: list[str]
    suggested_labels: list[str]  # the given set with the suspect labels added or removed
    likely_missing: list[str]  # not given, the out-of-fold model confidently sees it
    likely_wrong: list[str]  # given, the out-of-fold model is confidently against it


def find_multilabel_issues(samples: list[Sample], splits: list[str],
                           options: LabelCheckOptions | None = None, *,
                           console: Console | None = None, **fields: Any) -> LabelIssueResult:
    """Suspected label errors among readable multi-label `samples` (Sample.labels set), by (a)
    features + one-vs-rest logistic regression, or (b) a multi-label model trained per fold.
    `fields`: LabelCheckOptions' fields by keyword, over `options`."""
    opts = replace(options or LabelCheckOptions(), **fields)
    console = console or Console(stderr=True, quiet=True)
    source = choose_features(opts.model, weights=opts.weights, pretrained=opts.pretrained,
                             img_size=opts.img_size, cached=opts.cached and opts.train_settings is None)
    class_names, k, notes = usable_labels(samples, opts.folds)
    targets = multi_hot(samples, class_names)
    groups = opts.groups
    if groups is not None and len(set(groups)) < k:
        if len(set(groups)) < 2:
            raise DataError("the label check with --group-by needs at least 2 groups")
        notes.append(f"{len(set(groups))} folds instead of {k}: there are {len(set(groups))} groups")
        k = len(set(groups))
    fold_of = multilabel_folds(targets, k, opts.seed, groups)
    reg_c, features = None, None
    if source is not None:
        console.print(f"label check: features of {source.describe()} ({source.why}) + one "
                      f"logistic regression a label, {k} folds")
        features = backbone_features(source, samples, device=opts.device)
        probs, reg_c = logreg_oof_multilabel(features, targets, fold_of, seed=opts.seed)
        method = "embeddings+logreg"
    else:
        console.print(f"label check: training a small multi-label model on each of {k} folds")
        # Only the checked labels: a label left out would be a class the fold models never see.
        kept = [multilabel_sample(s.path, [n for n in s.label_set if n in class_names])
                for s in samples]
        probs = trained_oof_probabilities(kept, class_names, fold_of, device=opts.device,
                                          seed=opts.seed, settings=opts.train_settings,
                                          console=console)
        method = "cross-validated training"
    issues = rank_multilabel_issues(samples, splits, class_names, targets, probs)
    # Label-wise accuracy at 0.5 (1 - Hamming loss): a subset accuracy would count an image
    # wrong for any one of its labels.
    accuracy = float(((probs >= 0.5) == targets.astype(bool)).mean())
    return LabelIssueResult(issues, method, k, len(samples), accuracy, notes,
                            features=source.describe() if source else "", reg_c=reg_c,
                            task="multilabel",
                            vectors=features, vector_paths=[s.path for s in samples])


def usable_labels(samples: list[Sample], folds: int) -> tuple[list[str], int, list[str]]:
    """The labels to check (on at least MIN_EACH_SIDE images and missing from as many), the
    folds the rarest of them allows, and notes on what was left out or reduced."""
    if folds < 2:
        raise DataError(f"--folds must be at least 2 (got {folds})")
    present = Counter(name for s in samples for name in s.label_set)
    sides = {name: min(c, len(samples) - c) for name, c in present.items()}
    names = sorted(name for name, n in sides.items() if n >= MIN_EACH_SIDE)
    notes = []
    left_out = sorted(set(sides) - set(names))
    if left_out:
        notes.append(f"left out labels on fewer than {MIN_EACH_SIDE} images, or missing from "
                     f"fewer: {', '.join(left_out)}")
    if not names:
        raise DataError(f"the label check needs a label on at least {MIN_EACH_SIDE} readable "
                        f"images and missing from {MIN_EACH_SIDE} others")
    rarest = min(sides[name] for name in names)
    k = min(folds, rarest)
    if k < folds:
        notes.append(f"{k} folds instead of {folds}: the rarest label has {rarest} images on one side")
    return names, k, notes


def multi_hot(samples: list[Sample], class_names: list[str]) -> np.ndarray:
    """(N, C) 0/1 int matrix of each image's given labels among `class_names`."""
    column = {name: c for c, name in enumerate(class_names)}
    targets = np.zeros((len(samples), len(class_names)), dtype=np.int64)
    for i, s in enumerate(samples):
        for name in s.label_set:
            if name in column:
                targets[i, column[name]] = 1
    return targets


def multilabel_folds(targets: np.ndarray, k: int, seed: int,
                     groups: list[str] | None = None) -> np.ndarray:
    """Fold number per image, stratified by each image's rarest label (its set rarely repeats,
    its rarest label is what a fold must not lose; 'no label' is a stratum too); with `groups`,
    each group's images in one fold."""
    counts = targets.sum(0)
    rarest = np.where(targets.any(1), np.argmin(np.where(targets == 1, counts, np.inf), axis=1), -1)
    with warnings.catch_warnings():
        # A stratum smaller than k: sklearn warns and spreads it as it can, which is right here.
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        try:
            return _assign_folds(rarest, k, seed, groups)
        except ValueError:  # every stratum smaller than k: plain folds
            splitter = (KFold(k, shuffle=True, random_state=seed) if groups is None
                        else GroupKFold(k))
            fold_of = np.empty(len(targets), dtype=np.int64)
            for fold, (_, held_out) in enumerate(splitter.split(targets, groups=groups)):
                fold_of[held_out] = fold
            return fold_of


def logreg_oof_multilabel(
    features: np.ndarray, targets: np.ndarray, fold_of: np.ndarray, *, seed: int = 0,
    grid: tuple[float, ...] = LOGREG_C_GRID,
) -> tuple[np.ndarray, float]:
    """(N, C) out-of-fold probabilities of standardised features + one logistic regression a
    label, at the C of `grid` with the lowest mean binary log loss out of fold, and that C."""
    best: tuple[float, np.ndarray, float] | None = None  # (log loss, probabilities, C)
    solver = "newton-cholesky" if features.shape[1] <= NEWTON_MAX_FEATURES else "lbfgs"
    for reg_c in grid:
        classifier = make_pipeline(StandardScaler(), OneVsRestClassifier(
            LogisticRegression(C=reg_c, solver=solver, max_iter=1000, random_state=seed)))
        with warnings.catch_warnings():
            # lbfgs may stop at max_iter on hard folds; its probabilities are still usable. A
            # label on every image of a training fold gets a constant prediction (warned).
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*(converge|ITERATIONS).*")
            probs = cross_val_predict(classifier, features, targets, cv=PredefinedSplit(fold_of),
                                      method="predict_proba")
        probs = np.clip(probs, _EPS, 1 - _EPS)
        loss = float(-np.mean(targets * np.log(probs) + (1 - targets) * np.log(1 - probs)))
        if best is None or loss < best[0]:
            best = (loss, probs, reg_c)
    assert best is not None, "the C grid is empty"
    return best[1], best[2]


def rank_multilabel_issues(
    samples: list[Sample], splits: list[str], class_names: list[str], targets: np.ndarray,
    probs: np.ndarray,
) -> list[MultilabelIssue]:
    """The suspects, most suspect first: images where cleanlab flags any label (one-vs-rest
    confident learning: a label's threshold is the mean out-of-fold probability of the images
    given it, or of those not given it), with the flagged labels as likely missing or wrong."""
    with needs("trust", "clarivis check"):
        from cleanlab.multilabel_classification import filter as ml_filter
        from cleanlab.multilabel_classification import rank as ml_rank

    probs = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    given = [np.flatnonzero(row).tolist() for row in targets]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns on small classes; the notes say it
        # n_jobs=1: cleanlab would fork a pool per label; each is milliseconds here.
        # (N, K): True where label k of image i looks wrongly given or wrongly left out.
        suspect = np.asarray(ml_filter.find_multilabel_issues_per_class(given, probs, n_jobs=1))
    # And every label the out-of-fold model decides the other way at 0.5, as in the single-label
    # check: cleanlab alone (prune_by_noise_rate) flagged 4 of 8 planted errors on one of 3
    # seeds (8/8 on the others); the union found 8/8 on all three (tests/datacheck).
    suspect |= (probs >= 0.5) != targets.astype(bool)
    scores = ml_rank.get_label_quality_scores(given, probs)
    order = sorted(np.flatnonzero(suspect.any(1)), key=lambda i: (scores[i], samples[i].path))
    return [_issue(samples[i], splits[i], class_names, targets[i], suspect[i], float(scores[i]))
            for i in order]


def _issue(sample: Sample, split: str, class_names: list[str], given: np.ndarray,
           suspect: np.ndarray, score: float) -> MultilabelIssue:
    names = np.array(class_names)
    missing = names[suspect & (given == 0)].tolist()
    wrong = names[suspect & (given == 1)].tolist()
    # Labels outside the check (too rare) stay as given.
    kept = sorted(set(sample.label_set) - set(wrong))
    suggested = sorted(kept + missing)
    return MultilabelIssue(sample.path, split, sample.label, LABEL_SEP.join(suggested),
                           round(score, 6), list(sample.label_set), suggested, missing, wrong)
