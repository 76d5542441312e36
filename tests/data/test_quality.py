"""File-level data quality: corrupt files, duplicates and leaks, imbalance, sizes, modes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from tests.check_data_gen import colour_image, make_colors

from clarivis.data import quality
from clarivis.data.quality import (
    FileInfo,
    _near_pairs,
    check_quality,
    find_duplicates,
    odd_modes,
    size_outliers,
)
from clarivis.data.sources import index_dataset


@pytest.fixture
def colors(tmp_path):
    return make_colors(tmp_path / "colors", per_class=10)


def test_clean_data_has_no_findings(colors):
    report = check_quality(index_dataset(colors))
    assert len(report.files) == 40 and all(f.ok for f in report.files)
    assert report.corrupt == [] and report.duplicates == []
    assert report.size_outliers == [] and report.odd_modes == []
    assert report.imbalance["ratio"] == 1.0 and not report.imbalance["imbalanced"]


def test_corrupt_files_are_findings_not_errors(colors):
    (colors / "train" / "red" / "garbage.png").write_bytes(b"not an image at all")
    (colors / "train" / "red" / "empty.png").write_bytes(b"")
    good = (colors / "train" / "blue" / "blue_000.png").read_bytes()
    (colors / "train" / "blue" / "cut.png").write_bytes(good[: len(good) // 2])
    report = check_quality(index_dataset(colors))
    reasons = {c["path"].rsplit("/", 1)[-1]: c["reason"] for c in report.corrupt}
    assert set(reasons) == {"garbage.png", "empty.png", "cut.png"}
    assert "empty" in reasons["empty.png"] and "not an image" in reasons["garbage.png"]
    assert not reasons["cut.png"].startswith("<bytes>")


def test_duplicates_leaks_and_conflicting_labels(colors):
    train = colors / "train"
    shutil.copy(train / "red" / "red_000.png", train / "red" / "copy.png")  # same bytes
    Image.open(train / "red" / "red_001.png").save(train / "red" / "same_pixels.bmp")  # same pixels
    shutil.copy(train / "green" / "green_000.png", colors / "test" / "green" / "leaked.png")
    shutil.copy(train / "blue" / "blue_000.png", train / "yellow" / "relabeled.png")
    brighter = ImageEnhance.Brightness(Image.open(train / "blue" / "blue_001.png")).enhance(1.06)
    brighter.save(train / "blue" / "brighter.png")
    groups = {tuple(p.rsplit("/", 1)[-1] for p in g.paths): g
              for g in find_duplicates(check_quality(index_dataset(colors)).readable)}
    exact = {k for k, g in groups.items() if g.kind == "exact"}
    assert ("copy.png", "red_000.png") in exact
    assert ("red_001.png", "same_pixels.bmp") in exact
    leak = groups[("green_000.png", "leaked.png")]
    assert leak.leak and sorted(leak.splits) == ["test", "train"] and not leak.conflicting_labels
    relabeled = groups[("blue_000.png", "relabeled.png")]
    assert relabeled.conflicting_labels and not relabeled.leak
    near = groups[("blue_001.png", "brighter.png")]
    assert near.kind == "near" and near.distance <= 4
    assert len(groups) == 5  # distinct random images are never called near duplicates
    first = find_duplicates(check_quality(index_dataset(colors)).readable)[0]
    assert first.leak  # leaks rank first


def test_near_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 700, dtype=np.uint64)
    hashes[500:520] = hashes[:20] ^ np.uint64(0b1011)  # 3 bits apart
    expected = {(i, j) for i in range(700) for j in range(i + 1, 700)
                if (int(hashes[i]) ^ int(hashes[j])).bit_count() <= 6}
    assert set(_near_pairs(hashes, 6)) == expected and len(expected) >= 20


@pytest.mark.parametrize("distance", [0, 3, 6, 8, 12])
def test_multi_index_search_finds_exactly_the_pairs_of_all_pairs(monkeypatch, distance):
    """Above quality._ALL_PAIRS_UP_TO hashes (lowered here) the search buckets by chunks; it
    must return the same pairs, also when hashes crowd into a few buckets (real pHashes of
    plain images share most bits) and at distances too large for buckets (12: all pairs)."""
    monkeypatch.setattr(quality, "_ALL_PAIRS_UP_TO", 100)
    rng = np.random.default_rng(distance)
    spread = rng.integers(0, 2**63, 1500, dtype=np.uint64)
    crowded = rng.integers(0, 2**20, 1500, dtype=np.uint64)  # the top 44 bits all zero
    hashes = np.concatenate([spread, crowded])
    copies = rng.integers(0, len(hashes), 300)
    bits = rng.integers(0, 64, (300, 4)).astype(np.uint64)  # up to 4 flipped bits each
    masks = np.bitwise_or.reduce(np.uint64(1) << bits, axis=1)
    masks[:100] = 0  # same hash, other image
    hashes = np.concatenate([hashes, hashes[copies] ^ masks])
    i, j = quality._all_pairs(hashes, distance)
    expected = set(zip(i.tolist(), j.tolist(), strict=True))
    assert set(_near_pairs(hashes, distance)) == expected and len(expected) >= 100
    assert len(_near_pairs(hashes, distance)) == len(expected)  # each pair once


def test_many_images_with_one_hash_are_one_group_without_listing_every_pair(monkeypatch):
    files = [FileInfo(f"{i}.png", "train", "a", sha256=str(i), pixel_hash=str(i), phash=7)
             for i in range(3000)]  # 3,000 different plain images, one pHash: 4.5M pairs
    files.append(FileInfo("other.png", "test", "a", sha256="x", pixel_hash="x", phash=7 ^ 0b11))
    seen = []
    monkeypatch.setattr(quality, "_near_pairs", lambda h, d: seen.append(len(h)) or [(0, 1)])
    (group,) = find_duplicates(files)
    assert seen == [2] and len(group.paths) == 3001 and group.leak


def test_size_outliers_use_the_median():
    files = [FileInfo(f"{i}.png", "train", "a", width=32, height=32) for i in range(30)]
    files += [FileInfo("small.png", "train", "a", width=33, height=31)]  # a few px off: fine
    assert size_outliers(files) == []
    files += [FileInfo("huge.png", "train", "a", width=512, height=512),
              FileInfo("tiny.png", "train", "a", width=8, height=8)]
    found = size_outliers(files)
    assert [o["path"] for o in found] == ["huge.png", "tiny.png"]
    assert found[0]["direction"] == "large" and found[0]["area_ratio"] == pytest.approx(256, rel=0.01)
    # Widely varying photo sizes: only the far end is flagged.
    rng = np.random.default_rng(0)
    spread = [FileInfo(f"p{i}", "train", "a", width=int(w), height=int(w))
              for i, w in enumerate(rng.integers(300, 1200, 200))]
    assert size_outliers(spread) == []


def test_odd_modes_against_the_dominant_mode(tmp_path):
    root = tmp_path / "modes"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(6):
            path = root / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            colour_image("red", 32, rng).save(path)
    base = colour_image("blue", 32, rng)
    base.convert("CMYK").save(root / "a" / "cmyk.jpg")
    base.convert("L").save(root / "a" / "gray.png")
    base.convert("RGBA").save(root / "b" / "alpha.png")
    base.convert("P").save(root / "b" / "palette.png")
    Image.fromarray(np.full((32, 32), 3000, dtype=np.uint16)).save(root / "b" / "deep.png")
    report = check_quality(index_dataset(root))
    kinds = {o["path"].rsplit("/", 1)[-1]: o["kind"] for o in report.odd_modes}
    assert kinds == {"cmyk.jpg": "cmyk", "gray.png": "gray", "alpha.png": "alpha",
                     "palette.png": "palette", "deep.png": "high-depth"}
    # A grayscale dataset: the colour image is the odd one.
    gray = [FileInfo(f"{i}", "train", "a", mode="L") for i in range(5)]
    odd = odd_modes([*gray, FileInfo("rgb", "train", "a", mode="RGB")])
    assert [(o["path"], o["kind"], o["dominant"]) for o in odd] == [("rgb", "rgb", "gray")]


def test_imbalance_and_missing_classes(tmp_path):
    root = tmp_path / "imb"
    make_colors(root, per_class=20)
    for f in sorted((root / "train" / "red").glob("*.png"))[2:]:
        f.unlink()
    for f in (root / "test" / "blue").glob("*.png"):
        f.unlink()
    imbalance = check_quality(index_dataset(root)).imbalance
    assert imbalance["counts"]["red"] == 8 and imbalance["smallest"] == "red"
    assert imbalance["ratio"] == pytest.approx(20 / 8) and imbalance["imbalanced"]
    assert imbalance["missing"] == {"test": ["blue"]}
    assert imbalance["per_split"]["train"]["red"] == 2
