"""benchmarks/multilabel_mosaics.py without training clarivis: the presets, the held-out photo
pools, the mosaics and their label sets (read by clarivis as multi-label), and the plain BCE
baseline's loop on a few mosaics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.benchmarks.scripts import benchmark_script
from tests.tiny import CNN, write_image

from clarivis.data.sources import index_dataset

COLOURS = {"blue": (20, 20, 220), "green": (20, 200, 20), "red": (220, 20, 20)}


@pytest.fixture(scope="module")
def bench():
    with benchmark_script("multilabel_mosaics") as module:
        yield module


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos") / "train"
    for name, colour in COLOURS.items():
        for i in range(10):
            write_image(root / name / f"{i:04d}.jpg", colour, size=(32, 32))
    return root.parent


def test_presets_and_arms(bench):
    args = bench.parse_args(["--data", "D"])
    assert (args.train_mosaics, args.test_mosaics, args.epochs) == (2000, 1000, 8)
    assert args.arm_list == ["clarivis-bce", "clarivis-asl", "baseline"]
    gpu = bench.parse_args(["--data", "D", "--preset", "gpu", "--epochs", "3"])
    assert (gpu.train_mosaics, gpu.epochs) == (10000, 3)
    with pytest.raises(SystemExit):
        bench.parse_args(["--data", "D", "--arms", "baseline"])  # nothing to copy settings from


def test_mosaics_hold_out_photos_and_carry_the_set_of_their_classes(bench, photos, tmp_path):
    by_class = bench.common.class_folder_images(bench.unpacked(str(photos), tmp_path))
    train_pool, test_pool = bench.source_pools(by_class, 0.2, seed=0)
    assert len(test_pool) == 6 and len(train_pool) == 24
    assert not {p for p, _ in train_pool} & {p for p, _ in test_pool}
    groups = bench.draw_tiles(train_pool, 6, bench.random.Random(0))
    assert len({p for g in groups for p, _ in g}) == 24  # every photo once while the pool lasts
    csv_path = bench.write_mosaics(groups, tmp_path / "m", tmp_path / "train.csv")
    rows = bench.read_manifest(csv_path)
    for (path, labels), group in zip(rows, groups, strict=True):
        assert labels == sorted({c for _, c in group})
        pixels = np.asarray(Image.open(path))
        assert pixels.shape == (64, 64, 3)
        for k, (_, cls) in enumerate(group):  # each quadrant shows its tile's colour
            quadrant = pixels[(k // 2) * 32:(k // 2) * 32 + 32, (k % 2) * 32:(k % 2) * 32 + 32]
            assert np.abs(quadrant.mean((0, 1)) - COLOURS[cls]).max() < 25
    index = index_dataset(csv_path)
    assert index.task == "multilabel" and index.class_names == sorted({c for _, c in train_pool})
    assert [sorted(s.labels) for s in index.all_samples] == [labels for _, labels in rows]
    stats = bench.label_stats(rows, sorted(COLOURS))
    assert stats["mosaics"] == 6 and 1 <= stats["mean_labels"] <= 3
    rate = stats["mean_labels"] / 3  # mean label rate over the 3 classes
    floor = stats["no_pixels"]
    assert floor["map_random"] == floor["hamming_no_labels"] == pytest.approx(rate, abs=1e-3)


def test_baseline_trains_with_bce_and_decides_at_one_half(bench, photos, tmp_path):
    by_class = bench.common.class_folder_images(bench.unpacked(str(photos), tmp_path))
    pool = [(p, c) for c, files in by_class.items() for p in files]
    rng = bench.random.Random(0)
    train = bench.read_manifest(bench.write_mosaics(bench.draw_tiles(pool, 8, rng), tmp_path / "tr",
                                                    tmp_path / "train.csv"))
    test_csv = bench.write_mosaics(bench.draw_tiles(pool, 4, rng), tmp_path / "te", tmp_path / "test.csv")
    spec = {"train": train, "test_csv": str(test_csv), "class_names": sorted(COLOURS),
            "mean": [0.5] * 3, "std": [0.25] * 3, "seed": 0, "device": "cpu", "model": CNN,
            "img_size": 64, "epochs": 2, "batch_size": 4, "lr": 1e-3, "optimizer": "adamw",
            "weight_decay": 0.05, "warmup_epochs": 0.4, "min_lr_ratio": 0.01, "momentum": 0.9,
            "model_kwargs": {}}
    result = bench.baseline_worker(spec)
    metrics = result["metrics"]
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    assert metrics["num_samples"] == 4 and metrics["task"] == "multilabel"
    assert {c["threshold"] for c in metrics["per_class"]} == {0.5}
    assert 0 <= metrics["map_macro"] <= 1 and 0 <= metrics["hamming_loss"] <= 1
