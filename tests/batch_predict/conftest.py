"""Fixtures for the inference tests: one tiny trained bundle for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.batch_predict.tiny_bundle import train_bundle, write_images


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    return train_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture
def images(tmp_path) -> Path:
    """13 readable images in class folders, one of them nested."""
    return write_images(tmp_path / "images")
