"""Dataset layouts: class folders, train/val/test folders, CSV manifests, and bad input."""

from __future__ import annotations

import pytest
from tests.tiny import write_image

from clarivis.data.sources import fingerprint, index_dataset
from clarivis.data.splits import resolve_splits, stratified_split
from clarivis.errors import DataError


def test_class_folder_layout(tiny_folder):
    index = index_dataset(tiny_folder)
    assert index.layout == "folder"
    assert index.class_names == ["blue", "red"]
    assert len(index.splits["train"]) == 24


def test_nested_images_inside_a_class_folder_are_found(tmp_path):
    write_image(tmp_path / "a" / "x.png")
    write_image(tmp_path / "a" / "deeper" / "y.jpg")
    write_image(tmp_path / "b" / "z.png")
    index = index_dataset(tmp_path)
    assert sorted(s.label for s in index.all_samples) == ["a", "a", "b"]


def test_split_folder_layout(tmp_path):
    for split in ("train", "val", "test"):
        for cls in ("cat", "dog"):
            write_image(tmp_path / split / cls / f"{split}.png")
    index = index_dataset(tmp_path)
    assert index.layout == "splits"
    assert set(index.splits) == {"train", "val", "test"}
    assert index.class_names == ["cat", "dog"]


def test_manifest_keeps_extra_columns_as_groups_and_honours_split(tmp_path):
    for i in range(4):
        write_image(tmp_path / "img" / f"{i}.png")
    (tmp_path / "m.csv").write_text(
        "path,label,split,site\n"
        "img/0.png,ok,train,north\nimg/1.png,bad,train,south\n"
        "img/2.png,ok,test,north\nimg/3.png,bad,val,south\n"
    )
    index = index_dataset(tmp_path / "m.csv")
    assert index.layout == "manifest"
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 2, "test": 1, "val": 1}
    assert index.splits["train"][1].groups == {"site": "south"}
    assert index.splits["test"][0].path.endswith("img/2.png")


def test_builtin_shapes_manifest_carries_attributes(shapes_dir):
    index = index_dataset(shapes_dir / "test.csv")
    assert set(index.splits) == {"test"}
    assert {"lighting", "background"} <= set(index.splits["test"][0].groups)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "no images in class subfolders"),
        (lambda p: write_image(p / "x.png"), "put them in one subfolder per class"),
        (lambda p: write_image(p / "only" / "x.png"), "only one class"),
        (lambda p: (p.parent / "m.csv").write_text("file,cls\na.png,x\n"), "'path' and 'label'"),
    ],
    ids=["missing", "empty", "loose-images", "one-class", "bad-manifest"],
)
def test_bad_datasets_say_what_to_do(tmp_path, setup, message):
    target = tmp_path / "data"
    setup(target)
    path = tmp_path / "m.csv" if (tmp_path / "m.csv").exists() else target
    with pytest.raises(DataError, match=message):
        index_dataset(path)


def test_stratified_split_is_seeded_and_keeps_every_class(tiny_folder):
    samples = index_dataset(tiny_folder).splits["train"]
    train, val = stratified_split(samples, 0.25, seed=3)
    again_train, again_val = stratified_split(samples, 0.25, seed=3)
    assert [s.path for s in val] == [s.path for s in again_val]
    assert sorted(s.label for s in val) == ["blue"] * 3 + ["red"] * 3
    assert len(train) == 18 and not {s.path for s in train} & {s.path for s in val}
    assert stratified_split(samples, 0.0, seed=3)[1] == []
    other = stratified_split(samples, 0.25, seed=4)[1]
    assert [s.path for s in other] != [s.path for s in val]


def test_given_val_split_is_used_not_resplit(tmp_path):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            for i in range(3):
                write_image(tmp_path / split / cls / f"{i}.png")
    splits = resolve_splits(index_dataset(tmp_path), 0.5, seed=0)
    assert len(splits["train"]) == 6 and len(splits["val"]) == 6


def test_fingerprint_changes_with_files_not_with_location(tiny_folder, tmp_path):
    import shutil

    fp = fingerprint(index_dataset(tiny_folder).all_samples, tiny_folder)
    copy = shutil.copytree(tiny_folder, tmp_path / "copy")
    assert fingerprint(index_dataset(copy).all_samples, copy) == fp
    write_image(copy / "red" / "extra.png")
    assert fingerprint(index_dataset(copy).all_samples, copy) != fp
