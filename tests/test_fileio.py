"""fileio: atomic writes that other users (a container's service user) can read."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from clarivis.fileio import atomic_write


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_atomic_write_gives_the_mode_open_would(tmp_path):
    target = tmp_path / "config.json"
    old = os.umask(0o022)
    try:
        atomic_write(target, lambda tmp: open(tmp, "w").write("{}"))
    finally:
        os.umask(old)
    assert target.read_text() == "{}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's private 0600
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left
