"""Labels, templates and prompt ensembling (per class: normalized prompt embeddings averaged,
then renormalized)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.zeroshot.tiny_clip import full_clip

from clarivis.errors import ClarivisError
from clarivis.zeroshot.load import clip_tokenizer, resolve_clip
from clarivis.zeroshot.prompts import (
    DEFAULT_TEMPLATES,
    check_templates,
    class_text_embeddings,
    parse_labels,
    prompt_label,
    read_templates,
)


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


def test_templates():
    assert len(DEFAULT_TEMPLATES) == 7 and all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)
    assert check_templates(None) == list(DEFAULT_TEMPLATES)
    for bad in ("a photo", "{} and {}", "a {0}", "a {} of {x}"):
        with pytest.raises(ClarivisError, match="exactly one"):
            check_templates([bad])


def test_templates_file(tmp_path):
    (tmp_path / "t.txt").write_text("a photo of a {}.\n\n# comment\na drawing of a {}.\n")
    assert read_templates(tmp_path / "t.txt") == ["a photo of a {}.", "a drawing of a {}."]


def test_class_folder_names_become_words():
    assert prompt_label("golden_retriever") == "golden retriever"
    assert prompt_label("  tabby__cat ") == "tabby cat"


def test_ensemble_is_renormalized_mean_of_normalized_prompts(tiny_clip):
    clip = full_clip(tiny_clip.config, tiny_clip.weights)
    tokenizer = clip_tokenizer(resolve_clip(str(tiny_clip.config)))
    labels, templates = ["cat", "dog", "pizza"], ["a photo of a {}.", "art of the {}.", "a {}"]
    got = class_text_embeddings(clip, tokenizer, labels, templates)
    assert got.shape == (3, 32) and got.dtype == torch.float32
    with torch.no_grad():
        for c, label in enumerate(labels):
            prompts = F.normalize(clip.encode_text(tokenizer([t.format(label) for t in templates])), dim=-1)
            assert torch.allclose(got[c], F.normalize(prompts.mean(0), dim=0), atol=1e-6)
    assert torch.allclose(got.norm(dim=1), torch.ones(3), atol=1e-6)
    # One template: the normalized embedding of that prompt itself.
    single = class_text_embeddings(clip, tokenizer, labels, ["{}"])
    with torch.no_grad():
        assert torch.allclose(single, F.normalize(clip.encode_text(tokenizer(labels)), dim=-1), atol=1e-6)
