"""The tensor cache and the decode-check record: built once, reused, rebuilt when files change."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.tiny import write_image

from clarivis.data import cache
from clarivis.data.dataset import pil_to_uint8
from clarivis.data.io import load_image
from clarivis.data.scan import scan_images
from clarivis.data.sources import Sample
from clarivis.data.transforms import Preprocess, eval_transform, resize_transform

PP = Preprocess(img_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture
def samples(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    paths = [write_image(tmp_path / "img" / f"{i}.png", (20 * i, 100, 200 - 10 * i), size=(24, 20 + i))
             for i in range(6)]
    return [Sample(str(p), "a" if i % 2 else "b") for i, p in enumerate(paths)]


def test_cache_holds_the_eval_resize_of_each_image(samples):
    pixels, hit = cache.open_pixel_cache(samples, PP)
    assert not hit and pixels.shape == (6, 3, 16, 16) and pixels.dtype == torch.uint8
    for row, s in zip(pixels, samples, strict=True):
        assert torch.equal(row, resize_transform(PP)(pil_to_uint8(load_image(s.path))))
    # And normalised like eval_transform (what validation and predict see).
    expected = eval_transform(PP)(pil_to_uint8(load_image(samples[0].path)))
    assert torch.allclose((pixels[0].float() / 255 - 0.5) / 0.5, expected, atol=1e-6)


def test_second_open_reuses_the_file(samples):
    first, hit1 = cache.open_pixel_cache(samples, PP)
    second, hit2 = cache.open_pixel_cache(samples, PP)
    assert (hit1, hit2) == (False, True) and torch.equal(first, second)
    assert len(list((cache.cache_dir()).glob("pixels-*.npy"))) == 1


def test_changed_file_or_size_builds_a_new_cache(samples):
    before, _ = cache.open_pixel_cache(samples, PP)
    write_image(Path(samples[2].path), (0, 0, 0), size=(24, 22))  # same path, new content
    after, hit = cache.open_pixel_cache(samples, PP)
    assert not hit and not torch.equal(before[2], after[2])
    _, hit_other_size = cache.open_pixel_cache(samples, Preprocess(img_size=8))
    assert not hit_other_size


def test_damaged_cache_file_is_rebuilt(samples):
    cache.open_pixel_cache(samples, PP)
    (path,) = cache.cache_dir().glob("pixels-*.npy")
    np.save(path, np.zeros((2, 3, 16, 16), dtype=np.uint8))  # wrong shape: e.g. a stale file
    pixels, hit = cache.open_pixel_cache(samples, PP)
    assert not hit and pixels.shape[0] == 6


def test_decoded_images_are_consumed_while_building(samples):
    decoded = [pil_to_uint8(load_image(s.path)) for s in samples]
    cache.open_pixel_cache(samples, PP, decoded=decoded)
    assert all(d is None for d in decoded)  # never the dataset twice in memory


def test_scan_record_skips_decoding_on_the_second_run(samples, tmp_path):
    bad = tmp_path / "img" / "bad.png"
    bad.write_bytes(b"not an image")
    all_samples = [*samples, Sample(str(bad), "a")]
    first = scan_images(all_samples)
    second = scan_images(all_samples)
    assert not first.from_record and second.from_record
    assert [s.path for s in second.samples] == [s.path for s in first.samples]
    assert second.skipped == first.skipped and second.sizes == first.sizes
    os.utime(samples[0].path, ns=(1, 1))  # touched: the record no longer applies
    assert not scan_images(all_samples).from_record


def test_large_jpegs_are_cached_as_predict_sees_them(tmp_path, monkeypatch):
    """Training (the tensor cache, built from the scan's full-size decodes) and predict (files)
    decode large JPEGs the same reduced way: the model sees the same pixels."""
    from PIL import Image

    from clarivis.data.dataset import model_pixels

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.jpg"
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    found = [Sample(str(p), "a") for p in paths]
    scan = scan_images(found)
    assert scan.images is not None and scan.images[0].shape == (3, 480, 640)  # full-size preload
    pixels, _ = cache.open_pixel_cache(found, PP, decoded=scan.images)
    for row, path in zip(pixels, paths, strict=True):
        reduced = model_pixels(str(path), PP.img_size)
        assert reduced.shape == (3, 60, 80)  # 1/8, libjpeg's smallest scale (still >= 2 x 16 px)
        assert torch.equal(row, resize_transform(PP)(reduced))
