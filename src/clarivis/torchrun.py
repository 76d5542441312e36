"""torchrun from the command line: whether this process was started by it, and `--nproc N`
(the same command again under torchrun, N processes on this machine). Torch-free (layer 0), so
`clarivis train --help` reads it without importing torch; the process group itself (joining,
barriers, sums) lives in clarivis/distributed.py."""

from __future__ import annotations

import os
import subprocess
import sys


def launched_by_torchrun() -> bool:
    """torchrun sets WORLD_SIZE for every process it starts; a single process has none (or 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """`clarivis train ... --nproc N`: run the same command under torchrun with N processes on
    this machine; returns torchrun's exit code. (Several machines: call torchrun yourself.)"""
    args = without_option(argv, "--nproc")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "clarivis", *args]
    return subprocess.call(command)


def without_option(argv: list[str], name: str) -> list[str]:
    """`argv` without the option `name` and its value ("--nproc 2" and "--nproc=2" alike)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True  # "--nproc 2": drop the value too
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept
