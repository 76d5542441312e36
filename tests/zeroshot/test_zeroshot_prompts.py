"""Labels and template files as `clarivis zeroshot` reads them (the templates themselves:
tests/models/test_prompts.py)."""

from __future__ import annotations

import pytest

from clarivis.errors import ClarivisError
from clarivis.zeroshot.prompts import parse_labels, read_templates


def test_labels_from_text_file_and_list(tmp_path):
    assert parse_labels(" a cat, a dog ,a pizza") == ["a cat", "a dog", "a pizza"]
    (tmp_path / "labels.txt").write_text("# my classes\ngolden retriever\n\ntabby cat\n")
    assert parse_labels(str(tmp_path / "labels.txt")) == ["golden retriever", "tabby cat"]
    assert parse_labels(tmp_path / "labels.txt") == ["golden retriever", "tabby cat"]
    assert parse_labels(["x", "y"]) == ["x", "y"]


@pytest.mark.parametrize("labels, fragment", [
    ("", "no labels given"),
    ("a cat,,a dog", "label 2 of 3 is empty"),
    ("a cat,a dog,a cat", "'a cat' is given twice"),
    ("a cat", "only one label"),
    ("missing-labels.txt", "not found"),
])
def test_bad_labels_are_one_line_errors(labels, fragment):
    with pytest.raises(ClarivisError, match=fragment) as info:
        parse_labels(labels)
    assert "\n" not in str(info.value)


def test_templates_file(tmp_path):
    (tmp_path / "t.txt").write_text("a photo of a {}.\n\n# comment\na drawing of a {}.\n")
    assert read_templates(tmp_path / "t.txt") == ["a photo of a {}.", "a drawing of a {}."]
