"""Fixtures of the service tests: one tiny trained bundle for the session."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.serve.live import train_tiny_bundle


@pytest.fixture(scope="session")
def served_bundle(tmp_path_factory) -> Path:
    """test_resnet at 32 px trained on red/blue squares (~4 s on one core)."""
    return train_tiny_bundle(tmp_path_factory.mktemp("served"))
