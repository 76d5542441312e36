"""Train/validation splits: stratified per class and seeded, so a run can be repeated."""

from __future__ import annotations

import csv
import random
from collections import defaultdict

from clarivis.data.sources import DatasetIndex, Sample
from clarivis.errors import DataError


def stratified_split(
    samples: list[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Hold out `val_fraction` of every class (at least one image of classes with two or more)."""
    if val_fraction <= 0:
        return list(samples), []
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda s: s.path)
        rng.shuffle(members)
        n_val = round(len(members) * val_fraction)
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)  # every class stays in train
        else:
            n_val = 0
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return train, val


def multilabel_split(
    samples: list[Sample], val_fraction: float, seed: int, column: str | None = None
) -> tuple[list[Sample], list[Sample]]:
    """Multi-label data: a seeded random `val_fraction` of the images (whole groups of `column`
    at a time when given). Label sets rarely repeat (4 of 10 classes: 385 sets), so stratifying
    by set would hold nothing out; instead an image goes back to training while it holds a
    label that training would otherwise lack, so every label is learnable."""
    if val_fraction <= 0:
        return list(samples), []
    ordered = sorted(samples, key=lambda s: s.path)
    keys = [s.groups[column] if column else s.path for s in ordered]
    units = sorted(set(keys))
    if column and len(units) < 2:
        raise DataError(f"--group-by {column}: all {len(ordered)} training images are in one "
                        "group; a validation split needs at least 2 groups")
    random.Random(seed).shuffle(units)
    members: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        members[key].append(i)
    target = max(1, round(len(ordered) * val_fraction))
    held: set[int] = set()
    for unit in units[:-1]:  # the last unit always trains
        if len(held) >= target:
            break
        held.update(members[unit])
    train_counts = defaultdict(int)
    for i, s in enumerate(ordered):
        if i not in held:
            for name in s.label_set:
                train_counts[name] += 1
    for unit in units:  # give back held units carrying a label training has none of
        idx = members[unit]
        if idx[0] in held and any(train_counts[n] == 0 for i in idx for n in ordered[i].label_set):
            held.difference_update(idx)
            for i in idx:
                for name in ordered[i].label_set:
                    train_counts[name] += 1
    return ([s for i, s in enumerate(ordered) if i not in held],
            [s for i, s in enumerate(ordered) if i in held])


def check_group_column(index: DatasetIndex, column: str) -> None:
    """`column` must be a manifest column filled on every row: one-line errors otherwise.
    Group values (e.g. patient ids) may be personal data: messages give counts, never values."""
    if index.layout != "manifest":
        raise DataError(f"--group-by {column} needs a CSV manifest with a '{column}' column "
                        f"({index.root} is a folder); write one with columns path,label,{column}")
    samples = index.all_samples
    if not samples or column not in samples[0].groups:
        with open(index.root, newline="", encoding="utf-8-sig") as f:
            columns = next(csv.reader(f), [])
        raise DataError(f"manifest {index.root} has no column '{column}'; its columns are "
                        f"{', '.join(columns)}: give one of them to --group-by")
    empty = sum(not s.groups.get(column) for s in samples)
    if empty:
        raise DataError(f"manifest {index.root}: {empty} of {len(samples)} rows have an empty "
                        f"'{column}'; fill them (one value per group, e.g. each patient's id)")


def group_split(
    samples: list[Sample], val_fraction: float, seed: int, column: str
) -> tuple[list[Sample], list[Sample]]:
    """Hold out about `val_fraction` of the images, whole groups of `column` at a time (no
    patient on both sides), class balance kept roughly: one fold of a seeded
    StratifiedGroupKFold with round(1 / val_fraction) folds (10% -> 10 folds)."""
    if val_fraction <= 0:
        return list(samples), []
    from sklearn.model_selection import StratifiedGroupKFold  # heavy; only with --group-by

    ordered = sorted(samples, key=lambda s: s.path)  # the split must not depend on listing order
    groups = [s.groups[column] for s in ordered]
    n_groups = len(set(groups))
    if n_groups < 2:
        raise DataError(f"--group-by {column}: all {len(ordered)} training images are in one "
                        "group; a validation split needs at least 2 groups")
    k = min(max(2, round(1 / val_fraction)), n_groups)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    labels = [s.label for s in ordered]
    # The first fold whose training side keeps every class (few groups can hold all of one
    # class); if none does, the first fold, and training reports the class it lacks.
    folds = [set(held.tolist()) for _, held in splitter.split(ordered, labels, groups)]
    every_class = [f for f in folds
                   if len({lab for i, lab in enumerate(labels) if i not in f}) == len(set(labels))]
    held_set = (every_class or folds)[0]
    train = [s for i, s in enumerate(ordered) if i not in held_set]
    val = [s for i, s in enumerate(ordered) if i in held_set]
    return train, val


def resolve_splits(
    index: DatasetIndex, val_fraction: float, seed: int, group_by: str | None = None
) -> dict[str, list[Sample]]:
    """The train/val(/test) samples of a run: given val split if any, else held out from train
    (whole groups of the manifest column `group_by` at a time when given)."""
    if group_by is not None:
        check_group_column(index, group_by)
    if "train" not in index.splits:
        raise DataError(
            f"{index.root} has no training images (only {', '.join(index.splits)}); "
            "give a folder of class subfolders, a train/ folder or manifest rows with split=train"
        )
    splits = dict(index.splits)
    if "val" not in splits:
        if index.task == "multilabel":
            splits["train"], splits["val"] = multilabel_split(splits["train"], val_fraction, seed, group_by)
        elif group_by is not None:
            splits["train"], splits["val"] = group_split(splits["train"], val_fraction, seed, group_by)
        else:
            splits["train"], splits["val"] = stratified_split(splits["train"], val_fraction, seed)
    if not splits["val"]:
        del splits["val"]
    return splits
