"""Resume state of a run (`last.ckpt`), written atomically once per epoch: a run killed at any
moment, even by SIGKILL, keeps every finished epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clarivis.errors import ResumeError
from clarivis.fileio import atomic_write

CHECKPOINT_NAME = "last.ckpt"
FORMAT = "clarivis-checkpoint-v1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ResumeError(
            f"{path.parent} has no {CHECKPOINT_NAME} to resume from; start a new run without --resume"
        )
    try:
        # Only tensors and plain containers: never unpickle arbitrary objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ResumeError(f"{path} is damaged ({err.__class__.__name__}); start a new run") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeError(f"{path} is not a clarivis checkpoint; resume only runs clarivis made")
    return state
