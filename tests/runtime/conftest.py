"""Session fixtures: a tiny CNN exported to fp32 and int8, a tiny ViT exported to fp32 (shared
with tests/runtime through tests/export/tiny_models.py, so each is trained once)."""

from __future__ import annotations

import pytest
from tests.conftest import CNN, VIT
from tests.export.tiny_models import exported


@pytest.fixture(scope="session")
def export_base(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "export-models"


@pytest.fixture(scope="session")
def cnn_export(export_base):
    return exported(export_base, CNN, int8=True)


@pytest.fixture(scope="session")
def vit_export(export_base):
    return exported(export_base, VIT, int8=False)
