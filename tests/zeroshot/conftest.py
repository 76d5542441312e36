"""Fixtures: the tiny CLIP checkpoint and a few labeled colour images (class folder names with
underscores, as users name them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import write_image
from tests.models.tiny_clip import tiny_clip  # noqa: F401 (a fixture)

COLOURS = {"red_square": (210, 40, 40), "green_circle": (40, 190, 60), "blue_triangle": (40, 60, 210)}


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory) -> Path:
    """DIR/<class>/*.png: 3 classes x 10 noisy colour fields of 24-40 px."""
    root = tmp_path_factory.mktemp("colours") / "data"
    for name, colour in COLOURS.items():
        for i in range(10):
            write_image(root / name / f"{i}.png", colour, size=(24 + i, 40 - i))
    return root
