"""open_clip's hub weights (models/open_clip_hub.py): the Hugging Face cache without a network,
and offline a one-line error at once instead of minutes of retries."""

from __future__ import annotations

import open_clip
import pytest

from clarivis.errors import ModelError
from clarivis.models import open_clip_hub
from clarivis.models.open_clip import load_clip, resolve_clip


@pytest.fixture
def no_network(monkeypatch):
    """No proxy, nothing cached, every connection refused; a download attempt fails the test."""
    import huggingface_hub

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)

    def refuse(*_args, **_kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(open_clip_hub.socket, "create_connection", refuse)
    monkeypatch.setattr(open_clip, "download_pretrained", lambda *a, **k: pytest.fail("downloaded"))


def test_hub_offline_is_one_line_at_once(no_network):
    with pytest.raises(ModelError, match="cannot be reached.*--clip-weights FILE") as info:
        load_clip(resolve_clip("ViT-B-32", pretrained="openai"), pretrained="openai")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="no weights 'nonesuch'"):
        resolve_clip("ViT-B-32", pretrained="nonesuch")


def test_failed_download_is_one_line(monkeypatch):
    def fail(*_args, **_kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file.\nmore")

    monkeypatch.setattr(open_clip_hub, "_cached", lambda cfg: None)
    monkeypatch.setattr(open_clip_hub, "_hub_unreachable", lambda: False)
    monkeypatch.setattr(open_clip, "download_pretrained", fail)
    cfg = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(ModelError, match="could not download.*--clip-weights FILE") as info:
        open_clip_hub.hub_weights("ViT-B-32", "laion2b_s34b_b79k", cfg)
    assert "\n" not in str(info.value)


def test_cached_hub_weights_need_no_network(no_network, monkeypatch, tiny_clip):
    import huggingface_hub

    asked = []

    def cache(repo, filename, **_kwargs):
        asked.append((repo, filename))
        return str(tiny_clip.weights) if filename.endswith(".bin") else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache)
    cfg = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")
    assert open_clip_hub.hub_weights("ViT-B-32", "laion2b_s34b_b79k", cfg) == tiny_clip.weights
    repo = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"  # safetensors first, as open_clip prefers
    assert asked == [(repo, "open_clip_model.safetensors"), (repo, "open_clip_pytorch_model.bin")]
