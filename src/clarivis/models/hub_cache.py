"""Pretrained timm weights already on this machine: the Hugging Face hub cache, looked up offline
(no request, never a download), so a command can use hub weights by default when they are there
and load them as a local file."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from clarivis.models.factory import TIMM, family_of, pretrained_cfg

# The files timm's hub loader reads, in its order: safetensors first, then the pickle it falls
# back to (timm.models._hub.load_state_dict_from_hf).
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def cached_hub_weights(name: str, *, cache_dir: str | Path | None = None) -> Path | None:
    """The cached weights file of timm model `name`'s default pretrained tag (its `hf_hub_id`,
    e.g. timm/efficientnet_lite0.ra_in1k), or None when they are not in the local hub cache
    (`cache_dir`, default the hub's own: $HF_HUB_CACHE or ~/.cache/huggingface/hub)."""
    if family_of(name) is not TIMM:
        return None  # another family's weights (e.g. open_clip's) are not timm hub files
    hub_id = pretrained_cfg(name).get("hf_hub_id")
    if not hub_id:
        return None
    repo, _, revision = hub_id.partition("@")  # timm writes a pinned revision as repo@rev
    named = pretrained_cfg(name).get("hf_hub_filename")
    for filename in ((named,) if named else _HUB_FILES):
        found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir, revision=revision or None)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None
