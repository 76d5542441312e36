"""A tiny open_clip model written as a model-config JSON plus a safetensors checkpoint of
seeded random weights (no downloads): the full plumbing at a few milliseconds a forward pass.
`tiny_clip` is a fixture: a conftest that imports it offers it to its folder's tests."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

# Image tower: 32 px in 8 px patches (a 4x4 grid), width 64, 2 blocks of 2 heads (head_width 32);
# text tower: open_clip's real BPE vocabulary and 77-token context (its SimpleTokenizer's),
# width 64, 2 blocks; a 32-d joint embedding. About 3.4M parameters, mostly token embeddings.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
LABELS = ["a red square", "a green circle", "a blue triangle"]


@dataclass
class TinyClip:
    config: Path  # open_clip model-config JSON
    weights: Path  # safetensors checkpoint of the whole CLIP (both towers)


def write_tiny_clip(folder: Path, *, name: str = "tiny-clip", seed: int = 0) -> tuple[Path, Path]:
    """(config JSON, weights file) in `folder`; logit_scale set to 100 as in released CLIPs."""
    folder.mkdir(parents=True, exist_ok=True)
    config, weights = folder / f"{name}.json", folder / f"{name}.safetensors"
    if not weights.exists():
        config.write_text(json.dumps(TINY_CLIP))
        torch.manual_seed(seed)
        model = open_clip.CLIP(**TINY_CLIP)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(100.0))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return config, weights


def full_clip(config: Path, weights: Path):
    """The saved model through open_clip's own loader: the reference the tests compare with."""
    model = open_clip.CLIP(**json.loads(config.read_text()))
    open_clip.load_checkpoint(model, str(weights))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> TinyClip:
    return TinyClip(*write_tiny_clip(tmp_path_factory.mktemp("clip")))
