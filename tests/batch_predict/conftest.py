"""Fixtures of the batch prediction tests (the bundle is tests/conftest.py's tiny_bundle)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.tiny import write_images


@pytest.fixture
def images(tmp_path) -> Path:
    """13 readable images in class folders, one of them nested."""
    return write_images(tmp_path / "images")
