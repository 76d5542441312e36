"""Fixtures of the models tests: the tiny CLIP checkpoint (tests/models/tiny_clip.py)."""

from tests.models.tiny_clip import tiny_clip  # noqa: F401 (a fixture)
