"""Built-in generated datasets: layout, manifests, attributes, determinism."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clarivis.data.builtin import (
    BUILTIN_DATASETS,
    LIGHTING_LEVELS,
    SHAPE_CLASSES,
    make_dataset,
    make_digits,
    make_shapes,
)
from clarivis.errors import ClarivisError, DataError

SHAPE_COLUMNS = ["path", "label", "split", "lighting", "background", "color", "size"]


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("builtin") / "shapes", per_class=5, img_size=32)


def test_registry() -> None:
    assert BUILTIN_DATASETS == {"shapes": make_shapes, "digits": make_digits}


def test_shapes_layout_and_manifest(shapes: Path) -> None:
    columns, rows = _read_csv(shapes / "manifest.csv")
    assert columns == SHAPE_COLUMNS
    assert len(rows) == 5 * len(SHAPE_CLASSES)
    for row in rows:
        path = shapes / row["path"]
        assert row["path"] == f"{row['split']}/{row['label']}/{path.name}"
        assert path.name.startswith(f"{row['label']}_") and path.suffix == ".png"
        with Image.open(path) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    pngs = {p.relative_to(shapes).as_posix() for p in shapes.rglob("*.png")}
    assert pngs == {row["path"] for row in rows}


def test_shapes_splits_are_stratified_and_match_split_csvs(shapes: Path) -> None:
    _, rows = _read_csv(shapes / "manifest.csv")
    for label in SHAPE_CLASSES:
        counts = [
            sum(r["label"] == label and r["split"] == s for r in rows)
            for s in ("train", "val", "test")
        ]
        assert counts == [3, 1, 1]
    for split in ("train", "val", "test"):
        columns, split_rows = _read_csv(shapes / f"{split}.csv")
        assert columns == SHAPE_COLUMNS
        assert split_rows == [r for r in rows if r["split"] == split]


def test_shapes_attributes(shapes: Path) -> None:
    _, rows = _read_csv(shapes / "manifest.csv")
    assert {r["lighting"] for r in rows} == set(LIGHTING_LEVELS)
    assert {r["background"] for r in rows} <= {"plain", "gradient", "noise", "stripes"}
    assert {r["size"] for r in rows} <= {"small", "large"}
    assert len({r["color"] for r in rows}) >= 3


def test_lighting_weights_select_levels(tmp_path: Path) -> None:
    out = make_shapes(
        tmp_path / "bright",
        per_class=3,
        img_size=16,
        lighting_weights={"bright": 1, "normal": 0, "dark": 0},
    )
    _, rows = _read_csv(out / "manifest.csv")
    assert {r["lighting"] for r in rows} == {"bright"}


def test_dark_images_are_darker_than_bright(shapes: Path) -> None:
    _, rows = _read_csv(shapes / "manifest.csv")

    def mean_brightness(level: str) -> float:
        return float(
            np.mean(
                [
                    np.asarray(Image.open(shapes / r["path"])).mean()
                    for r in rows
                    if r["lighting"] == level
                ]
            )
        )

    assert mean_brightness("dark") < 0.6 * mean_brightness("normal")
    assert mean_brightness("normal") < mean_brightness("bright")


def test_shapes_are_deterministic(shapes: Path, tmp_path: Path) -> None:
    again = make_shapes(tmp_path / "again", per_class=5, img_size=32)
    assert _tree_bytes(again) == _tree_bytes(shapes)
    other = make_shapes(tmp_path / "other", per_class=5, img_size=32, seed=1)
    assert _tree_bytes(other) != _tree_bytes(shapes)


def test_refuses_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        make_shapes(tmp_path, per_class=1, img_size=16)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_existing_empty_dir_is_fine(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert make_shapes(out, per_class=1, img_size=16) == out
    assert (out / "manifest.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no staging folder left


@pytest.mark.parametrize(
    "kwargs",
    [{"per_class": 0}, {"split_fractions": (0.5, 0.2, 0.2)}, {"lighting_weights": {"dim": 1.0}},
     {"lighting_weights": {"dark": 0.0}}],
)  # fmt: skip
def test_bad_arguments_are_user_errors(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ClarivisError):
        make_shapes(tmp_path / "x", img_size=16, **kwargs)
    assert not (tmp_path / "x").exists()


def test_digits(tmp_path: Path) -> None:
    out = make_digits(tmp_path / "digits", img_size=16)
    columns, rows = _read_csv(out / "manifest.csv")
    assert columns == ["path", "label", "split"]
    assert len(rows) == 1797
    assert {r["label"] for r in rows} == {str(d) for d in range(10)}
    assert sorted(p.name for p in (out / "train").iterdir()) == [str(d) for d in range(10)]
    assert sum(len(_read_csv(out / f"{s}.csv")[1]) for s in ("train", "val", "test")) == 1797
    with Image.open(out / rows[0]["path"]) as image:
        assert image.mode == "L" and image.size == (16, 16)
        pixels = np.asarray(image)
    assert pixels[0, 0] == 255 and pixels.min() < 80  # dark ink on light (white) paper


def test_make_dataset_by_name(tmp_path: Path) -> None:
    out = make_dataset("shapes", tmp_path / "s", per_class=4, img_size=16, seed=3)
    _, rows = _read_csv(out / "manifest.csv")
    assert len(rows) == 4 * len(SHAPE_CLASSES)
    assert _tree_bytes(out) == _tree_bytes(make_shapes(tmp_path / "t", per_class=4, img_size=16, seed=3))


@pytest.mark.parametrize("name, kwargs, message", [
    ("mnist", {}, "unknown dataset 'mnist'; choose one of shapes, digits"),
    ("digits", {"per_class": 5}, "--per-class applies to shapes only"),
])
def test_make_dataset_argument_rules(tmp_path: Path, name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ClarivisError, match=message):
        make_dataset(name, tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
