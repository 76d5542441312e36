"""The one lazy input expansion, clarivis.data.expand (files, folders, globs, PIL images)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image
from tests.tiny import write_image

from clarivis.data.expand import expand_inputs, expand_path, walk_images
from clarivis.data.io import is_image_path


def test_walk_order_is_sorted_path_order(tmp_path):
    # Names chosen so that comparing path strings would differ from comparing paths part by
    # part ("b/x.png" > "b.png" as strings, but "b" < "b.png"): Classifier.predict does the latter.
    for name in ("b.png", "b/x.png", "b-c.png", "a/z/1.png", "a.png", "c/d/e/f.jpg"):
        write_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    walked = [path for path, error in walk_images(str(tmp_path)) if error is None]
    expected = sorted(p for p in tmp_path.rglob("*") if p.is_file() and is_image_path(p))
    assert walked == [str(p) for p in expected]
    assert len(walked) == 6


def test_walk_is_lazy(tmp_path):
    write_image(tmp_path / "a" / "1.png")
    (tmp_path / "b").mkdir()
    walk = walk_images(str(tmp_path))
    assert next(walk)[0].endswith("1.png")
    write_image(tmp_path / "b" / "2.png")  # created after the walk started, in a later folder
    assert list(walk) == [(str(tmp_path / "b" / "2.png"), None)]


def test_expand_inputs_walks_a_folder_lazily(tmp_path):
    write_image(tmp_path / "a" / "1.png")
    (tmp_path / "b").mkdir()
    entries = expand_inputs(tmp_path)
    assert next(entries) == (str(tmp_path / "a" / "1.png"), None)
    write_image(tmp_path / "b" / "2.png")
    assert list(entries) == [(str(tmp_path / "b" / "2.png"), None)]


def test_inputs_that_hold_no_image_are_error_entries(tmp_path):
    (tmp_path / "empty").mkdir()
    write_image(tmp_path / "g" / "1.png")
    write_image(tmp_path / "g" / "2.png")
    entries = list(expand_inputs([tmp_path / "missing.png", tmp_path / "empty",
                                  str(tmp_path / "nothing*.png"), str(tmp_path / "g" / "*.png")]))
    assert entries == [
        (str(tmp_path / "missing.png"), "file not found"),
        (str(tmp_path / "empty"), "folder holds no images"),
        (str(tmp_path / "nothing*.png"), "no files match this pattern"),
        (str(tmp_path / "g" / "1.png"), None), (str(tmp_path / "g" / "2.png"), None),
    ]


def test_glob_matching_a_folder_walks_it(tmp_path):
    write_image(tmp_path / "x1" / "b.png")
    write_image(tmp_path / "x1" / "a.png")
    write_image(tmp_path / "x2.png")
    assert [p for p, _ in expand_path(str(tmp_path / "x*"))] == [
        str(tmp_path / "x1" / "a.png"), str(tmp_path / "x1" / "b.png"), str(tmp_path / "x2.png")]


def test_pil_images_and_single_inputs(tmp_path):
    write_image(tmp_path / "a.png")
    image = Image.new("RGB", (4, 4))
    assert list(expand_inputs(image)) == [("<image 0>", image)]
    assert list(expand_inputs([tmp_path / "a.png", image])) == [
        (str(tmp_path / "a.png"), None), ("<image 1>", image)]
    assert list(expand_inputs(str(tmp_path / "a.png"))) == [(str(tmp_path / "a.png"), None)]


def test_unreadable_subfolder_is_one_error_entry(tmp_path, monkeypatch):
    write_image(tmp_path / "a" / "1.png")
    locked = tmp_path / "b"
    write_image(locked / "2.png")
    write_image(tmp_path / "c.png")
    scandir = os.scandir

    def refuse_locked(path):  # as chmod 0 would, which root (CI containers) ignores
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    assert list(walk_images(str(tmp_path))) == [
        (str(tmp_path / "a" / "1.png"), None),
        (str(locked), "cannot list folder (Permission denied)"),
        (str(tmp_path / "c.png"), None),
    ]
