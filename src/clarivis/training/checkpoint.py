"""Resume state of a run (`last.ckpt`), written atomically once per epoch: a run killed at any
moment, even by SIGKILL, keeps every finished epoch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from clarivis import runs
from clarivis.config import read_yaml
from clarivis.errors import ResumeError
from clarivis.fileio import atomic_write

Config = TypeVar("Config")
CHECKPOINT_NAME = runs.CHECKPOINT
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


def load_resume(run_dir: Path, given, validate: Callable[[dict], Config], console, *,
                check_state: Callable[[dict], None] | None = None) -> tuple[dict, Config]:
    """The checkpoint of `run_dir` and the run's own config.yaml, which wins over the settings
    `given` (same run, same result); only the data path may have moved. `check_state` refuses
    a checkpoint of the other kind of run (training vs pretraining) before its config is read."""
    if not run_dir.is_dir():
        raise ResumeError(f"{run_dir} does not exist; pass the folder of the run to resume")
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    if check_state is not None:
        check_state(state)
    if state.get("finished"):
        raise ResumeError(
            f"{run_dir} already finished ({state['epoch']} epochs); start a new run with --out")
    saved = read_yaml(run_dir / runs.RUN_CONFIG)
    saved["data"] = given.data
    resumed = validate(saved)
    ignored = [k for k, v in given.model_dump(exclude_defaults=True).items()
               if k not in ("data", "out") and v != saved.get(k)]
    if ignored:
        console.print(
            f"[yellow]--resume uses the run's own config.yaml; ignoring {', '.join(ignored)}")
    return state, resumed
