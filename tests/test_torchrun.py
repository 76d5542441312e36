"""clarivis/torchrun.py: `--nproc` relaunches the command without itself, and the module needs
no torch (so `clarivis train --help` reads it cheaply)."""

from __future__ import annotations

import subprocess
import sys

from clarivis.torchrun import launched_by_torchrun, without_option


def test_nproc_is_removed_from_the_relaunched_command():
    assert without_option(["train", "d", "--nproc", "2", "--epochs", "3"], "--nproc") == [
        "train", "d", "--epochs", "3"]
    assert without_option(["train", "d", "--nproc=2"], "--nproc") == ["train", "d"]


def test_launched_by_torchrun_reads_world_size(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched_by_torchrun()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not launched_by_torchrun()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_by_torchrun()


def test_imports_no_torch():
    code = "import sys, clarivis.torchrun; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
