"""Atomic file writes (a reader, or a resumed run, sees the old file or the new one, never half)
and content digests of files."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(target: Path, write: Callable[[str], object]) -> None:
    """Call write(tmp_path) for a temporary file beside `target`, then rename it over `target`."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    # mkstemp makes the file private (0600); give it the mode a plain open() would (0666 less the
    # umask), so a bundle mounted into a container or shared with a service user stays readable.
    umask = os.umask(0)
    os.umask(umask)
    if hasattr(os, "fchmod"):  # POSIX; Windows has no modes to fix
        os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)  # atomic on POSIX and Windows
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sha256_hex(*paths: str | Path) -> str:
    """SHA-256 of the files' bytes, in order, read 1 MiB at a time (weights can be GBs)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
