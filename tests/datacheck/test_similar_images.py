"""Edited copies by features: which pairs are linked, what is left to the hash groups, and that
the HNSW pass for large datasets finds what the exact one does."""

from __future__ import annotations

import numpy as np
import pytest

from clarivis.data.quality import DuplicateGroup, FileInfo
from clarivis.datacheck import similar_images
from clarivis.datacheck.similar_images import similar_groups, similar_pairs


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(n: int = 400, dim: int = 64, seed: int = 0):
    """n random unit vectors (pairwise cosines ~0 +- 0.13) and 10 copies of the first 10 at
    cosine ~0.95 to their source: (vectors, files), the copies in split 'test'."""
    rng = np.random.default_rng(seed)
    base = unit(rng.normal(size=(n, dim)))
    copies = unit(base[:10] + 0.33 * unit(rng.normal(size=(10, dim))))
    files = [FileInfo(f"train/{i}.png", "train", "a" if i % 2 else "b") for i in range(n)]
    files += [FileInfo(f"test/copy{i}.png", "test", "a" if i % 2 else "b") for i in range(10)]
    return np.concatenate([base, copies]), files


def test_each_edited_copy_is_one_leaking_group_with_its_source():
    vectors, files = planted()
    groups = similar_groups(vectors, files, [], threshold=0.85).groups
    assert sorted((g.paths[0], g.paths[1]) for g in groups) == sorted(
        (f"train/{i}.png", f"test/copy{i}.png") for i in range(10))
    assert all(g.kind == "similar" and g.leak and not g.conflicting_labels for g in groups)
    assert all(0.85 <= g.similarity < 1 for g in groups)


def test_copies_a_hash_group_already_holds_are_not_repeated():
    vectors, files = planted()
    known = [DuplicateGroup("near", ["train/0.png", "test/copy0.png"], ["train", "test"], ["b", "b"])]
    groups = similar_groups(vectors, files, known, threshold=0.85).groups
    assert len(groups) == 9 and all("test/copy0.png" not in g.paths for g in groups)


def test_a_copy_linked_to_two_images_joins_them_in_one_group():
    vectors, files = planted()
    vectors = np.concatenate([vectors, vectors[:1]])  # a third copy of image 0, labeled otherwise
    files = files + [FileInfo("val/again.png", "val", "a")]
    groups = similar_groups(vectors, files, [], threshold=0.85).groups
    group = next(g for g in groups if "train/0.png" in g.paths)
    assert sorted(group.paths) == ["test/copy0.png", "train/0.png", "val/again.png"]
    assert group.conflicting_labels and group.similarity >= 0.85


def test_features_that_cannot_tell_images_apart_make_no_giant_group():
    vectors, files = planted()
    vectors[100:200] = vectors[100] + 0.01 * vectors[100:200]  # 100 images, one direction
    found = similar_groups(vectors, files, [], threshold=0.85)
    assert found.too_large == [100] and len(found.groups) == 10  # the copies are still found


def test_hnsw_pass_finds_the_pairs_the_exact_pass_finds(monkeypatch):
    pytest.importorskip("usearch")
    vectors, _ = planted(n=3000)
    exact = similar_pairs(unit(vectors), 0.85)
    monkeypatch.setattr(similar_images, "_EXACT_UP_TO", 100)
    approximate = similar_pairs(unit(vectors), 0.85)
    assert len(exact[0]) == 10
    for found, expected in zip(approximate, exact, strict=True):
        np.testing.assert_allclose(found, expected, atol=1e-4)
