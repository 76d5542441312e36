"""Multi-label manifests: detected by their `labels` column (or --task multilabel), cells split
on the separator, an empty cell an image with no label; the held-out split keeps every label in
training and whole groups together."""

from __future__ import annotations

import pytest

from clarivis.data.sources import index_dataset
from clarivis.data.splits import multilabel_split, resolve_splits
from clarivis.errors import DataError


def manifest(tmp_path, text: str):
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


def test_labels_column_makes_a_multilabel_index(tmp_path):
    text = "path,labels,site\na.png,dog;ball,x\nb.png,,y\nc.png, cat ;dog,x\n"
    index = index_dataset(manifest(tmp_path, text))
    assert index.task == "multilabel" and index.class_names == ["ball", "cat", "dog"]
    a, b, c = index.splits["train"]
    assert a.labels == ("ball", "dog") and a.label == "ball;dog" and a.groups == {"site": "x"}
    assert b.labels == () and b.label == ""  # an empty cell: no label, still a training image
    assert c.label_set == ("cat", "dog")


def test_task_and_separator_flags(tmp_path):
    path = manifest(tmp_path, "path,label\na.png,dog|ball\nb.png,cat\n")
    assert index_dataset(path).task == "multiclass"  # a `label` column stays single-label
    index = index_dataset(path, task="multilabel", label_sep="|")
    assert index.class_names == ["ball", "cat", "dog"]
    with pytest.raises(DataError, match="needs a CSV manifest"):
        index_dataset(tmp_path, task="multilabel")


def test_a_manifest_with_no_label_at_all_is_refused(tmp_path):
    with pytest.raises(DataError, match="no image a label"):
        index_dataset(manifest(tmp_path, "path,labels\na.png,\nb.png,\n"))


def test_split_keeps_every_label_in_training(tmp_path):
    # "rare" is on two images only: whichever the draw holds out, one stays in training.
    rows = [f"i{i}.png,{'common;rare' if i < 2 else 'common'}" for i in range(20)]
    index = index_dataset(manifest(tmp_path, "path,labels\n" + "\n".join(rows) + "\n"))
    for seed in range(10):
        splits = resolve_splits(index, 0.5, seed)
        assert {n for s in splits["train"] for n in s.labels} == {"common", "rare"}
        assert len(splits["val"]) + len(splits["train"]) == 20 and splits["val"]
    assert resolve_splits(index, 0.5, 3) == resolve_splits(index, 0.5, 3)  # seeded


def test_group_split_never_shares_a_group(tmp_path):
    rows = [f"i{i}.png,{'a' if i % 2 else 'a;b'},p{i % 7}" for i in range(42)]
    index = index_dataset(manifest(tmp_path, "path,labels,patient\n" + "\n".join(rows) + "\n"))
    for seed in range(5):
        train, val = multilabel_split(index.splits["train"], 0.2, seed, "patient")
        assert val and not {s.groups["patient"] for s in train} & {s.groups["patient"] for s in val}
