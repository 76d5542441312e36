"""Train/validation splits: stratified per class and seeded, so a run can be repeated."""

from __future__ import annotations

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


def resolve_splits(
    index: DatasetIndex, val_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    """The train/val(/test) samples of a run: given val split if any, else held out from train."""
    if "train" not in index.splits:
        raise DataError(
            f"{index.root} has no training images (only {', '.join(index.splits)}); "
            "give a folder of class subfolders, a train/ folder or manifest rows with split=train"
        )
    splits = dict(index.splits)
    if "val" not in splits:
        splits["train"], splits["val"] = stratified_split(splits["train"], val_fraction, seed)
    if not splits["val"]:
        del splits["val"]
    return splits
